//! Shared set-up for the device tests: links (a driver transport and the
//! matching device transport in one process) and wait helpers.
//!
//! Every test runs over each link in `links()`: virtio-mmio (legacy and
//! with EVENT_IDX) and a remoteproc vdev (master drives; remote drives with
//! EVENT_IDX).
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rptun::remoteproc::addr::{AddrEnv, AddrEnvEntry, AddressMap, PhysMap};
use rptun::remoteproc::platform::{Doorbell, LinkMap, Notify, PlatformError, TableLocation};
use rptun::remoteproc::table::{adopt, assign, LinkTable};
use rptun::remoteproc::vdev::{VdevDevice, VdevDriver, VdevLink};
use rptun::shm::Region;
use rptun::virtio::mmio::{MmioDevice, MmioDeviceInfo, MmioHooks, MmioTransport, SharedMemory};
use rptun::virtio::queue::Window;
use rptun::virtio::{feature, DeviceTransport, QueueMem, Role, Transport, VirtioError};
use rptun::wire::rsc::{Carveout, Name, TableBuilder, Vdev, Vring, ANY};

/// Shared "physical" address of the window start.
pub const PA: u64 = 0x8000_0000;
/// Region size of one link.
pub const REGION_LEN: usize = 512 * 1024;

/// A driver transport and a device transport for the same device.
pub type Link = (DynTransport, DynDevice);

/// A virtio-mmio link: an emulated register file shared by the driver
/// transport and the device, rings and buffers in a heap region.
pub fn mmio_link(device_id: u32, queue_max: &[u16], config: &[u8]) -> Link {
    mmio_link_with(device_id, 0, queue_max, config)
}

/// As [`mmio_link`], the device offering `features`.
pub fn mmio_link_with(device_id: u32, features: u64, queue_max: &[u16], config: &[u8]) -> Link {
    let region = Region::new_heap(REGION_LEN);
    let window = Window::new(PA, 0, REGION_LEN);
    let info = MmioDeviceInfo {
        device_id,
        vendor_id: 0x5254_5054,
        features,
        queue_max,
        config,
    };
    let dev = Arc::new(MmioDevice::new(info, region.clone(), window).expect("mmio device"));
    let mut mem = SharedMemory::whole_window(region, window);
    mem.ring_align = 8;
    let drv = MmioTransport::new(dev.clone(), mem, Some(config.len())).expect("mmio transport");
    (DynTransport(Box::new(drv)), DynDevice(Box::new(dev)))
}

/// A doorbell: a counter and a condition variable.
#[derive(Default)]
pub struct Bell {
    count: Mutex<u64>,
    cv: Condvar,
}

impl Bell {
    pub fn ring(&self) {
        *self.count.lock().unwrap() += 1;
        self.cv.notify_all();
    }

    /// A `wait` closure that sleeps until the bell rang since the closure's
    /// last call, and gives up when one sleep lasts longer than `patience`
    /// (a lost notification) or after `total`.
    pub fn waiter(self: &Arc<Self>, patience: Duration, total: Duration) -> impl FnMut() -> bool {
        let bell = self.clone();
        let end = Instant::now() + total;
        let mut seen = *bell.count.lock().unwrap();
        move || {
            let mut count = bell.count.lock().unwrap();
            if *count == seen {
                let (c, timeout) = bell.cv.wait_timeout(count, patience).unwrap();
                count = c;
                if timeout.timed_out() && *count == seen {
                    eprintln!("no notification for {patience:?}: one was lost");
                    return false;
                }
            }
            seen = *count;
            Instant::now() < end
        }
    }
}

/// Doorbells of an emulated virtio-mmio device: `device` rings on the
/// driver's queue notifications, `driver` on the device's interrupts.
#[derive(Default, Clone)]
pub struct Bells {
    pub device: Arc<Bell>,
    pub driver: Arc<Bell>,
}

impl MmioHooks for Bells {
    fn queue_notified(&self, _queue: u16) {
        self.device.ring();
    }
    fn status_changed(&self, _status: u8) {
        self.device.ring();
    }
    fn interrupt(&self, _interrupt_status: u32) {
        self.driver.ring();
    }
}

