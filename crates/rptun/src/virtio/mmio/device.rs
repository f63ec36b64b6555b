//! The device side: [`MmioDevice`], an emulated virtio-mmio register file.
#![forbid(unsafe_code)]

use core::sync::atomic::{AtomicU32, AtomicU8, Ordering};

use super::{
    check_window, pa_to_offset, regs, MmioBus, MmioError, MAX_CONFIG_LEN, MAX_QUEUES,
    MAX_QUEUE_SIZE,
};
use crate::shm::Region;
use crate::virtio::queue::{QueueLayout, Window};
use crate::virtio::{status, DeviceTransport, QueueMem, VirtioError};

const ACQ: Ordering = Ordering::Acquire;
const REL: Ordering = Ordering::Release;
const ACQREL: Ordering = Ordering::AcqRel;

/// What a virtio-mmio device is: its identity, offer, queues and initial
/// config space.
#[derive(Debug, Clone, Copy)]
pub struct MmioDeviceInfo<'a> {
    /// virtio device id (see [`crate::virtio::id`]); must not be 0.
    pub device_id: u32,
    /// Vendor id reported in `VendorID`.
    pub vendor_id: u32,
    /// Features the device offers (all 64 bits can be carried).
    pub features: u64,
    /// `QueueNumMax` of each queue, in queue order (at most
    /// [`super::MAX_QUEUES`], each 1..=32768).
    pub queue_max: &'a [u16],
    /// Initial config space; its length is the config-space size (at most
    /// [`super::MAX_CONFIG_LEN`]).
    pub config: &'a [u8],
}

/// Callbacks from the emulated device, e.g. to wake the thread serving the
/// device or to raise an interrupt line. They run on the thread that made
/// the access; every method defaults to doing nothing.
pub trait MmioHooks {
    /// The driver wrote `queue` to `QueueNotify` (the kick is also recorded
    /// for [`MmioDevice::take_notifications`]).
    fn queue_notified(&self, queue: u16) {
        let _ = queue;
    }
    /// The driver wrote the status register; `status` is the new value (0
    /// after a reset).
    fn status_changed(&self, status: u8) {
        let _ = status;
    }
    /// The device raised its interrupt; `interrupt_status` is the
    /// `InterruptStatus` register after raising.
    fn interrupt(&self, interrupt_status: u32) {
        let _ = interrupt_status;
    }
}

/// Hooks that do nothing: the device and the driver poll.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHooks;

impl MmioHooks for NoHooks {}

/// Per-queue registers as the driver wrote them.
#[derive(Debug)]
struct QueueRegs {
    max: u32,
    num: AtomicU32,
    ready: AtomicU32,
    desc: [AtomicU32; 2],
    driver: [AtomicU32; 2],
    device: [AtomicU32; 2],
}

impl QueueRegs {
    fn new(max: u32) -> QueueRegs {
        QueueRegs {
            max,
            num: AtomicU32::new(0),
            ready: AtomicU32::new(0),
            desc: [AtomicU32::new(0), AtomicU32::new(0)],
            driver: [AtomicU32::new(0), AtomicU32::new(0)],
            device: [AtomicU32::new(0), AtomicU32::new(0)],
        }
    }

    fn reset(&self) {
        self.ready.store(0, REL);
        self.num.store(0, REL);
        for r in [&self.desc, &self.driver, &self.device] {
            r[0].store(0, REL);
            r[1].store(0, REL);
        }
    }
}

fn addr(pair: &[AtomicU32; 2]) -> u64 {
    u64::from(pair[1].load(ACQ)) << 32 | u64::from(pair[0].load(ACQ))
}

