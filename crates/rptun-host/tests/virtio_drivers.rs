//! The unmodified virtio-drivers crate (`VirtIORng`, `VirtIOConsole`) over
//! rptun's remoteproc vdev transport, against rptun's own devices
//! (`RngDevice`, `ConsoleDevice`) in another thread over the same region.
//!
//! Run with `cargo test -p rptun-host --features virtio-drivers`.
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use rptun::devices::console::{ConsoleDevice, CONFIG_LEN};
use rptun::devices::rng::{EntropyError, RngDevice};
use rptun::devices::DeviceError;
use rptun::remoteproc::addr::{AddrEnv, AddrEnvEntry, AddressMap, PhysMap};
use rptun::remoteproc::platform::{Doorbell, LinkMap, Notify, PlatformError, TableLocation};
use rptun::remoteproc::table::{adopt, assign, LinkTable, PoolRange};
use rptun::remoteproc::vdev::{VdevDevice, VdevDriver, VdevLink};
use rptun::shm::Region;
use rptun::virtio::queue::{QueueLayout, Window};
use rptun::virtio::{feature, id, status, DeviceTransport, Role};
use rptun::wire::rsc::{Carveout, Name, TableBuilder, Vdev, Vring, ANY};
use rptun_host::dma_domain;
use rptun_host::virtio_drivers::{
    AdapterError, DmaDomain, DmaPool, Health, Options, RemoteprocHal, RemoteprocTransport,
    RingPlacement, PAGE_SIZE,
};
use virtio_drivers::device::console::VirtIOConsole;
use virtio_drivers::device::rng::VirtIORng;
use virtio_drivers::transport::{DeviceStatus, Transport};
use virtio_drivers::{BufferDirection, Hal};

// ---- a remoteproc link in one process --------------------------------------

/// Shared "physical" base of the region (page-aligned, not 0).
const BASE: u64 = 0x4000_0000;
const REGION_LEN: usize = 2 << 20;
/// Where the resource table lives (as in NuttX's simulator).
const RSC: usize = 0x18;
const RSC_MAX: usize = 0x400;
/// The vdev's carveout: the master's provisional vrings, then the pool.
const CARVEOUT_DA: u32 = 0x1000;

/// A doorbell: a counter and a condition variable.
#[derive(Default)]
struct Bell {
    count: Mutex<u64>,
    cv: Condvar,
}

impl Bell {
    fn ring(&self) {
        *self.count.lock().unwrap() += 1;
        self.cv.notify_all();
    }

    /// Sleeps until the bell rang since `seen` (or `patience` passed).
    fn wait(&self, seen: &mut u64, patience: Duration) {
        let count = self.count.lock().unwrap();
        let (count, _) = self
            .cv
            .wait_timeout_while(count, patience, |c| *c == *seen)
            .unwrap();
        *seen = *count;
    }
}

/// One side's doorbell to the other: rings the peer's bell, fails once the
/// peer is gone.
#[derive(Clone)]
struct Door {
    peer: Arc<Bell>,
    gone: Arc<AtomicBool>,
}

impl Notify for Door {
    fn notify(&self, _target: Doorbell) -> Result<(), PlatformError> {
        if self.gone.load(Ordering::SeqCst) {
            return Err(PlatformError::Failed("ring the doorbell: the peer is gone"));
        }
        self.peer.ring();
        Ok(())
    }
}

fn link_map() -> LinkMap {
    let env = AddrEnv::from_entries(&[AddrEnvEntry {
        pa: BASE,
        da: 0,
        size: REGION_LEN as u64,
    }])
    .unwrap();
    AddressMap::new(env, PhysMap::new(BASE, REGION_LEN).unwrap())
}

struct Link {
    region: Region,
    /// The table as the firmware shipped it (before the master's assignment).
    firmware: Vec<u8>,
    driver: VdevDriver<Door>,
    device: VdevDevice<Door>,
    /// Rung by the driver's doorbell.
    device_bell: Arc<Bell>,
    /// Makes the driver's doorbell fail.
    peer_gone: Arc<AtomicBool>,
}