/// A virtio-mmio link whose sides can sleep until notified.
pub fn mmio_link_with_bells(
    device_id: u32,
    features: u64,
    queue_max: &[u16],
    config: &[u8],
) -> (Link, Bells) {
    let region = Region::new_heap(REGION_LEN);
    let window = Window::new(PA, 0, REGION_LEN);
    let info = MmioDeviceInfo {
        device_id,
        vendor_id: 0x5254_5054,
        features,
        queue_max,
        config,
    };
    let bells = Bells::default();
    let dev = Arc::new(
        MmioDevice::with_hooks(info, region.clone(), window, bells.clone()).expect("mmio device"),
    );
    let mut mem = SharedMemory::whole_window(region, window);
    mem.ring_align = 8;
    let drv = MmioTransport::new(dev.clone(), mem, Some(config.len())).expect("mmio transport");
    (
        (DynTransport(Box::new(drv)), DynDevice(Box::new(dev))),
        bells,
    )
}

/// Every link kind, by name: the tests run over each.
///
/// "virtio-mmio" is a legacy device (no features: ring flags suppress
/// notifications); "virtio-mmio+event-idx" offers `VERSION_1` and
/// `EVENT_IDX`, so the drivers go through FEATURES_OK and both sides use the
/// event-index fields. "vdev/master-drives" is a remoteproc vdev whose
/// master (the side that assigns the table) is the driver, as in NuttX's
/// simulator; "vdev/remote-drives+event-idx" has `reserved[0] = 1` (the
/// remote is the driver) and offers `EVENT_IDX`.
pub fn links(device_id: u32, queue_max: &[u16], config: &[u8]) -> Vec<(&'static str, Link)> {
    let modern = 1 << feature::VERSION_1 | 1 << feature::RING_EVENT_IDX;
    let event_idx = 1u32 << feature::RING_EVENT_IDX;
    let nq = queue_max.len();
    vec![
        ("virtio-mmio", mmio_link(device_id, queue_max, config)),
        (
            "virtio-mmio+event-idx",
            mmio_link_with(device_id, modern, queue_max, config),
        ),
        (
            "vdev/master-drives",
            vdev_link(device_id, 0, nq, config, true, None).0,
        ),
        (
            "vdev/remote-drives+event-idx",
            vdev_link(device_id, event_idx, nq, config, false, None).0,
        ),
    ]
}

// ---- remoteproc vdev links -------------------------------------------------

/// Shared "physical" base of a vdev link's region.
pub const VDEV_BASE: u64 = 0x4000_0000;
/// Where the resource table lives (as in NuttX's simulator).
const RSC: usize = 0x18;
const RSC_MAX: usize = 0x400;
/// The vdev's carveout: vrings at its front, the driver's pool after them.
const CARVEOUT_DA: u32 = 0x1000;

/// A doorbell that rings a [`Bell`] (or nothing).
#[derive(Clone, Default)]
pub struct BellNotify(pub Option<Arc<Bell>>);

impl Notify for BellNotify {
    fn notify(&self, _target: Doorbell) -> Result<(), PlatformError> {
        if let Some(b) = &self.0 {
            b.ring();
        }
        Ok(())
    }
}

fn vdev_map() -> LinkMap {
    let env = AddrEnv::from_entries(&[AddrEnvEntry {
        pa: VDEV_BASE,
        da: 0,
        size: REGION_LEN as u64,
    }])
    .unwrap();
    AddressMap::new(env, PhysMap::new(VDEV_BASE, REGION_LEN).unwrap())
}

