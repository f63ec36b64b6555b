//! [`RemoteprocTransport`]: virtio-drivers' `Transport` over a remoteproc
//! vdev, and the [`Health`] of the link it drives.
#![forbid(unsafe_code)]

use super::pool::{DmaDomain, DmaPool};
use super::{AdapterError, Options, RingPlacement, MAX_VRINGS, PAGE_SIZE, RING_ALIGN};
use ::virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use ::virtio_drivers::{Error as DriverError, PhysAddr};
use rptun::remoteproc::platform::{LinkMap, Notify};
use rptun::remoteproc::vdev::VdevDriver;
use rptun::shm::{fence_release, Region};
use rptun::virtio::queue::{QueueLayout, MAX_QUEUE_SIZE};
use rptun::virtio::{status, Transport as _, VirtioError};
use rptun::wire::rsc::ANY;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// The used-ring id the adapter writes to end a wait on a device it gave up
/// on: no descriptor has it, so the crate's `pop_used` fails with
/// `WrongToken` instead of the crate spinning forever.
const POISON_ID: u32 = u32::MAX;

/// Offset of `reserved[0]` in a vdev entry (from its type word).
const VDEV_RESERVED0: usize = 26;

/// Where virtio-drivers put a queue's ring (physical addresses, as it
/// passed them to `queue_set`) and what the adapter published for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlacedRing {
    /// The descriptor table (= the ring start).
    pub desc: u64,
    /// The avail ring.
    pub avail: u64,
    /// The used ring.
    pub used: u64,
    /// Entries.
    pub size: u16,
    /// The device address written into the vring entry (with
    /// `align` = 4096 and `num` = `size`); `None` when it was refused (see
    /// [`Health::error`]).
    pub da: Option<u32>,
}

/// A queue the watchdog looks after.
#[derive(Debug)]
struct Watched {
    ring: PlacedRing,
    /// Region offset of the crate's `avail.idx`.
    avail_idx: usize,
    /// Region offset of the crate's used ring (`flags`).
    used: usize,
    /// Exempt from the stall timeout.
    idle: bool,
    poisoned: bool,
    seen_used: u16,
    since: Instant,
    /// The vring entry (`da`, `align`, `num`) before it was published.
    original: Option<[u32; 3]>,
}

#[derive(Debug)]
struct State {
    queues: [Option<Watched>; MAX_VRINGS],
    /// The first error.
    error: Option<AdapterError>,
    /// The device was given up on (FAILED, waits ended).
    broken: bool,
}

