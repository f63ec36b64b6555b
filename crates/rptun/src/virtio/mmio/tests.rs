//! End-to-end tests: the driver transport against the emulated device, and
//! both against hostile peers.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use super::*;
use crate::virtio::{
    feature, id, status, wait_driver_ok, DeviceTransport, QueueMem, Transport, VirtioError,
};

const PA: u64 = 0x8000_0000;
const WIN_OFF: usize = 0x1000;
const WIN_LEN: usize = 0xF000;

fn window() -> Window {
    Window {
        pa: PA,
        offset: WIN_OFF,
        len: WIN_LEN,
    }
}

/// NuttX-layout rpmsg config: buffer sizes 0x600/0x600, names at @24/@32.
fn rpmsg_config() -> [u8; 64] {
    let mut c = [0u8; 64];
    c[0..4].copy_from_slice(&0x600u32.to_le_bytes());
    c[4..8].copy_from_slice(&0x600u32.to_le_bytes());
    c[24..30].copy_from_slice(b"server");
    c[32..37].copy_from_slice(b"proxy");
    c
}

/// NS | ACK | BUFSZ, plus bit 32 so both feature words carry something.
const OFFERED: u64 = 0b111 | 1 << feature::VERSION_1;

fn info(config: &[u8]) -> MmioDeviceInfo<'_> {
    MmioDeviceInfo {
        device_id: id::RPMSG,
        vendor_id: 0x5254_5054,
        features: OFFERED,
        queue_max: &[8, 8],
        config,
    }
}

#[derive(Default)]
struct Recorder {
    kicks: Mutex<Vec<u16>>,
    statuses: Mutex<Vec<u8>>,
    interrupts: AtomicU32,
}

impl MmioHooks for Recorder {
    fn queue_notified(&self, queue: u16) {
        self.kicks.lock().unwrap().push(queue);
    }
    fn status_changed(&self, status: u8) {
        self.statuses.lock().unwrap().push(status);
    }
    fn interrupt(&self, _interrupt_status: u32) {
        self.interrupts.fetch_add(1, Ordering::SeqCst);
    }
}

fn device(region: &Region) -> MmioDevice<Recorder> {
    let config = rpmsg_config();
    MmioDevice::with_hooks(info(&config), region.clone(), window(), Recorder::default()).unwrap()
}

fn driver<B: MmioBus>(bus: B, region: &Region) -> MmioTransport<B> {
    MmioTransport::new(
        bus,
        SharedMemory::whole_window(region.clone(), window()),
        None,
    )
    .unwrap()
}

/// Runs the driver through the whole start-up sequence.
fn bring_up<B: MmioBus>(t: &mut MmioTransport<B>, accepted: u64) -> [QueueMem; 2] {
    t.set_status(status::ACKNOWLEDGE).unwrap();
    t.set_status(status::ACKNOWLEDGE | status::DRIVER).unwrap();
    t.set_driver_features(accepted).unwrap();
    t.set_status(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK)
        .unwrap();
    let q0 = t.setup_queue(0, 8).unwrap();
    let q1 = t.setup_queue(1, 4).unwrap();
    t.set_status(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK)
        .unwrap();
    [q0, q1]
}

fn layout_tuple(l: &QueueLayout) -> (usize, usize, usize, u16) {
    (l.desc, l.avail, l.used, l.num)
}

