//! The virtio-mmio transport, both sides (virtio 1.x §4.2, register layout
//! Version 2).
//!
//! A virtio-mmio device is a window of 32-bit registers (see [`regs`]) plus a
//! device-specific config space at offset 0x100. The driver finds the device
//! by its `MagicValue`, negotiates 64 bits of features through the
//! `*FeaturesSel` registers, and for every queue writes its size and the
//! physical addresses of its three parts (`QueueDesc`, `QueueDriver` = avail
//! ring, `QueueDevice` = used ring) before setting `QueueReady`. Rings are
//! allocated by the driver in the legacy split layout (descriptor table,
//! avail ring, padding to the ring alignment, used ring) placed contiguously,
//! which the three addresses describe exactly; the device accepts any
//! placement the addresses describe, as long as every part lies inside the
//! shared window.
//!
//! # Pieces
//!
//! - [`MmioBus`]: the narrow register-access seam. Real hardware (a guest in
//!   a VM, firmware on a board) implements it with volatile 32-bit accesses
//!   to the device window; [`RegionBus`] implements it over a [`Region`]
//!   (atomic accesses to a mapped register window); [`MmioDevice`]
//!   implements it as a hypervisor's trap handler does.
//! - [`MmioTransport`]: the driver side, a [`Transport`](super::Transport)
//!   over any [`MmioBus`]. It allocates rings and buffers from a small private pool
//!   over the shared window it is given ([`SharedMemory`]).
//! - [`MmioDevice`]: the device side, an emulated register file. It is what a
//!   hypervisor provides: every driver access "traps" into
//!   [`MmioBus::read32`]/[`MmioBus::write32`], which run the register
//!   semantics (a write to `QueueSel` changes what `QueueNumMax` reads back, a
//!   write to `QueueNotify` records a kick, writing 0 to `Status` resets the
//!   device, ...). The device implementation sees the same state through
//!   [`DeviceTransport`](super::DeviceTransport).
//!
//! # Sharing the emulated device
//!
//! The driver transport owns a `B: MmioBus`, the device implementation owns a
//! `D: DeviceTransport`, and both must reach the same register state, from
//! one thread or two. [`MmioDevice`] therefore keeps every register in its
//! own atomic and does all its work through `&self`: one access to one
//! register is atomic, exactly as with a real device, and multi-register
//! sequences (select a queue, then program it) are the driver's protocol,
//! as on hardware. There is no lock and no `unsafe`, it works without
//! `alloc`, and it is `Sync`. Share it as `&MmioDevice` (no heap: both sides
//! borrow one device, e.g. from scoped threads or after leaking it to
//! `'static`) or as `Arc<MmioDevice>` (feature `alloc`): [`MmioBus`] and
//! [`DeviceTransport`](super::DeviceTransport) are implemented for the
//! device itself, for references to it and for `Arc`s of it. The device's
//! own methods take `&self`; on an `Arc<MmioDevice>` with `DeviceTransport`
//! in scope, method syntax finds the trait's `&mut self` methods first, so
//! call `MmioDevice::notify(&dev, q)` (or `(*dev).notify(q)`) on a shared one.
//!
//! A hypervisor trap handler would call [`MmioBus::read32`] and friends on
//! the device with the offset of the faulting access; [`MmioHooks`] lets it
//! (or a test) hear about kicks, status changes and interrupts.
//!
//! # Trust
//!
//! Each side distrusts the other: the driver checks `MagicValue`, `Version`,
//! `DeviceID` and bounds `QueueNumMax` and the number of queues; the device
//! validates every queue address the driver wrote against the shared window
//! before handing out a [`QueueMem`](super::QueueMem), and ignores register writes that would
//! change a queue in use or features after `FEATURES_OK`.
//!
//! Note for interop: Linux's virtio-mmio driver requires `VIRTIO_F_VERSION_1`
//! from a Version 2 device. The devices here are legacy virtio (no
//! `VERSION_1`, DESIGN.md §4); offer [`crate::virtio::feature::VERSION_1`]
//! in [`MmioDeviceInfo::features`] when a Linux guest is the driver.
#![forbid(unsafe_code)]

mod device;
mod driver;
mod pool;
pub mod regs;
#[cfg(all(test, feature = "alloc"))]
mod tests;

pub use device::{MmioDevice, MmioDeviceInfo, MmioHooks, NoHooks};
pub use driver::{MmioTransport, SharedMemory};

use super::queue::{QueueLayout, Window};
use crate::shm::Region;

/// Largest number of queues either side handles. Queues are probed (driver)
/// and declared (device) up to this count.
pub const MAX_QUEUES: usize = 16;

/// Largest device-specific config space, in bytes: the usual 0x200-byte
/// virtio-mmio window (QEMU's) leaves 0x100 bytes after the registers.
pub const MAX_CONFIG_LEN: usize = 0x100;

