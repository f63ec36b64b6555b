//! Physical-limit baselines for the benchmark: what two processes sharing
//! memory can do with no protocol at all.
//!
//! - a spin ping-pong over two shared words (the latency floor), optionally
//!   carrying a payload each way (written by the pinger, copied into the
//!   reply by the answerer, as rpmsg-ping does);
//! - a blocking ping-pong over plain futex doorbells (`Doorbell` without
//!   sleep flags: every ring wakes, every wait sleeps at once — the
//!   primitive under rptun's adaptive simulator doorbell), with the same
//!   optional payload;
//! - a one-way single-producer ring of fixed-size slots (the throughput
//!   floor for a given slot size): each side spins briefly, then sleeps in a
//!   futex and is woken only when it sleeps (the best a raw ring can do on a
//!   machine whose cores are shared: a pure spin ring stalls for a whole
//!   scheduler slice whenever its peer is descheduled).
//!
//! Each function runs one side; the benchmark runs the other side in a second
//! process over the same shm object. Layout inside the region (offsets):
//! spin ping/pong words at `0x00`/`0x40`, futex ping/pong counters at
//! `0x80`/`0xC0`, ring head/tail at `0x100`/`0x140` (each on its own cache
//! line), the ring's "consumer sleeps" / "producer sleeps" flags at
//! `0x110`/`0x150`, slots from `0x180` (the ping-pongs carry their payload in
//! slots 0 and 1, so a region with a payload needs room for two slots of
//! [`PAYLOAD_SLOT`] bytes). Every word starts at zero in a fresh region, so
//! neither side has to sample it before the other starts.

use crate::doorbell::Doorbell;
use rptun::shm::Region;
use rustix::thread::futex;
use std::time::{Duration, Instant};

const PING: usize = 0x00;
const PONG: usize = 0x40;
const FPING: usize = 0x80;
const FPONG: usize = 0xC0;
const HEAD: usize = 0x100;
const TAIL: usize = 0x140;
const SLOTS: usize = 0x180;
const CSLEEP: usize = 0x110;
const PSLEEP: usize = 0x150;

/// Bytes between the ping and the pong payloads (the largest payload).
pub const PAYLOAD_SLOT: usize = 0x600;

/// How long a ring side spins before it sleeps.
const RING_SPIN: Duration = Duration::from_micros(20);

/// Messages per throughput batch: throughput figures are also timed per
/// batch, so a rate can be taken over the batches during which both sides
/// were running (the median batch), not only over the whole run.
pub const BATCH: u32 = 1024;

/// The timing of a one-way run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Timed {
    /// Messages timed.
    pub msgs: u32,
    /// Time for all of them.
    pub total: Duration,
    /// Time of each full batch of [`BATCH`] messages (ns).
    pub batch_ns: Vec<u64>,
}

impl Timed {
    /// Messages per second over the whole run.
    pub fn overall_rate(&self) -> f64 {
        f64::from(self.msgs) / self.total.as_secs_f64().max(1e-9)
    }

    /// Messages per second of the median batch (the whole run's rate if no
    /// batch completed).
    pub fn median_batch_rate(&self) -> f64 {
        if self.batch_ns.is_empty() {
            return self.overall_rate();
        }
        let mut b = self.batch_ns.clone();
        let (median, _, _) = percentiles(&mut b);
        f64::from(BATCH) / (median.max(1) as f64 / 1e9)
    }
}

/// Splits a run into [`BATCH`]es: call [`Batcher::tick`] after every
/// message.
#[derive(Debug)]
pub struct Batcher {
    start: Instant,
    mark: Instant,
    n: u32,
    out: Timed,
}

impl Batcher {
    /// Starts the clock.
    pub fn start() -> Batcher {
        let now = Instant::now();
        Batcher {
            start: now,
            mark: now,
            n: 0,
            out: Timed::default(),
        }
    }

    /// Counts one message.
    pub fn tick(&mut self) {
        self.n += 1;
        self.out.msgs += 1;
        if self.n == BATCH {
            let now = Instant::now();
            self.out
                .batch_ns
                .push(now.duration_since(self.mark).as_nanos() as u64);
            self.mark = now;
            self.n = 0;
        }
    }

    /// Stops the clock.
    pub fn finish(mut self) -> Timed {
        self.out.total = self.start.elapsed();
        self.out
    }
}

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

fn payload_room(region: &Region, payload: usize) -> Result<(), String> {
    if payload == 0 {
        return Ok(());
    }
    if payload > PAYLOAD_SLOT || region.len() < SLOTS + 2 * PAYLOAD_SLOT {
        return Err(format!(
            "a {payload}-byte ping-pong payload needs at most {PAYLOAD_SLOT} bytes and a region \
             of {} bytes",
            SLOTS + 2 * PAYLOAD_SLOT
        ));
    }
    Ok(())
}