#[test]
fn negotiation_and_queue_setup_end_to_end() {
    let region = Region::new_heap(0x10000);
    let dev = device(&region);
    let mut t = driver(&dev, &region);
    assert_eq!(Transport::device_id(&t), id::RPMSG);
    assert_eq!(t.vendor_id(), 0x5254_5054);
    assert_eq!(Transport::num_queues(&t), 2);
    assert_eq!(
        Transport::config_len(&t),
        64,
        "rpmsg config length from the id table"
    );
    assert_eq!(t.max_queue_size(1), Ok(8));
    assert_eq!(Transport::device_features(&t), Ok(OFFERED));

    // The device must not see the driver's features or queues early.
    assert!(matches!(
        dev.driver_features(),
        Err(VirtioError::NotReady(_))
    ));
    let accepted = 0b101 | 1 << feature::VERSION_1;
    t.set_status(status::ACKNOWLEDGE).unwrap();
    t.set_status(status::ACKNOWLEDGE | status::DRIVER).unwrap();
    t.set_driver_features(accepted).unwrap();
    t.set_status(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK)
        .unwrap();
    assert_eq!(dev.driver_features(), Ok(accepted), "both feature words");
    let q0 = t.setup_queue(0, 8).unwrap();
    let q1 = t.setup_queue(1, 4).unwrap();
    assert!(matches!(dev.queue(0), Err(VirtioError::NotReady(_))));
    t.set_status(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK)
        .unwrap();

    assert_eq!(*dev.hooks().statuses.lock().unwrap(), [1, 3, 11, 15]);
    assert_eq!(DeviceTransport::status(&dev), Ok(15));
    assert_eq!(wait_driver_ok(&dev, || false), Ok(15));

    // Legacy layout, align 4096, window pa 0x8000_0000 at offset 0x1000:
    // q0 (8): desc 128 B, avail 22 B, used at the next 4 KiB, 4166 B total;
    // q1 (4) starts at the next 4 KiB physical boundary after that.
    assert_eq!(layout_tuple(&q0.layout), (0x1000, 0x1080, 0x2000, 8));
    assert_eq!(layout_tuple(&q1.layout), (0x3000, 0x3040, 0x4000, 4));
    // The device sees the same rings through its own translation.
    let d0 = DeviceTransport::queue(&dev, 0).unwrap();
    let d1 = DeviceTransport::queue(&dev, 1).unwrap();
    assert_eq!(layout_tuple(&d0.layout), layout_tuple(&q0.layout));
    assert_eq!(layout_tuple(&d1.layout), layout_tuple(&q1.layout));
    assert_eq!(d0.window.pa, PA);
}

#[test]
fn ring_alignment_follows_shared_memory_settings() {
    // NuttX-style align 8, pool starting mid-window at an odd physical
    // address: every part must be naturally aligned physically.
    let region = Region::new_heap(0x10000);
    let dev = device(&region);
    let mut mem = SharedMemory::whole_window(region.clone(), window());
    mem.ring_align = 8;
    mem.pool = 0x1004..0x2000;
    let mut t = MmioTransport::new(&dev, mem, None).unwrap();
    let [q0, _] = bring_up(&mut t, 0);
    // desc at the first 16-aligned pa (offset 0x1010), avail after 128 B,
    // used at the next multiple of 8 after avail's 22 B.
    assert_eq!(layout_tuple(&q0.layout), (0x1010, 0x1090, 0x10a8, 8));
    let d0 = dev.queue(0).unwrap();
    assert_eq!(layout_tuple(&d0.layout), layout_tuple(&q0.layout));
}

#[test]
fn device_refuses_features_it_did_not_offer() {
    let region = Region::new_heap(0x10000);
    let dev = device(&region);
    let mut t = driver(&dev, &region);
    assert_eq!(
        t.set_driver_features(1 << 5 | 1),
        Err(VirtioError::UnsupportedFeatures(1 << 5))
    );
    // A driver that writes the registers itself gets FEATURES_OK refused.
    dev.write32(regs::DRIVER_FEATURES_SEL, 0);
    dev.write32(regs::DRIVER_FEATURES, 1 << 5);
    dev.write32(regs::STATUS, u32::from(status::FEATURES_OK));
    assert_eq!(dev.read32(regs::STATUS), 0);
    assert!(matches!(
        t.set_status(status::FEATURES_OK),
        Err(VirtioError::Protocol(_))
    ));
    // Once FEATURES_OK holds, the accepted set is frozen.
    dev.write32(regs::STATUS, 0);
    t.set_driver_features(0b11).unwrap();
    t.set_status(status::FEATURES_OK).unwrap();
    dev.write32(regs::DRIVER_FEATURES_SEL, 0);
    dev.write32(regs::DRIVER_FEATURES, 0b100);
    assert_eq!(dev.driver_features(), Ok(0b11));
}

