//! PSCI calls through the hypervisor conduit (`hvc #0`), which is what QEMU
//! `virt` provides to a guest started at EL1.

/// PSCI 0.2 SYSTEM_OFF function id (SMC32 calling convention).
pub const SYSTEM_OFF: u32 = 0x8400_0008;

/// Powers the machine off; QEMU then exits with status 0.
///
/// Should the call return (no PSCI), the core sleeps forever instead; the
/// boot test's `timeout` catches that.
pub fn system_off() -> ! {
    // SAFETY: SYSTEM_OFF does not return on success; on failure it returns
    // an error code in x0 and clobbers at most x0-x3 (SMCCC), all declared.
    unsafe {
        core::arch::asm!(
            "hvc #0",
            inout("x0") u64::from(SYSTEM_OFF) => _,
            out("x1") _, out("x2") _, out("x3") _,
            options(nomem, nostack)
        );
    }
    loop {
        // SAFETY: `wfi` only waits for an interrupt (masked: it may never come).
        unsafe { core::arch::asm!("wfi", options(nomem, nostack, preserves_flags)) };
    }
}
