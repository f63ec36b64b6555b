//! The remoteproc virtio transport: one vdev entry of a resource table seen
//! as a virtio device.
//!
//! [`VdevDriver`] implements [`Transport`] (this side is the vdev's virtio
//! driver) and [`VdevDevice`] implements [`DeviceTransport`] (this side is the
//! device). Both work without `alloc`: they hold the region, the address map,
//! the validated [`VdevInfo`] and a doorbell handle.
//!
//! - status byte, `dfeatures` and `gfeatures` live in the vdev entry; feature
//!   words are 32 bits (legacy virtio), higher bits are refused;
//! - config space is the `config_len` bytes after the vrings, bounded by the
//!   parsed table;
//! - a queue is the vring entry's ring: `da` → `pa` through the address
//!   environment → region offset, laid out with the legacy layout aligned on
//!   the absolute `pa`; descriptor addresses are physical addresses of the
//!   whole region;
//! - `notify(q)` rings the doorbell with the vring's notify id;
//! - a driver allocates buffers from its vdev's pool (the carveout after the
//!   vrings).
//!
//! The fields the peer may write (status, gfeatures, config, vring `da`,
//! `align` and `num`) are re-read and validated on every use. A device reads
//! its queues only from DRIVER_OK on: until then the vring entries are the
//! driver's to write.
#![forbid(unsafe_code)]

use crate::remoteproc::carveout::Carveout;
use crate::remoteproc::platform::{Doorbell, LinkMap, Notify};
use crate::remoteproc::table::VdevInfo;
use crate::shm::{fence_acquire, fence_release, Region};
use crate::virtio::queue::{QueueLayout, Window, MAX_QUEUE_SIZE};
use crate::virtio::{status, DeviceTransport, QueueMem, Role, Transport, VirtioError};
use crate::wire::rsc::ANY;

/// Most live allocations a driver's buffer pool tracks. Allocate rpmsg-style
/// buffer sets in one block per direction rather than buffer by buffer.
pub const POOL_CAPACITY: usize = 32;

/// What both transport roles share: a vdev entry in a region.
#[derive(Debug, Clone)]
pub struct VdevLink<N> {
    region: Region,
    map: LinkMap,
    info: VdevInfo,
    notifier: N,
}

impl<N: Notify> VdevLink<N> {
    /// The vdev `info` of a table in `region`, translated through `map`,
    /// ringing doorbells through `notifier`.
    pub fn new(region: Region, map: LinkMap, info: VdevInfo, notifier: N) -> Self {
        VdevLink {
            region,
            map,
            info,
            notifier,
        }
    }

    /// The validated summary of the vdev.
    pub fn info(&self) -> &VdevInfo {
        &self.info
    }

    /// Replaces the summary (the vring notify ids a device validated at
    /// DRIVER_OK, [`LinkTable::bind_vrings`](crate::remoteproc::table::LinkTable::bind_vrings)).
    #[cfg(feature = "alloc")]
    pub(crate) fn set_info(&mut self, info: VdevInfo) {
        self.info = info;
    }

    /// The shared region.
    pub fn region(&self) -> &Region {
        &self.region
    }

    /// The window mapping descriptor addresses (physical) to region offsets:
    /// the whole region.
    pub fn window(&self) -> Window {
        Window::new(self.map.phys.base(), 0, self.region.len())
    }

    /// The status byte.
    pub fn status(&self) -> Result<u8, VirtioError> {
        // Atomic: the other side writes it while we poll (a plain read was
        // a data race, reported by Miri).
        Ok(self.region.load_u8(self.info.status_offset())?)
    }

    /// Resets the device (status 0), as a driver that goes away does, and
    /// tells the peer.
    pub fn reset_status(&self) -> Result<(), VirtioError> {
        self.write_status(0)?;
        self.notify_config()
    }

    fn write_status(&self, s: u8) -> Result<(), VirtioError> {
        // Atomic store with release: everything written before (features,
        // rings, buffers) is visible to a peer that loads the new status.
        self.region.store_u8(self.info.status_offset(), s)?;
        Ok(())
    }

    /// `dfeatures`.
    pub fn device_features(&self) -> Result<u64, VirtioError> {
        Ok(u64::from(
            self.region.read_u32(self.info.dfeatures_offset())?,
        ))
    }

    /// `gfeatures`.
    pub fn driver_features(&self) -> Result<u64, VirtioError> {
        Ok(u64::from(
            self.region.read_u32(self.info.gfeatures_offset())?,
        ))
    }

