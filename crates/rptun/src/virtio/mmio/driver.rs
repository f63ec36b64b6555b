//! The driver side: [`MmioTransport`], a [`Transport`] over an [`MmioBus`].
#![forbid(unsafe_code)]

use core::ops::Range;

use super::pool::Pool;
use super::{
    check_window, config_width, default_config_len, legacy_layout, offset_to_pa, regs, MmioBus,
    MmioError, MAX_CONFIG_LEN, MAX_QUEUES, MAX_QUEUE_SIZE,
};
use crate::shm::Region;
use crate::virtio::queue::Window;
use crate::virtio::{status, QueueMem, Transport, VirtioError};

/// How many times a config read is retried while `ConfigGeneration` keeps
/// changing, and how many times a reset is polled for completion.
const RETRIES: usize = 16;

/// The memory a driver transport allocates rings and buffers from.
#[derive(Debug, Clone)]
pub struct SharedMemory {
    /// The region holding the window.
    pub region: Region,
    /// Maps the device-visible ("physical") addresses to region offsets.
    pub window: Window,
    /// Region offsets the transport may hand out; must lie inside `window`.
    pub pool: Range<usize>,
    /// Alignment of the used ring's physical address (a power of two, at
    /// least 4): 4096 for the classic legacy layout, 8 in NuttX's tables.
    pub ring_align: u32,
}

impl SharedMemory {
    /// Uses all of `window` as the pool, with page-aligned (4096) used rings.
    pub fn whole_window(region: Region, window: Window) -> SharedMemory {
        SharedMemory {
            region,
            pool: window.offset..window.offset.saturating_add(window.len),
            window,
            ring_align: 4096,
        }
    }
}

/// The driver's view of a virtio-mmio device (Version 2 register layout).
///
/// Rings are allocated from the [`SharedMemory`] pool in the legacy split
/// layout, contiguous, and programmed through `QueueDesc`/`QueueDriver`/
/// `QueueDevice`. Construction validates the device (`MagicValue`,
/// `Version`, `DeviceID`) and counts its queues.
#[derive(Debug)]
pub struct MmioTransport<B: MmioBus> {
    bus: B,
    device_id: u32,
    vendor_id: u32,
    config_len: usize,
    num_queues: u16,
    region: Region,
    window: Window,
    ring_align: u32,
    pool: Pool,
    /// Ring allocation (offset, size) of each set-up queue, freed on reset.
    rings: [Option<(usize, usize)>; MAX_QUEUES],
    /// Features last written with `set_driver_features`.
    driver_features: u64,
}

impl<B: MmioBus> MmioTransport<B> {
    /// Attaches to the device behind `bus`.
    ///
    /// `config_len` is the device's config-space size; `None` takes it from
    /// [`super::default_config_len`] (an error for other device ids).
    pub fn new(bus: B, mem: SharedMemory, config_len: Option<usize>) -> Result<Self, MmioError> {
        let magic = bus.read32(regs::MAGIC_VALUE);
        if magic != regs::MAGIC {
            return Err(MmioError::BadMagic(magic));
        }
        match bus.read32(regs::VERSION) {
            regs::VERSION_MODERN => {}
            regs::VERSION_LEGACY => return Err(MmioError::LegacyVersion),
            v => return Err(MmioError::BadVersion(v)),
        }
        let device_id = bus.read32(regs::DEVICE_ID);
        if device_id == 0 {
            return Err(MmioError::NoDevice);
        }
        let vendor_id = bus.read32(regs::VENDOR_ID);
        let config_len = match config_len {
            Some(l) => l,
            None => default_config_len(device_id).ok_or(MmioError::UnknownConfigLen(device_id))?,
        };
        if config_len > MAX_CONFIG_LEN {
            return Err(MmioError::ConfigTooLarge {
                len: config_len,
                max: MAX_CONFIG_LEN,
            });
        }
        check_window(&mem.region, &mem.window)?;
        let win_end = mem.window.offset + mem.window.len;
        if mem.pool.start > mem.pool.end
            || mem.pool.start < mem.window.offset
            || mem.pool.end > win_end
        {
            return Err(MmioError::PoolOutsideWindow {
                start: mem.pool.start,
                end: mem.pool.end,
            });
        }
        if !mem.ring_align.is_power_of_two() || mem.ring_align < 4 {
            return Err(MmioError::BadRingAlign(mem.ring_align));
        }
        // Queues are numbered densely from 0; the first with QueueNumMax 0
        // ends them. Bounded by MAX_QUEUES whatever the device says.
        let mut num_queues = 0u16;
        while usize::from(num_queues) < MAX_QUEUES {
            bus.write32(regs::QUEUE_SEL, u32::from(num_queues));
            if bus.read32(regs::QUEUE_NUM_MAX) == 0 {
                break;
            }
            num_queues += 1;
        }
        Ok(MmioTransport {
            bus,
            device_id,
            vendor_id,
            config_len,
            num_queues,
            pool: Pool::new(mem.pool.start, mem.pool.end, mem.window),
            region: mem.region,
            window: mem.window,
            ring_align: mem.ring_align,
            rings: [None; MAX_QUEUES],
            driver_features: 0,
        })
    }