#[test]
fn config_space_both_ways() {
    let region = Region::new_heap(0x10000);
    let dev = device(&region);
    let mut t = driver(&dev, &region);
    let mut buf = [0u8; 64];
    t.read_config(0, &mut buf).unwrap();
    assert_eq!(buf, rpmsg_config());
    let mut size = [0u8; 4];
    t.read_config(4, &mut size).unwrap();
    assert_eq!(u32::from_le_bytes(size), 0x600);

    // Driver writes (odd offset and length) reach the device.
    t.write_config(41, &[1, 2, 3, 4, 5]).unwrap();
    let mut got = [0u8; 7];
    dev.read_config(40, &mut got).unwrap();
    assert_eq!(got, [0, 1, 2, 3, 4, 5, 0]);

    // Device writes reach the driver, bump the generation and, once the
    // driver is up, raise a config interrupt.
    let before = t.config_generation();
    dev.write_config(24, b"SERVER").unwrap();
    assert_ne!(t.config_generation(), before);
    assert_eq!(
        dev.interrupt_status(),
        0,
        "no interrupt before the driver starts"
    );
    t.set_status(status::ACKNOWLEDGE).unwrap();
    dev.write_config(32, b"PROXY").unwrap();
    assert_eq!(t.ack_interrupt(), regs::INT_CONFIG);
    let mut names = [0u8; 16];
    t.read_config(24, &mut names).unwrap();
    assert_eq!(&names, b"SERVER\0\0PROXY\0\0\0");
}

#[test]
fn config_access_out_of_range_is_an_error_on_both_sides() {
    let region = Region::new_heap(0x10000);
    let mut dev = device(&region);
    {
        let mut t = driver(&dev, &region);
        let mut b = [0u8; 8];
        assert_eq!(
            t.read_config(60, &mut b),
            Err(VirtioError::ConfigOutOfRange {
                offset: 60,
                len: 8,
                size: 64
            })
        );
        assert!(t.read_config(usize::MAX, &mut b).is_err());
        assert!(t.write_config(64, &[1]).is_err());
    }
    let mut b = [0u8; 1];
    assert!(DeviceTransport::read_config(&dev, 64, &mut b).is_err());
    assert_eq!(
        DeviceTransport::write_config(&mut dev, 63, &[1, 2]),
        Err(VirtioError::ConfigOutOfRange {
            offset: 63,
            len: 2,
            size: 64
        })
    );
    // Raw accesses past the config space read as zero and are dropped.
    dev.write32(regs::CONFIG + 62, 0xFFFF_FFFF);
    assert_eq!(dev.read32(regs::CONFIG + 60), 0);
    assert_eq!(dev.read8(regs::CONFIG + 64), 0);
    let mut tail = [0u8; 4];
    dev.read_config(60, &mut tail).unwrap();
    assert_eq!(tail, [0; 4]);
}

/// Records the width of every config-space access.
struct Widths<'a, B: MmioBus> {
    bus: &'a B,
    log: RefCell<Vec<(usize, u8)>>,
}

impl<B: MmioBus> MmioBus for Widths<'_, B> {
    fn read32(&self, offset: usize) -> u32 {
        if offset >= regs::CONFIG {
            self.log.borrow_mut().push((offset, 32));
        }
        self.bus.read32(offset)
    }
    fn write32(&self, offset: usize, value: u32) {
        if offset >= regs::CONFIG {
            self.log.borrow_mut().push((offset, 32));
        }
        self.bus.write32(offset, value)
    }
    fn read16(&self, offset: usize) -> u16 {
        self.log.borrow_mut().push((offset, 16));
        self.bus.read16(offset)
    }
    fn write16(&self, offset: usize, value: u16) {
        self.log.borrow_mut().push((offset, 16));
        self.bus.write16(offset, value)
    }
    fn read8(&self, offset: usize) -> u8 {
        self.log.borrow_mut().push((offset, 8));
        self.bus.read8(offset)
    }
    fn write8(&self, offset: usize, value: u8) {
        self.log.borrow_mut().push((offset, 8));
        self.bus.write8(offset, value)
    }
}