/// An emulated virtio-mmio device: the register file a hypervisor keeps for
/// a guest's device window, with the semantics of each register.
///
/// The driver side reaches it as an [`MmioBus`] (every access is a "trap"
/// into [`MmioBus::read32`]/[`MmioBus::write32`]), the device
/// implementation as a [`DeviceTransport`]. Every register is an atomic and
/// every method takes `&self`, so one device can be shared by reference or
/// `Arc` between a driver thread and a device thread (see the module docs).
/// Queue addresses are guest-physical addresses in `window`; the ring memory
/// itself is in `region`.
pub struct MmioDevice<H: MmioHooks = NoHooks> {
    device_id: u32,
    vendor_id: u32,
    features: u64,
    num_queues: u16,
    config_len: usize,
    region: Region,
    window: Window,
    hooks: H,
    status: AtomicU32,
    device_features_sel: AtomicU32,
    driver_features_sel: AtomicU32,
    driver_features: [AtomicU32; 2],
    queue_sel: AtomicU32,
    interrupt_status: AtomicU32,
    /// Bit `q` set: the driver kicked queue `q` since the last
    /// `take_notifications`.
    notified: AtomicU32,
    /// Config writes by the device: odd while one is in progress.
    config_seq: AtomicU32,
    /// Makes every `ConfigGeneration` read during a config write unique.
    config_nonce: AtomicU32,
    queues: [QueueRegs; MAX_QUEUES],
    config: [AtomicU8; MAX_CONFIG_LEN],
}

impl<H: MmioHooks> core::fmt::Debug for MmioDevice<H> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("MmioDevice")
            .field("device_id", &self.device_id)
            .field("features", &self.features)
            .field("num_queues", &self.num_queues)
            .field("config_len", &self.config_len)
            .field("status", &self.status.load(ACQ))
            .field("interrupt_status", &self.interrupt_status.load(ACQ))
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

impl MmioDevice<NoHooks> {
    /// Builds a device whose queues live in `region`, addressed by the driver
    /// through `window`.
    pub fn new(
        info: MmioDeviceInfo<'_>,
        region: Region,
        window: Window,
    ) -> Result<MmioDevice<NoHooks>, MmioError> {
        MmioDevice::with_hooks(info, region, window, NoHooks)
    }
}

impl<H: MmioHooks> MmioDevice<H> {
    /// As [`MmioDevice::new`], calling `hooks` on kicks, status writes and
    /// interrupts.
    pub fn with_hooks(
        info: MmioDeviceInfo<'_>,
        region: Region,
        window: Window,
        hooks: H,
    ) -> Result<MmioDevice<H>, MmioError> {
        if info.device_id == 0 {
            return Err(MmioError::NoDevice);
        }
        if info.queue_max.len() > MAX_QUEUES {
            return Err(MmioError::TooManyQueues(info.queue_max.len()));
        }
        for (q, &max) in info.queue_max.iter().enumerate() {
            if max == 0 || max > MAX_QUEUE_SIZE {
                return Err(MmioError::BadQueueMax {
                    queue: q as u16,
                    max: u32::from(max),
                });
            }
        }
        if info.config.len() > MAX_CONFIG_LEN {
            return Err(MmioError::ConfigTooLarge {
                len: info.config.len(),
                max: MAX_CONFIG_LEN,
            });
        }
        check_window(&region, &window)?;
        Ok(MmioDevice {
            device_id: info.device_id,
            vendor_id: info.vendor_id,
            features: info.features,
            num_queues: info.queue_max.len() as u16,
            config_len: info.config.len(),
            region,
            window,
            hooks,
            status: AtomicU32::new(0),
            device_features_sel: AtomicU32::new(0),
            driver_features_sel: AtomicU32::new(0),
            driver_features: [AtomicU32::new(0), AtomicU32::new(0)],
            queue_sel: AtomicU32::new(0),
            interrupt_status: AtomicU32::new(0),
            notified: AtomicU32::new(0),
            config_seq: AtomicU32::new(0),
            config_nonce: AtomicU32::new(0),
            queues: core::array::from_fn(|q| {
                QueueRegs::new(info.queue_max.get(q).map_or(0, |&m| u32::from(m)))
            }),
            config: core::array::from_fn(|i| AtomicU8::new(info.config.get(i).map_or(0, |&b| b))),
        })
    }