struct Shared {
    region: Region,
    status_offset: usize,
    /// Rings the vdev's own doorbell (best effort).
    ring_config: Box<dyn Fn() + Send + Sync>,
    stall_timeout: Option<Duration>,
    state: Mutex<State>,
    stop: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every mutation under the lock is a few plain stores: go on after
        // a panic elsewhere.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(st: &mut State, e: AdapterError) {
        log::error!("virtio-drivers over remoteproc: {e}");
        st.error.get_or_insert(e);
    }

    /// Gives up on the device: FAILED in the status byte, every waiting
    /// queue ended. Returns true the first time (the caller then rings the
    /// vdev's doorbell, outside the lock).
    fn break_locked(&self, st: &mut State, why: AdapterError) -> bool {
        let first = !st.broken;
        if first {
            Self::record(st, why);
            st.broken = true;
            if let Ok(s) = self.region.read_u8(self.status_offset) {
                fence_release();
                let _ = self.region.write_u8(self.status_offset, s | status::FAILED);
            }
        }
        for w in st.queues.iter_mut().flatten() {
            self.poison(w);
        }
        first
    }

    fn break_link(&self, why: AdapterError) {
        let first = {
            let mut st = self.lock();
            self.break_locked(&mut st, why)
        };
        if first {
            (self.ring_config)();
        }
    }

    /// Ends the crate's wait on `w`: if buffers are outstanding, completes
    /// the next used slot with [`POISON_ID`]. Once is enough: the crate never
    /// gets past that entry.
    fn poison(&self, w: &mut Watched) {
        if w.poisoned {
            return;
        }
        let r = &self.region;
        let (Ok(avail), Ok(used)) = (r.load_u16(w.avail_idx), r.load_u16(w.used + 2)) else {
            return;
        };
        if avail == used {
            return;
        }
        let elem = w.used + 4 + 8 * usize::from(used & (w.ring.size - 1));
        if r.write_u32(elem, POISON_ID).is_ok() && r.write_u32(elem + 4, 0).is_ok() {
            let _ = r.store_u16(w.used + 2, used.wrapping_add(1));
            w.poisoned = true;
        }
    }

    /// One look at the link (the watchdog thread).
    fn tick(&self) {
        let mut st = self.lock();
        if st.broken {
            // Requests added after the break (without a notify) end too.
            for w in st.queues.iter_mut().flatten() {
                self.poison(w);
            }
            return;
        }
        let Ok(s) = self.region.read_u8(self.status_offset) else {
            return;
        };
        let running = s & status::DRIVER_OK != 0 && s & status::FAILED == 0;
        if running && s & status::DEVICE_NEEDS_RESET != 0 {
            let first = self.break_locked(&mut st, AdapterError::NeedsReset);
            drop(st);
            if first {
                (self.ring_config)();
            }
            return;
        }
        let now = Instant::now();
        let mut stalled = None;
        for (q, w) in st.queues.iter_mut().enumerate() {
            let Some(w) = w else { continue };
            let (Ok(avail), Ok(used)) = (
                self.region.load_u16(w.avail_idx),
                self.region.load_u16(w.used + 2),
            ) else {
                continue;
            };
            if !running || w.idle || avail == used || used != w.seen_used {
                w.seen_used = used;
                w.since = now;
            } else if self
                .stall_timeout
                .is_some_and(|limit| now.duration_since(w.since) >= limit)
            {
                // q < MAX_VRINGS
                stalled.get_or_insert(q as u16);
            }
        }
        if let Some(queue) = stalled {
            let first = self.break_locked(&mut st, AdapterError::Stalled { queue });
            drop(st);
            if first {
                (self.ring_config)();
            }
        }
    }

    fn watch(&self, tick: Duration) {
        while !self.stop.load(Ordering::Acquire) {
            std::thread::park_timeout(tick);
            if self.stop.load(Ordering::Acquire) {
                break;
            }
            self.tick();
        }
    }
}

/// The health of a [`RemoteprocTransport`]'s link, shared with the
/// transport (keep a clone: the transport moves into the virtio-drivers
/// device).
#[derive(Clone)]
pub struct Health(Arc<Shared>);

impl core::fmt::Debug for Health {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Health")
            .field("error", &self.error())
            .field("broken", &self.is_broken())
            .finish()
    }
}

impl Health {
    /// The platform learned that the peer is gone (the remote stopped or
    /// crashed): gives up on the device (FAILED) and ends every wait of
    /// the driver with an error.
    pub fn mark_gone(&self) {
        self.0.break_link(AdapterError::Gone);
    }

    /// The first error of the adapter: why a queue was refused, why the
    /// device was given up on. The virtio-drivers errors (`InvalidParam`
    /// for a refused queue, `WrongToken` for a wait ended on a broken
    /// device) do not say; this does.
    pub fn error(&self) -> Option<AdapterError> {
        self.0.lock().error
    }

    /// True once the device was given up on.
    pub fn is_broken(&self) -> bool {
        self.0.lock().broken
    }

    /// Where the driver placed queue `q`, while it is set up.
    pub fn ring(&self, q: u16) -> Option<PlacedRing> {
        let st = self.0.lock();
        st.queues.get(usize::from(q))?.as_ref().map(|w| w.ring)
    }
}