#[test]
fn config_fields_are_accessed_at_their_natural_width() {
    let region = Region::new_heap(0x10000);
    let dev = device(&region);
    let w = Widths {
        bus: &dev,
        log: RefCell::new(Vec::new()),
    };
    let mut t = driver(&w, &region);
    let mut b = [0u8; 8];
    t.read_config(0, &mut b).unwrap();
    assert_eq!(*w.log.borrow(), [(0x100, 32), (0x104, 32)]);
    w.log.borrow_mut().clear();
    let mut b = [0u8; 5];
    t.read_config(1, &mut b).unwrap();
    assert_eq!(*w.log.borrow(), [(0x101, 8), (0x102, 16), (0x104, 16)]);
    w.log.borrow_mut().clear();
    t.write_config(40, &[9, 9, 9, 9, 9, 9]).unwrap();
    assert_eq!(*w.log.borrow(), [(0x128, 32), (0x12c, 16)]);
}

#[test]
fn kicks_and_interrupts() {
    let region = Region::new_heap(0x10000);
    let dev = device(&region);
    let mut t = driver(&dev, &region);
    assert!(matches!(dev.notify(0), Err(VirtioError::NotReady(_))));
    bring_up(&mut t, 0);

    assert_eq!(dev.take_notifications(), 0);
    t.notify(1).unwrap();
    t.notify(1).unwrap();
    assert_eq!(dev.take_notifications(), 0b10, "kicks merge per queue");
    assert_eq!(dev.take_notifications(), 0);
    assert_eq!(t.notify(2), Err(VirtioError::NoQueue(2)));
    dev.write32(regs::QUEUE_NOTIFY, 99); // a hostile driver
    dev.write32(regs::QUEUE_NOTIFY, 32);
    assert_eq!(dev.take_notifications(), 0);
    assert_eq!(*dev.hooks().kicks.lock().unwrap(), [1, 1]);

    assert_eq!(t.ack_interrupt(), 0);
    dev.notify(0).unwrap();
    assert_eq!(dev.hooks().interrupts.load(Ordering::SeqCst), 1);
    assert_eq!(t.ack_interrupt(), regs::INT_VRING);
    assert_eq!(t.ack_interrupt(), 0);
    assert_eq!(dev.notify(2), Err(VirtioError::NoQueue(2)));

    let mut d: &MmioDevice<Recorder> = &dev;
    DeviceTransport::set_needs_reset(&mut d).unwrap();
    assert_eq!(t.ack_interrupt(), regs::INT_CONFIG);
    assert_ne!(t.status().unwrap() & status::DEVICE_NEEDS_RESET, 0);
}

#[test]
fn reset_clears_the_device_and_frees_the_rings() {
    let region = Region::new_heap(0x10000);
    let dev = device(&region);
    let mut t = driver(&dev, &region);
    let [q0, _] = bring_up(&mut t, 1);
    t.notify(0).unwrap();
    t.set_status(0).unwrap();
    assert_eq!(dev.status(), Ok(0));
    assert!(matches!(dev.queue(0), Err(VirtioError::NotReady(_))));
    assert!(matches!(
        dev.driver_features(),
        Err(VirtioError::NotReady(_))
    ));
    assert_eq!(dev.take_notifications(), 0);
    assert_eq!(dev.read32(regs::QUEUE_READY), 0);
    // The rings went back to the pool: the same placement comes back.
    let [again, _] = bring_up(&mut t, 1);
    assert_eq!(layout_tuple(&again.layout), layout_tuple(&q0.layout));
}

#[test]
fn queue_setup_errors() {
    let region = Region::new_heap(0x10000);
    let dev = device(&region);
    let mut t = driver(&dev, &region);
    for size in [0, 3, 16] {
        assert_eq!(
            t.setup_queue(0, size).map(|_| ()),
            Err(VirtioError::BadQueueSize { size, max: 8 })
        );
    }
    assert_eq!(
        t.setup_queue(2, 8).map(|_| ()),
        Err(VirtioError::NoQueue(2))
    );
    assert_eq!(t.max_queue_size(2), Err(VirtioError::NoQueue(2)));
    t.setup_queue(0, 8).unwrap();
    assert!(matches!(t.setup_queue(0, 8), Err(VirtioError::NotReady(_))));
    // A window too small for a ring.
    let mut mem = SharedMemory::whole_window(region.clone(), window());
    mem.pool = 0x1000..0x1100;
    let dev2 = device(&region);
    let mut small = MmioTransport::new(&dev2, mem, None).unwrap();
    assert!(matches!(
        small.setup_queue(0, 8),
        Err(VirtioError::NoSharedMemory { .. })
    ));
    // ... which leaves the pool usable.
    assert!(small.alloc_shared(0x100, 1).is_ok());
}

