//! Everything that touches the hardware of QEMU's `virt` machine directly.
//!
//! This is the only module of the firmware allowed `unsafe` (each block says
//! why it is sound in a `// SAFETY:` comment); the rest of the firmware, and
//! the rptun core it links, stay safe code on top of these functions.
//!
//! - [`boot`]: the entry point (`_start`) in assembly and the hand-over to
//!   Rust;
//! - [`exceptions`]: the exception vector table, the fatal-exception report
//!   and the panic handler;
//! - [`mmu`]: the identity-mapped translation tables and memory attributes;
//! - [`uart`]: the PL011 console;
//! - [`pci`]: ECAM enumeration and BAR placement, ivshmem discovery;
//! - [`timer`]: the ARM generic timer;
//! - [`psci`]: power off;
//! - [`heap`]: the global allocator over a static arena;
//! - [`idle`]: sleeping in WFI until the generic timer fires (GICv2);
//! - [`sync`]: a spin lock for state shared through `Sync` statics or `Arc`s.
#![allow(unsafe_code)]

pub mod boot;
pub mod exceptions;
pub mod heap;
pub mod idle;
pub mod mmu;
pub mod pci;
pub mod psci;
pub mod sync;
pub mod timer;
pub mod uart;

use core::ptr::NonNull;

use rptun::shm::Region;

/// Wraps shared memory that [`mmu::map_shared`] has mapped into a
/// [`Region`], the only way the rest of the firmware touches it.
pub fn shared_region(bar: &mmu::SharedMapping) -> Region {
    let ptr = NonNull::new(bar.addr() as *mut u8).expect("a mapped BAR is never at address 0");
    // SAFETY: a `SharedMapping` can only be made by `mmu::map_shared`, which mapped
    // `addr..addr+size` read-write as Normal memory (identity mapping) and
    // never unmaps it, so the range is valid for the rest of the program.
    // Nothing in this program forms references into it: all access goes
    // through regions (the constructor contract of `Region`).
    unsafe { Region::from_raw_parts(ptr, bar.size()) }
}

/// Reads the current exception level (1 for this firmware).
pub fn current_el() -> u64 {
    let el: u64;
    // SAFETY: reading CurrentEL has no side effect.
    unsafe {
        core::arch::asm!("mrs {}, CurrentEL", out(reg) el, options(nomem, nostack, preserves_flags))
    };
    (el >> 2) & 3
}
