//! Sleeping without spinning: WFI until the EL1 physical timer fires.
//!
//! The firmware polls the master's doorbell counter every 100 µs. Spinning
//! in a delay loop for that keeps a host core busy in QEMU; a WFI lets QEMU
//! idle until the timer's interrupt is pending. Interrupts stay masked in
//! PSTATE (DAIF.I), so none is ever taken: a pending interrupt only ends the
//! WFI. For that the timer's PPI (INTID 30) is enabled in the GICv2
//! distributor and the CPU interface signals it.
//!
//! The GIC is used only if it identifies as GICv2 at QEMU `virt`'s address
//! (PIDR2.ArchRev = 2); otherwise (e.g. `-M virt,gic-version=3`) [`sleep_us`]
//! falls back to [`timer::delay_us`], so a WFI can never wait for an
//! interrupt that cannot come.

use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{AtomicBool, Ordering};

use super::{mmu, timer};

/// GICv2 distributor on QEMU `virt`.
const GICD: usize = 0x0800_0000;
/// GICv2 CPU interface on QEMU `virt`.
const GICC: usize = 0x0801_0000;
const GICD_CTLR: usize = 0x000;
const GICD_ISENABLER0: usize = 0x100;
const GICD_PIDR2: usize = 0xFE8;
const GICC_CTLR: usize = 0x000;
const GICC_PMR: usize = 0x004;
/// The non-secure EL1 physical timer's PPI.
const TIMER_INTID: u32 = 30;

static READY: AtomicBool = AtomicBool::new(false);

fn read(addr: usize) -> u32 {
    // SAFETY: only called with GIC register addresses that `init` mapped as
    // Device memory; 4-byte aligned reads of these registers have no side
    // effects.
    unsafe { read_volatile(addr as *const u32) }
}

fn write(addr: usize, v: u32) {
    // SAFETY: as in `read`; the writes only configure the GIC for this core.
    unsafe { write_volatile(addr as *mut u32, v) }
}

/// Maps and configures the GIC for timer wake-ups. Returns false (and
/// [`sleep_us`] then busy-waits) when the GIC is not the expected GICv2.
pub fn init() -> bool {
    if mmu::map_device(GICD, 0x1000).is_err() || mmu::map_device(GICC, 0x2000).is_err() {
        return false;
    }
    if (read(GICD + GICD_PIDR2) >> 4) & 0xf != 2 {
        return false;
    }
    write(GICD + GICD_ISENABLER0, 1 << TIMER_INTID);
    write(GICD + GICD_CTLR, 1);
    write(GICC + GICC_PMR, 0xf0);
    write(GICC + GICC_CTLR, 1);
    READY.store(true, Ordering::Release);
    true
}

fn set_timer(ticks: u64, enable: bool) {
    // SAFETY: writing the EL1 physical timer's compare value and control
    // (ENABLE, IMASK clear) only affects that timer's interrupt line.
    unsafe {
        core::arch::asm!(
            "msr cntp_tval_el0, {t}",
            "msr cntp_ctl_el0, {c}",
            "isb",
            t = in(reg) ticks,
            c = in(reg) u64::from(enable),
            options(nomem, nostack, preserves_flags)
        )
    };
}

fn timer_fired() -> bool {
    let ctl: u64;
    // SAFETY: reading CNTP_CTL_EL0 has no side effect.
    unsafe {
        core::arch::asm!("mrs {}, cntp_ctl_el0", out(reg) ctl, options(nomem, nostack, preserves_flags))
    };
    ctl & 0b100 != 0 // ISTATUS
}

/// Waits at least `us` microseconds, in WFI when the GIC is set up.
pub fn sleep_us(us: u64) {
    if !READY.load(Ordering::Acquire) {
        timer::delay_us(us);
        return;
    }
    let start = timer::now();
    let ticks = (u128::from(us) * u128::from(timer::frequency())).div_ceil(1_000_000);
    set_timer(u64::try_from(ticks).unwrap_or(u64::MAX).max(1), true);
    // Bounded by time: any other wake-up just loops; the timer's pending
    // interrupt ends the WFI once `us` passed.
    while !timer_fired() && timer::now().micros_since(start) < us {
        // SAFETY: WFI only suspends the core until an interrupt is pending.
        unsafe { core::arch::asm!("wfi", options(nomem, nostack, preserves_flags)) };
    }
    set_timer(0, false);
}