/// virtio-drivers' [`Transport`] over the driver side of a remoteproc vdev.
///
/// - device type, 32-bit feature words, status byte and config space are
///   the vdev entry's (through [`VdevDriver`]); the device never offers
///   `VERSION_1` (bit 32), so the crate drives it as a legacy device, and
///   [`Transport::requires_legacy_layout`] is true;
/// - queues: the crate allocates each ring (from [`RemoteprocHal`]'s pool)
///   and the adapter writes its device address, `align` = 4096 and `num`
///   into the vring entry before `DRIVER_OK`, for the vrings
///   [`RingPlacement`] allows; others are refused (`max_queue_size` 0: the
///   crate fails with `InvalidParam`, [`Health::error`] says why);
/// - `notify` rings the vring's doorbell; `ack_interrupt` reports a queue
///   interrupt (a vdev has no interrupt status register: callers re-check
///   their queues);
/// - errors the crate's `Transport` cannot return are recorded in
///   [`Health`]; any of them makes `DRIVER_OK` a FAILED, and a broken
///   device ends the crate's waits (see [`Options`]).
///
/// [`RemoteprocHal`]: super::RemoteprocHal
pub struct RemoteprocTransport<N: Notify> {
    driver: VdevDriver<N>,
    map: LinkMap,
    device_type: DeviceType,
    placement: RingPlacement,
    idle: u8,
    shared: Arc<Shared>,
    watchdog: Option<JoinHandle<()>>,
    /// Frees the domain's bounce buffers (when the driver goes away).
    release_bounces: fn(),
}

fn release_bounces<D: DmaDomain>() {
    if let Some(n) = D::slot().with(|p| p.release_bounces()).filter(|&n| n > 0) {
        log::debug!("freed {n} bounce buffers of requests still posted at teardown");
    }
}

impl<N: Notify> core::fmt::Debug for RemoteprocTransport<N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RemoteprocTransport")
            .field("vdev", &self.driver.info().index)
            .field("device_type", &self.device_type)
            .field("placement", &self.placement)
            .finish_non_exhaustive()
    }
}

impl<N: Notify + Clone + Send + Sync + 'static> RemoteprocTransport<N> {
    /// The transport for `driver` (this side must be the link's master and
    /// the vdev's driver), whose region `map` translates, installing the
    /// vdev's buffer pool as DMA domain `D`'s (use `RemoteprocHal<D>` with
    /// it). `placement` says which vrings the driver may place (see
    /// [`RingPlacement`]); `options` how the link is watched.
    pub fn new<D: DmaDomain>(
        driver: VdevDriver<N>,
        map: LinkMap,
        placement: RingPlacement,
        options: Options,
    ) -> Result<Self, AdapterError> {
        let info = *driver.info();
        let device_type = DeviceType::try_from(info.id)
            .map_err(|_| AdapterError::UnknownDevice { id: info.id })?;
        let link = driver.link();
        let window = link.window();
        if map.phys.base() != window.pa {
            return Err(AdapterError::MapMismatch {
                map_pa: map.phys.base(),
                link_pa: window.pa,
            });
        }
        let reserved0 = link
            .region()
            .read_u8(info.offset + VDEV_RESERVED0)
            .map_err(VirtioError::from)?;
        if reserved0 != 0 {
            return Err(AdapterError::RemoteDrives);
        }
        let range = info.pool.ok_or(AdapterError::NoPool)?;
        D::slot().install(DmaPool::new(link.region().clone(), window, range)?)?;

        let bell = link.clone();
        let shared = Arc::new(Shared {
            region: link.region().clone(),
            status_offset: info.status_offset(),
            ring_config: Box::new(move || {
                let _ = bell.notify_config();
            }),
            stall_timeout: options.stall_timeout,
            state: Mutex::new(State {
                queues: Default::default(),
                error: None,
                broken: false,
            }),
            stop: AtomicBool::new(false),
        });
        let watchdog = options.tick.and_then(|tick| {
            let s = shared.clone();
            std::thread::Builder::new()
                .name("virtio-drivers-watchdog".into())
                .spawn(move || s.watch(tick))
                .map_err(|e| log::warn!("no watchdog thread for the vdev: {e}"))
                .ok()
        });
        Ok(RemoteprocTransport {
            driver,
            map,
            device_type,
            placement,
            idle: options.idle_queues,
            shared,
            watchdog,
            release_bounces: release_bounces::<D>,
        })
    }
}