/// A remoteproc link with one vdev of `nq` vrings of `num` entries (align 8,
/// at `ring_da`: ANY for "the master places it") and a carveout, assigned by
/// the master and adopted by the remote in one region. `master_drives`
/// selects `reserved[0]`.
fn link(device_id: u32, dfeatures: u32, nq: usize, num: u32, ring_da: u32, drives: bool) -> Link {
    let region = Region::new_heap(REGION_LEN);
    let mut b = TableBuilder::new_vec(2).unwrap();
    let v = Vdev {
        id: device_id,
        notifyid: ANY,
        dfeatures,
        reserved: [u8::from(!drives), 0],
        ..Vdev::default()
    };
    let ring = Vring {
        da: ring_da,
        align: 8,
        num,
        notifyid: ANY,
        reserved: 0,
    };
    let config = if device_id == id::CONSOLE {
        vec![0; CONFIG_LEN]
    } else {
        vec![]
    };
    b.add_vdev(&v, &vec![ring; nq], &config).unwrap();
    b.add_carveout(&Carveout {
        da: CARVEOUT_DA,
        pa: ANY,
        len: (REGION_LEN - CARVEOUT_DA as usize) as u32,
        name: Name::new("vdev0buffer").unwrap(),
        ..Carveout::default()
    })
    .unwrap();
    let firmware = b.finish_vec().unwrap();
    region.write_bytes(RSC, &firmware).unwrap();
    let loc = TableLocation {
        offset: RSC,
        max_len: RSC_MAX,
    };
    let mut scratch = vec![0u8; RSC_MAX];
    let first = |t: LinkTable| *t.vdev(0).unwrap().as_ref().unwrap();
    let master = first(assign(&region, loc, &link_map(), &mut scratch).unwrap());
    let remote = first(adopt(&region, loc, &link_map(), &mut scratch).unwrap());
    let (drv_info, dev_info) = if drives {
        (master, remote)
    } else {
        (remote, master)
    };
    assert_eq!((drv_info.role, dev_info.role), (Role::Driver, Role::Device));
    let device_bell = Arc::new(Bell::default());
    let peer_gone = Arc::new(AtomicBool::new(false));
    let to_dev = Door {
        peer: device_bell.clone(),
        gone: peer_gone.clone(),
    };
    let to_drv = Door {
        peer: Arc::new(Bell::default()),
        gone: Arc::new(AtomicBool::new(false)),
    };
    let driver = VdevDriver::new(VdevLink::new(region.clone(), link_map(), drv_info, to_dev));
    let device = VdevDevice::new(VdevLink::new(region.clone(), link_map(), dev_info, to_drv));
    Link {
        region,
        firmware,
        driver: driver.unwrap(),
        device: device.unwrap(),
        device_bell,
        peer_gone,
    }
}

impl Link {
    /// The adapter over this link's driver side, pool in domain `D`.
    fn transport<D: DmaDomain>(
        &self,
        options: Options,
    ) -> Result<RemoteprocTransport<Door>, AdapterError> {
        let placement = RingPlacement::from_firmware_table(&self.firmware, 0).unwrap();
        RemoteprocTransport::new::<D>(self.driver.clone(), link_map(), placement, options)
    }

    /// The vring entry of queue `q`: `(da, align, num)`.
    fn entry(&self, q: u16) -> [u32; 3] {
        let at = self.device.info().vring_offset(q).unwrap();
        [0, 4, 8].map(|o| self.region.read_u32(at + o).unwrap())
    }

    fn status(&self) -> u8 {
        self.region
            .read_u8(self.device.info().status_offset())
            .unwrap()
    }

    /// The crate's `avail.idx` of queue `q` (0 before it is set up).
    fn avail_idx(&self, health: &Health, q: u16) -> u16 {
        match health.ring(q) {
            Some(r) => self.region.load_u16((r.avail - BASE) as usize + 2).unwrap(),
            None => 0,
        }
    }
}

/// Runs `f` in a thread and fails the test if it has not returned after
/// `limit` (the crate's waits spin: a hang must not hang the test run).
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let h = thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => {
            h.join().unwrap();
            v
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            std::panic::resume_unwind(h.join().unwrap_err())
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("hung for {limit:?}"),
    }
}

const HANG: Duration = Duration::from_secs(120);

/// Deterministic byte stream (xorshift64*).
#[derive(Clone)]
struct Stream(u64);

