//! The exception vector table and the fatal paths (exceptions and panics).
//!
//! The firmware takes no interrupts, so every exception is a bug: each of the
//! 16 vectors switches to a dedicated exception stack (so a stack overflow,
//! which faults on the main stack's guard page, can still be reported), reads
//! ESR/ELR/FAR/SPSR and calls [`fatal_exception`], which prints them on the
//! UART and powers the machine off. A fault inside the report itself powers
//! off at once.

use core::arch::global_asm;
use core::fmt::Write;
use core::sync::atomic::{AtomicBool, Ordering};

use super::{mmu, psci, uart};

// SAFETY: the vector table only loads system registers and the address of the
// exception stack, then calls `fatal_exception`, which never returns; it never
// returns to the interrupted code, so clobbering x0-x4, x9 and SP is fine.
global_asm!(
    r#"
    .section .text.vectors, "ax"
    .balign 2048
    .global __vectors
__vectors:
    .irp kind, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
    .balign 128
    mov     x0, #\kind
    b       __exc_common
    .endr

__exc_common:
    adrp    x9, __exc_stack_top
    add     x9, x9, :lo12:__exc_stack_top
    mov     sp, x9
    mrs     x1, esr_el1
    mrs     x2, elr_el1
    mrs     x3, far_el1
    mrs     x4, spsr_el1
    bl      fatal_exception
1:  wfe
    b       1b
"#
);

/// Set once a fatal report has started: a second fault powers off silently.
static DYING: AtomicBool = AtomicBool::new(false);

/// Marks the start of a fatal report; powers off at once if one was already
/// running (a fault while reporting a fault). Plain load/store only: this may
/// run before the MMU is on, where exclusives are not guaranteed.
fn enter_fatal() {
    if DYING.load(Ordering::Relaxed) {
        psci::system_off();
    }
    DYING.store(true, Ordering::Relaxed);
}

const KINDS: [&str; 4] = ["synchronous", "IRQ", "FIQ", "SError"];
const ORIGINS: [&str; 4] = [
    "current EL with SP0",
    "current EL with SPx",
    "lower EL (AArch64)",
    "lower EL (AArch32)",
];

fn exception_class_name(ec: u64) -> &'static str {
    match ec {
        0x00 => "unknown reason (undefined instruction?)",
        0x01 => "trapped WFI/WFE",
        0x07 => "FP/SIMD access trapped (CPACR_EL1.FPEN)",
        0x0e => "illegal execution state",
        0x15 => "SVC",
        0x16 => "HVC",
        0x17 => "SMC",
        0x18 => "trapped MSR/MRS/system instruction",
        0x20 => "instruction abort from a lower EL",
        0x21 => "instruction abort",
        0x22 => "PC alignment fault",
        0x24 => "data abort from a lower EL",
        0x25 => "data abort",
        0x26 => "SP alignment fault",
        0x2c => "floating-point exception",
        0x2f => "SError",
        0x30 | 0x31 => "breakpoint",
        0x32 | 0x33 => "software step",
        0x34 | 0x35 => "watchpoint",
        0x3c => "BRK instruction",
        _ => "other",
    }
}

fn fault_status_name(fsc: u64) -> &'static str {
    match fsc {
        0x00..=0x03 => "address size fault",
        0x04..=0x07 => "translation fault (address not mapped)",
        0x08..=0x0b => "access flag fault",
        0x0c..=0x0f => "permission fault",
        0x10 => "synchronous external abort (nothing decodes this address)",
        0x21 => "alignment fault",
        0x30 => "TLB conflict",
        _ => "other fault",
    }
}

/// Called by the vector table; prints the exception and powers off.
#[no_mangle]
extern "C" fn fatal_exception(vector: u64, esr: u64, elr: u64, far: u64, spsr: u64) -> ! {
    enter_fatal();
    let mut out = uart::Console;
    let kind = KINDS[(vector & 3) as usize];
    let origin = ORIGINS[((vector >> 2) & 3) as usize];
    let ec = (esr >> 26) & 0x3f;
    let _ = writeln!(
        out,
        "[proxy] FATAL: {kind} exception from {origin}: EC={ec:#04x} ({}) \
         ESR={esr:#010x} ELR={elr:#018x} FAR={far:#018x} SPSR={spsr:#x}",
        exception_class_name(ec)
    );
    if matches!(ec, 0x20 | 0x21 | 0x24 | 0x25) {
        let fsc = esr & 0x3f;
        let write = ec >= 0x24 && esr & (1 << 6) != 0;
        let _ = writeln!(
            out,
            "[proxy] FATAL: {} on {} of {far:#x}{}",
            fault_status_name(fsc),
            if ec <= 0x21 {
                "instruction fetch"
            } else if write {
                "write"
            } else {
                "read"
            },
            mmu::guard_page_note(far as usize)
        );
    }
    psci::system_off()
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    enter_fatal();
    let _ = writeln!(uart::Console, "[proxy] PANIC: {info}");
    psci::system_off()
}

/// Reads an address that is deliberately left unmapped (the GIC distributor)
/// to check the fatal-exception path end to end (feature `fault-selftest`).
#[cfg(feature = "fault-selftest")]
pub fn selftest_fault() -> ! {
    const UNMAPPED: usize = 0x0800_0000;
    // SAFETY: the read faults (translation fault, the page is not mapped) and
    // the exception handler powers off; nothing is read or written.
    unsafe { core::ptr::read_volatile(UNMAPPED as *const u32) };
    unreachable!("a read of unmapped {UNMAPPED:#x} did not fault")
}