/// A device whose registers read fixed values, whatever is selected.
struct FakeBus {
    regs: HashMap<usize, u32>,
}

impl FakeBus {
    fn new(magic: u32, version: u32, device_id: u32, num_max: u32) -> FakeBus {
        let regs = HashMap::from([
            (regs::MAGIC_VALUE, magic),
            (regs::VERSION, version),
            (regs::DEVICE_ID, device_id),
            (regs::QUEUE_NUM_MAX, num_max),
        ]);
        FakeBus { regs }
    }
    fn good(num_max: u32) -> FakeBus {
        FakeBus::new(regs::MAGIC, 2, id::ENTROPY, num_max)
    }
}

impl MmioBus for FakeBus {
    fn read32(&self, offset: usize) -> u32 {
        self.regs.get(&offset).copied().unwrap_or(0)
    }
    fn write32(&self, _: usize, _: u32) {}
    fn read16(&self, _: usize) -> u16 {
        0
    }
    fn write16(&self, _: usize, _: u16) {}
    fn read8(&self, _: usize) -> u8 {
        0
    }
    fn write8(&self, _: usize, _: u8) {}
}

fn attach(bus: FakeBus, config_len: Option<usize>) -> Result<MmioTransport<FakeBus>, MmioError> {
    let region = Region::new_heap(0x10000);
    MmioTransport::new(
        bus,
        SharedMemory::whole_window(region, window()),
        config_len,
    )
}

#[test]
fn hostile_device_identity_is_rejected() {
    let e = |bus, len| attach(bus, len).err();
    assert_eq!(
        e(FakeBus::new(0, 2, 4, 8), None),
        Some(MmioError::BadMagic(0))
    );
    // "virt" stored big-endian is not the magic.
    assert_eq!(
        e(FakeBus::new(0x7669_7274, 2, 4, 8), None),
        Some(MmioError::BadMagic(0x7669_7274))
    );
    assert_eq!(
        e(FakeBus::new(regs::MAGIC, 1, 4, 8), None),
        Some(MmioError::LegacyVersion)
    );
    assert_eq!(
        e(FakeBus::new(regs::MAGIC, 3, 4, 8), None),
        Some(MmioError::BadVersion(3))
    );
    assert_eq!(
        e(FakeBus::new(regs::MAGIC, 2, 0, 8), None),
        Some(MmioError::NoDevice)
    );
    assert_eq!(
        e(FakeBus::new(regs::MAGIC, 2, id::BLOCK, 8), None),
        Some(MmioError::UnknownConfigLen(id::BLOCK))
    );
    assert_eq!(
        e(FakeBus::good(8), Some(0x101)),
        Some(MmioError::ConfigTooLarge {
            len: 0x101,
            max: 0x100
        })
    );
    let t = attach(FakeBus::new(regs::MAGIC, 2, id::BLOCK, 8), Some(60)).unwrap();
    assert_eq!(Transport::config_len(&t), 60);
}

#[test]
fn hostile_queue_sizes_are_bounded() {
    // No queue at all.
    let mut t = attach(FakeBus::good(0), None).unwrap();
    assert_eq!(Transport::num_queues(&t), 0);
    assert_eq!(
        t.setup_queue(0, 8).map(|_| ()),
        Err(VirtioError::NoQueue(0))
    );
    // Every selector reads non-zero: the probe stops at MAX_QUEUES.
    let t = attach(FakeBus::good(8), None).unwrap();
    assert_eq!(usize::from(Transport::num_queues(&t)), MAX_QUEUES);
    // A maximum that is not a power of two limits, but cannot be used as is.
    let mut t = attach(FakeBus::good(1000), None).unwrap();
    assert_eq!(t.max_queue_size(0), Ok(1000));
    assert_eq!(
        t.setup_queue(0, 1000).map(|_| ()),
        Err(VirtioError::BadQueueSize {
            size: 1000,
            max: 1000
        })
    );
    assert!(t.setup_queue(0, 512).is_ok());
    // Beyond the split-ring limit.
    let mut t = attach(FakeBus::good(0x1_0000), None).unwrap();
    assert!(matches!(t.max_queue_size(0), Err(VirtioError::Protocol(_))));
    assert!(matches!(t.setup_queue(0, 8), Err(VirtioError::Protocol(_))));
}