    fn check_config(&self, offset: usize, len: usize) -> Result<usize, VirtioError> {
        let size = self.info.config_len;
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(self.info.config_offset() + offset),
            _ => Err(VirtioError::ConfigOutOfRange { offset, len, size }),
        }
    }

    /// Reads config space.
    pub fn read_config(&self, offset: usize, buf: &mut [u8]) -> Result<(), VirtioError> {
        let at = self.check_config(offset, buf.len())?;
        self.region.read_bytes(at, buf)?;
        fence_acquire();
        Ok(())
    }

    /// Writes config space.
    pub fn write_config(&self, offset: usize, buf: &[u8]) -> Result<(), VirtioError> {
        let at = self.check_config(offset, buf.len())?;
        fence_release();
        self.region.write_bytes(at, buf)?;
        Ok(())
    }

    /// Re-reads and validates vring `q`: `(da, align, num)`.
    fn vring(&self, q: u16) -> Result<(u32, u32, u16), VirtioError> {
        let at = self.info.vring_offset(q).ok_or(VirtioError::NoQueue(q))?;
        let da = self.region.read_u32(at)?;
        let align = self.region.read_u32(at + 4)?;
        let num = self.region.read_u32(at + 8)?;
        let num = u16::try_from(num)
            .ok()
            .filter(|n| n.is_power_of_two() && *n <= MAX_QUEUE_SIZE)
            .ok_or(VirtioError::Protocol(
                "a vring's num in the resource table is not a power of two up to 32768",
            ))?;
        if !align.is_power_of_two() || align < 4 {
            return Err(VirtioError::Protocol(
                "a vring's align in the resource table is not a power of two of at least 4",
            ));
        }
        if da == 0 || da == ANY {
            return Err(VirtioError::NotReady("the master has not placed the vring"));
        }
        Ok((da, align, num))
    }

    /// The size of queue `q` (the vring's `num`).
    pub fn queue_size(&self, q: u16) -> Result<u16, VirtioError> {
        self.vring(q).map(|(_, _, num)| num)
    }

    /// Where queue `q` lives, from the live vring entry.
    pub fn queue_mem(&self, q: u16) -> Result<QueueMem, VirtioError> {
        let (da, align, num) = self.vring(q)?;
        let bad = VirtioError::Protocol("a vring lies outside the shared memory");
        let pa = self.map.da_to_pa(u64::from(da), 1).map_err(|_| bad)?;
        // OpenAMP-packed rings lend `avail_event` to the next ring: map the
        // ring up to the end of its used ring.
        let size = QueueLayout::legacy_size_without_avail_event(pa, num, align)
            .map_err(|_| VirtioError::Protocol("a vring's address is not usable"))?;
        let pa = self
            .map
            .da_to_pa(u64::from(da), size as u64)
            .map_err(|_| bad)?;
        let offset = self.map.pa_to_offset(pa, size as u64).map_err(|_| bad)?;
        let layout = QueueLayout::legacy(offset, pa, num, align)
            .map_err(|_| VirtioError::Protocol("a vring's address is not usable"))?;
        Ok(QueueMem {
            region: self.region.clone(),
            layout,
            window: self.window(),
        })
    }

    /// Rings the peer's doorbell with the vdev's own notify id (after a
    /// status change, as OpenAMP's `rproc_virtio_set_status` does: a
    /// device-role peer learns DRIVER_OK this way).
    pub fn notify_config(&self) -> Result<(), VirtioError> {
        self.notifier
            .notify(Doorbell::Id(self.info.notifyid))
            .map_err(|_| VirtioError::Gone)
    }

    /// Rings the peer's doorbell for queue `q`.
    pub fn notify_queue(&self, q: u16) -> Result<(), VirtioError> {
        let id = self.info.vring_notifyid(q).ok_or(VirtioError::NoQueue(q))?;
        self.notifier
            .notify(Doorbell::Id(id))
            .map_err(|_| VirtioError::Gone)
    }
}

/// The driver side of a remoteproc vdev ([`Transport`]).
#[derive(Debug, Clone)]
pub struct VdevDriver<N> {
    link: VdevLink<N>,
    pool: Option<Carveout<POOL_CAPACITY>>,
}

impl<N: Notify> VdevDriver<N> {
    /// The driver transport of `link`; fails if this side is the vdev's
    /// device.
    pub fn new(link: VdevLink<N>) -> Result<Self, VirtioError> {
        if link.info.role != Role::Driver {
            return Err(VirtioError::NotReady(
                "this side is the vdev's device, not its driver (see VdevInfo::role)",
            ));
        }
        let pool = link
            .info
            .pool
            .and_then(|p| Carveout::new(p.offset, p.len, p.pa).ok());
        Ok(VdevDriver { link, pool })
    }