    /// The hooks.
    pub fn hooks(&self) -> &H {
        &self.hooks
    }

    /// The window translating the driver's queue addresses.
    pub fn window(&self) -> Window {
        self.window
    }

    /// Returns and clears the queues the driver kicked since the last call
    /// (bit `q` = queue `q`).
    pub fn take_notifications(&self) -> u32 {
        self.notified.swap(0, ACQREL)
    }

    /// The `InterruptStatus` register (bits the driver has not acknowledged).
    pub fn interrupt_status(&self) -> u32 {
        self.interrupt_status.load(ACQ)
    }

    // ---- device-side API (also reachable through `DeviceTransport`) ----

    /// The virtio device id.
    pub fn device_id(&self) -> u32 {
        self.device_id
    }

    /// Features the device offers.
    pub fn device_features(&self) -> Result<u64, VirtioError> {
        Ok(self.features)
    }

    /// Features the driver accepted (restricted to the offered ones), once it
    /// set `FEATURES_OK` or `DRIVER_OK`.
    pub fn driver_features(&self) -> Result<u64, VirtioError> {
        if self.status.load(ACQ) & u32::from(status::FEATURES_OK | status::DRIVER_OK) == 0 {
            return Err(VirtioError::NotReady(
                "the driver has not finished feature negotiation (no FEATURES_OK yet)",
            ));
        }
        Ok(addr(&self.driver_features) & self.features)
    }

    /// The status byte.
    pub fn status(&self) -> Result<u8, VirtioError> {
        Ok(self.status.load(ACQ) as u8)
    }

    /// Sets `DEVICE_NEEDS_RESET` and interrupts the driver with a config
    /// change.
    pub fn set_needs_reset(&self) -> Result<(), VirtioError> {
        self.status
            .fetch_or(u32::from(status::DEVICE_NEEDS_RESET), ACQREL);
        self.raise(regs::INT_CONFIG);
        Ok(())
    }

    /// Size of the config space.
    pub fn config_len(&self) -> usize {
        self.config_len
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

    /// Reads config space.
    pub fn read_config(&self, offset: usize, buf: &mut [u8]) -> Result<(), VirtioError> {
        self.check_config(offset, buf.len())?;
        for (i, b) in buf.iter_mut().enumerate() {
            *b = self.config[offset + i].load(ACQ);
        }
        Ok(())
    }

    /// Writes config space as the device: bumps `ConfigGeneration` and, once
    /// the driver has started (status non-zero), interrupts it with a config
    /// change. Config writes by the device are expected from one thread.
    pub fn write_config(&self, offset: usize, buf: &[u8]) -> Result<(), VirtioError> {
        self.check_config(offset, buf.len())?;
        self.config_seq.fetch_add(1, ACQREL);
        for (i, &b) in buf.iter().enumerate() {
            self.config[offset + i].store(b, REL);
        }
        self.config_seq.fetch_add(1, ACQREL);
        if self.status.load(ACQ) != 0 {
            self.raise(regs::INT_CONFIG);
        }
        Ok(())
    }

    /// Number of queues.
    pub fn num_queues(&self) -> u16 {
        self.num_queues
    }

    /// Where the driver placed queue `queue`, validated: the driver must have
    /// set `DRIVER_OK` and `QueueReady`, the size must be a power of two no
    /// larger than `QueueNumMax`, and each of the three parts must be
    /// aligned as the spec requires (16, 2, 4) and lie entirely inside the
    /// window. Any placement of the three parts is accepted.
    pub fn queue(&self, queue: u16) -> Result<QueueMem, VirtioError> {
        if queue >= self.num_queues {
            return Err(VirtioError::NoQueue(queue));
        }
        if self.status.load(ACQ) & u32::from(status::DRIVER_OK) == 0 {
            return Err(VirtioError::NotReady("the driver has not set DRIVER_OK"));
        }
        let q = &self.queues[usize::from(queue)];
        if q.ready.load(ACQ) == 0 {
            return Err(VirtioError::NotReady(
                "the driver did not enable this queue (QueueReady is 0)",
            ));
        }
        let num = q.num.load(ACQ);
        let max = q.max as u16;
        if num == 0 || num > q.max || !num.is_power_of_two() {
            return Err(VirtioError::BadQueueSize {
                size: u16::try_from(num).unwrap_or(u16::MAX),
                max,
            });
        }
        let n = num as usize;
        let part = |pa: u64, len: usize, align: u64, what: &'static str| {
            if pa % align != 0 {
                return Err(VirtioError::Protocol(what));
            }
            pa_to_offset(&self.window, pa, len)
                .filter(|&off| self.region.check(off, len).is_ok())
                .ok_or(VirtioError::Protocol(what))
        };
        let desc = part(
            addr(&q.desc),
            16 * n,
            16,
            "the driver placed the descriptor table outside the shared window or misaligned it",
        )?;
        let avail = part(
            addr(&q.driver),
            6 + 2 * n,
            2,
            "the driver placed the avail ring outside the shared window or misaligned it",
        )?;
        let used = part(
            addr(&q.device),
            6 + 8 * n,
            4,
            "the driver placed the used ring outside the shared window or misaligned it",
        )?;
        Ok(QueueMem {
            region: self.region.clone(),
            layout: QueueLayout {
                desc,
                avail,
                used,
                num: num as u16,
            },
            window: self.window,
        })
    }