/// The pinger's half of a payload: write it before ringing.
fn send_payload(region: &Region, buf: &[u8]) -> Result<(), String> {
    if buf.is_empty() {
        return Ok(());
    }
    region.write_bytes(SLOTS, buf).map_err(|e| e.to_string())
}

/// The answerer's half: copy the ping's payload into the pong's.
fn echo_payload(region: &Region, buf: &mut [u8]) -> Result<(), String> {
    if buf.is_empty() {
        return Ok(());
    }
    let e = |e: rptun::shm::ShmError| e.to_string();
    region.read_bytes(SLOTS, buf).map_err(e)?;
    region.write_bytes(SLOTS + PAYLOAD_SLOT, buf).map_err(e)
}

/// Spin ping-pong: `iters` round trips, each carrying `payload` bytes each
/// way; the measuring side returns each round trip in nanoseconds.
pub fn spin_pingpong(
    region: &Region,
    side: Side,
    iters: u32,
    payload: usize,
) -> Result<Vec<u64>, String> {
    payload_room(region, payload)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut rtts = Vec::with_capacity(iters as usize);
    let mut buf = vec![0x5au8; payload];
    for i in 1..=iters {
        match side {
            Side::Measure => {
                let t = Instant::now();
                send_payload(region, &buf)?;
                region.store_u32(PING, i).map_err(|e| e.to_string())?;
                spin_until(region, PONG, i, deadline)?;
                rtts.push(t.elapsed().as_nanos() as u64);
            }
            Side::Answer => {
                spin_until(region, PING, i, deadline)?;
                echo_payload(region, &mut buf)?;
                region.store_u32(PONG, i).map_err(|e| e.to_string())?;
            }
        }
    }
    Ok(rtts)
}

/// Blocking ping-pong over plain futex doorbells (the primitive under
/// rptun's adaptive simulator doorbell): each side sleeps until rung;
/// `payload` bytes travel each way.
pub fn futex_pingpong(
    region: &Region,
    side: Side,
    iters: u32,
    payload: usize,
) -> Result<Vec<u64>, String> {
    payload_room(region, payload)?;
    let (mine, peer) = match side {
        Side::Measure => (FPING, FPONG),
        Side::Answer => (FPONG, FPING),
    };
    let bell = Doorbell::new(region.clone(), mine, peer, false);
    let mut rtts = Vec::with_capacity(iters as usize);
    let mut buf = vec![0x5au8; payload];
    let mut seen = 0;
    for _ in 0..iters {
        match side {
            Side::Measure => {
                let t = Instant::now();
                send_payload(region, &buf)?;
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
                echo_payload(region, &mut buf)?;
                bell.ring();
            }
        }
    }
    Ok(rtts)
}

/// Waits until `ready(word)`: spins for [`RING_SPIN`], then sleeps in a
/// futex on the word after raising `flag` (the other side wakes sleepers
/// only). Returns the word's value.
fn ring_wait(
    region: &Region,
    word: usize,
    flag: usize,
    ready: impl Fn(u32) -> bool,
    deadline: Instant,
    what: &str,
) -> Result<u32, String> {
    use std::sync::atomic::Ordering::{Acquire, Relaxed, SeqCst};
    let e = |e: rptun::shm::ShmError| e.to_string();
    let a = region.atomic_u32(word).map_err(e)?;
    let f = region.atomic_u32(flag).map_err(e)?;
    let v = a.load(Acquire);
    if ready(v) {
        return Ok(v);
    }
    let spin_end = Instant::now() + RING_SPIN;
    let mut n = 0u32;
    loop {
        let v = a.load(Acquire);
        if ready(v) {
            return Ok(v);
        }
        std::hint::spin_loop();
        n = n.wrapping_add(1);
        if n % 64 != 0 {
            continue;
        }
        let now = Instant::now();
        if now > deadline {
            return Err(format!("the {what} stopped (timeout)"));
        }
        if now < spin_end {
            continue;
        }
        // Dekker with the other side's `ring_publish`: flag, then re-read.
        f.store(1, SeqCst);
        let v = a.load(SeqCst);
        if ready(v) {
            f.store(0, Relaxed);
            return Ok(v);
        }
        let ts = futex::Timespec {
            tv_sec: 0,
            tv_nsec: 10_000_000,
        };
        let _ = futex::wait(a, futex::Flags::empty(), v, Some(&ts));
        f.store(0, Relaxed);
    }
}