/// Largest split-virtqueue size (virtio 1.x §2.7: 32768 entries).
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// Errors found while attaching to a virtio-mmio device or building one.
///
/// Everything after construction reports [`super::VirtioError`]s, as the
/// [`Transport`](super::Transport) and
/// [`DeviceTransport`](super::DeviceTransport) traits require.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MmioError {
    /// `MagicValue` is not "virt".
    #[error(
        "no virtio-mmio device at this address: MagicValue reads {0:#010x}, expected \
         0x74726976 (\"virt\"); check the window's base address"
    )]
    BadMagic(u32),
    /// The device uses the legacy (Version 1) register layout.
    #[error(
        "the virtio-mmio device uses the legacy register layout (Version 1), which this \
         transport does not drive; configure the device as modern (QEMU: \
         -global virtio-mmio.force-legacy=false)"
    )]
    LegacyVersion,
    /// `Version` is neither 1 nor 2.
    #[error("the virtio-mmio device reports unknown Version {0}; only Version 2 is supported")]
    BadVersion(u32),
    /// `DeviceID` is 0: a placeholder window with no device behind it.
    #[error(
        "the virtio-mmio window is a placeholder (DeviceID 0): no device is attached; \
         skip this window"
    )]
    NoDevice,
    /// The config-space length of this device id is not known.
    #[error(
        "the config-space length of virtio device id {0} is not known to this transport; \
         pass it to the constructor"
    )]
    UnknownConfigLen(u32),
    /// The config space is larger than the transport handles.
    #[error("a {len}-byte config space exceeds the {max}-byte limit of a virtio-mmio window")]
    ConfigTooLarge {
        /// Requested length.
        len: usize,
        /// Limit ([`MAX_CONFIG_LEN`]).
        max: usize,
    },
    /// The shared window does not fit in the region, or its physical range
    /// overflows.
    #[error(
        "the shared window ({len:#x} bytes at region offset {offset:#x}) does not fit in \
         the {region_len:#x}-byte region or overflows the physical address space; fix the \
         window"
    )]
    BadWindow {
        /// Window offset in the region.
        offset: usize,
        /// Window length.
        len: usize,
        /// Region length.
        region_len: usize,
    },
    /// The window's physical and local addresses disagree modulo 4, so
    /// naturally aligned ring indices could not be accessed atomically.
    #[error(
        "the shared window's physical address and its local address are not equally \
         aligned (modulo 4); map the window so that both agree"
    )]
    WindowMisaligned,
    /// The allocation pool is not inside the shared window.
    #[error(
        "the allocation pool {start:#x}..{end:#x} is not inside the shared window; \
         buffers must be addressable by the device"
    )]
    PoolOutsideWindow {
        /// Pool start (region offset).
        start: usize,
        /// Pool end (region offset).
        end: usize,
    },
    /// The ring alignment is not a power of two of at least 4.
    #[error(
        "ring alignment {0} is not a power of two of at least 4; use e.g. 4096 (legacy \
         page) or 8 (NuttX)"
    )]
    BadRingAlign(u32),
    /// More queues were declared than [`MAX_QUEUES`].
    #[error("{0} queues declared; a virtio-mmio device here has at most 16")]
    TooManyQueues(usize),
    /// A declared queue maximum is 0 or above [`MAX_QUEUE_SIZE`].
    #[error(
        "queue {queue} declared with maximum size {max}; use a size from 1 to 32768 \
         (a power of two is what drivers can use fully)"
    )]
    BadQueueMax {
        /// Queue index.
        queue: u16,
        /// Declared maximum.
        max: u32,
    },
}

/// Register access to a virtio-mmio window: the seam between the transport
/// and whatever carries its accesses.
///
/// Offsets are from the window start (see [`regs`]). Registers below
/// [`regs::CONFIG`] are only accessed 32 bits wide; the config space also
/// with 8- and 16-bit accesses, as the spec asks (each field with its own
/// width). Accesses cannot fail, as on a bus: a device returns 0 for what it
/// does not implement and ignores writes it does not accept.
///
/// Implementations: real hardware (volatile accesses, in a platform crate),
/// [`RegionBus`] (a mapped window as a [`Region`]) and [`MmioDevice`] (an
/// emulated device).
pub trait MmioBus {
    /// 32-bit read at `offset`.
    fn read32(&self, offset: usize) -> u32;
    /// 32-bit write at `offset`.
    fn write32(&self, offset: usize, value: u32);
    /// 16-bit read at `offset` (config space only).
    fn read16(&self, offset: usize) -> u16;
    /// 16-bit write at `offset` (config space only).
    fn write16(&self, offset: usize, value: u16);
    /// 8-bit read at `offset` (config space only).
    fn read8(&self, offset: usize) -> u8;
    /// 8-bit write at `offset` (config space only).
    fn write8(&self, offset: usize, value: u8);
}

impl<T: MmioBus + ?Sized> MmioBus for &T {
    fn read32(&self, offset: usize) -> u32 {
        (**self).read32(offset)
    }
    fn write32(&self, offset: usize, value: u32) {
        (**self).write32(offset, value)
    }
    fn read16(&self, offset: usize) -> u16 {
        (**self).read16(offset)
    }
    fn write16(&self, offset: usize, value: u16) {
        (**self).write16(offset, value)
    }
    fn read8(&self, offset: usize) -> u8 {
        (**self).read8(offset)
    }
    fn write8(&self, offset: usize, value: u8) {
        (**self).write8(offset, value)
    }
}