    /// The device's vendor id.
    pub fn vendor_id(&self) -> u32 {
        self.vendor_id
    }

    /// The register bus.
    pub fn bus(&self) -> &B {
        &self.bus
    }

    /// Reads and acknowledges the interrupt status: returns the bits that
    /// were set ([`regs::INT_VRING`]: some queue has used buffers,
    /// [`regs::INT_CONFIG`]: the config space changed or the device needs a
    /// reset). Call it from the interrupt handler.
    pub fn ack_interrupt(&mut self) -> u32 {
        let pending = self.bus.read32(regs::INTERRUPT_STATUS);
        if pending != 0 {
            self.bus.write32(regs::INTERRUPT_ACK, pending);
        }
        pending
    }

    /// Current `ConfigGeneration`.
    pub fn config_generation(&self) -> u32 {
        self.bus.read32(regs::CONFIG_GENERATION)
    }

    fn check_queue(&self, queue: u16) -> Result<(), VirtioError> {
        if queue < self.num_queues {
            Ok(())
        } else {
            Err(VirtioError::NoQueue(queue))
        }
    }

    fn check_config(&self, offset: usize, len: usize) -> Result<(), VirtioError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.config_len => Ok(()),
            _ => Err(VirtioError::ConfigOutOfRange {
                offset,
                len,
                size: self.config_len,
            }),
        }
    }

    fn read_config_once(&self, offset: usize, buf: &mut [u8]) {
        let mut i = 0;
        while i < buf.len() {
            let at = regs::CONFIG + offset + i;
            match config_width(offset + i, buf.len() - i) {
                4 => buf[i..i + 4].copy_from_slice(&self.bus.read32(at).to_le_bytes()),
                2 => buf[i..i + 2].copy_from_slice(&self.bus.read16(at).to_le_bytes()),
                _ => buf[i] = self.bus.read8(at),
            }
            i += config_width(offset + i, buf.len() - i);
        }
    }

    fn write_u64_pair(&self, low: usize, value: u64) {
        self.bus.write32(low, value as u32);
        self.bus.write32(low + 4, (value >> 32) as u32);
    }

    /// Forgets every ring: after a reset the device no longer uses them.
    fn free_rings(&mut self) {
        for q in 0..MAX_QUEUES {
            if let Some((off, size)) = self.rings[q].take() {
                self.pool.free(off, size);
            }
        }
    }
}

impl<B: MmioBus> Transport for MmioTransport<B> {
    fn device_id(&self) -> u32 {
        self.device_id
    }

    fn device_features(&self) -> Result<u64, VirtioError> {
        self.bus.write32(regs::DEVICE_FEATURES_SEL, 0);
        let low = self.bus.read32(regs::DEVICE_FEATURES);
        self.bus.write32(regs::DEVICE_FEATURES_SEL, 1);
        let high = self.bus.read32(regs::DEVICE_FEATURES);
        Ok(u64::from(high) << 32 | u64::from(low))
    }

    fn set_driver_features(&mut self, features: u64) -> Result<(), VirtioError> {
        let unoffered = features & !self.device_features()?;
        if unoffered != 0 {
            return Err(VirtioError::UnsupportedFeatures(unoffered));
        }
        self.bus.write32(regs::DRIVER_FEATURES_SEL, 0);
        self.bus.write32(regs::DRIVER_FEATURES, features as u32);
        self.bus.write32(regs::DRIVER_FEATURES_SEL, 1);
        self.bus
            .write32(regs::DRIVER_FEATURES, (features >> 32) as u32);
        self.driver_features = features;
        Ok(())
    }

    fn status(&self) -> Result<u8, VirtioError> {
        Ok(self.bus.read32(regs::STATUS) as u8)
    }

    /// Writes the status. Writing 0 resets the device, waits (bounded) for
    /// the reset to complete and frees every ring. Setting `FEATURES_OK`
    /// reads the status back and fails if the device refused the features.
    fn set_status(&mut self, value: u8) -> Result<(), VirtioError> {
        self.bus.write32(regs::STATUS, u32::from(value));
        if value == 0 {
            let mut done = false;
            for _ in 0..RETRIES {
                if self.bus.read32(regs::STATUS) == 0 {
                    done = true;
                    break;
                }
                core::hint::spin_loop();
            }
            if !done {
                return Err(VirtioError::Protocol(
                    "the virtio-mmio device did not complete its reset (Status stayed non-zero)",
                ));
            }
            self.free_rings();
            self.driver_features = 0;
            return Ok(());
        }
        if value & status::FEATURES_OK != 0 && self.status()? & status::FEATURES_OK == 0 {
            return Err(VirtioError::Protocol(
                "the device cleared FEATURES_OK: it does not accept the driver's feature set",
            ));
        }
        Ok(())
    }

    fn config_len(&self) -> usize {
        self.config_len
    }