    /// Interrupts the driver: queue `queue` has new used buffers.
    pub fn notify(&self, queue: u16) -> Result<(), VirtioError> {
        if queue >= self.num_queues {
            return Err(VirtioError::NoQueue(queue));
        }
        if self.status.load(ACQ) & u32::from(status::DRIVER_OK) == 0 {
            return Err(VirtioError::NotReady(
                "a device may not interrupt before the driver set DRIVER_OK",
            ));
        }
        self.raise(regs::INT_VRING);
        Ok(())
    }

    /// The shared region.
    pub fn region(&self) -> &Region {
        &self.region
    }

    // ---- register emulation ----

    fn raise(&self, bits: u32) {
        let now = self.interrupt_status.fetch_or(bits, ACQREL) | bits;
        self.hooks.interrupt(now);
    }

    fn reset(&self) {
        // Status first: the device side stops seeing DRIVER_OK before the
        // queues disappear. The driver cannot observe the intermediate state:
        // this runs inside its own register write.
        self.status.store(0, REL);
        for q in &self.queues {
            q.reset();
        }
        self.driver_features[0].store(0, REL);
        self.driver_features[1].store(0, REL);
        self.device_features_sel.store(0, REL);
        self.driver_features_sel.store(0, REL);
        self.queue_sel.store(0, REL);
        self.interrupt_status.store(0, REL);
        self.notified.store(0, REL);
    }

    fn write_status(&self, value: u32) {
        if value == 0 {
            self.reset();
            self.hooks.status_changed(0);
            return;
        }
        let old = self.status.load(ACQ);
        let features_ok = u32::from(status::FEATURES_OK);
        let mut new = (value & 0xff) | (old & u32::from(status::DEVICE_NEEDS_RESET));
        if new & features_ok != 0 && old & features_ok == 0 {
            let accepted = addr(&self.driver_features);
            if accepted & !self.features != 0 {
                // Refuse: the driver sees FEATURES_OK clear when it reads back.
                log::warn!(
                    "virtio-mmio: driver accepted unoffered features {:#x}; refusing FEATURES_OK",
                    accepted & !self.features
                );
                new &= !features_ok;
            }
        }
        self.status.store(new, REL);
        self.hooks.status_changed(new as u8);
    }

    /// The selected queue's registers, if the selected queue exists.
    fn selected(&self) -> Option<&QueueRegs> {
        let sel = self.queue_sel.load(ACQ) as usize;
        if sel < usize::from(self.num_queues) {
            self.queues.get(sel)
        } else {
            None
        }
    }