#[test]
fn bad_shared_memory_is_rejected() {
    let region = Region::new_heap(0x10000);
    let dev = device(&region);
    let mut mem = SharedMemory::whole_window(region.clone(), window());
    mem.window.len = 0x10000;
    assert!(matches!(
        MmioTransport::new(&dev, mem, None).err(),
        Some(MmioError::BadWindow { .. })
    ));
    let mut mem = SharedMemory::whole_window(region.clone(), window());
    mem.pool = 0x800..0x2000;
    assert_eq!(
        MmioTransport::new(&dev, mem, None).err(),
        Some(MmioError::PoolOutsideWindow {
            start: 0x800,
            end: 0x2000
        })
    );
    let mut mem = SharedMemory::whole_window(region.clone(), window());
    mem.ring_align = 12;
    assert_eq!(
        MmioTransport::new(&dev, mem, None).err(),
        Some(MmioError::BadRingAlign(12))
    );
    let mut mem = SharedMemory::whole_window(region.clone(), window());
    mem.window.pa = u64::MAX - 0x100;
    assert!(matches!(
        MmioTransport::new(&dev, mem, None).err(),
        Some(MmioError::BadWindow { .. })
    ));
    let mut mem = SharedMemory::whole_window(region.clone(), window());
    mem.window.pa = PA + 2;
    assert_eq!(
        MmioTransport::new(&dev, mem, None).err(),
        Some(MmioError::WindowMisaligned)
    );
}

#[test]
fn bad_device_declarations_are_rejected() {
    let region = Region::new_heap(0x10000);
    let config = [0u8; 0x101];
    let mk = |i: MmioDeviceInfo<'_>| MmioDevice::new(i, region.clone(), window()).err();
    assert_eq!(
        mk(MmioDeviceInfo {
            device_id: 0,
            ..info(&[])
        }),
        Some(MmioError::NoDevice)
    );
    assert_eq!(
        mk(MmioDeviceInfo {
            queue_max: &[8, 0],
            ..info(&[])
        }),
        Some(MmioError::BadQueueMax { queue: 1, max: 0 })
    );
    assert_eq!(
        mk(MmioDeviceInfo {
            queue_max: &[8; 17],
            ..info(&[])
        }),
        Some(MmioError::TooManyQueues(17))
    );
    assert!(matches!(
        mk(info(&config)),
        Some(MmioError::ConfigTooLarge { len: 0x101, .. })
    ));
}

/// Programs queue 0 of `dev` directly through its registers, as a hostile
/// driver could, and sets DRIVER_OK.
fn program(dev: &MmioDevice<Recorder>, num: u32, desc: u64, avail: u64, used: u64) {
    dev.write32(regs::QUEUE_SEL, 0);
    dev.write32(regs::QUEUE_NUM, num);
    for (low, v) in [
        (regs::QUEUE_DESC_LOW, desc),
        (regs::QUEUE_DRIVER_LOW, avail),
        (regs::QUEUE_DEVICE_LOW, used),
    ] {
        dev.write32(low, v as u32);
        dev.write32(low + 4, (v >> 32) as u32);
    }
    dev.write32(regs::QUEUE_READY, 1);
    dev.write32(regs::STATUS, u32::from(status::DRIVER_OK));
}