impl Stream {
    fn new(seed: u64) -> Stream {
        Stream(seed | 1)
    }
    fn next_u8(&mut self) -> u8 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            *b = self.next_u8();
        }
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0; n];
        self.fill(&mut v);
        v
    }
}

/// Our virtio-rng device, serving until `stop`, drawing from `Stream(seed)`.
fn rng_device(link: &Link, seed: u64, stop: Arc<AtomicBool>) -> thread::JoinHandle<u64> {
    let t = link.device.clone();
    let bell = link.device_bell.clone();
    thread::spawn(move || {
        let mut s = Stream::new(seed);
        let src = move |buf: &mut [u8]| -> Result<(), EntropyError> {
            s.fill(buf);
            Ok(())
        };
        let mut dev = RngDevice::new(t, src).unwrap();
        let mut seen = 0;
        while !stop.load(Ordering::SeqCst) {
            match dev.poll() {
                Ok(0) | Err(DeviceError::Reset) => bell.wait(&mut seen, Duration::from_millis(2)),
                Ok(_) => {}
                Err(e) => panic!("rng device: {e}"),
            }
        }
        dev.served()
    })
}

// ---- virtio-rng ------------------------------------------------------------

#[test]
fn virtio_rng_gets_our_devices_bytes_which_differ_between_requests() {
    dma_domain!(Dom);
    let link = link(id::ENTROPY, 0, 1, 8, ANY, true);
    let provisional = link.entry(0);
    let stop = Arc::new(AtomicBool::new(false));
    let device = rng_device(&link, 7, stop.clone());
    let t = link
        .transport::<Dom>(Options::for_device(id::ENTROPY))
        .unwrap();
    let health = t.health();
    let (first, second, got) = within(HANG, move || {
        let mut rng = VirtIORng::<RemoteprocHal<Dom>, _>::new(t).unwrap();
        let mut a = [0u8; 64];
        let mut b = [0u8; 64];
        let na = rng.request_entropy(&mut a).unwrap();
        let nb = rng.request_entropy(&mut b).unwrap();
        (a, b, (na, nb, rng))
    });
    let (na, nb, rng) = got;
    // Exactly the device's stream, in order: the bytes came from our
    // RngDevice through the pool's bounce buffers into the caller's arrays.
    let mut expect = Stream::new(7);
    assert_eq!((na, nb), (64, 64));
    assert_eq!(first.to_vec(), expect.bytes(64));
    assert_eq!(second.to_vec(), expect.bytes(64));
    assert_ne!(first, second);
    assert_eq!(health.error(), None);

    // The crate's ring is published in the table: its device address, num
    // 8, align 4096; and what our device side derives from that entry is
    // exactly the crate's layout (used ring on the next page).
    let ring = health.ring(0).unwrap();
    let [da, align, num] = link.entry(0);
    assert_eq!(u64::from(da), ring.desc - BASE);
    assert_eq!(ring.da, Some(da));
    assert_eq!((align, num), (4096, 8));
    assert_ne!(u64::from(provisional[0]), ring.desc - BASE);
    let pool = link.device.info().pool.unwrap();
    let off = (ring.desc - BASE) as usize;
    assert!(off >= pool.offset && off + 2 * PAGE_SIZE <= pool.offset + pool.len);
    let seen = link.device.queue(0).unwrap().layout;
    assert_eq!(seen, QueueLayout::legacy(off, ring.desc, 8, 4096).unwrap());
    assert_eq!(seen.avail, off + 16 * 8);
    assert_eq!(seen.used, off + PAGE_SIZE);
    assert_eq!(BASE + seen.avail as u64, ring.avail);
    assert_eq!(BASE + seen.used as u64, ring.used);
    assert_eq!(link.status() & status::DRIVER_OK, status::DRIVER_OK);

    // Dropping the driver resets the device and restores the entry.
    drop(rng);
    assert_eq!(link.status(), 0);
    assert_eq!(link.entry(0), provisional);
    assert_eq!(Dom::slot().live(), 0, "rings and bounce buffers all freed");
    stop.store(true, Ordering::SeqCst);
    assert_eq!(device.join().unwrap(), 2);
}