    /// The selected queue's registers, if they may still be programmed
    /// (the queue exists and is not enabled).
    fn programmable(&self) -> Option<&QueueRegs> {
        self.selected().filter(|q| q.ready.load(ACQ) == 0)
    }

    fn config_index(&self, offset: usize, width: usize) -> Option<usize> {
        let rel = offset.checked_sub(regs::CONFIG)?;
        (rel.checked_add(width)? <= self.config_len).then_some(rel)
    }

    fn config_generation(&self) -> u32 {
        let seq = self.config_seq.load(ACQ);
        if seq % 2 == 0 {
            seq / 2
        } else {
            // A write is in progress: no two reads may agree, so a driver
            // comparing generations around its read retries.
            0x8000_0000 | self.config_nonce.fetch_add(1, ACQREL)
        }
    }
}

impl<H: MmioHooks> MmioBus for MmioDevice<H> {
    fn read32(&self, offset: usize) -> u32 {
        if offset >= regs::CONFIG {
            let mut b = [0u8; 4];
            return match self.config_index(offset, 4) {
                Some(i) => {
                    for (k, byte) in b.iter_mut().enumerate() {
                        *byte = self.config[i + k].load(ACQ);
                    }
                    u32::from_le_bytes(b)
                }
                None => 0,
            };
        }
        match offset {
            regs::MAGIC_VALUE => regs::MAGIC,
            regs::VERSION => regs::VERSION_MODERN,
            regs::DEVICE_ID => self.device_id,
            regs::VENDOR_ID => self.vendor_id,
            regs::DEVICE_FEATURES => match self.device_features_sel.load(ACQ) {
                0 => self.features as u32,
                1 => (self.features >> 32) as u32,
                _ => 0,
            },
            regs::QUEUE_NUM_MAX => self.selected().map_or(0, |q| q.max),
            regs::QUEUE_READY => self.selected().map_or(0, |q| q.ready.load(ACQ)),
            regs::INTERRUPT_STATUS => self.interrupt_status.load(ACQ),
            regs::STATUS => self.status.load(ACQ),
            // No shared-memory regions: every selected one reads as absent.
            regs::SHM_LEN_LOW | regs::SHM_LEN_HIGH | regs::SHM_BASE_LOW | regs::SHM_BASE_HIGH => {
                u32::MAX
            }
            regs::CONFIG_GENERATION => self.config_generation(),
            // Write-only, reserved or misaligned.
            _ => 0,
        }
    }

    fn write32(&self, offset: usize, value: u32) {
        if offset >= regs::CONFIG {
            if let Some(i) = self.config_index(offset, 4) {
                for (k, byte) in value.to_le_bytes().into_iter().enumerate() {
                    self.config[i + k].store(byte, REL);
                }
            }
            return;
        }
        match offset {
            regs::DEVICE_FEATURES_SEL => self.device_features_sel.store(value, REL),
            regs::DRIVER_FEATURES_SEL => self.driver_features_sel.store(value, REL),
            // Features are frozen once FEATURES_OK is set.
            regs::DRIVER_FEATURES
                if self.status.load(ACQ) & u32::from(status::FEATURES_OK) == 0 =>
            {
                let sel = self.driver_features_sel.load(ACQ) as usize;
                if let Some(word) = self.driver_features.get(sel) {
                    word.store(value, REL);
                }
            }
            regs::QUEUE_SEL => self.queue_sel.store(value, REL),
            regs::QUEUE_NUM => {
                if let Some(q) = self.programmable() {
                    q.num.store(value, REL);
                }
            }
            regs::QUEUE_DESC_LOW | regs::QUEUE_DESC_HIGH => {
                if let Some(q) = self.programmable() {
                    q.desc[(offset - regs::QUEUE_DESC_LOW) / 4].store(value, REL);
                }
            }
            regs::QUEUE_DRIVER_LOW | regs::QUEUE_DRIVER_HIGH => {
                if let Some(q) = self.programmable() {
                    q.driver[(offset - regs::QUEUE_DRIVER_LOW) / 4].store(value, REL);
                }
            }
            regs::QUEUE_DEVICE_LOW | regs::QUEUE_DEVICE_HIGH => {
                if let Some(q) = self.programmable() {
                    q.device[(offset - regs::QUEUE_DEVICE_LOW) / 4].store(value, REL);
                }
            }
            regs::QUEUE_READY => {
                if let Some(q) = self.selected() {
                    q.ready.store(value & 1, REL);
                }
            }
            // Kicks of queues that do not exist are dropped.
            regs::QUEUE_NOTIFY if value < u32::from(self.num_queues) => {
                self.notified.fetch_or(1 << value, ACQREL);
                self.hooks.queue_notified(value as u16);
            }
            regs::INTERRUPT_ACK => {
                self.interrupt_status.fetch_and(!value, ACQREL);
            }
            regs::STATUS => self.write_status(value),
            // Read-only, reserved or misaligned: ignored.
            _ => {}
        }
    }