#[test]
fn device_validates_the_queue_addresses_the_driver_wrote() {
    let region = Region::new_heap(0x10000);
    let end = PA + WIN_LEN as u64;
    let protocol = |dev: &MmioDevice<Recorder>, what: &str| match dev.queue(0) {
        Err(VirtioError::Protocol(m)) => assert!(m.contains(what), "{m}"),
        other => panic!("expected a protocol error about the {what}, got {other:?}"),
    };
    let cases: [(u64, u64, u64, &str); 6] = [
        (end - 64, PA + 0x200, PA + 0x400, "descriptor table"), // runs past the end
        (PA - 0x1000, PA + 0x200, PA + 0x400, "descriptor table"), // below the window
        (
            PA + 0x1_0000_0000,
            PA + 0x200,
            PA + 0x400,
            "descriptor table",
        ), // high word
        (PA + 8, PA + 0x200, PA + 0x400, "descriptor table"),   // misaligned
        (PA, end - 20, PA + 0x400, "avail ring"),               // 22 bytes needed
        (PA, PA + 0x200, end - 68, "used ring"),                // 70 bytes needed
    ];
    for (desc, avail, used, what) in cases {
        let dev = device(&region);
        program(&dev, 8, desc, avail, used);
        protocol(&dev, what);
    }
    // Arbitrary placement is fine: used first, avail last, each ending
    // exactly at a boundary.
    let dev = device(&region);
    program(&dev, 8, PA + 0x800, end - 22, PA);
    let q = dev.queue(0).unwrap();
    assert_eq!(
        layout_tuple(&q.layout),
        (WIN_OFF + 0x800, WIN_OFF + WIN_LEN - 22, WIN_OFF, 8)
    );
    // A queue in use cannot be moved.
    dev.write32(regs::QUEUE_DESC_LOW, 0xdead_0000);
    dev.write32(regs::QUEUE_NUM, 3);
    assert_eq!(
        layout_tuple(&dev.queue(0).unwrap().layout),
        layout_tuple(&q.layout)
    );
}

#[test]
fn device_validates_the_queue_size_and_readiness() {
    let region = Region::new_heap(0x10000);
    for (num, size) in [(0, 0), (3, 3), (16, 16), (0x1_0000, u16::MAX)] {
        let dev = device(&region);
        program(&dev, num, PA, PA + 0x200, PA + 0x400);
        assert_eq!(
            dev.queue(0).map(|_| ()),
            Err(VirtioError::BadQueueSize { size, max: 8 })
        );
    }
    let dev = device(&region);
    program(&dev, 8, PA, PA + 0x200, PA + 0x400);
    assert!(dev.queue(0).is_ok());
    assert!(matches!(dev.queue(1), Err(VirtioError::NotReady(_))));
    assert_eq!(dev.queue(2).map(|_| ()), Err(VirtioError::NoQueue(2)));
    // Selecting a queue that does not exist reads as absent.
    dev.write32(regs::QUEUE_SEL, 5);
    assert_eq!(dev.read32(regs::QUEUE_NUM_MAX), 0);
    assert_eq!(dev.read32(regs::QUEUE_READY), 0);
}

/// Moves a buffer through queue 0 with raw ring accesses: the driver thread
/// posts a descriptor, the device thread reads it through its own
/// `QueueMem`, answers in the used ring and interrupts.
#[test]
fn bytes_cross_the_ring_between_two_threads() {
    let region = Region::new_heap(0x10000);
    let dev = Arc::new(device(&region));
    let device_side = {
        let dev = Arc::clone(&dev);
        std::thread::spawn(move || {
            let mut spins = 0u64;
            wait_driver_ok(&dev, || {
                spins += 1;
                std::thread::yield_now();
                spins < 50_000_000
            })
            .unwrap();
            let q = DeviceTransport::queue(&dev, 0).unwrap();
            let r = &q.region;
            let mut spins = 0u64;
            while dev.take_notifications() & 1 == 0 {
                spins += 1;
                assert!(spins < 50_000_000, "the driver never kicked queue 0");
                std::thread::yield_now();
            }
            let avail_idx = r.load_u16(q.layout.avail + 2).unwrap();
            assert_eq!(avail_idx, 1);
            let head = r.read_u16(q.layout.avail + 4).unwrap();
            assert_eq!(head, 0);
            let d = q.layout.desc + 16 * usize::from(head);
            let addr = r.read_u64(d).unwrap();
            let len = r.read_u32(d + 8).unwrap() as usize;
            let off = pa_to_offset(&q.window, addr, len).unwrap();
            let mut payload = vec![0u8; len];
            r.read_bytes(off, &mut payload).unwrap();
            assert_eq!(payload, b"hello, device");
            r.write_bytes(off, b"HELLO").unwrap();
            r.write_u32(q.layout.used + 4, u32::from(head)).unwrap();
            r.write_u32(q.layout.used + 8, 5).unwrap();
            r.store_u16(q.layout.used + 2, 1).unwrap();
            let mut d = Arc::clone(&dev);
            DeviceTransport::notify(&mut d, 0).unwrap();
        })
    };

    let mut t = driver(Arc::clone(&dev), &region);
    let [q, _] = bring_up(&mut t, 0b1);
    let r = Transport::region(&t).clone();
    let buf = t.alloc_shared(64, 16).unwrap();
    r.write_bytes(buf, b"hello, device").unwrap();
    let pa = offset_to_pa(&Transport::window(&t), buf).unwrap();
    r.write_u64(q.layout.desc, pa).unwrap();
    r.write_u32(q.layout.desc + 8, 13).unwrap();
    r.write_u16(q.layout.desc + 12, 0).unwrap();
    r.write_u16(q.layout.desc + 14, 0).unwrap();
    r.write_u16(q.layout.avail + 4, 0).unwrap();
    r.store_u16(q.layout.avail + 2, 1).unwrap();
    t.notify(0).unwrap();

    device_side.join().unwrap();
    assert_eq!(t.ack_interrupt(), regs::INT_VRING);
    assert_eq!(r.load_u16(q.layout.used + 2).unwrap(), 1);
    assert_eq!(r.read_u32(q.layout.used + 4).unwrap(), 0);
    assert_eq!(r.read_u32(q.layout.used + 8).unwrap(), 5);
    let mut back = [0u8; 5];
    r.read_bytes(buf, &mut back).unwrap();
    assert_eq!(&back, b"HELLO");
    t.free_shared(buf, 64);
}

