//! The ARM generic timer: a monotonic counter (CNTPCT_EL0) ticking at
//! CNTFRQ_EL0 Hz, for timestamps and busy-wait delays.

/// A point in time, in counter ticks since reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Instant(u64);

/// The counter frequency in Hz (QEMU `virt` reports it in CNTFRQ_EL0).
pub fn frequency() -> u64 {
    let f: u64;
    // SAFETY: reading CNTFRQ_EL0 has no side effect.
    unsafe {
        core::arch::asm!("mrs {}, cntfrq_el0", out(reg) f, options(nomem, nostack, preserves_flags))
    };
    // A zero frequency would divide by zero below; no real system has it.
    f.max(1)
}

fn ticks() -> u64 {
    let t: u64;
    // SAFETY: reading CNTPCT_EL0 has no side effect; the ISB keeps the read
    // from being hoisted above earlier instructions.
    unsafe {
        core::arch::asm!("isb", "mrs {}, cntpct_el0", out(reg) t, options(nomem, nostack, preserves_flags))
    };
    t
}

/// The current time.
pub fn now() -> Instant {
    Instant(ticks())
}

impl Instant {
    /// Microseconds from `earlier` to `self` (0 if `earlier` is later).
    pub fn micros_since(self, earlier: Instant) -> u64 {
        let dt = self.0.saturating_sub(earlier.0);
        (u128::from(dt) * 1_000_000 / u128::from(frequency())) as u64
    }

    /// Microseconds since reset.
    pub fn as_micros(self) -> u64 {
        self.micros_since(Instant(0))
    }
}

/// Busy-waits for at least `us` microseconds.
pub fn delay_us(us: u64) {
    let start = ticks();
    let wait = (u128::from(us) * u128::from(frequency())).div_ceil(1_000_000);
    let wait = u64::try_from(wait).unwrap_or(u64::MAX);
    while ticks().wrapping_sub(start) < wait {
        core::hint::spin_loop();
    }
}
