//! PCI on QEMU `virt` (`-M virt,highmem=off`): ECAM configuration access,
//! bus-0 enumeration, BAR sizing and placement, and the ivshmem device.
//!
//! Facts (QEMU `hw/arm/virt.c`, checked with `info mtree` on QEMU 10.0):
//! ECAM at 0x3f00_0000 (16 MiB: buses 0..15), 32-bit MMIO window
//! 0x1000_0000..0x3eff_0000 with PCI address == CPU address. No firmware runs
//! before us, so nothing assigns BARs: we do. Only bus 0 is scanned (the
//! default `virt` machine has no bridges).

use core::fmt;
use core::ptr::{read_volatile, write_volatile};

/// Base of the ECAM window with `highmem=off`.
pub const ECAM_BASE: usize = 0x3f00_0000;
/// Size of the ECAM window with `highmem=off` (16 buses).
pub const ECAM_SIZE: usize = 0x0100_0000;
/// First address of the 32-bit PCI MMIO window.
pub const MMIO_BASE: usize = 0x1000_0000;
/// End (exclusive) of the 32-bit PCI MMIO window.
pub const MMIO_END: usize = 0x3eff_0000;

/// ivshmem's vendor id (Red Hat / virtio).
pub const IVSHMEM_VENDOR: u16 = 0x1af4;
/// ivshmem's device id (both ivshmem-plain and ivshmem-doorbell).
pub const IVSHMEM_DEVICE: u16 = 0x1110;
/// The ivshmem BAR holding the shared memory.
pub const IVSHMEM_SHM_BAR: u8 = 2;

const REG_ID: usize = 0x00;
const REG_COMMAND: usize = 0x04;
const REG_CLASS: usize = 0x08;
const REG_HEADER: usize = 0x0c;
const REG_BAR0: usize = 0x10;

const CMD_IO: u16 = 1 << 0;
const CMD_MEMORY: u16 = 1 << 1;

/// Errors of PCI set-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PciError {
    /// No function with this vendor and device id on bus 0.
    NotFound {
        /// Vendor id looked for.
        vendor: u16,
        /// Device id looked for.
        device: u16,
    },
    /// The BAR is not implemented, or is an I/O BAR.
    NoMemoryBar {
        /// BAR index.
        index: u8,
    },
    /// The BARs do not fit in the 32-bit MMIO window.
    WindowFull {
        /// Size of the BAR that did not fit.
        size: u64,
    },
}

impl fmt::Display for PciError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            PciError::NotFound { vendor, device } => write!(
                f,
                "no PCI device {vendor:04x}:{device:04x} on bus 0; for ivshmem start QEMU with \
                 -object memory-backend-file,id=shm,share=on,mem-path=/dev/shm/NAME,size=4M \
                 -device ivshmem-plain,memdev=shm (and -M virt,highmem=off)"
            ),
            PciError::NoMemoryBar { index } => write!(
                f,
                "BAR{index} is not a memory BAR; is this the right device?"
            ),
            PciError::WindowFull { size } => write!(
                f,
                "a {size:#x}-byte BAR does not fit in the PCI MMIO window \
                 {MMIO_BASE:#x}..{MMIO_END:#x}; use a smaller shared-memory size"
            ),
        }
    }
}

/// One PCI function, addressed through ECAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Function {
    /// Bus number.
    pub bus: u8,
    /// Device number (0..32).
    pub dev: u8,
    /// Function number (0..8).
    pub func: u8,
}

impl fmt::Display for Function {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus, self.dev, self.func)
    }
}

impl Function {
    fn cfg_addr(&self, reg: usize) -> usize {
        ECAM_BASE
            + (usize::from(self.bus) << 20)
            + (usize::from(self.dev & 31) << 15)
            + (usize::from(self.func & 7) << 12)
            + (reg & 0xffc)
    }

    /// Reads the 32-bit configuration register at `reg` (4-byte aligned).
    pub fn read32(&self, reg: usize) -> u32 {
        // SAFETY: `cfg_addr` stays inside the ECAM window (bus < 16 is checked
        // by the callers, the rest is masked), which is mapped as Device
        // memory; the access is 4-byte aligned. Config reads of the
        // registers used here have no side effects.
        unsafe { read_volatile(self.cfg_addr(reg) as *const u32) }
    }

    /// Writes the 32-bit configuration register at `reg` (4-byte aligned).
    pub fn write32(&self, reg: usize, v: u32) {
        // SAFETY: as in `read32`; writes only affect this PCI function.
        unsafe { write_volatile(self.cfg_addr(reg) as *mut u32, v) }
    }

    /// Reads the 16-bit command register.
    pub fn command(&self) -> u16 {
        self.read32(REG_COMMAND) as u16
    }

    /// Writes the 16-bit command register with a 16-bit access, so that the
    /// status register next to it (write-1-to-clear bits) is left alone.
    pub fn set_command(&self, v: u16) {
        // SAFETY: as in `write32`, with a 2-byte aligned 16-bit access,
        // which ECAM supports.
        unsafe { write_volatile(self.cfg_addr(REG_COMMAND) as *mut u16, v) }
    }

    /// Vendor id (0xffff when nothing answers).
    pub fn vendor(&self) -> u16 {
        self.read32(REG_ID) as u16
    }

    /// Device id.
    pub fn device(&self) -> u16 {
        (self.read32(REG_ID) >> 16) as u16
    }

    /// Class code, subclass and programming interface (24 bits).
    pub fn class(&self) -> u32 {
        self.read32(REG_CLASS) >> 8
    }

    fn header_type(&self) -> u8 {
        (self.read32(REG_HEADER) >> 16) as u8
    }
}