#[test]
fn a_second_driver_on_the_same_domain_works_after_the_first() {
    dma_domain!(Dom);
    let link = link(id::ENTROPY, 0, 1, 8, ANY, true);
    let stop = Arc::new(AtomicBool::new(false));
    let device = rng_device(&link, 9, stop.clone());
    let mut expect = Stream::new(9);
    for _ in 0..2 {
        let t = link
            .transport::<Dom>(Options::for_device(id::ENTROPY))
            .unwrap();
        let got = within(HANG, move || {
            let mut rng = VirtIORng::<RemoteprocHal<Dom>, _>::new(t).unwrap();
            let mut a = [0u8; 100];
            let n = rng.request_entropy(&mut a).unwrap();
            a[..n].to_vec()
        });
        assert_eq!(got, expect.bytes(100));
    }
    stop.store(true, Ordering::SeqCst);
    device.join().unwrap();
}

// ---- virtio-console --------------------------------------------------------

/// What the driver hands to `send_bytes` at once.
const SEND_CHUNK: usize = 64 * 1024;

/// `bulk` bytes each way between virtio-drivers' console and ours, the
/// device offering `dfeatures`; every byte checked.
fn console_bulk<Dom: DmaDomain>(dfeatures: u32, bulk: usize) {
    let link = link(id::CONSOLE, dfeatures, 2, 8, ANY, true);
    let t = link
        .transport::<Dom>(Options::for_device(id::CONSOLE))
        .unwrap();
    let health = t.health();
    let dev = link.device.clone();
    let bell = link.device_bell.clone();
    let device = thread::spawn(move || {
        let mut dev = ConsoleDevice::new(dev).unwrap();
        let mut out = Stream::new(0xD0);
        let mut inp = Stream::new(0xD1);
        let (mut wrote, mut read, mut seen) = (0usize, 0usize, 0u64);
        let mut chunk: Vec<u8> = Vec::new();
        let mut pos = 0;
        let mut buf = vec![0u8; 64 * 1024];
        while wrote < bulk || read < bulk {
            let mut progress = false;
            if wrote < bulk {
                if pos == chunk.len() {
                    chunk = out.bytes((64 * 1024).min(bulk - wrote));
                    pos = 0;
                }
                let n = dev.write(&chunk[pos..]).unwrap();
                pos += n;
                wrote += n;
                progress |= n > 0;
            }
            let n = dev.read(&mut buf).unwrap();
            for (i, &b) in buf[..n].iter().enumerate() {
                assert_eq!(
                    b,
                    inp.next_u8(),
                    "driver -> device byte {} differs",
                    read + i
                );
            }
            read += n;
            assert!(read <= bulk, "the device read more than was sent");
            progress |= n > 0;
            if !progress {
                bell.wait(&mut seen, Duration::from_millis(2));
            }
        }
        (wrote, read)
    });
    let (sent, received) = within(HANG, move || {
        let mut con = VirtIOConsole::<RemoteprocHal<Dom>, _>::new(t).unwrap();
        let mut out = Stream::new(0xD1);
        let mut inp = Stream::new(0xD0);
        let mut chunk = vec![0u8; SEND_CHUNK];
        let (mut sent, mut received) = (0usize, 0usize);
        while sent < bulk || received < bulk {
            if sent < bulk {
                let n = SEND_CHUNK.min(bulk - sent);
                out.fill(&mut chunk[..n]);
                con.send_bytes(&chunk[..n]).unwrap();
                sent += n;
            }
            let mut any = false;
            while let Some(b) = con.recv(true).unwrap() {
                assert_eq!(b, inp.next_u8(), "device -> driver byte {received} differs");
                received += 1;
                any = true;
            }
            if !any && sent == bulk {
                thread::yield_now();
            }
        }
        assert_eq!(
            con.recv(false).unwrap(),
            None,
            "more bytes than were written"
        );
        (sent, received)
    });
    assert_eq!((sent, received), (bulk, bulk));
    // virtio-drivers accepted what was offered (it supports EVENT_IDX)
    assert_eq!(link.device.driver_features().unwrap(), u64::from(dfeatures));
    assert_eq!(device.join().unwrap(), (bulk, bulk));
    assert_eq!(health.error(), None);
    assert_eq!(Dom::slot().live(), 0);
}

#[test]
fn virtio_console_moves_ten_mib_each_way_byte_exact() {
    dma_domain!(Dom);
    console_bulk::<Dom>(0, 10 << 20);
}

