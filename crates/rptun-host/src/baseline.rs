//! Physical-limit baselines for the benchmark: what two processes sharing
//! memory can do with no protocol at all.
//!
//! - a spin ping-pong over two shared words (the latency floor);
//! - a blocking ping-pong over the same futex doorbells rptun uses;
//! - a one-way single-producer ring of fixed-size slots (the throughput
//!   floor for a given slot size).
//!
//! Each function runs one side; the benchmark runs the other side in a second
//! process over the same shm object. Layout inside the region (offsets):
//! spin ping/pong words at `0x00`/`0x40`, futex ping/pong counters at
//! `0x80`/`0xC0`, ring head/tail at `0x100`/`0x140` (each on its own cache
//! line), slots from `0x180`. Every counter starts at zero in a fresh region,
//! so neither side has to sample it before the other starts.

use crate::doorbell::Doorbell;
use rptun::shm::Region;
use std::time::{Duration, Instant};

const PING: usize = 0x00;
const PONG: usize = 0x40;
const FPING: usize = 0x80;
const FPONG: usize = 0xC0;
const HEAD: usize = 0x100;
const TAIL: usize = 0x140;
const SLOTS: usize = 0x180;

/// Bytes a region needs for a ring of `slots` slots of `slot_size` bytes.
pub fn region_size(slot_size: usize, slots: usize) -> usize {
    SLOTS + slot_size * slots
}

/// Which side of a baseline runs here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The side that measures (sends pings, consumes the ring).
    Measure,
    /// The side that answers (returns pongs, produces into the ring).
    Answer,
}

fn spin_until(region: &Region, off: usize, want: u32, deadline: Instant) -> Result<(), String> {
    let a = region.atomic_u32(off).map_err(|e| e.to_string())?;
    let mut n = 0u32;
    while a.load(std::sync::atomic::Ordering::Acquire) != want {
        std::hint::spin_loop();
        n = n.wrapping_add(1);
        if n % 4096 == 0 && Instant::now() > deadline {
            return Err("the peer stopped answering (timeout)".into());
        }
    }
    Ok(())
}

/// Spin ping-pong: `iters` round trips; the measuring side returns each
/// round trip in nanoseconds.
pub fn spin_pingpong(region: &Region, side: Side, iters: u32) -> Result<Vec<u64>, String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut rtts = Vec::with_capacity(iters as usize);
    for i in 1..=iters {
        match side {
            Side::Measure => {
                let t = Instant::now();
                region.store_u32(PING, i).map_err(|e| e.to_string())?;
                spin_until(region, PONG, i, deadline)?;
                rtts.push(t.elapsed().as_nanos() as u64);
            }
            Side::Answer => {
                spin_until(region, PING, i, deadline)?;
                region.store_u32(PONG, i).map_err(|e| e.to_string())?;
            }
        }
    }
    Ok(rtts)
}

/// Blocking ping-pong over futex doorbells (the primitive rptun's simulator
/// uses): each side sleeps until rung.
pub fn futex_pingpong(region: &Region, side: Side, iters: u32) -> Result<Vec<u64>, String> {
    let (mine, peer) = match side {
        Side::Measure => (FPING, FPONG),
        Side::Answer => (FPONG, FPING),
    };
    let bell = Doorbell::new(region.clone(), mine, peer, false);
    let mut rtts = Vec::with_capacity(iters as usize);
    let mut seen = 0;
    for _ in 0..iters {
        match side {
            Side::Measure => {
                let t = Instant::now();
                bell.ring();
                let now = bell.wait(seen, Duration::from_secs(10));
                if now == seen {
                    return Err("the peer stopped answering (timeout)".into());
                }
                seen = now;
                rtts.push(t.elapsed().as_nanos() as u64);
            }
            Side::Answer => {
                let now = bell.wait(seen, Duration::from_secs(10));
                if now == seen {
                    return Err("the peer stopped pinging (timeout)".into());
                }
                seen = now;
                bell.ring();
            }
        }
    }
    Ok(rtts)
}

/// One-way ring: the answering side produces `msgs` messages of
/// `payload` bytes into `slots` slots of `slot_size`; the measuring side
/// consumes and copies each out, checks its first word, and returns the
/// elapsed time.
pub fn raw_ring(
    region: &Region,
    side: Side,
    slot_size: usize,
    slots: u32,
    payload: usize,
    msgs: u32,
) -> Result<Duration, String> {
    let e = |e: rptun::shm::ShmError| e.to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut buf = vec![0u8; payload.max(4)];
    let start = Instant::now();
    for i in 0..msgs {
        let slot = SLOTS + (i % slots) as usize * slot_size;
        match side {
            Side::Answer => {
                // wait for room: head - tail < slots
                while i.wrapping_sub(region.load_u32(TAIL).map_err(e)?) >= slots {
                    std::hint::spin_loop();
                    if Instant::now() > deadline {
                        return Err("the consumer stopped (timeout)".into());
                    }
                }
                buf[..4].copy_from_slice(&i.to_le_bytes());
                region.write_bytes(slot, &buf[..payload]).map_err(e)?;
                region.store_u32(HEAD, i + 1).map_err(e)?;
            }
            Side::Measure => {
                // wait for data: head - i > 0
                while region.load_u32(HEAD).map_err(e)?.wrapping_sub(i) == 0 {
                    std::hint::spin_loop();
                    if Instant::now() > deadline {
                        return Err("the producer stopped (timeout)".into());
                    }
                }
                region.read_bytes(slot, &mut buf[..payload]).map_err(e)?;
                if payload >= 4 && buf[..4] != i.to_le_bytes() {
                    return Err(format!("raw ring message {i} arrived corrupted"));
                }
                region.store_u32(TAIL, i + 1).map_err(e)?;
            }
        }
    }
    Ok(start.elapsed())
}

/// Median, 99th percentile and minimum of samples (ns).
pub fn percentiles(samples: &mut [u64]) -> (u64, u64, u64) {
    if samples.is_empty() {
        return (0, 0, 0);
    }
    samples.sort_unstable();
    let n = samples.len();
    (
        samples[n / 2],
        samples[(n * 99 / 100).min(n - 1)],
        samples[0],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baselines_run_between_two_threads() {
        let r = Region::new_heap(region_size(64, 8));
        let r2 = r.clone();
        let t = std::thread::spawn(move || {
            spin_pingpong(&r2, Side::Answer, 100).unwrap();
            futex_pingpong(&r2, Side::Answer, 50).unwrap();
            raw_ring(&r2, Side::Answer, 64, 8, 60, 1000).unwrap();
        });
        assert_eq!(spin_pingpong(&r, Side::Measure, 100).unwrap().len(), 100);
        assert_eq!(futex_pingpong(&r, Side::Measure, 50).unwrap().len(), 50);
        raw_ring(&r, Side::Measure, 64, 8, 60, 1000).unwrap();
        t.join().unwrap();
        let mut s = vec![5, 1, 9, 3, 7];
        assert_eq!(percentiles(&mut s), (5, 9, 1));
    }
}