    /// The shared part (status, config, queues).
    pub fn link(&self) -> &VdevLink<N> {
        &self.link
    }

    /// The validated summary of the vdev.
    pub fn info(&self) -> &VdevInfo {
        &self.link.info
    }
}

impl<N: Notify> Transport for VdevDriver<N> {
    fn device_id(&self) -> u32 {
        self.link.info.id
    }

    fn device_features(&self) -> Result<u64, VirtioError> {
        self.link.device_features()
    }

    fn set_driver_features(&mut self, features: u64) -> Result<(), VirtioError> {
        let high = features & !u64::from(u32::MAX);
        if high != 0 {
            return Err(VirtioError::UnsupportedFeatures(high));
        }
        self.link
            .region
            .write_u32(self.link.info.gfeatures_offset(), features as u32)?;
        Ok(())
    }

    fn status(&self) -> Result<u8, VirtioError> {
        self.link.status()
    }

    fn set_status(&mut self, status: u8) -> Result<(), VirtioError> {
        self.link.write_status(status)?;
        self.link.notify_config()
    }

    fn config_len(&self) -> usize {
        self.link.info.config_len
    }

    fn read_config(&self, offset: usize, buf: &mut [u8]) -> Result<(), VirtioError> {
        self.link.read_config(offset, buf)
    }

    fn write_config(&mut self, offset: usize, buf: &[u8]) -> Result<(), VirtioError> {
        self.link.write_config(offset, buf)
    }

    fn num_queues(&self) -> u16 {
        self.link.info.num_vrings()
    }

    fn max_queue_size(&self, queue: u16) -> Result<u16, VirtioError> {
        self.link.queue_size(queue)
    }

    fn setup_queue(&mut self, queue: u16, size: u16) -> Result<QueueMem, VirtioError> {
        let mem = self.link.queue_mem(queue)?;
        if size != mem.layout.num {
            return Err(VirtioError::BadQueueSize {
                size,
                max: mem.layout.num,
            });
        }
        Ok(mem)
    }

    fn notify(&mut self, queue: u16) -> Result<(), VirtioError> {
        self.link.notify_queue(queue)
    }

    fn alloc_shared(&mut self, size: usize, align: usize) -> Result<usize, VirtioError> {
        let none = VirtioError::NoSharedMemory { size, align };
        self.pool
            .as_mut()
            .ok_or(none)?
            .alloc(size, align)
            .map_err(|_| none)
    }

    fn free_shared(&mut self, offset: usize, size: usize) {
        let freed = self.pool.as_mut().map(|p| p.free(offset));
        match freed {
            Some(Ok(len)) if len == size => {}
            Some(Ok(len)) => log::warn!(
                "vdev {}: freed block at {offset:#x} of {len} bytes as {size} bytes",
                self.link.info.index
            ),
            _ => log::warn!(
                "vdev {}: free of {size} bytes at {offset:#x}, which was not allocated",
                self.link.info.index
            ),
        }
    }

    fn region(&self) -> &Region {
        &self.link.region
    }

    fn window(&self) -> Window {
        self.link.window()
    }
}

/// The device side of a remoteproc vdev ([`DeviceTransport`]).
#[derive(Debug, Clone)]
pub struct VdevDevice<N> {
    link: VdevLink<N>,
}

impl<N: Notify> VdevDevice<N> {
    /// The device transport of `link`; fails if this side is the vdev's
    /// driver.
    pub fn new(link: VdevLink<N>) -> Result<Self, VirtioError> {
        if link.info.role != Role::Device {
            return Err(VirtioError::NotReady(
                "this side is the vdev's driver, not its device (see VdevInfo::role)",
            ));
        }
        Ok(VdevDevice { link })
    }

    /// The shared part (status, config, queues).
    pub fn link(&self) -> &VdevLink<N> {
        &self.link
    }

    /// The validated summary of the vdev.
    pub fn info(&self) -> &VdevInfo {
        &self.link.info
    }
}

/// True when a device may use the queues of a vdev with this status.
pub fn driver_ready(s: u8) -> bool {
    s & status::DRIVER_OK != 0 && s & status::FAILED == 0
}

impl<N: Notify> DeviceTransport for VdevDevice<N> {
    fn device_id(&self) -> u32 {
        self.link.info.id
    }