impl<N: Notify> RemoteprocTransport<N> {
    /// The link's health (keep a clone before handing the transport over).
    pub fn health(&self) -> Health {
        Health(self.shared.clone())
    }

    fn fail(&self, e: AdapterError) {
        Shared::record(&mut self.shared.lock(), e);
    }

    fn region(&self) -> &Region {
        self.driver.link().region()
    }

    /// The vring entry of `q`: `(da, align, num)`.
    fn entry(&self, q: u16) -> Result<(usize, [u32; 3]), AdapterError> {
        let at = self
            .driver
            .info()
            .vring_offset(q)
            .ok_or(AdapterError::NoQueue { queue: q })?;
        let r = self.region();
        let read = |o| r.read_u32(at + o).map_err(VirtioError::from);
        Ok((at, [read(0)?, read(4)?, read(8)?]))
    }

    /// Checks the crate's ring against the vring entry and publishes it:
    /// `(da, the entry before)`.
    fn publish(
        &self,
        q: u16,
        size: u16,
        desc: u64,
        avail: u64,
        used: u64,
    ) -> Result<(u32, [u32; 3]), AdapterError> {
        if !self.placement.contains(q) {
            return Err(AdapterError::FixedRing { queue: q });
        }
        let (at, before) = self.entry(q)?;
        if u32::from(size) > before[2] {
            return Err(AdapterError::QueueTooLarge {
                queue: q,
                size: u32::from(size),
                max: before[2],
            });
        }
        let mismatch = AdapterError::LayoutMismatch { queue: q };
        let outside = AdapterError::RingOutsideWindow { queue: q, pa: desc };
        let total = QueueLayout::legacy_size(desc, size, RING_ALIGN).map_err(|_| mismatch)?;
        let window = self.driver.link().window();
        let offset = window.to_offset(desc, total).map_err(|_| outside)?;
        // The layout a device derives from (da, align 4096, num) must be the
        // crate's: descriptors, avail ring right after, used ring on the
        // next 4096 boundary of the physical address.
        let expected = QueueLayout::legacy(offset, desc, size, RING_ALIGN).map_err(|_| mismatch)?;
        let at_pa = |o: usize| window.to_pa(o).map_err(|_| mismatch);
        if at_pa(expected.avail)? != avail || at_pa(expected.used)? != used {
            return Err(mismatch);
        }
        let da = self
            .map
            .pa_to_da(desc, total as u64)
            .ok()
            .and_then(|d| u32::try_from(d).ok())
            .filter(|&d| d != 0 && d != ANY)
            .ok_or(outside)?;
        let r = self.region();
        let write = |o, v| r.write_u32(at + o, v).map_err(VirtioError::from);
        write(8, u32::from(size))?;
        write(4, RING_ALIGN)?;
        write(0, da)?;
        // Read it back as the device will.
        let seen = self.driver.link().queue_mem(q).map(|m| m.layout);
        if seen != Ok(expected) {
            for (o, v) in [(0, before[0]), (4, before[1]), (8, before[2])] {
                let _ = write(o, v);
            }
            return Err(mismatch);
        }
        Ok((da, before))
    }

