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
//!
//! # Adaptive waking ([`Doorbell::with_sleep_flags`])
//!
//! A `FUTEX_WAKE` costs a system call (about a microsecond, more when it
//! has to schedule the sleeper) on every ring, even when the peer is wide
//! awake and about to look at the counter anyway: a stream of one-way
//! messages pays it once per message. With sleep flags, a blocking waiter
//! first spins for [`Doorbell::spin`] (20 µs by default), then announces
//! itself in a shared "sleepers" word (a `u16` per side, outside any
//! NuttX-defined field) and sleeps in the futex; the ringer calls
//! `FUTEX_WAKE` only when the peer's word says someone sleeps.
//!
//! No wake-up is lost. The waiter does `sleepers += 1; v = counter`, the
//! ringer `counter += 1; s = sleepers`, all four `SeqCst` (a read-modify-write
//! each side, then a load): in the single total order of `SeqCst`
//! operations either the waiter's increment of `sleepers` comes before the
//! ringer's load of it — then the ringer sees a sleeper and wakes — or the
//! ringer's load comes first; then its increment of the counter (before
//! the load in program order, hence in the total order) also precedes the
//! waiter's load of the counter, which therefore sees the new value and
//! does not sleep. In the first case a wake that arrives before the waiter
//! is queued in the kernel is not lost either: `FUTEX_WAIT` compares the
//! counter with `seen` under the futex's lock and returns at once when it
//! changed (the increment came before the wake). The sleepers word is a
//! count (its low byte), not a flag, so several threads waiting on one side
//! (a node loop and a blocking call in another thread) cannot clear each
//! other's mark.
//!
//! The word's high byte holds the cpu the side last waited on (plus one;
//! zero: unknown). A waiter whose peer last waited on the waiter's own cpu
//! only yields during its spin instead of spinning: the peer has to run on
//! this very core to answer, and a busy spin would only delay it (the
//! scheduler often puts two processes that wake each other on one core);
//! staying runnable, rather than sleeping at once, lets the scheduler move
//! one of the two to an idle core. It is a hint: a wrong one costs latency,
//! never a lost wake-up.
//!
//! Interoperability: a NuttX peer neither sets nor reads these words. We
//! never wake it (it does not sleep in a futex; it polls its counter every
//! tick) and it never wakes us, which the bounded sleep covers: such a peer
//! is noticed within `max_sleep`, exactly as without flags. A peer process
//! that dies while asleep leaves its count raised: that only costs the
//! survivor a wake system call per ring, as without flags.