/// Stores `value` into `word` and wakes the other side if it sleeps.
fn ring_publish(region: &Region, word: usize, flag: usize, value: u32) -> Result<(), String> {
    use std::sync::atomic::Ordering::SeqCst;
    let e = |e: rptun::shm::ShmError| e.to_string();
    let a = region.atomic_u32(word).map_err(e)?;
    a.store(value, SeqCst);
    let f = region.atomic_u32(flag).map_err(e)?;
    if f.load(SeqCst) != 0 {
        f.store(0, SeqCst);
        let _ = futex::wake(a, futex::Flags::empty(), 1);
    }
    Ok(())
}

/// One-way ring: the answering side produces `msgs` messages of
/// `payload` bytes into `slots` slots of `slot_size`; the measuring side
/// consumes and copies each out, checks its first word, and returns the
/// timing from the first message's arrival to the last one's (so `msgs - 1`
/// messages; the producer's start-up is not counted). The answering side
/// returns an empty timing.
pub fn raw_ring(
    region: &Region,
    side: Side,
    slot_size: usize,
    slots: u32,
    payload: usize,
    msgs: u32,
) -> Result<Timed, String> {
    let e = |e: rptun::shm::ShmError| e.to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    if payload > slot_size {
        return Err(format!(
            "a {payload}-byte message does not fit a {slot_size}-byte slot"
        ));
    }
    let mut buf = vec![0u8; payload.max(4)];
    let mut clock: Option<Batcher> = None;
    for i in 0..msgs {
        let slot = SLOTS + (i % slots) as usize * slot_size;
        match side {
            Side::Answer => {
                // wait for room: head - tail < slots
                ring_wait(
                    region,
                    TAIL,
                    PSLEEP,
                    |tail| i.wrapping_sub(tail) < slots,
                    deadline,
                    "consumer",
                )?;
                buf[..4].copy_from_slice(&i.to_le_bytes());
                region.write_bytes(slot, &buf[..payload]).map_err(e)?;
                ring_publish(region, HEAD, CSLEEP, i + 1)?;
            }
            Side::Measure => {
                // wait for data: head - i > 0
                ring_wait(
                    region,
                    HEAD,
                    CSLEEP,
                    |head| head.wrapping_sub(i) != 0,
                    deadline,
                    "producer",
                )?;
                region.read_bytes(slot, &mut buf[..payload]).map_err(e)?;
                if payload >= 4 && buf[..4] != i.to_le_bytes() {
                    return Err(format!("raw ring message {i} arrived corrupted"));
                }
                match clock.as_mut() {
                    Some(c) => c.tick(),
                    // The clock starts when the producer is running.
                    None => clock = Some(Batcher::start()),
                }
                ring_publish(region, TAIL, PSLEEP, i + 1)?;
            }
        }
    }
    Ok(clock.map(Batcher::finish).unwrap_or_default())
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
        // Every baseline starts from zeroed words: one fresh region each.
        let fresh = || Region::new_heap(region_size(PAYLOAD_SLOT, 8));
        let regions: Vec<Region> = (0..5).map(|_| fresh()).collect();
        let r2 = regions.clone();
        let t = std::thread::spawn(move || {
            spin_pingpong(&r2[0], Side::Answer, 100, 0).unwrap();
            futex_pingpong(&r2[1], Side::Answer, 50, 0).unwrap();
            spin_pingpong(&r2[2], Side::Answer, 100, 1520).unwrap();
            futex_pingpong(&r2[3], Side::Answer, 50, 1520).unwrap();
            raw_ring(&r2[4], Side::Answer, 64, 8, 60, 1000).unwrap();
        });
        let r = &regions;
        assert_eq!(
            spin_pingpong(&r[0], Side::Measure, 100, 0).unwrap().len(),
            100
        );
        assert_eq!(
            futex_pingpong(&r[1], Side::Measure, 50, 0).unwrap().len(),
            50
        );
        let spin = spin_pingpong(&r[2], Side::Measure, 100, 1520).unwrap();
        assert_eq!(spin.len(), 100);
        let futex = futex_pingpong(&r[3], Side::Measure, 50, 1520).unwrap();
        assert_eq!(futex.len(), 50);
        let ring = raw_ring(&r[4], Side::Measure, 64, 8, 60, 1000).unwrap();
        assert_eq!(ring.msgs, 999);
        t.join().unwrap();
        // The answerer copied the ping's payload into the pong's.
        for region in [&r[2], &r[3]] {
            let mut pong = [0u8; 1520];
            region.read_bytes(SLOTS + PAYLOAD_SLOT, &mut pong).unwrap();
            assert!(pong.iter().all(|&b| b == 0x5a));
        }
        // A payload that does not fit is refused, not truncated.
        let small = Region::new_heap(region_size(64, 8));
        assert!(spin_pingpong(&small, Side::Measure, 1, 17).is_err());
        let mut s = vec![5, 1, 9, 3, 7];
        assert_eq!(percentiles(&mut s), (5, 9, 1));
    }
}