    /// Resets the device (once) and restores every published vring entry:
    /// the driver goes away, its rings are about to be freed.
    fn unpublish(&self, q: Option<u16>) {
        let mut st = self.shared.lock();
        let mut any = false;
        for (i, slot) in st.queues.iter_mut().enumerate() {
            if q.is_some_and(|q| usize::from(q) != i) {
                continue;
            }
            let Some(w) = slot.take() else { continue };
            any = true;
            if matches!(self.driver.link().status(), Ok(s) if s != 0) {
                if let Err(e) = self.driver.link().reset_status() {
                    log::warn!("vdev reset on queue teardown: {e}");
                }
            }
            if let (Some(orig), Some(at)) = (w.original, self.driver.info().vring_offset(i as u16))
            {
                for (o, v) in [(0, orig[0]), (4, orig[1]), (8, orig[2])] {
                    let _ = self.region().write_u32(at + o, v);
                }
            }
        }
        if !any && q.is_some() {
            log::debug!("queue_unset of a queue that was not set");
        }
    }
}

impl<N: Notify> Drop for RemoteprocTransport<N> {
    fn drop(&mut self) {
        // A driver whose set-up failed half-way never unsets its queues.
        self.unpublish(None);
        // The device is reset: buffers still posted (a console's pending
        // receive, a request ended by a break) are never unshared.
        (self.release_bounces)();
        self.shared.stop.store(true, Ordering::Release);
        if let Some(h) = self.watchdog.take() {
            h.thread().unpark();
            let _ = h.join();
        }
    }
}

impl<N: Notify> Transport for RemoteprocTransport<N> {
    fn device_type(&self) -> DeviceType {
        self.device_type
    }

    fn read_device_features(&mut self) -> u64 {
        // 32 bits: VERSION_1 (bit 32) is never offered.
        self.driver.device_features().unwrap_or_else(|e| {
            self.fail(e.into());
            0
        })
    }

    fn write_driver_features(&mut self, driver_features: u64) {
        if driver_features >> 32 != 0 {
            self.fail(AdapterError::FeaturesBeyond32 {
                features: driver_features,
            });
        }
        if let Err(e) = self
            .driver
            .set_driver_features(driver_features & u64::from(u32::MAX))
        {
            self.fail(e.into());
        }
    }

    fn max_queue_size(&mut self, queue: u16) -> u32 {
        if !self.placement.contains(queue) {
            self.fail(AdapterError::FixedRing { queue });
            return 0;
        }
        match self.entry(queue) {
            Ok((_, [_, _, num])) if num.is_power_of_two() && num <= u32::from(MAX_QUEUE_SIZE) => {
                num
            }
            Ok(_) => {
                self.fail(VirtioError::Protocol("a vring's num is not a power of two").into());
                0
            }
            Err(e) => {
                self.fail(e);
                0
            }
        }
    }

    fn notify(&mut self, queue: u16) {
        {
            let mut st = self.shared.lock();
            if st.broken {
                if let Some(Some(w)) = st.queues.get_mut(usize::from(queue)) {
                    self.shared.poison(w);
                }
                return;
            }
        }
        match self.driver.notify(queue) {
            Ok(()) => {}
            Err(VirtioError::Gone) => self.shared.break_link(AdapterError::Gone),
            Err(e) => self.fail(e.into()),
        }
    }

    fn get_status(&self) -> DeviceStatus {
        match self.driver.status() {
            Ok(s) => DeviceStatus::from_bits_retain(u32::from(s)),
            Err(_) => DeviceStatus::FAILED,
        }
    }

    fn set_status(&mut self, status: DeviceStatus) {
        // The status byte holds every defined bit.
        let v = (status.bits() & 0xff) as u8;
        if v & status::DRIVER_OK != 0 {
            let mut st = self.shared.lock();
            if st.error.is_some() || st.broken {
                let why = st.error.unwrap_or(AdapterError::Gone);
                let first = self.shared.break_locked(&mut st, why);
                drop(st);
                if first {
                    (self.shared.ring_config)();
                }
                return;
            }
        }
        match self.driver.set_status(v) {
            Ok(()) => {}
            Err(VirtioError::Gone) => self.shared.break_link(AdapterError::Gone),
            Err(e) => self.fail(e.into()),
        }
    }