#[test]
fn virtio_console_with_event_idx_moves_data_both_ways() {
    dma_domain!(Dom);
    console_bulk::<Dom>(1 << feature::RING_EVENT_IDX, 2 << 20);
}

#[test]
fn a_slow_device_reader_holds_the_driver_back_without_loss() {
    const TOTAL: usize = 1 << 20;
    const CHUNK: usize = 16 * 1024;
    const READ: usize = 1024;
    dma_domain!(Dom);
    let link = link(id::CONSOLE, 0, 2, 8, ANY, true);
    let t = link
        .transport::<Dom>(Options::for_device(id::CONSOLE))
        .unwrap();
    let dev = link.device.clone();
    let bell = link.device_bell.clone();
    // Bytes the device had read before its current read call.
    let consumed = Arc::new(AtomicUsize::new(0));
    let c = consumed.clone();
    let device = thread::spawn(move || {
        let mut dev = ConsoleDevice::new(dev).unwrap();
        let mut inp = Stream::new(5);
        let (mut read, mut seen) = (0usize, 0u64);
        let mut buf = [0u8; READ];
        while read < TOTAL {
            c.store(read, Ordering::Release);
            let n = dev.read(&mut buf).unwrap();
            for &b in &buf[..n] {
                assert_eq!(b, inp.next_u8(), "byte {read} differs");
                read += 1;
            }
            if n == 0 {
                bell.wait(&mut seen, Duration::from_millis(2));
            } else {
                // A slow reader.
                thread::sleep(Duration::from_micros(20));
            }
        }
        read
    });
    within(HANG, move || {
        let mut con = VirtIOConsole::<RemoteprocHal<Dom>, _>::new(t).unwrap();
        let mut out = Stream::new(5);
        let mut sent = 0;
        while sent < TOTAL {
            con.send_bytes(&out.bytes(CHUNK)).unwrap();
            sent += CHUNK;
            // send_bytes returned only once the device had taken the
            // chunk: before its last read call it had read all but at most
            // one read's worth.
            let c = consumed.load(Ordering::Acquire);
            assert!(
                c + READ >= sent,
                "send_bytes returned after {sent} bytes, the device had read {c}"
            );
        }
    });
    assert_eq!(device.join().unwrap(), TOTAL);
}

#[test]
fn a_driver_that_reads_slowly_holds_the_device_back_without_loss() {
    const TOTAL: usize = 1 << 20;
    dma_domain!(Dom);
    let link = link(id::CONSOLE, 0, 2, 8, ANY, true);
    let t = link
        .transport::<Dom>(Options::for_device(id::CONSOLE))
        .unwrap();
    let dev = link.device.clone();
    let bell = link.device_bell.clone();
    // How far the device got before it first found no receive buffer.
    let blocked_at = Arc::new(AtomicUsize::new(0));
    let b2 = blocked_at.clone();
    let device = thread::spawn(move || {
        let mut dev = ConsoleDevice::new(dev).unwrap();
        let data = Stream::new(6).bytes(TOTAL);
        let (mut done, mut seen, mut waits) = (0usize, 0u64, 0usize);
        while done < TOTAL {
            let n = dev.write(&data[done..]).unwrap();
            done += n;
            if n == 0 {
                if done > 0 && b2.load(Ordering::SeqCst) == 0 {
                    b2.store(done, Ordering::SeqCst);
                }
                waits += 1;
                bell.wait(&mut seen, Duration::from_millis(2));
            }
        }
        waits
    });
    let got = within(HANG, move || {
        let mut con = VirtIOConsole::<RemoteprocHal<Dom>, _>::new(t).unwrap();
        // Do not read until the device is stuck.
        while blocked_at.load(Ordering::SeqCst) == 0 {
            thread::sleep(Duration::from_millis(1));
        }
        let mut got = Vec::with_capacity(TOTAL);
        while got.len() < TOTAL {
            match con.recv(true).unwrap() {
                Some(b) => {
                    got.push(b);
                    if got.len() % PAGE_SIZE == 0 {
                        // A slow reader.
                        thread::sleep(Duration::from_micros(100));
                    }
                }
                None => thread::yield_now(),
            }
        }
        (got, blocked_at.load(Ordering::SeqCst))
    });
    let (got, blocked) = got;
    // The device could not run ahead of the reader by more than the one
    // receive buffer virtio-drivers posts.
    assert_eq!(blocked, PAGE_SIZE);
    assert!(
        got == Stream::new(6).bytes(TOTAL),
        "bytes lost or reordered"
    );
    assert!(device.join().unwrap() > 0);
}