#[cfg(feature = "alloc")]
impl<T: MmioBus + ?Sized> MmioBus for alloc::sync::Arc<T> {
    fn read32(&self, offset: usize) -> u32 {
        (**self).read32(offset)
    }
    fn write32(&self, offset: usize, value: u32) {
        (**self).write32(offset, value)
    }
    fn read16(&self, offset: usize) -> u16 {
        (**self).read16(offset)
    }
    fn write16(&self, offset: usize, value: u16) {
        (**self).write16(offset, value)
    }
    fn read8(&self, offset: usize) -> u8 {
        (**self).read8(offset)
    }
    fn write8(&self, offset: usize, value: u8) {
        (**self).write8(offset, value)
    }
}

/// An [`MmioBus`] over a [`Region`] that maps a device's register window.
///
/// 32- and 16-bit accesses are atomic (acquire loads, release stores), so
/// each register access is one access of its width. This is for a window
/// someone mapped (e.g. a host process mapping a device through UIO, or
/// firmware describing its MMIO window as a region); a plain shared-memory
/// register file has no trap behind it, so selector registers (`QueueSel`,
/// `*FeaturesSel`) would not work there. Accesses outside the region or
/// misaligned read as 0 and are dropped on write.
#[derive(Debug, Clone)]
pub struct RegionBus {
    region: Region,
}

impl RegionBus {
    /// Wraps the mapped register window `region`.
    pub fn new(region: Region) -> RegionBus {
        RegionBus { region }
    }

    /// The mapped window.
    pub fn region(&self) -> &Region {
        &self.region
    }
}

impl MmioBus for RegionBus {
    fn read32(&self, offset: usize) -> u32 {
        self.region.load_u32(offset).unwrap_or(0)
    }
    fn write32(&self, offset: usize, value: u32) {
        let _ = self.region.store_u32(offset, value);
    }
    fn read16(&self, offset: usize) -> u16 {
        self.region.load_u16(offset).unwrap_or(0)
    }
    fn write16(&self, offset: usize, value: u16) {
        let _ = self.region.store_u16(offset, value);
    }
    fn read8(&self, offset: usize) -> u8 {
        self.region.read_u8(offset).unwrap_or(0)
    }
    fn write8(&self, offset: usize, value: u8) {
        let _ = self.region.write_u8(offset, value);
    }
}

/// Checks that `window` lies inside `region`, that its physical range does
/// not overflow, and that physical and local addresses agree modulo 4.
fn check_window(region: &Region, window: &Window) -> Result<(), MmioError> {
    let bad = MmioError::BadWindow {
        offset: window.offset,
        len: window.len,
        region_len: region.len(),
    };
    if region.check(window.offset, window.len).is_err() {
        return Err(bad);
    }
    let len = u64::try_from(window.len).map_err(|_| bad)?;
    if window.pa.checked_add(len).is_none() {
        return Err(bad);
    }
    let local = region.base_addr().wrapping_add(window.offset) as u64;
    if (local ^ window.pa) & 3 != 0 {
        return Err(MmioError::WindowMisaligned);
    }
    Ok(())
}

/// Region offset of `len` bytes at physical address `pa`, if they lie
/// entirely inside `window`.
fn pa_to_offset(window: &Window, pa: u64, len: usize) -> Option<usize> {
    window.to_offset(pa, len).ok()
}

/// Physical address of region offset `offset`, if it lies inside `window`.
fn offset_to_pa(window: &Window, offset: usize) -> Option<u64> {
    window.to_pa(offset).ok()
}

/// Legacy split-ring layout of a `num`-entry queue at region offset
/// `offset` / physical address `pa` (the used ring aligned on the physical
/// address), and its size in bytes.
fn legacy_layout(offset: usize, pa: u64, num: u16, align: u32) -> Option<(QueueLayout, usize)> {
    let layout = QueueLayout::legacy(offset, pa, num, align).ok()?;
    let size = QueueLayout::legacy_size(pa, num, align).ok()?;
    offset.checked_add(size)?;
    Some((layout, size))
}

/// Config-space length for device ids whose config layout is fixed here:
/// entropy (none), console (12 bytes: cols, rows, max_nr_ports, emerg_wr)
/// and rpmsg (64 bytes, NuttX layout, DESIGN.md §4).
pub fn default_config_len(device_id: u32) -> Option<usize> {
    match device_id {
        super::id::ENTROPY => Some(0),
        super::id::CONSOLE => Some(12),
        super::id::RPMSG => Some(64),
        _ => None,
    }
}

/// Splits a config-space access at `offset` into the widest naturally
/// aligned piece that fits in `remaining` bytes: 4, 2 or 1.
fn config_width(offset: usize, remaining: usize) -> usize {
    if offset % 4 == 0 && remaining >= 4 {
        4
    } else if offset % 2 == 0 && remaining >= 2 {
        2
    } else {
        1
    }
}