    fn device_features(&self) -> Result<u64, VirtioError> {
        self.link.device_features()
    }

    fn driver_features(&self) -> Result<u64, VirtioError> {
        self.link.driver_features()
    }

    fn status(&self) -> Result<u8, VirtioError> {
        self.link.status()
    }

    fn set_needs_reset(&mut self) -> Result<(), VirtioError> {
        let s = self.link.status()?;
        self.link.write_status(s | status::DEVICE_NEEDS_RESET)?;
        self.link.notify_config()
    }

    fn config_len(&self) -> usize {
        self.link.info.config_len
    }

    fn read_config(&self, offset: usize, buf: &mut [u8]) -> Result<(), VirtioError> {
        self.link.read_config(offset, buf)
    }

    fn write_config(&mut self, offset: usize, buf: &[u8]) -> Result<(), VirtioError> {
        self.link.write_config(offset, buf)
    }

    fn num_queues(&self) -> u16 {
        self.link.info.num_vrings()
    }

    fn queue(&self, queue: u16) -> Result<QueueMem, VirtioError> {
        if queue >= self.link.info.num_vrings() {
            return Err(VirtioError::NoQueue(queue));
        }
        let s = self.link.status()?;
        if s & status::FAILED != 0 {
            return Err(VirtioError::NotReady("the driver marked the device FAILED"));
        }
        if s & status::DRIVER_OK == 0 {
            return Err(VirtioError::NotReady(
                "the driver has not set DRIVER_OK yet",
            ));
        }
        self.link.queue_mem(queue)
    }

    fn notify(&mut self, queue: u16) -> Result<(), VirtioError> {
        self.link.notify_queue(queue)
    }

    fn region(&self) -> &Region {
        &self.link.region
    }
}

#[cfg(all(test, feature = "alloc"))]
mod tests {
    use super::*;
    use crate::remoteproc::addr::{AddrEnv, AddrEnvEntry, AddressMap, PhysMap};
    use crate::remoteproc::platform::{PlatformError, TableLocation};
    use crate::remoteproc::table::{adopt, assign};
    use core::cell::RefCell;
    use std::rc::Rc;

    const BOOT: &[u8] = include_bytes!("../../tests/vectors/after-boot.bin");
    const BASE: u64 = 0xf3d5_c000;

    #[derive(Clone, Default)]
    struct Rec(Rc<RefCell<Vec<Doorbell>>>);
    impl Notify for Rec {
        fn notify(&self, target: Doorbell) -> Result<(), PlatformError> {
            self.0.borrow_mut().push(target);
            Ok(())
        }
    }

    fn map() -> LinkMap {
        let env = AddrEnv::from_entries(&[AddrEnvEntry {
            pa: BASE,
            da: 0,
            size: BOOT.len() as u64,
        }])
        .unwrap();
        AddressMap::new(env, PhysMap::new(BASE, BOOT.len()).unwrap())
    }

    fn snapshot() -> (Region, TableLocation) {
        let r = Region::new_heap(BOOT.len());
        r.write_bytes(0, BOOT).unwrap();
        let loc = TableLocation {
            offset: 0x18,
            max_len: BOOT.len() - 0x18,
        };
        (r, loc)
    }

    fn rpmsg_device(rec: &Rec) -> VdevDevice<Rec> {
        let (r, loc) = snapshot();
        let mut s = vec![0u8; loc.max_len];
        let t = adopt(&r, loc, &map(), &mut s).unwrap();
        let info = *t.vdev(2).unwrap().as_ref().unwrap();
        VdevDevice::new(VdevLink::new(r, map(), info, rec.clone())).unwrap()
    }