// ---- a peer that goes away -------------------------------------------------

#[test]
fn a_device_that_dies_silently_ends_the_drivers_wait_with_an_error() {
    dma_domain!(Dom);
    let link = link(id::CONSOLE, 0, 2, 8, ANY, true);
    let options = Options {
        stall_timeout: Some(Duration::from_millis(200)),
        ..Options::for_device(id::CONSOLE)
    };
    let t = link.transport::<Dom>(options).unwrap();
    let health = t.health();
    let dev = link.device.clone();
    let bell = link.device_bell.clone();
    // The device reads 100 KiB, then its thread ends without a word.
    let device = thread::spawn(move || {
        let mut dev = ConsoleDevice::new(dev).unwrap();
        let (mut read, mut seen) = (0usize, 0u64);
        let mut buf = [0u8; 4096];
        while read < 100 * 1024 {
            let n = dev.read(&mut buf[..(100 * 1024 - read).min(4096)]).unwrap();
            read += n;
            if n == 0 {
                bell.wait(&mut seen, Duration::from_millis(2));
            }
        }
    });
    let (sent, err) = within(HANG, move || {
        let mut con = VirtIOConsole::<RemoteprocHal<Dom>, _>::new(t).unwrap();
        let chunk = [0x5a; 4096];
        let mut sent = 0;
        loop {
            match con.send_bytes(&chunk) {
                Ok(()) => sent += chunk.len(),
                Err(e) => break (sent, e),
            }
            assert!(sent < 100 << 20, "the driver kept sending to a dead device");
        }
    });
    device.join().unwrap();
    assert_eq!(err, virtio_drivers::Error::WrongToken);
    assert_eq!(sent, 100 * 1024);
    assert_eq!(health.error(), Some(AdapterError::Stalled { queue: 1 }));
    assert!(health.is_broken());
    assert_eq!(link.status(), 0, "the dropped driver reset the device");
}

#[test]
fn a_peer_reported_gone_ends_a_pending_request() {
    dma_domain!(Dom);
    let link = link(id::ENTROPY, 0, 1, 8, ANY, true);
    // No watchdog: the platform's word alone must end the wait.
    let options = Options {
        tick: None,
        stall_timeout: None,
        idle_queues: 0,
    };
    let t = link.transport::<Dom>(options).unwrap();
    let health = t.health();
    // No device serves the request; the platform learns that the remote
    // stopped once the request is posted.
    let h = health.clone();
    let region = link.region.clone();
    let platform = thread::spawn(move || {
        let avail = loop {
            if let Some(r) = h.ring(0) {
                break (r.avail - BASE) as usize + 2;
            }
            thread::sleep(Duration::from_millis(1));
        };
        while region.load_u16(avail).unwrap() == 0 {
            thread::sleep(Duration::from_millis(1));
        }
        h.mark_gone();
    });
    let (first, second) = within(HANG, move || {
        let mut rng = VirtIORng::<RemoteprocHal<Dom>, _>::new(t).unwrap();
        let mut a = [0u8; 32];
        let first = rng.request_entropy(&mut a);
        let second = rng.request_entropy(&mut a);
        (first, second)
    });
    platform.join().unwrap();
    assert_eq!(first, Err(virtio_drivers::Error::WrongToken));
    assert!(second.is_err(), "a request after the break fails at once");
    assert_eq!(health.error(), Some(AdapterError::Gone));
    assert_eq!(
        link.avail_idx(&health, 0),
        0,
        "the driver's drop unset the queue"
    );
}

