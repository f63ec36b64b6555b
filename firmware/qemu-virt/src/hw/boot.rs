//! The entry point: from QEMU's jump to `_start` (EL1, MMU off, caches off,
//! interrupts masked) to the Rust `main`.
//!
//! The assembly does only what must happen before any compiled Rust runs:
//! 1. park every core but the primary (MPIDR_EL1 affinity 0.0.0.0);
//! 2. mask interrupts and enable FP/SIMD (CPACR_EL1.FPEN = 0b11, then ISB):
//!    the compiler uses NEON registers freely (memcpy, formatting), and with
//!    FPEN clear the first such instruction traps;
//! 3. set SP to the top of the main stack (which sits above an unmapped guard
//!    page once the MMU is on);
//! 4. zero `.bss` (QEMU's ELF loader only loads `PT_LOAD` file contents);
//! 5. install the exception vector table (VBAR_EL1);
//! 6. call [`rust_start`], which never returns.
//!
//! `.data` needs no copy: QEMU loads the ELF at its link address.

use core::arch::global_asm;

// SAFETY: this is the reset entry point; it runs before any Rust code, uses
// only the registers and linker symbols named here, writes only the `.bss`
// range the linker script delimits (8-byte aligned at both ends) and never
// returns to a caller.
global_asm!(
    r#"
    .section .text.boot, "ax"
    .global _start
    .type _start, %function
_start:
    // Park secondary cores: keep only Aff3..Aff0 == 0.
    mrs     x19, mpidr_el1
    mov     x20, #0xffffff
    movk    x20, #0xff, lsl #32
    and     x19, x19, x20
    cbnz    x19, 9f

    // No interrupts, ever (the firmware polls).
    msr     daifset, #0xf

    // FP/SIMD on before any compiled code: CPACR_EL1.FPEN = 0b11.
    mov     x0, #(3 << 20)
    msr     cpacr_el1, x0
    isb

    // Main stack.
    adrp    x0, __stack_top
    add     x0, x0, :lo12:__stack_top
    mov     sp, x0

    // Zero .bss (8-byte aligned bounds, see link.x).
    adrp    x0, __bss_start
    add     x0, x0, :lo12:__bss_start
    adrp    x1, __bss_end
    add     x1, x1, :lo12:__bss_end
1:  cmp     x0, x1
    b.hs    2f
    str     xzr, [x0], #8
    b       1b
2:
    // Exception vectors.
    adrp    x0, __vectors
    add     x0, x0, :lo12:__vectors
    msr     vbar_el1, x0
    isb

    bl      rust_start

    // Secondary cores (and the primary, should rust_start ever return).
9:  wfe
    b       9b
    .size _start, . - _start
"#
);

/// The first Rust code: console, checks, MMU, logger, heap, then `main`.
#[no_mangle]
extern "C" fn rust_start() -> ! {
    super::uart::init();
    let el = super::current_el();
    if el != 1 {
        crate::println!(
            "[proxy] FATAL: started at EL{el}, expected EL1; boot QEMU without \
             virtualization=on/secure=on so that -kernel starts at EL1"
        );
        super::psci::system_off();
    }
    if let Err(e) = super::mmu::init() {
        crate::println!("[proxy] FATAL: MMU set-up failed: {e}");
        super::psci::system_off();
    }
    crate::console::init_logger();
    super::heap::init();
    crate::main()
}
