//! Blocking doorbells on shared counters.
//!
//! A doorbell is a `u32` counter in shared memory that the ringing side
//! increments. The waiting side sleeps in a futex on the counter (shared,
//! not process-private, so it works across processes) and is woken by the
//! ringer's `FUTEX_WAKE`. A peer that only increments the counter and never
//! wakes anyone (NuttX's simulator polls every tick) is still noticed,
//! because every wait is bounded by `max_sleep`.
//!
//! Why futexes rather than eventfds over a socket: the counters already live
//! in the shared object (the NuttX layout has them), so no extra channel has
//! to be set up, inherited or re-established after a peer restart, and an
//! idle link costs nothing but a timed sleep.

use rptun::shm::Region;
use rustix::thread::futex;
use std::time::Duration;

/// One side's view of a pair of doorbell counters.
#[derive(Debug, Clone)]
pub struct Doorbell {
    region: Region,
    mine: usize,
    peer: usize,
    poll: bool,
    max_sleep: Duration,
}

impl Doorbell {
    /// A doorbell that rings the counter at `mine` and waits on the one at
    /// `peer` (both 4-aligned offsets in `region`). With `poll` set, waiting
    /// spins instead of sleeping (lowest latency, one busy core).
    pub fn new(region: Region, mine: usize, peer: usize, poll: bool) -> Doorbell {
        Doorbell {
            region,
            mine,
            peer,
            poll,
            max_sleep: Duration::from_millis(10),
        }
    }

    /// Sets the longest single sleep; a peer that never wakes us is noticed
    /// within this time.
    pub fn with_max_sleep(mut self, d: Duration) -> Doorbell {
        self.max_sleep = d;
        self
    }

    /// Rings the peer: increments our counter and wakes its waiters.
    pub fn ring(&self) {
        if let Ok(a) = self.region.atomic_u32(self.mine) {
            a.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            if !self.poll {
                let _ = futex::wake(a, futex::Flags::empty(), i32::MAX as u32);
            }
        }
    }

    /// The peer's counter now (pass it to [`Doorbell::wait`]).
    pub fn peer_seq(&self) -> u32 {
        self.region
            .atomic_u32(self.peer)
            .map(|a| a.load(std::sync::atomic::Ordering::Acquire))
            .unwrap_or(0)
    }

    /// True in busy-poll mode.
    pub fn is_poll(&self) -> bool {
        self.poll
    }

    /// The longest single sleep (see [`Doorbell::with_max_sleep`]).
    pub fn max_sleep(&self) -> Duration {
        self.max_sleep
    }