    fn set_guest_page_size(&mut self, guest_page_size: u32) {
        if guest_page_size as usize != PAGE_SIZE {
            self.fail(AdapterError::PageSize {
                size: guest_page_size,
            });
        }
    }

    fn requires_legacy_layout(&self) -> bool {
        true
    }

    fn queue_set(
        &mut self,
        queue: u16,
        size: u32,
        descriptors: PhysAddr,
        driver_area: PhysAddr,
        device_area: PhysAddr,
    ) {
        let size = match u16::try_from(size) {
            Ok(s) if s.is_power_of_two() && s <= MAX_QUEUE_SIZE => s,
            _ => {
                self.fail(AdapterError::LayoutMismatch { queue });
                return;
            }
        };
        // The crate's avail and used rings must be memory the adapter can
        // reach, or a wait on a dead peer could not be ended.
        let window = self.driver.link().window();
        let n = usize::from(size);
        let (Ok(avail_at), Ok(used_at)) = (
            window.to_offset(driver_area, 6 + 2 * n),
            window.to_offset(device_area, 6 + 8 * n),
        ) else {
            panic!(
                "virtio-drivers placed queue {queue} outside the shared memory (pa \
                 {descriptors:#x}); use RemoteprocHal of the DMA domain the \
                 RemoteprocTransport was created with"
            );
        };
        let published = self.publish(queue, size, descriptors, driver_area, device_area);
        let (da, original) = match published {
            Ok((da, before)) => (Some(da), Some(before)),
            Err(e) => {
                self.fail(e);
                (None, None)
            }
        };
        let idle = queue < 8 && self.idle & (1 << queue) != 0;
        let mut st = self.shared.lock();
        if let Some(slot) = st.queues.get_mut(usize::from(queue)) {
            *slot = Some(Watched {
                ring: PlacedRing {
                    desc: descriptors,
                    avail: driver_area,
                    used: device_area,
                    size,
                    da,
                },
                avail_idx: avail_at + 2,
                used: used_at,
                idle,
                poisoned: false,
                seen_used: 0,
                since: Instant::now(),
                original,
            });
        }
    }

    fn queue_unset(&mut self, queue: u16) {
        self.unpublish(Some(queue));
    }

    fn queue_used(&mut self, queue: u16) -> bool {
        let st = self.shared.lock();
        matches!(st.queues.get(usize::from(queue)), Some(Some(_)))
    }

    fn ack_interrupt(&mut self) -> InterruptStatus {
        InterruptStatus::QUEUE_INTERRUPT
    }

    fn read_config_generation(&self) -> u32 {
        // A vdev's config space has no generation counter.
        0
    }

    fn read_config_space<T: FromBytes + IntoBytes>(&self, offset: usize) -> Result<T, DriverError> {
        if self.driver.info().config_len == 0 {
            return Err(DriverError::ConfigSpaceMissing);
        }
        let mut v = T::new_zeroed();
        match self.driver.read_config(offset, v.as_mut_bytes()) {
            Ok(()) => Ok(v),
            Err(VirtioError::ConfigOutOfRange { .. }) => Err(DriverError::ConfigSpaceTooSmall),
            Err(_) => Err(DriverError::IoError),
        }
    }

    fn write_config_space<T: IntoBytes + Immutable>(
        &mut self,
        offset: usize,
        value: T,
    ) -> Result<(), DriverError> {
        if self.driver.info().config_len == 0 {
            return Err(DriverError::ConfigSpaceMissing);
        }
        match self.driver.write_config(offset, value.as_bytes()) {
            Ok(()) => Ok(()),
            Err(VirtioError::ConfigOutOfRange { .. }) => Err(DriverError::ConfigSpaceTooSmall),
            Err(_) => Err(DriverError::IoError),
        }
    }
}