#[test]
fn a_request_after_the_peer_went_away_fails_at_once() {
    dma_domain!(Dom);
    let link = link(id::ENTROPY, 0, 1, 8, ANY, true);
    let options = Options {
        tick: None,
        stall_timeout: None,
        idle_queues: 0,
    };
    let t = link.transport::<Dom>(options).unwrap();
    let health = t.health();
    let h = health.clone();
    let (region, at) = (link.region.clone(), link.device.info().status_offset());
    let (r, s) = within(HANG, move || {
        let mut rng = VirtIORng::<RemoteprocHal<Dom>, _>::new(t).unwrap();
        h.mark_gone();
        let mut a = [0u8; 32];
        (rng.request_entropy(&mut a), region.read_u8(at).unwrap())
    });
    assert_eq!(r, Err(virtio_drivers::Error::WrongToken));
    assert_eq!(health.error(), Some(AdapterError::Gone));
    // given up on: FAILED, not DRIVER_OK taken back
    assert_eq!(s & status::FAILED, status::FAILED);
}

#[test]
fn a_failing_doorbell_is_a_gone_peer() {
    dma_domain!(Dom);
    let link = link(id::ENTROPY, 0, 1, 8, ANY, true);
    let options = Options {
        tick: None,
        stall_timeout: None,
        idle_queues: 0,
    };
    let t = link.transport::<Dom>(options).unwrap();
    let health = t.health();
    let gone = link.peer_gone.clone();
    let r = within(HANG, move || {
        let mut rng = VirtIORng::<RemoteprocHal<Dom>, _>::new(t).unwrap();
        gone.store(true, Ordering::SeqCst);
        let mut a = [0u8; 32];
        rng.request_entropy(&mut a)
    });
    assert_eq!(r, Err(virtio_drivers::Error::WrongToken));
    assert_eq!(health.error(), Some(AdapterError::Gone));
}

#[test]
fn a_device_asking_for_a_reset_fails_the_pending_request() {
    dma_domain!(Dom);
    let link = link(id::ENTROPY, 0, 1, 8, ANY, true);
    let options = Options {
        stall_timeout: None,
        ..Options::for_device(id::ENTROPY)
    };
    let t = link.transport::<Dom>(options).unwrap();
    let health = t.health();
    let mut dev = link.device.clone();
    let h = health.clone();
    let region = link.region.clone();
    // The device sees the request and, instead of serving it, asks for a
    // reset (as our devices do when the driver breaks the protocol).
    let device = thread::spawn(move || {
        loop {
            if let Some(r) = h.ring(0) {
                if region.load_u16((r.avail - BASE) as usize + 2).unwrap() > 0 {
                    break;
                }
            }
            thread::sleep(Duration::from_millis(1));
        }
        dev.set_needs_reset().unwrap();
    });
    let r = within(HANG, move || {
        let mut rng = VirtIORng::<RemoteprocHal<Dom>, _>::new(t).unwrap();
        let mut a = [0u8; 32];
        rng.request_entropy(&mut a)
    });
    device.join().unwrap();
    assert_eq!(r, Err(virtio_drivers::Error::WrongToken));
    assert_eq!(health.error(), Some(AdapterError::NeedsReset));
}

// ---- refusals --------------------------------------------------------------

#[test]
fn vrings_the_firmware_fixed_are_refused_with_the_reason() {
    dma_domain!(Dom);
    let link = link(id::ENTROPY, 0, 1, 8, CARVEOUT_DA, true);
    assert_eq!(
        RingPlacement::from_firmware_table(&link.firmware, 0).unwrap(),
        RingPlacement::NONE
    );
    let before = link.entry(0);
    let t = link
        .transport::<Dom>(Options::for_device(id::ENTROPY))
        .unwrap();
    let health = t.health();
    let r = VirtIORng::<RemoteprocHal<Dom>, _>::new(t);
    assert_eq!(r.err(), Some(virtio_drivers::Error::InvalidParam));
    assert_eq!(health.error(), Some(AdapterError::FixedRing { queue: 0 }));
    assert_eq!(link.entry(0), before, "the fixed vring was not moved");
    assert_eq!(link.status() & status::DRIVER_OK, 0);
    assert_eq!(Dom::slot().live(), 0);
}

#[test]
fn a_remote_that_drives_the_vdev_is_refused() {
    dma_domain!(Dom);
    let link = link(id::ENTROPY, 0, 1, 8, ANY, false);
    assert_eq!(
        link.transport::<Dom>(Options::for_device(id::ENTROPY))
            .err(),
        Some(AdapterError::RemoteDrives)
    );
}