    /// Sleeps once: returns when the peer's counter differs from `seen`, when
    /// another thread calls [`Doorbell::wake_local`], or after
    /// `timeout.min(max_sleep)` (in poll mode: after a short spin). Returns
    /// the counter's value then. An event loop that also has local work calls
    /// this in a loop, reading `seen` *before* it looks for work, so that no
    /// ring is lost.
    pub fn wait_once(&self, seen: u32, timeout: Duration) -> u32 {
        let Ok(a) = self.region.atomic_u32(self.peer) else {
            std::thread::sleep(timeout.min(self.max_sleep));
            return seen;
        };
        let now = a.load(std::sync::atomic::Ordering::Acquire);
        if now != seen {
            return now;
        }
        let nap = timeout.min(self.max_sleep);
        if self.poll {
            let end = std::time::Instant::now() + nap.min(Duration::from_micros(100));
            while std::time::Instant::now() < end {
                let now = a.load(std::sync::atomic::Ordering::Acquire);
                if now != seen {
                    return now;
                }
                std::hint::spin_loop();
            }
            return a.load(std::sync::atomic::Ordering::Acquire);
        }
        let ts = futex::Timespec {
            tv_sec: nap.as_secs() as _,
            tv_nsec: nap.subsec_nanos() as _,
        };
        // EAGAIN (value changed), ETIMEDOUT, EINTR and a local wake all mean
        // "look again".
        let _ = futex::wait(a, futex::Flags::empty(), seen, Some(&ts));
        a.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Wakes this side's own waiters (threads in [`Doorbell::wait_once`])
    /// without touching either counter: how a local thread hands work to an
    /// event loop that sleeps on the doorbell.
    pub fn wake_local(&self) {
        if let Ok(a) = self.region.atomic_u32(self.peer) {
            let _ = futex::wake(a, futex::Flags::empty(), i32::MAX as u32);
        }
    }

    /// Waits until the peer's counter differs from `seen` or `timeout`
    /// passes; returns the counter's value then (equal to `seen` on timeout).
    pub fn wait(&self, seen: u32, timeout: Duration) -> u32 {
        let deadline = std::time::Instant::now() + timeout;
        let Ok(a) = self.region.atomic_u32(self.peer) else {
            std::thread::sleep(timeout);
            return seen;
        };
        loop {
            let now = a.load(std::sync::atomic::Ordering::Acquire);
            if now != seen {
                return now;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return now;
            }
            if self.poll {
                std::hint::spin_loop();
                continue;
            }
            let nap = left.min(self.max_sleep);
            let ts = futex::Timespec {
                tv_sec: nap.as_secs() as _,
                tv_nsec: nap.subsec_nanos() as _,
            };
            // EAGAIN (value changed), ETIMEDOUT and EINTR all mean "look again".
            let _ = futex::wait(a, futex::Flags::empty(), seen, Some(&ts));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn ring_wakes_a_sleeping_waiter() {
        let r = Region::new_heap(64);
        let a = Doorbell::new(r.clone(), 0, 4, false);
        let b = Doorbell::new(r, 4, 0, false).with_max_sleep(Duration::from_secs(30));
        let seen = b.peer_seq();
        let t = std::thread::spawn(move || b.wait(seen, Duration::from_secs(30)));
        std::thread::sleep(Duration::from_millis(20));
        a.ring();
        assert_eq!(t.join().unwrap(), seen.wrapping_add(1));
    }

    #[test]
    fn a_peer_that_only_increments_is_noticed() {
        let r = Region::new_heap(64);
        let b = Doorbell::new(r.clone(), 4, 0, false).with_max_sleep(Duration::from_millis(5));
        let seen = b.peer_seq();
        let r2 = r.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            // a NuttX-style peer: increment, no wake
            r2.fetch_add_u32(0, 1).unwrap();
        });
        let start = Instant::now();
        let v = b.wait(seen, Duration::from_secs(30));
        t.join().unwrap();
        assert_eq!(v, seen + 1);
        assert!(start.elapsed() < Duration::from_secs(30));
    }

    #[test]
    fn wait_once_returns_on_a_local_wake_without_a_ring() {
        let r = Region::new_heap(64);
        let b = Doorbell::new(r.clone(), 4, 0, false).with_max_sleep(Duration::from_secs(30));
        let waker = b.clone();
        let seen = b.peer_seq();
        let t = std::thread::spawn(move || {
            let start = Instant::now();
            let v = b.wait_once(seen, Duration::from_secs(30));
            (v, start.elapsed())
        });
        // Wake until the waiter has returned (a wake before it sleeps is lost,
        // which is why callers bound every sleep).
        while !t.is_finished() {
            waker.wake_local();
            std::thread::sleep(Duration::from_millis(5));
        }
        let (v, took) = t.join().unwrap();
        assert_eq!(v, seen, "nobody rang");
        assert!(took < Duration::from_secs(30));
    }

    #[test]
    fn wait_once_notices_an_increment_without_a_wake_after_one_bounded_sleep() {
        let r = Region::new_heap(64);
        let b = Doorbell::new(r.clone(), 4, 0, false).with_max_sleep(Duration::from_millis(5));
        let seen = b.peer_seq();
        // a NuttX-style peer: increment, no FUTEX_WAKE
        r.fetch_add_u32(0, 1).unwrap();
        // the value already differs: no sleep at all
        assert_eq!(b.wait_once(seen, Duration::from_secs(30)), seen + 1);
        // an increment while asleep is seen when the bounded sleep ends
        let r2 = r.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(2));
            r2.fetch_add_u32(0, 1).unwrap();
        });
        let mut v = seen + 1;
        let start = Instant::now();
        while v == seen + 1 {
            v = b.wait_once(v, Duration::from_secs(30));
            assert!(start.elapsed() < Duration::from_secs(30));
        }
        t.join().unwrap();
        assert_eq!(v, seen + 2);
    }

    #[test]
    fn wait_times_out_when_nothing_rings() {
        let r = Region::new_heap(64);
        let b = Doorbell::new(r, 4, 0, false);
        assert_eq!(b.wait(0, Duration::from_millis(30)), 0);
    }
}