/// Calls `f` for every function present on bus 0.
pub fn for_each_function(mut f: impl FnMut(Function)) {
    for dev in 0..32 {
        let f0 = Function {
            bus: 0,
            dev,
            func: 0,
        };
        if f0.vendor() == 0xffff {
            continue;
        }
        let funcs = if f0.header_type() & 0x80 != 0 { 8 } else { 1 };
        for func in 0..funcs {
            let fun = Function { bus: 0, dev, func };
            if fun.vendor() != 0xffff {
                f(fun);
            }
        }
    }
}

/// The first function on bus 0 with this vendor and device id.
pub fn find(vendor: u16, device: u16) -> Option<Function> {
    let mut found = None;
    for_each_function(|f| {
        if found.is_none() && f.vendor() == vendor && f.device() == device {
            found = Some(f);
        }
    });
    found
}

/// A sized memory BAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bar {
    /// BAR index (0..6).
    pub index: u8,
    /// Size in bytes (a power of two).
    pub size: u64,
    /// A 64-bit BAR (it also uses the next BAR register).
    pub is_64: bool,
    /// A prefetchable BAR.
    pub prefetchable: bool,
}

/// Sizes memory BAR `index` of `f` (write all-ones, read back, restore).
/// `None` for an unimplemented or I/O BAR. Memory decoding must be off.
pub fn size_bar(f: Function, index: u8) -> Option<Bar> {
    if index > 5 {
        return None;
    }
    let reg = REG_BAR0 + 4 * usize::from(index);
    let orig_lo = f.read32(reg);
    if orig_lo & 1 != 0 {
        return None; // I/O BAR
    }
    let is_64 = (orig_lo >> 1) & 3 == 0b10;
    if is_64 && index == 5 {
        return None;
    }
    f.write32(reg, u32::MAX);
    let lo = f.read32(reg);
    f.write32(reg, orig_lo);
    let mut mask = u64::from(lo & !0xf);
    if is_64 {
        let orig_hi = f.read32(reg + 4);
        f.write32(reg + 4, u32::MAX);
        let hi = f.read32(reg + 4);
        f.write32(reg + 4, orig_hi);
        mask |= u64::from(hi) << 32;
    } else {
        mask |= 0xffff_ffff_0000_0000;
    }
    if mask == 0 || mask == 0xffff_ffff_0000_0000 {
        return None; // not implemented
    }
    Some(Bar {
        index,
        size: (!mask).wrapping_add(1),
        is_64,
        prefetchable: orig_lo & (1 << 3) != 0,
    })
}

/// Hands out addresses in the MMIO window, each aligned to its size (and to
/// at least 4 KiB, so that every page belongs to one BAR and can be mapped
/// with its own attributes).
#[derive(Debug)]
pub struct MmioAllocator {
    next: usize,
}

impl Default for MmioAllocator {
    fn default() -> Self {
        MmioAllocator { next: MMIO_BASE }
    }
}

impl MmioAllocator {
    /// A fresh allocator over the whole window.
    pub fn new() -> Self {
        Self::default()
    }

    /// Places `bar` and writes its address into `f`'s BAR register(s).
    /// Returns the address.
    pub fn assign(&mut self, f: Function, bar: &Bar) -> Result<usize, PciError> {
        let full = PciError::WindowFull { size: bar.size };
        let size = usize::try_from(bar.size).map_err(|_| full)?.max(4096);
        let addr = self.next.checked_next_multiple_of(size).ok_or(full)?;
        let end = addr.checked_add(size).ok_or(full)?;
        if end > MMIO_END {
            return Err(full);
        }
        self.next = end;
        let reg = REG_BAR0 + 4 * usize::from(bar.index);
        let keep = f.read32(reg) & 0xf;
        f.write32(reg, addr as u32 | keep);
        if bar.is_64 {
            f.write32(reg + 4, (addr as u64 >> 32) as u32);
        }
        Ok(addr)
    }
}

/// Where the ivshmem shared memory (BAR2) was placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ivshmem {
    /// The PCI function (00:01.0 with `-nic none`).
    pub function: Function,
    /// Physical (== virtual) address of BAR2.
    pub addr: usize,
    /// Size of BAR2: the size of the memory backend.
    pub size: usize,
    /// BAR2 is 64-bit.
    pub is_64: bool,
    /// BAR2 is prefetchable.
    pub prefetchable: bool,
}

/// Finds the ivshmem device (1af4:1110), places its memory BARs in the MMIO
/// window (BAR2, the shared memory, first: it is the largest) and enables
/// memory decoding. BAR0 (registers: interrupt mask/status, IVPosition,
/// doorbell) gets an address too, so that no decoding BAR is left at 0, but
/// ivshmem-plain does not need it and it is not mapped.
pub fn setup_ivshmem(alloc: &mut MmioAllocator) -> Result<Ivshmem, PciError> {
    let function = find(IVSHMEM_VENDOR, IVSHMEM_DEVICE).ok_or(PciError::NotFound {
        vendor: IVSHMEM_VENDOR,
        device: IVSHMEM_DEVICE,
    })?;
    let cmd = function.command();
    function.set_command(cmd & !(CMD_MEMORY | CMD_IO));
    let shm = size_bar(function, IVSHMEM_SHM_BAR).ok_or(PciError::NoMemoryBar {
        index: IVSHMEM_SHM_BAR,
    })?;
    let addr = alloc.assign(function, &shm)?;
    if let Some(regs) = size_bar(function, 0) {
        alloc.assign(function, &regs)?;
    }
    function.set_command((cmd & !CMD_IO) | CMD_MEMORY);
    Ok(Ivshmem {
        function,
        addr,
        // `assign` proved the size fits in usize.
        size: shm.size as usize,
        is_64: shm.is_64,
        prefetchable: shm.prefetchable,
    })
}