    fn read16(&self, offset: usize) -> u16 {
        match self.config_index(offset, 2) {
            Some(i) if offset % 2 == 0 => {
                u16::from_le_bytes([self.config[i].load(ACQ), self.config[i + 1].load(ACQ)])
            }
            _ => 0,
        }
    }

    fn write16(&self, offset: usize, value: u16) {
        if let Some(i) = self.config_index(offset, 2).filter(|_| offset % 2 == 0) {
            let [lo, hi] = value.to_le_bytes();
            self.config[i].store(lo, REL);
            self.config[i + 1].store(hi, REL);
        }
    }

    fn read8(&self, offset: usize) -> u8 {
        self.config_index(offset, 1)
            .map_or(0, |i| self.config[i].load(ACQ))
    }

    fn write8(&self, offset: usize, value: u8) {
        if let Some(i) = self.config_index(offset, 1) {
            self.config[i].store(value, REL);
        }
    }
}

/// Implements [`DeviceTransport`] by delegating to the inherent methods of
/// the [`MmioDevice`] that `self` is or points to.
macro_rules! delegate_device_transport {
    () => {
        fn device_id(&self) -> u32 {
            MmioDevice::device_id(self)
        }
        fn device_features(&self) -> Result<u64, VirtioError> {
            MmioDevice::device_features(self)
        }
        fn driver_features(&self) -> Result<u64, VirtioError> {
            MmioDevice::driver_features(self)
        }
        fn status(&self) -> Result<u8, VirtioError> {
            MmioDevice::status(self)
        }
        fn set_needs_reset(&mut self) -> Result<(), VirtioError> {
            MmioDevice::set_needs_reset(self)
        }
        fn config_len(&self) -> usize {
            MmioDevice::config_len(self)
        }
        fn read_config(&self, offset: usize, buf: &mut [u8]) -> Result<(), VirtioError> {
            MmioDevice::read_config(self, offset, buf)
        }
        fn write_config(&mut self, offset: usize, buf: &[u8]) -> Result<(), VirtioError> {
            MmioDevice::write_config(self, offset, buf)
        }
        fn num_queues(&self) -> u16 {
            MmioDevice::num_queues(self)
        }
        fn queue(&self, queue: u16) -> Result<QueueMem, VirtioError> {
            MmioDevice::queue(self, queue)
        }
        fn notify(&mut self, queue: u16) -> Result<(), VirtioError> {
            MmioDevice::notify(self, queue)
        }
        fn region(&self) -> &Region {
            MmioDevice::region(self)
        }
    };
}

impl<H: MmioHooks> DeviceTransport for MmioDevice<H> {
    delegate_device_transport!();
}

impl<H: MmioHooks> DeviceTransport for &MmioDevice<H> {
    delegate_device_transport!();
}

#[cfg(feature = "alloc")]
impl<H: MmioHooks> DeviceTransport for alloc::sync::Arc<MmioDevice<H>> {
    delegate_device_transport!();
}