    /// Reads config space with each naturally aligned piece at its own
    /// width, retrying (bounded) while `ConfigGeneration` changes.
    fn read_config(&self, offset: usize, buf: &mut [u8]) -> Result<(), VirtioError> {
        self.check_config(offset, buf.len())?;
        for _ in 0..RETRIES {
            let before = self.config_generation();
            self.read_config_once(offset, buf);
            if self.config_generation() == before {
                return Ok(());
            }
        }
        Err(VirtioError::Protocol(
            "the virtio-mmio config space kept changing while being read",
        ))
    }

    fn write_config(&mut self, offset: usize, buf: &[u8]) -> Result<(), VirtioError> {
        self.check_config(offset, buf.len())?;
        let mut i = 0;
        while i < buf.len() {
            let at = regs::CONFIG + offset + i;
            let w = config_width(offset + i, buf.len() - i);
            match w {
                4 => {
                    let v = u32::from_le_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
                    self.bus.write32(at, v)
                }
                2 => self
                    .bus
                    .write16(at, u16::from_le_bytes([buf[i], buf[i + 1]])),
                _ => self.bus.write8(at, buf[i]),
            }
            i += w;
        }
        Ok(())
    }

    fn num_queues(&self) -> u16 {
        self.num_queues
    }

    fn max_queue_size(&self, queue: u16) -> Result<u16, VirtioError> {
        self.check_queue(queue)?;
        self.bus.write32(regs::QUEUE_SEL, u32::from(queue));
        match self.bus.read32(regs::QUEUE_NUM_MAX) {
            0 => Err(VirtioError::NoQueue(queue)),
            m if m <= u32::from(MAX_QUEUE_SIZE) => Ok(m as u16),
            _ => Err(VirtioError::Protocol(
                "the device reported a QueueNumMax above 32768, the split-ring limit",
            )),
        }
    }

    /// Allocates a legacy-layout ring for `size` entries (a power of two up
    /// to `QueueNumMax`), zeroes it, programs its three physical addresses
    /// and `QueueNum`, and sets `QueueReady`.
    fn setup_queue(&mut self, queue: u16, size: u16) -> Result<QueueMem, VirtioError> {
        let max = self.max_queue_size(queue)?;
        if size == 0 || !size.is_power_of_two() || size > max {
            return Err(VirtioError::BadQueueSize { size, max });
        }
        // `max_queue_size` selected the queue.
        if self.bus.read32(regs::QUEUE_READY) != 0 || self.rings[usize::from(queue)].is_some() {
            return Err(VirtioError::NotReady(
                "the queue is already set up; reset the device (status 0) before setting it up \
                 again",
            ));
        }
        // The descriptor table needs 16-byte alignment. The used ring's
        // padding depends on the physical address; the ring starts at a
        // multiple of `align` >= ring_align, so its size computed at pa 0 is
        // its size at the real address.
        let align = self.ring_align.max(16);
        let (_, bytes) = legacy_layout(0, 0, size, self.ring_align).ok_or(VirtioError::Queue(
            "the ring size overflows the address space",
        ))?;
        let off = self.alloc_shared(bytes, align as usize)?;
        // The pool lies inside the window and the window inside the region,
        // so these cannot fail; if they do, give the block back.
        let placed = offset_to_pa(&self.window, off)
            .and_then(|pa| legacy_layout(off, pa, size, self.ring_align))
            .and_then(|(layout, _)| {
                let pa = |o: usize| offset_to_pa(&self.window, o);
                Some((
                    layout,
                    pa(layout.desc)?,
                    pa(layout.avail)?,
                    pa(layout.used)?,
                ))
            });
        let Some((layout, desc, avail, used)) = placed else {
            self.pool.free(off, bytes);
            return Err(VirtioError::Queue(
                "the ring does not fit in the shared window",
            ));
        };
        if let Err(e) = self.region.fill(off, bytes, 0) {
            self.pool.free(off, bytes);
            return Err(e.into());
        }
        self.bus.write32(regs::QUEUE_NUM, u32::from(size));
        self.write_u64_pair(regs::QUEUE_DESC_LOW, desc);
        self.write_u64_pair(regs::QUEUE_DRIVER_LOW, avail);
        self.write_u64_pair(regs::QUEUE_DEVICE_LOW, used);
        self.bus.write32(regs::QUEUE_READY, 1);
        self.rings[usize::from(queue)] = Some((off, bytes));
        Ok(QueueMem {
            region: self.region.clone(),
            layout,
            window: self.window,
        })
    }

    fn notify(&mut self, queue: u16) -> Result<(), VirtioError> {
        self.check_queue(queue)?;
        self.bus.write32(regs::QUEUE_NOTIFY, u32::from(queue));
        Ok(())
    }

    fn alloc_shared(&mut self, size: usize, align: usize) -> Result<usize, VirtioError> {
        self.pool
            .alloc(size, align)
            .ok_or(VirtioError::NoSharedMemory { size, align })
    }

    fn free_shared(&mut self, offset: usize, size: usize) {
        self.pool.free(offset, size)
    }

    fn region(&self) -> &Region {
        &self.region
    }

    fn window(&self) -> Window {
        self.window
    }
}