    #[test]
    fn device_side_finds_the_snapshot_rings_and_config() {
        let rec = Rec::default();
        let mut d = rpmsg_device(&rec);
        assert_eq!(d.device_id(), 7);
        assert_eq!(d.device_features().unwrap(), 0xf);
        assert_eq!(d.driver_features().unwrap(), 0xf);
        assert_eq!(d.status().unwrap(), status::DRIVER_OK);
        assert_eq!(d.num_queues(), 2);
        let q0 = d.queue(0).unwrap();
        assert_eq!(q0.layout.desc, 0x201cc);
        // used ring aligned on the absolute address: 0x201cc + 150 -> 0x20268
        assert_eq!(q0.layout.used, 0x20268);
        assert_eq!(q0.layout.num, 8);
        assert_eq!(q0.window.pa, BASE);
        // the first rpmsg buffer as the descriptor names it
        let desc_addr = q0.region.read_u64(q0.layout.desc).unwrap();
        assert_eq!(q0.window.to_offset(desc_addr, 1536).unwrap(), 132000);
        assert_eq!(d.queue(1).unwrap().layout.desc, 0x202ac);
        assert_eq!(d.queue(2).unwrap_err(), VirtioError::NoQueue(2));
        let mut cfg = [0u8; 8];
        d.read_config(0, &mut cfg).unwrap();
        assert_eq!(cfg, [0, 6, 0, 0, 0, 6, 0, 0]);
        let mut name = [0u8; 6];
        d.read_config(24, &mut name).unwrap();
        assert_eq!(&name, b"server");
        assert_eq!(
            d.read_config(60, &mut cfg).unwrap_err(),
            VirtioError::ConfigOutOfRange {
                offset: 60,
                len: 8,
                size: 64
            }
        );
        d.notify(1).unwrap();
        assert_eq!(rec.0.borrow().as_slice(), &[Doorbell::Id(6)]);
    }

    #[test]
    fn device_side_waits_for_driver_ok_and_rechecks_peer_fields() {
        let rec = Rec::default();
        let d = rpmsg_device(&rec);
        let r = d.region().clone();
        let info = *d.info();
        r.write_u8(info.status_offset(), status::ACKNOWLEDGE | status::DRIVER)
            .unwrap();
        assert!(matches!(d.queue(0), Err(VirtioError::NotReady(_))));
        r.write_u8(info.status_offset(), status::DRIVER_OK | status::FAILED)
            .unwrap();
        assert!(matches!(d.queue(0), Err(VirtioError::NotReady(_))));
        r.write_u8(info.status_offset(), status::DRIVER_OK).unwrap();
        // the peer rewrites num and da after the table was adopted
        let ring = info.vring_offset(0).unwrap();
        r.write_u32(ring + 8, 7).unwrap();
        assert!(matches!(d.queue(0), Err(VirtioError::Protocol(_))));
        r.write_u32(ring + 8, 8).unwrap();
        r.write_u32(ring, 0x0fff_0000).unwrap();
        assert!(matches!(d.queue(0), Err(VirtioError::Protocol(_))));
        r.write_u32(ring, (BOOT.len() - 100) as u32).unwrap();
        assert!(matches!(d.queue(0), Err(VirtioError::Protocol(_))));
        r.write_u32(ring, ANY).unwrap();
        assert!(matches!(d.queue(0), Err(VirtioError::NotReady(_))));
    }

    #[test]
    fn driver_side_features_status_queues_and_pool() {
        let (r, loc) = snapshot();
        let mut s = vec![0u8; loc.max_len];
        let t = assign(&r, loc, &map(), &mut s).unwrap();
        let info = *t.vdev(2).unwrap().as_ref().unwrap();
        let rec = Rec::default();
        let link = VdevLink::new(r.clone(), map(), info, rec.clone());
        assert!(VdevDevice::new(link.clone()).is_err());
        let mut d = VdevDriver::new(link).unwrap();
        assert_eq!(
            d.set_driver_features(1 << 32 | 1).unwrap_err(),
            VirtioError::UnsupportedFeatures(1 << 32)
        );
        d.set_driver_features(0x5).unwrap();
        assert_eq!(r.read_u32(info.gfeatures_offset()).unwrap(), 5);
        d.set_status(0).unwrap();
        assert_eq!(d.status().unwrap(), 0);
        assert_eq!(d.max_queue_size(1).unwrap(), 8);
        assert_eq!(
            d.setup_queue(0, 16).unwrap_err(),
            VirtioError::BadQueueSize { size: 16, max: 8 }
        );
        assert_eq!(d.setup_queue(1, 8).unwrap().layout.desc, 0x202ac);
        let pool = info.pool.unwrap();
        let a = d.alloc_shared(1536 * 8, 16).unwrap();
        assert!(a >= pool.offset && a + 1536 * 8 <= pool.offset + pool.len);
        assert_eq!((BASE + a as u64) % 16, 0);
        assert!(matches!(
            d.alloc_shared(pool.len, 1),
            Err(VirtioError::NoSharedMemory { .. })
        ));
        d.free_shared(a, 1536 * 8);
        assert_eq!(d.alloc_shared(pool.len, 1).unwrap(), pool.offset);
        d.notify(0).unwrap();
        // the status write rang the vdev's own id, the queue its vring's
        assert_eq!(
            rec.0.borrow().as_slice(),
            &[Doorbell::Id(4), Doorbell::Id(5)]
        );
    }
}
