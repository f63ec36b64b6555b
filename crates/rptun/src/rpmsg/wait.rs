//! Time and waiting, supplied by the caller.
//!
//! The core has no clock and no threads. Anything that may block (a send
//! waiting for a TX buffer, a ping waiting for its echo) takes a [`Wait`]:
//! a firmware main loop implements it by servicing interrupts or polling its
//! other links, a host implements it with a condition variable or a futex on
//! the doorbell, a test implements it with a virtual clock ([`TickWait`]).
#![forbid(unsafe_code)]

/// A monotonic clock.
pub trait Clock {
    /// Nanoseconds since an arbitrary fixed origin; never decreases.
    fn now_ns(&mut self) -> u64;
}

/// A way to block until something may have changed.
pub trait Wait: Clock {
    /// Blocks until a doorbell may have rung or `deadline_ns` (on
    /// [`Clock::now_ns`]'s scale) has passed, whichever comes first.
    ///
    /// Returning early is allowed (callers re-check their condition and the
    /// clock), so a busy loop that returns at once is a valid, if wasteful,
    /// implementation. It must not call back into the link that is waiting.
    fn wait_until(&mut self, deadline_ns: u64);
}

/// A virtual clock that advances by a fixed tick on every wait and runs a
/// closure each time: the "firmware main loop" of unit tests.
///
/// The closure is where a single-threaded test polls the peer:
///
/// ```
/// # use rptun::rpmsg::wait::{Clock, TickWait, Wait};
/// let mut polls = 0;
/// let mut w = TickWait::new(1_000_000, || polls += 1);
/// w.wait_until(5_000_000);
/// assert_eq!(w.now_ns(), 1_000_000);
/// assert_eq!(polls, 1);
/// ```
pub struct TickWait<F: FnMut()> {
    now: u64,
    tick: u64,
    on_wait: F,
}

impl<F: FnMut()> TickWait<F> {
    /// A virtual clock starting at 0 that advances `tick_ns` per wait and
    /// runs `on_wait` before returning from each wait.
    pub fn new(tick_ns: u64, on_wait: F) -> TickWait<F> {
        TickWait {
            now: 0,
            tick: tick_ns.max(1),
            on_wait,
        }
    }

    /// Advances the virtual clock without waiting.
    pub fn advance(&mut self, ns: u64) {
        self.now = self.now.saturating_add(ns);
    }
}

impl<F: FnMut()> Clock for TickWait<F> {
    fn now_ns(&mut self) -> u64 {
        self.now
    }
}

impl<F: FnMut()> Wait for TickWait<F> {
    fn wait_until(&mut self, deadline_ns: u64) {
        (self.on_wait)();
        let next = self.now.saturating_add(self.tick);
        self.now = next.min(deadline_ns.max(self.now));
    }
}

/// Converts a timeout into a deadline on `clock`, saturating.
pub fn deadline(clock: &mut dyn Clock, timeout: core::time::Duration) -> u64 {
    let ns = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
    clock.now_ns().saturating_add(ns)
}