#[test]
fn region_bus_reads_a_mapped_register_window() {
    let regs_region = Region::new_heap(0x200);
    regs_region
        .store_u32(regs::MAGIC_VALUE, regs::MAGIC)
        .unwrap();
    regs_region.store_u32(regs::VERSION, 2).unwrap();
    regs_region.store_u32(regs::DEVICE_ID, id::ENTROPY).unwrap();
    regs_region.store_u32(regs::VENDOR_ID, 0x1af4).unwrap();
    regs_region.store_u32(regs::QUEUE_NUM_MAX, 0).unwrap();
    let shared = Region::new_heap(0x10000);
    let t = MmioTransport::new(
        RegionBus::new(regs_region.clone()),
        SharedMemory::whole_window(shared, window()),
        None,
    )
    .unwrap();
    assert_eq!(t.vendor_id(), 0x1af4);
    assert_eq!(Transport::config_len(&t), 0);
    // Out-of-window accesses read as zero instead of failing.
    assert_eq!(t.bus().read32(0x200), 0);
    assert_eq!(t.bus().read16(0x101), 0);
    // A window that is not a device is refused.
    let empty = RegionBus::new(Region::new_heap(0x200));
    assert!(matches!(
        MmioTransport::new(
            empty,
            SharedMemory::whole_window(Region::new_heap(0x10000), window()),
            None
        ),
        Err(MmioError::BadMagic(0))
    ));
}

/// The device rewrites its whole config space with one repeated byte while
/// the driver reads it: thanks to `ConfigGeneration` the driver never
/// accepts a mix of two versions.
#[test]
fn config_reads_are_never_torn_by_device_writes() {
    let region = Region::new_heap(0x10000);
    let dev = Arc::new(device(&region));
    MmioDevice::write_config(&dev, 0, &[0xAA; 64]).unwrap();
    let done = Arc::new(AtomicU32::new(0));
    let writer = {
        let (dev, done) = (Arc::clone(&dev), Arc::clone(&done));
        std::thread::spawn(move || {
            let writes = if cfg!(miri) { 10 } else { 2000u32 };
            for k in 0..writes {
                MmioDevice::write_config(&dev, 0, &[k as u8; 64]).unwrap();
                std::thread::yield_now();
            }
            done.store(1, Ordering::SeqCst);
        })
    };
    let t = driver(Arc::clone(&dev), &region);
    let mut reads = 0;
    while done.load(Ordering::SeqCst) == 0 || reads == 0 {
        let mut buf = [0u8; 64];
        match t.read_config(0, &mut buf) {
            Ok(()) => {
                reads += 1;
                assert!(buf.iter().all(|&b| b == buf[0]), "torn read: {buf:?}");
            }
            // Bounded retries may run out while the device keeps writing.
            Err(e) => assert!(matches!(e, VirtioError::Protocol(_)), "{e:?}"),
        }
    }
    writer.join().unwrap();
}
