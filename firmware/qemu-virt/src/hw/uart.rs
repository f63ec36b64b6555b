//! PL011 UART at 0x0900_0000 (QEMU `virt`), polled, transmit only.

use core::fmt;
use core::ptr::{read_volatile, write_volatile};

/// Physical (and, identity-mapped, virtual) base of the PL011.
pub const BASE: usize = 0x0900_0000;
/// Size of the register window (one 4 KiB page).
pub const SIZE: usize = 0x1000;

const DR: usize = 0x00;
const FR: usize = 0x18;
const IBRD: usize = 0x24;
const FBRD: usize = 0x28;
const LCR_H: usize = 0x2c;
const CR: usize = 0x30;
const IMSC: usize = 0x38;
const ICR: usize = 0x44;

const FR_BUSY: u32 = 1 << 3;
const FR_TXFF: u32 = 1 << 5;
const LCR_H_FEN: u32 = 1 << 4;
const LCR_H_WLEN8: u32 = 0b11 << 5;
const CR_UARTEN: u32 = 1 << 0;
const CR_TXE: u32 = 1 << 8;
const CR_RXE: u32 = 1 << 9;

/// Polls of a full FIFO before a character is dropped: a wedged UART must
/// not hang the firmware.
const MAX_SPINS: u32 = 1_000_000;

fn read(reg: usize) -> u32 {
    // SAFETY: `BASE + reg` is a 4-byte aligned PL011 register, identity
    // mapped as Device memory (or accessed with the MMU off, which is Device
    // too); a read has no side effect on the registers used here.
    unsafe { read_volatile((BASE + reg) as *const u32) }
}

fn write(reg: usize, v: u32) {
    // SAFETY: as in `read`; writing these registers only affects the UART.
    unsafe { write_volatile((BASE + reg) as *mut u32, v) }
}

/// Programs the UART for 115200 8N1 with FIFOs (QEMU ignores the baud rate;
/// the divisors assume the 24 MHz UART clock of the `virt` device tree) and
/// masks its interrupts.
pub fn init() {
    write(CR, 0);
    let mut spins = 0;
    while read(FR) & FR_BUSY != 0 && spins < MAX_SPINS {
        spins += 1;
        core::hint::spin_loop();
    }
    write(LCR_H, 0); // flushes the transmit FIFO
    write(IBRD, 13); // 24e6 / (16 * 115200) = 13.02
    write(FBRD, 1); // round(0.02 * 64)
    write(LCR_H, LCR_H_WLEN8 | LCR_H_FEN);
    write(IMSC, 0);
    write(ICR, 0x7ff);
    write(CR, CR_UARTEN | CR_TXE | CR_RXE);
}

/// Sends one byte, waiting (bounded) for room in the transmit FIFO.
pub fn putc(b: u8) {
    let mut spins = 0;
    while read(FR) & FR_TXFF != 0 {
        spins += 1;
        if spins >= MAX_SPINS {
            return;
        }
        core::hint::spin_loop();
    }
    write(DR, u32::from(b));
}

/// The console: a [`fmt::Write`] over the UART that turns `\n` into `\r\n`.
///
/// It holds no state, so the panic and exception paths can make their own.
pub struct Console;

impl fmt::Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                putc(b'\r');
            }
            putc(b);
        }
        Ok(())
    }
}