/// A remoteproc link with one vdev (`nq` vrings of 8 entries, align 8, as
/// NuttX's tables) and its carveout, assigned by the master and adopted by
/// the remote in one region. `master_drives` selects `reserved[0]`. With
/// `bells`, each side's doorbell rings the other's bell.
pub fn vdev_link(
    device_id: u32,
    dfeatures: u32,
    nq: usize,
    config: &[u8],
    master_drives: bool,
    bells: Option<&Bells>,
) -> (Link, Region) {
    let region = Region::new_heap(REGION_LEN);
    let mut b = TableBuilder::new_vec(2).unwrap();
    let v = Vdev {
        id: device_id,
        notifyid: ANY,
        dfeatures,
        reserved: [u8::from(!master_drives), 0],
        ..Vdev::default()
    };
    let ring = Vring {
        da: ANY,
        align: 8,
        num: 8,
        notifyid: ANY,
        reserved: 0,
    };
    b.add_vdev(&v, &vec![ring; nq], config).unwrap();
    b.add_carveout(&Carveout {
        da: CARVEOUT_DA,
        pa: ANY,
        len: (REGION_LEN - CARVEOUT_DA as usize) as u32,
        name: Name::new("dev_shm").unwrap(),
        ..Carveout::default()
    })
    .unwrap();
    let table = b.finish_vec().unwrap();
    region.write_bytes(RSC, &table).unwrap();
    let loc = TableLocation {
        offset: RSC,
        max_len: RSC_MAX,
    };
    let mut scratch = vec![0u8; RSC_MAX];
    let first = |t: LinkTable| *t.vdev(0).unwrap().as_ref().unwrap();
    let master = first(assign(&region, loc, &vdev_map(), &mut scratch).unwrap());
    let remote = first(adopt(&region, loc, &vdev_map(), &mut scratch).unwrap());
    let (drv_info, dev_info) = if master_drives {
        (master, remote)
    } else {
        (remote, master)
    };
    assert_eq!((drv_info.role, dev_info.role), (Role::Driver, Role::Device));
    // The driver's doorbell rings the device's bell and vice versa.
    let (to_dev, to_drv) = match bells {
        Some(b) => (
            BellNotify(Some(b.device.clone())),
            BellNotify(Some(b.driver.clone())),
        ),
        None => (BellNotify(None), BellNotify(None)),
    };
    let drv = VdevDriver::new(VdevLink::new(region.clone(), vdev_map(), drv_info, to_dev)).unwrap();
    let dev = VdevDevice::new(VdevLink::new(region.clone(), vdev_map(), dev_info, to_drv)).unwrap();
    (
        (DynTransport(Box::new(drv)), DynDevice(Box::new(dev))),
        region,
    )
}

/// A `wait` closure for the drivers: yields the CPU and gives up after
/// `timeout`.
pub fn deadline(timeout: Duration) -> impl FnMut() -> bool {
    let end = Instant::now() + timeout;
    move || {
        std::thread::yield_now();
        Instant::now() < end
    }
}

/// A `wait` closure that gives up after `n` calls.
pub fn tries(mut n: usize) -> impl FnMut() -> bool {
    move || {
        n = n.saturating_sub(1);
        n > 0
    }
}

/// Deterministic byte stream (xorshift64*), for checkable payloads and
/// as an entropy source.
#[derive(Clone)]
pub struct Stream(u64);

impl Stream {
    pub fn new(seed: u64) -> Stream {
        Stream(seed | 1)
    }
    pub fn next_u8(&mut self) -> u8 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            *b = self.next_u8();
        }
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0; n];
        self.fill(&mut v);
        v
    }
}

/// A driver transport whose peer can be made to vanish: once `gone` is set,
/// status reads and notifications report [`VirtioError::Gone`], as a
/// remoteproc transport does when the remote core stopped.
pub struct Vanishing<T> {
    pub inner: T,
    pub gone: Arc<AtomicBool>,
}

impl<T> Vanishing<T> {
    pub fn new(inner: T) -> (Vanishing<T>, Arc<AtomicBool>) {
        let gone = Arc::new(AtomicBool::new(false));
        (
            Vanishing {
                inner,
                gone: gone.clone(),
            },
            gone,
        )
    }
    fn alive(&self) -> Result<(), VirtioError> {
        if self.gone.load(Ordering::SeqCst) {
            Err(VirtioError::Gone)
        } else {
            Ok(())
        }
    }
}