#[test]
fn feature_words_stay_32_bits_and_the_page_size_is_4096() {
    dma_domain!(Dom);
    let event_idx = 1 << feature::RING_EVENT_IDX;
    let link = link(id::ENTROPY, event_idx, 1, 8, ANY, true);
    let mut t = link
        .transport::<Dom>(Options::for_device(id::ENTROPY))
        .unwrap();
    let health = t.health();
    // A vdev is a legacy device: the offer never has VERSION_1 (bit 32).
    assert_eq!(t.read_device_features(), u64::from(event_idx));
    assert!(t.requires_legacy_layout());
    t.set_guest_page_size(4096);
    assert_eq!(health.error(), None);
    // A driver claiming bit 32 anyway gets the low word written and a
    // FAILED device instead of DRIVER_OK.
    t.write_driver_features(1 << 32 | u64::from(event_idx));
    let gf = link.device.info().gfeatures_offset();
    assert_eq!(link.region.read_u32(gf).unwrap(), event_idx);
    assert_eq!(
        health.error(),
        Some(AdapterError::FeaturesBeyond32 {
            features: 1 << 32 | u64::from(event_idx)
        })
    );
    t.set_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER | DeviceStatus::DRIVER_OK);
    assert_eq!(link.status() & status::DRIVER_OK, 0);
    assert_eq!(link.status() & status::FAILED, status::FAILED);
    assert!(health.is_broken());

    dma_domain!(Dom2);
    let link = self::link(id::ENTROPY, 0, 1, 8, ANY, true);
    let mut t = link
        .transport::<Dom2>(Options::for_device(id::ENTROPY))
        .unwrap();
    t.set_guest_page_size(16384);
    assert_eq!(
        t.health().error(),
        Some(AdapterError::PageSize { size: 16384 })
    );
}

#[test]
fn a_ring_not_in_the_legacy_4096_layout_is_not_published() {
    dma_domain!(Dom);
    let link = link(id::ENTROPY, 0, 1, 8, ANY, true);
    let before = link.entry(0);
    let mut t = link
        .transport::<Dom>(Options::for_device(id::ENTROPY))
        .unwrap();
    let health = t.health();
    let (pa, _) = RemoteprocHal::<Dom>::dma_alloc(2, BufferDirection::Both);
    // the used ring right after the avail ring (align 8), not on the next page
    t.queue_set(0, 8, pa, pa + 128, pa + 152);
    assert_eq!(
        health.error(),
        Some(AdapterError::LayoutMismatch { queue: 0 })
    );
    assert_eq!(health.ring(0).unwrap().da, None);
    assert_eq!(link.entry(0), before);
    // more entries than the table's vring
    t.queue_set(0, 16, pa, pa + 256, pa + 4096);
    assert_eq!(link.entry(0), before);
    // the legacy layout aligned to 4096 is published
    t.queue_set(0, 8, pa, pa + 128, pa + 4096);
    assert_eq!(link.entry(0), [(pa - BASE) as u32, 4096, 8]);
    assert_eq!(
        link.device.link().queue_mem(0).unwrap().layout,
        QueueLayout::legacy((pa - BASE) as usize, pa, 8, 4096).unwrap()
    );
    t.queue_unset(0);
    assert_eq!(link.entry(0), before);
}

#[test]
fn physical_address_zero_is_never_handed_out() {
    dma_domain!(Dom);
    // A region at physical address 0 whose pool starts there.
    let region = Region::new_heap(16 * PAGE_SIZE);
    let range = PoolRange {
        offset: 0,
        len: 16 * PAGE_SIZE,
        pa: 0,
    };
    let pool = DmaPool::new(region, Window::new(0, 0, 16 * PAGE_SIZE), range).unwrap();
    Dom::slot().install(pool).unwrap();
    let mut pas = Vec::new();
    loop {
        let (pa, ptr) = RemoteprocHal::<Dom>::dma_alloc(1, BufferDirection::Both);
        if pa == 0 {
            // virtio-drivers' "no memory": the pool is exhausted
            break;
        }
        assert_eq!(pa % PAGE_SIZE as u64, 0);
        assert_eq!(ptr.as_ptr() as usize % PAGE_SIZE, 0);
        pas.push(pa);
    }
    assert_eq!(pas.len(), 15, "every page but the first");
    assert!(!pas.contains(&0));
}