use rptun::shm::Region;
use rustix::thread::futex;
use std::sync::atomic::{AtomicU16, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a blocking wait with sleep flags spins before it sleeps (see
/// [`Doorbell::with_sleep_flags`]).
pub const DEFAULT_SPIN: Duration = Duration::from_micros(20);

/// The sleepers count in a side's `u16` sleepers word; the high byte is
/// the cpu the side last waited on, plus one (zero: unknown).
const SLEEPERS: u16 = 0x00ff;

/// This thread's cpu plus one, as stored in a sleepers word (zero when it
/// does not fit).
fn cpu_tag() -> u16 {
    let c = rustix::thread::sched_getcpu();
    if c < 0xff {
        c as u16 + 1
    } else {
        0
    }
}

/// How long an adaptive wait spins before it starts yielding between spins.
const PURE_SPIN: Duration = Duration::from_micros(5);
/// The short spins between yields of an adaptive wait.
const YIELD_SPIN: Duration = Duration::from_micros(2);

/// Longest stretch a poll-mode wait spins before it yields the cpu once: on
/// a machine with more runnable threads than cores a pure spin would keep
/// the peer from running for a whole scheduler slice.
const POLL_SLICE: Duration = Duration::from_micros(50);

/// A spinning wait reads the clock once per this many looks at the counter
/// (a few microseconds apart: far below [`POLL_SLICE`]).
const SPIN_CLOCK_EVERY: u32 = 16;

/// Between the two steps of each side of the wake-up protocol: nothing in
/// a build, a random delay in tests, which widens every race window so that
/// the stress tests would catch a protocol whose correctness depends on
/// timing (swapping a ringer's two steps fails the no-spin one within seconds).
#[inline(always)]
fn race_stretch() {
    #[cfg(test)]
    {
        use std::cell::Cell;
        thread_local!(static X: Cell<u32> = const { Cell::new(0x2545_f491) });
        let n = X.with(|x| {
            let mut v = x.get();
            v ^= v << 13;
            v ^= v >> 17;
            v ^= v << 5;
            x.set(v);
            v
        });
        if n % 8 == 0 {
            std::thread::yield_now();
        } else {
            for _ in 0..(n % 256) {
                std::hint::spin_loop();
            }
        }
    }
}

/// One side's view of a pair of doorbell counters.
#[derive(Debug, Clone)]
pub struct Doorbell {
    region: Region,
    mine: usize,
    peer: usize,
    poll: bool,
    max_sleep: Duration,
    /// `(ours, the peer's)` sleepers words, when adaptive.
    flags: Option<(usize, usize)>,
    spin: Duration,
    /// Bumped by [`Doorbell::wake_local`] (shared by clones), so that a
    /// waiter still spinning sees a local wake too.
    local: Arc<AtomicU32>,
}

impl Doorbell {
    /// A doorbell that rings the counter at `mine` and waits on the one at
    /// `peer` (both 4-aligned offsets in `region`). With `poll` set, waiting
    /// spins instead of sleeping (lowest latency, one busy core). Every ring
    /// wakes the peer's sleepers until [`Doorbell::with_sleep_flags`] is set.
    pub fn new(region: Region, mine: usize, peer: usize, poll: bool) -> Doorbell {
        Doorbell {
            region,
            mine,
            peer,
            poll,
            max_sleep: Duration::from_millis(10),
            flags: None,
            spin: DEFAULT_SPIN,
            local: Arc::new(AtomicU32::new(0)),
        }
    }

    /// Sets the longest single sleep; a peer that never wakes us is noticed
    /// within this time.
    pub fn with_max_sleep(mut self, d: Duration) -> Doorbell {
        self.max_sleep = d;
        self
    }

    /// Adaptive waking (see the module docs): this side counts its sleeping
    /// waiters in the `u16` at `mine` and rings wake the peer only when the
    /// `u16` at `peer` is non-zero. Both offsets are 2-aligned, in `region`,
    /// and the peer must use the same two words the other way round. A
    /// blocking wait spins for [`Doorbell::spin`] before it sleeps.
    pub fn with_sleep_flags(mut self, mine: usize, peer: usize) -> Doorbell {
        self.flags = Some((mine, peer));
        self
    }

    /// Sets how long a blocking wait with sleep flags spins before it
    /// sleeps (zero: sleep at once).
    pub fn with_spin(mut self, d: Duration) -> Doorbell {
        self.spin = d;
        self
    }

    /// How long a blocking wait with sleep flags spins before it sleeps.
    pub fn spin(&self) -> Duration {
        self.spin
    }

    /// True with [`Doorbell::with_sleep_flags`].
    pub fn is_adaptive(&self) -> bool {
        self.flags.is_some()
    }

    fn flag(&self, offset: usize) -> Option<&AtomicU16> {
        self.region.atomic_u16(offset).ok()
    }

    /// Rings the peer: increments our counter and wakes its waiters (with
    /// sleep flags: only when the peer says one sleeps; without: unless in
    /// poll mode).
    pub fn ring(&self) {
        let Ok(a) = self.region.atomic_u32(self.mine) else {
            return;
        };
        let wake = match self.flags {
            Some((_, peer)) => {
                a.fetch_add(1, Ordering::SeqCst);
                race_stretch();
                // The load after the increment: see the module docs.
                self.flag(peer)
                    .is_none_or(|f| f.load(Ordering::SeqCst) & SLEEPERS != 0)
            }
            None => {
                a.fetch_add(1, Ordering::AcqRel);
                !self.poll
            }
        };
        if wake {
            let _ = futex::wake(a, futex::Flags::empty(), i32::MAX as u32);
        }
    }

    /// The peer's counter now (pass it to [`Doorbell::wait`]).
    pub fn peer_seq(&self) -> u32 {
        self.region
            .atomic_u32(self.peer)
            .map(|a| a.load(Ordering::Acquire))
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

    /// Spins until the counter differs from `seen`, a local wake (the local
    /// generation differs from `gen`) or `until`; the counter's value.
    fn spin_until(&self, a: &AtomicU32, seen: u32, gen: u32, until: Instant) -> u32 {
        // One pause between looks at the counter, as the raw spin baseline
        // does (a pause is tens to ~140 cycles: a batch of them between
        // looks delays every answer by half a batch on average); the clock
        // only every `SPIN_CLOCK_EVERY` looks.
        let mut n = 0u32;
        loop {
            let now = a.load(Ordering::Acquire);
            if now != seen || self.local.load(Ordering::Acquire) != gen {
                return now;
            }
            n = n.wrapping_add(1);
            if n % SPIN_CLOCK_EVERY == 0 && Instant::now() >= until {
                return now;
            }
            std::hint::spin_loop();
        }
    }

    /// One bounded futex sleep while the counter is `seen` (after the spin
    /// and the sleepers announcement when adaptive); the value after.
    fn sleep(&self, a: &AtomicU32, seen: u32, gen: u32, nap: Duration, start: Instant) -> u32 {
        let ts = |d: Duration| futex::Timespec {
            tv_sec: d.as_secs() as _,
            tv_nsec: d.subsec_nanos() as _,
        };
        let Some(flag) = self.flags.and_then(|(mine, _)| self.flag(mine)) else {
            // EAGAIN (value changed), ETIMEDOUT, EINTR and a local wake all
            // mean "look again".
            let _ = futex::wait(a, futex::Flags::empty(), seen, Some(&ts(nap)));
            return a.load(Ordering::Acquire);
        };
        // Spin: a peer on another core answers within a few microseconds.
        // Past the first stretch, yield between short spins (the peer may
        // have moved to our core). When the peer last waited on the core we
        // are on, only yield: it has to run here to answer, and spinning
        // would only delay it, while sleeping at once would let every wake
        // pull the two of us onto this one core for good; staying runnable
        // lets the scheduler move one of us to an idle core.
        let cpu = cpu_tag();
        let word = flag.load(Ordering::Relaxed);
        if word >> 8 != cpu {
            let _ = flag.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| {
                Some((w & SLEEPERS) | (cpu << 8))
            });
        }
        let peer_cpu = self
            .flags
            .and_then(|(_, peer)| self.flag(peer))
            .map_or(0, |f| f.load(Ordering::Relaxed) >> 8);
        let (pure, between) = if cpu != 0 && peer_cpu == cpu {
            (Duration::ZERO, Duration::ZERO)
        } else {
            (PURE_SPIN, YIELD_SPIN)
        };
        let spin_end = start + self.spin.min(nap);
        let mut until = start + pure;
        loop {
            let now = self.spin_until(a, seen, gen, until.min(spin_end));
            if now != seen || self.local.load(Ordering::Acquire) != gen {
                return now;
            }
            let t = Instant::now();
            if t >= spin_end {
                break;
            }
            std::thread::yield_now();
            until = t + between;
        }
        let nap = nap.saturating_sub(start.elapsed());
        if nap.is_zero() {
            return seen;
        }
        // Saturating in the low byte (never carries into the cpu byte), so
        // that a word a peer cleared under us cannot wrap.
        let _ = flag.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| {
            Some(if w & SLEEPERS == SLEEPERS { w } else { w + 1 })
        });
        race_stretch();
        // The load after the announcement: see the module docs.
        let now = a.load(Ordering::SeqCst);
        if now == seen {
            let _ = futex::wait(a, futex::Flags::empty(), seen, Some(&ts(nap)));
        }
        let _ = flag.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| {
            Some(if w & SLEEPERS == 0 { w } else { w - 1 })
        });
        a.load(Ordering::Acquire)
    }

    /// Sleeps once: returns when the peer's counter differs from `seen`, when
    /// another thread calls [`Doorbell::wake_local`], or after
    /// `timeout.min(max_sleep)` (in poll mode: after a short spin). Returns
    /// the counter's value then. An event loop that also has local work calls
    /// this in a loop, reading `seen` *before* it looks for work, so that no
    /// ring is lost.
    pub fn wait_once(&self, seen: u32, timeout: Duration) -> u32 {
        let gen = self.local.load(Ordering::Acquire);
        let Ok(a) = self.region.atomic_u32(self.peer) else {
            std::thread::sleep(timeout.min(self.max_sleep));
            return seen;
        };
        let now = a.load(Ordering::Acquire);
        if now != seen {
            return now;
        }
        // The clock only once there is something to wait for.
        let start = Instant::now();
        let nap = timeout.min(self.max_sleep);
        if self.poll {
            let now = self.spin_until(a, seen, gen, start + nap.min(POLL_SLICE));
            if now == seen {
                std::thread::yield_now();
            }
            return a.load(Ordering::Acquire);
        }
        self.sleep(a, seen, gen, nap, start)
    }

    /// Wakes this side's own waiters (threads in [`Doorbell::wait_once`])
    /// without touching either counter: how a local thread hands work to an
    /// event loop that sleeps on the doorbell (also one still spinning
    /// before its sleep, if it shares this doorbell's clones).
    pub fn wake_local(&self) {
        self.local.fetch_add(1, Ordering::AcqRel);
        if let Ok(a) = self.region.atomic_u32(self.peer) {
            let _ = futex::wake(a, futex::Flags::empty(), i32::MAX as u32);
        }
    }

    /// Waits until the peer's counter differs from `seen` or `timeout`
    /// passes; returns the counter's value then (equal to `seen` on timeout).
    pub fn wait(&self, seen: u32, timeout: Duration) -> u32 {
        let deadline = Instant::now() + timeout;
        let Ok(a) = self.region.atomic_u32(self.peer) else {
            std::thread::sleep(timeout);
            return seen;
        };
        loop {
            // A local wake does not end this wait: only ones during this turn
            // cut its spin short.
            let gen = self.local.load(Ordering::Acquire);
            let now = a.load(Ordering::Acquire);
            if now != seen {
                return now;
            }
            let start = Instant::now();
            let left = deadline.saturating_duration_since(start);
            if left.is_zero() {
                return now;
            }
            if self.poll {
                let now = self.spin_until(a, seen, gen, start + left.min(POLL_SLICE));
                if now == seen && left > POLL_SLICE {
                    std::thread::yield_now();
                }
                continue;
            }
            self.sleep(a, seen, gen, left.min(self.max_sleep), start);
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

    /// Two adaptive doorbells over one region, the way the simulator lays
    /// them out (counters at 0 and 4, sleepers words at 8 and 10).
    fn adaptive_pair(r: &Region, spin: Duration, max_sleep: Duration) -> (Doorbell, Doorbell) {
        let a = Doorbell::new(r.clone(), 0, 4, false)
            .with_sleep_flags(8, 10)
            .with_spin(spin)
            .with_max_sleep(max_sleep);
        let b = Doorbell::new(r.clone(), 4, 0, false)
            .with_sleep_flags(10, 8)
            .with_spin(spin)
            .with_max_sleep(max_sleep);
        (a, b)
    }

    /// Ping-pong between two threads where every wait is bounded by
    /// `BOUND` and the only way to be woken inside it is the peer's ring:
    /// a single lost wake-up makes a wait end unchanged, and the test fail.
    fn stress(spin: Duration, rounds: u32) {
        const BOUND: Duration = Duration::from_secs(5);
        let r = Region::new_heap(64);
        // max_sleep = BOUND: no bounded-sleep rescue inside a wait.
        let (a, b) = adaptive_pair(&r, spin, BOUND);
        let t = std::thread::spawn(move || {
            let mut seen = 0;
            let mut x = 0x9e37_79b9u32;
            for i in 0..rounds {
                let now = b.wait(seen, BOUND);
                if now == seen {
                    return Err(format!("answerer: wake-up lost in round {i}"));
                }
                seen = now;
                // Ring at varying moments of the other side's wait.
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                for _ in 0..(x % 512) {
                    std::hint::spin_loop();
                }
                b.ring();
            }
            Ok(())
        });
        let mut seen = 0;
        for i in 0..rounds {
            a.ring();
            let now = a.wait(seen, BOUND);
            assert_ne!(now, seen, "pinger: wake-up lost in round {i}");
            seen = now;
        }
        t.join().unwrap().unwrap();
        // Nobody sleeps any more: both sleepers words are back to zero.
        assert_eq!(r.load_u16(8).unwrap() & SLEEPERS, 0);
        assert_eq!(r.load_u16(10).unwrap() & SLEEPERS, 0);
    }

    #[test]
    fn adaptive_doorbell_loses_no_wake_up_when_every_wait_sleeps() {
        // No spin: every wait that finds nothing announces itself and
        // sleeps, so the ring races the announcement every round.
        stress(Duration::ZERO, 20_000);
    }

    #[test]
    fn adaptive_doorbell_loses_no_wake_up_with_the_default_spin() {
        stress(DEFAULT_SPIN, 20_000);
    }

    #[test]
    fn a_sleeping_adaptive_waiter_is_visible_in_its_sleepers_word_and_is_woken() {
        let r = Region::new_heap(64);
        let (a, b) = adaptive_pair(&r, Duration::ZERO, Duration::from_secs(30));
        let t = std::thread::spawn(move || b.wait(0, Duration::from_secs(30)));
        let start = Instant::now();
        while r.load_u16(10).unwrap() & SLEEPERS == 0 {
            assert!(start.elapsed() < Duration::from_secs(30), "never slept");
            std::thread::yield_now();
        }
        assert_eq!(r.load_u16(8).unwrap(), 0, "the ringer never waited");
        a.ring();
        assert_eq!(t.join().unwrap(), 1);
        assert_eq!(r.load_u16(10).unwrap() & SLEEPERS, 0);
    }

    #[test]
    fn an_adaptive_waiter_notices_a_peer_that_only_increments() {
        // A NuttX peer: it never reads the sleepers words and never wakes.
        let r = Region::new_heap(64);
        let (_, b) = adaptive_pair(&r, DEFAULT_SPIN, Duration::from_millis(5));
        let r2 = r.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            r2.fetch_add_u32(0, 1).unwrap();
        });
        let v = b.wait(0, Duration::from_secs(30));
        t.join().unwrap();
        assert_eq!(v, 1);
    }

    #[test]
    fn a_local_wake_ends_an_adaptive_wait_once() {
        let r = Region::new_heap(64);
        let (_, b) = adaptive_pair(&r, DEFAULT_SPIN, Duration::from_secs(30));
        let waker = b.clone();
        let t = std::thread::spawn(move || b.wait_once(0, Duration::from_secs(30)));
        while !t.is_finished() {
            waker.wake_local();
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(t.join().unwrap(), 0, "nobody rang");
    }
}