impl<T: Transport> Transport for Vanishing<T> {
    fn device_id(&self) -> u32 {
        self.inner.device_id()
    }
    fn device_features(&self) -> Result<u64, VirtioError> {
        self.alive()?;
        self.inner.device_features()
    }
    fn set_driver_features(&mut self, f: u64) -> Result<(), VirtioError> {
        self.alive()?;
        self.inner.set_driver_features(f)
    }
    fn status(&self) -> Result<u8, VirtioError> {
        self.alive()?;
        self.inner.status()
    }
    fn set_status(&mut self, s: u8) -> Result<(), VirtioError> {
        self.alive()?;
        self.inner.set_status(s)
    }
    fn config_len(&self) -> usize {
        self.inner.config_len()
    }
    fn read_config(&self, o: usize, b: &mut [u8]) -> Result<(), VirtioError> {
        self.inner.read_config(o, b)
    }
    fn write_config(&mut self, o: usize, b: &[u8]) -> Result<(), VirtioError> {
        self.inner.write_config(o, b)
    }
    fn num_queues(&self) -> u16 {
        self.inner.num_queues()
    }
    fn max_queue_size(&self, q: u16) -> Result<u16, VirtioError> {
        self.inner.max_queue_size(q)
    }
    fn setup_queue(&mut self, q: u16, size: u16) -> Result<QueueMem, VirtioError> {
        self.inner.setup_queue(q, size)
    }
    fn notify(&mut self, q: u16) -> Result<(), VirtioError> {
        self.alive()?;
        self.inner.notify(q)
    }
    fn alloc_shared(&mut self, size: usize, align: usize) -> Result<usize, VirtioError> {
        self.inner.alloc_shared(size, align)
    }
    fn free_shared(&mut self, offset: usize, size: usize) {
        self.inner.free_shared(offset, size)
    }
    fn region(&self) -> &Region {
        self.inner.region()
    }
    fn window(&self) -> Window {
        self.inner.window()
    }
}

/// Any driver transport, boxed (so one test runs over every link kind).
pub struct DynTransport(pub Box<dyn Transport + Send>);

/// Any device transport, boxed.
pub struct DynDevice(pub Box<dyn DeviceTransport + Send>);

impl Transport for DynTransport {
    fn device_id(&self) -> u32 {
        self.0.device_id()
    }
    fn device_features(&self) -> Result<u64, VirtioError> {
        self.0.device_features()
    }
    fn set_driver_features(&mut self, f: u64) -> Result<(), VirtioError> {
        self.0.set_driver_features(f)
    }
    fn status(&self) -> Result<u8, VirtioError> {
        self.0.status()
    }
    fn set_status(&mut self, s: u8) -> Result<(), VirtioError> {
        self.0.set_status(s)
    }
    fn config_len(&self) -> usize {
        self.0.config_len()
    }
    fn read_config(&self, o: usize, b: &mut [u8]) -> Result<(), VirtioError> {
        self.0.read_config(o, b)
    }
    fn write_config(&mut self, o: usize, b: &[u8]) -> Result<(), VirtioError> {
        self.0.write_config(o, b)
    }
    fn num_queues(&self) -> u16 {
        self.0.num_queues()
    }
    fn max_queue_size(&self, q: u16) -> Result<u16, VirtioError> {
        self.0.max_queue_size(q)
    }
    fn setup_queue(&mut self, q: u16, size: u16) -> Result<QueueMem, VirtioError> {
        self.0.setup_queue(q, size)
    }
    fn notify(&mut self, q: u16) -> Result<(), VirtioError> {
        self.0.notify(q)
    }
    fn alloc_shared(&mut self, size: usize, align: usize) -> Result<usize, VirtioError> {
        self.0.alloc_shared(size, align)
    }
    fn free_shared(&mut self, offset: usize, size: usize) {
        self.0.free_shared(offset, size)
    }
    fn region(&self) -> &Region {
        self.0.region()
    }
    fn window(&self) -> Window {
        self.0.window()
    }
}

impl DeviceTransport for DynDevice {
    fn device_id(&self) -> u32 {
        self.0.device_id()
    }
    fn device_features(&self) -> Result<u64, VirtioError> {
        self.0.device_features()
    }
    fn driver_features(&self) -> Result<u64, VirtioError> {
        self.0.driver_features()
    }
    fn status(&self) -> Result<u8, VirtioError> {
        self.0.status()
    }
    fn set_needs_reset(&mut self) -> Result<(), VirtioError> {
        self.0.set_needs_reset()
    }
    fn config_len(&self) -> usize {
        self.0.config_len()
    }
    fn read_config(&self, o: usize, b: &mut [u8]) -> Result<(), VirtioError> {
        self.0.read_config(o, b)
    }
    fn write_config(&mut self, o: usize, b: &[u8]) -> Result<(), VirtioError> {
        self.0.write_config(o, b)
    }
    fn num_queues(&self) -> u16 {
        self.0.num_queues()
    }
    fn queue(&self, q: u16) -> Result<QueueMem, VirtioError> {
        self.0.queue(q)
    }
    fn notify(&mut self, q: u16) -> Result<(), VirtioError> {
        self.0.notify(q)
    }
    fn region(&self) -> &Region {
        self.0.region()
    }
}
