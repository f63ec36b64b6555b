//! A hostile peer on either side of a split ring: every protocol violation
//! gives its typed error and breaks the queue (all later calls fail with
//! `Broken`), never a panic, a hang or an access outside the region.
//!
//! The hostile peer is played by raw writes into the ring memory.

use rptun::shm::Region;
use rptun::virtio::queue::*;

const PA: u64 = 0x4000_0000;
const SIZE: usize = 4096;
const NUM: u16 = 8;
const BUFS: usize = 1024;

fn setup() -> (Region, QueueLayout, Window) {
    let r = Region::new_heap(SIZE);
    let l = QueueLayout::legacy(0, PA, NUM, 8).unwrap();
    (r, l, Window::new(PA, 0, SIZE))
}

fn pa(offset: usize) -> u64 {
    PA + offset as u64
}

// ---------------------------------------------------------------- device side

/// A hostile driver writing the ring by hand.
struct RawDriver {
    r: Region,
    l: QueueLayout,
    avail: u16,
}

impl RawDriver {
    fn desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let o = self.l.desc_at(i);
        self.r.write_u64(o, addr).unwrap();
        self.r.write_u32(o + 8, len).unwrap();
        self.r.write_u16(o + 12, flags).unwrap();
        self.r.write_u16(o + 14, next).unwrap();
    }
    /// Makes `head` available and publishes.
    fn post(&mut self, head: u16) {
        self.r
            .write_u16(self.l.avail_ring(self.avail % NUM), head)
            .unwrap();
        self.avail = self.avail.wrapping_add(1);
        self.r.store_u16(self.l.avail_idx(), self.avail).unwrap();
    }
}

fn device() -> (RawDriver, DeviceQueue) {
    let (r, l, w) = setup();
    let dev = DeviceQueue::new(r.clone(), l, w, false).unwrap();
    (RawDriver { r, l, avail: 0 }, dev)
}

fn assert_device_broken(dev: &mut DeviceQueue) {
    assert!(dev.is_broken());
    assert!(dev.indices().broken);
    assert_eq!(dev.pop::<16>().err(), Some(QueueError::Broken));
    assert_eq!(dev.has_avail(), Err(QueueError::Broken));
    assert_eq!(dev.push_used(0, 0), Err(QueueError::Broken));
    assert_eq!(dev.should_notify(), Err(QueueError::Broken));
    assert_eq!(dev.enable_notifications(), Err(QueueError::Broken));
    assert_eq!(dev.disable_notifications(), Err(QueueError::Broken));
}

#[test]
fn device_rejects_avail_head_out_of_range() {
    let (mut d, mut dev) = device();
    d.post(NUM);
    assert_eq!(
        dev.pop::<16>().err(),
        Some(QueueError::BadIndex { index: 8, num: NUM })
    );
    assert_device_broken(&mut dev);
}

#[test]
fn device_rejects_next_out_of_range() {
    let (mut d, mut dev) = device();
    d.desc(0, pa(BUFS), 16, VRING_DESC_F_NEXT, 0xffff);
    d.post(0);
    assert_eq!(
        dev.pop::<16>().err(),
        Some(QueueError::BadIndex {
            index: 0xffff,
            num: NUM
        })
    );
    assert_device_broken(&mut dev);
}

#[test]
fn device_rejects_looping_chain() {
    let (mut d, mut dev) = device();
    // 2 -> 3 -> 4 -> 2 -> ...: bounded by the queue size, not by M.
    d.desc(2, pa(BUFS), 16, VRING_DESC_F_NEXT, 3);
    d.desc(3, pa(BUFS), 16, VRING_DESC_F_NEXT, 4);
    d.desc(4, pa(BUFS), 16, VRING_DESC_F_NEXT, 2);
    d.post(2);
    assert_eq!(
        dev.pop::<64>().err(),
        Some(QueueError::ChainLoop { head: 2 })
    );
    assert_device_broken(&mut dev);
}

#[test]
fn device_rejects_chain_longer_than_its_capacity() {
    let (mut d, mut dev) = device();
    for i in 0..5 {
        let flags = if i < 4 { VRING_DESC_F_NEXT } else { 0 };
        d.desc(i, pa(BUFS + 16 * usize::from(i)), 16, flags, i + 1);
    }
    d.post(0);
    assert_eq!(
        dev.pop::<4>().err(),
        Some(QueueError::ChainTooLong { head: 0, max: 4 })
    );
    assert_device_broken(&mut dev);
}

#[test]
fn device_rejects_address_outside_window() {
    let (mut d, mut dev) = device();
    d.desc(0, PA - 16, 16, 0, 0);
    d.post(0);
    assert_eq!(
        dev.pop::<16>().err(),
        Some(QueueError::AddrOutOfWindow {
            addr: PA - 16,
            len: 16
        })
    );
    assert_device_broken(&mut dev);
}

#[test]
fn device_rejects_length_past_window_end() {
    let (mut d, mut dev) = device();
    d.desc(0, pa(SIZE - 16), 17, VRING_DESC_F_WRITE, 0);
    d.post(0);
    assert_eq!(
        dev.pop::<16>().err(),
        Some(QueueError::AddrOutOfWindow {
            addr: pa(SIZE - 16),
            len: 17
        })
    );
    assert_device_broken(&mut dev);
}

#[test]
fn device_rejects_address_plus_length_overflow() {
    let (mut d, mut dev) = device();
    d.desc(0, u64::MAX - 7, u32::MAX, 0, 0);
    d.post(0);
    assert!(matches!(
        dev.pop::<16>(),
        Err(QueueError::AddrOutOfWindow { .. })
    ));
    assert_device_broken(&mut dev);
}

#[test]
fn device_rejects_readable_after_writable() {
    let (mut d, mut dev) = device();
    d.desc(0, pa(BUFS), 16, VRING_DESC_F_NEXT, 1);
    d.desc(
        1,
        pa(BUFS + 16),
        16,
        VRING_DESC_F_NEXT | VRING_DESC_F_WRITE,
        2,
    );
    d.desc(2, pa(BUFS + 32), 16, 0, 0);
    d.post(0);
    assert_eq!(
        dev.pop::<16>().err(),
        Some(QueueError::ReadableAfterWritable { head: 0 })
    );
    assert_device_broken(&mut dev);
}

#[test]
fn device_rejects_indirect_descriptor() {
    let (mut d, mut dev) = device();
    d.desc(0, pa(BUFS), 32, VRING_DESC_F_INDIRECT, 0);
    d.post(0);
    assert_eq!(
        dev.pop::<16>().err(),
        Some(QueueError::IndirectUnsupported { head: 0 })
    );
    assert_device_broken(&mut dev);
}

#[test]
fn device_rejects_avail_index_jump() {
    let (d, mut dev) = device();
    d.desc(0, pa(BUFS), 16, 0, 0);
    // 9 entries "available" in an 8-entry queue.
    d.r.store_u16(d.l.avail_idx(), NUM + 1).unwrap();
    assert_eq!(
        dev.has_avail(),
        Err(QueueError::IndexJump {
            from: 0,
            to: 9,
            max: NUM
        })
    );
    assert_device_broken(&mut dev);
}

#[test]
fn device_rejects_more_chains_than_the_ring_holds_while_some_are_in_flight() {
    // Found by the queue_device fuzz target: the driver makes 8 chains
    // available, the device pops 3 and returns none, then the driver
    // publishes 8 more. Each step is at most `num` ahead of what the device
    // consumed, but 11 chains would be outstanding in an 8-entry ring.
    let (mut d, mut dev) = device();
    for i in 0..NUM {
        d.desc(i, pa(BUFS + 16 * usize::from(i)), 16, 0, 0);
        d.post(i);
    }
    for _ in 0..3 {
        assert!(dev.pop::<16>().unwrap().is_some());
    }
    assert_eq!(dev.in_flight(), 3);
    d.r.store_u16(d.l.avail_idx(), 3 + NUM).unwrap();
    assert_eq!(
        dev.has_avail(),
        Err(QueueError::IndexJump {
            from: 0,
            to: 11,
            max: NUM
        })
    );
    assert_device_broken(&mut dev);
    assert!(dev.indices().in_flight <= NUM);
}

#[test]
fn device_keeps_a_full_ring_in_flight() {
    // The boundary of the check above: all 8 chains popped and none
    // returned is legal; returning one makes room for exactly one more.
    let (mut d, mut dev) = device();
    for i in 0..NUM {
        d.desc(i, pa(BUFS + 16 * usize::from(i)), 16, 0, 0);
        d.post(i);
    }
    for _ in 0..NUM {
        assert!(dev.pop::<16>().unwrap().is_some());
    }
    assert_eq!(dev.in_flight(), usize::from(NUM));
    assert_eq!(dev.pop::<16>().unwrap().map(|c| c.head()), None);
    dev.push_used(0, 0).unwrap();
    d.post(0);
    assert_eq!(dev.pop::<16>().unwrap().map(|c| c.head()), Some(0));
    assert_eq!(dev.in_flight(), usize::from(NUM));
    assert!(!dev.is_broken());
}

#[test]
fn device_rejects_avail_index_going_backwards() {
    let (mut d, mut dev) = device();
    d.desc(0, pa(BUFS), 16, 0, 0);
    d.desc(1, pa(BUFS + 16), 16, 0, 0);
    d.post(0);
    d.post(1);
    assert!(dev.pop::<16>().unwrap().is_some());
    assert!(dev.pop::<16>().unwrap().is_some());
    // "unexposing" a buffer: 2 -> 1 looks like a jump of 65535.
    d.r.store_u16(d.l.avail_idx(), 1).unwrap();
    assert_eq!(
        dev.pop::<16>().err(),
        Some(QueueError::IndexJump {
            from: 2,
            to: 1,
            max: NUM
        })
    );
    assert_device_broken(&mut dev);
}

#[test]
fn device_refuses_to_attach_to_a_ring_with_an_impossible_backlog() {
    let (r, l, w) = setup();
    r.store_u16(l.used_idx(), 100).unwrap();
    r.store_u16(l.avail_idx(), 109).unwrap();
    assert_eq!(
        DeviceQueue::new(r.clone(), l, w, false).err(),
        Some(QueueError::IndexJump {
            from: 100,
            to: 109,
            max: NUM
        })
    );
    // 8 pending is fine: that is a full ring.
    r.store_u16(l.avail_idx(), 108).unwrap();
    let dev = DeviceQueue::new(r, l, w, false).unwrap();
    assert_eq!(dev.indices().last_avail, 100);
}

#[test]
fn device_rejecting_a_chain_changes_no_memory() {
    // The first buffer is fine, the second ends past the window: nothing of
    // the chain may be written (or returned) before the whole walk passed.
    let (mut d, mut dev) = device();
    d.desc(0, pa(BUFS), 16, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 1);
    d.desc(1, PA + SIZE as u64, 16, VRING_DESC_F_WRITE, 0);
    d.post(0);
    let before: Vec<u8> = {
        let mut b = vec![0u8; SIZE];
        d.r.read_bytes(0, &mut b).unwrap();
        b
    };
    assert_eq!(
        dev.pop::<16>().err(),
        Some(QueueError::AddrOutOfWindow {
            addr: PA + SIZE as u64,
            len: 16
        })
    );
    let mut after = vec![0u8; SIZE];
    d.r.read_bytes(0, &mut after).unwrap();
    assert_eq!(before, after);
}

// ---------------------------------------------------------------- driver side

/// A hostile device writing the used ring by hand.
struct RawDevice {
    r: Region,
    l: QueueLayout,
    used: u16,
}

impl RawDevice {
    fn put(&mut self, id: u32, len: u32) {
        let o = self.l.used_elem(self.used % NUM);
        self.r.write_u32(o, id).unwrap();
        self.r.write_u32(o + 4, len).unwrap();
        self.used = self.used.wrapping_add(1);
        self.r.store_u16(self.l.used_idx(), self.used).unwrap();
    }
}

fn driver() -> (RawDevice, DriverQueue<8>) {
    let (r, l, w) = setup();
    let drv = DriverQueue::<8>::new(r.clone(), l, w, false).unwrap();
    (RawDevice { r, l, used: 0 }, drv)
}

fn buf(i: usize, len: u32) -> Buf {
    Buf::new(BUFS + 256 * i, len)
}

fn assert_driver_broken(drv: &mut DriverQueue<8>) {
    assert!(drv.is_broken());
    assert!(drv.indices().broken);
    assert_eq!(drv.add(&[buf(0, 1)], &[]), Err(QueueError::Broken));
    assert_eq!(drv.publish(), Err(QueueError::Broken));
    assert_eq!(drv.pop_used(), Err(QueueError::Broken));
    assert_eq!(drv.has_used(), Err(QueueError::Broken));
    assert_eq!(drv.enable_interrupts(), Err(QueueError::Broken));
    assert_eq!(drv.disable_interrupts(), Err(QueueError::Broken));
}

#[test]
fn driver_rejects_used_id_out_of_range() {
    let (mut d, mut drv) = driver();
    drv.add(&[], &[buf(0, 64)]).unwrap();
    drv.publish().unwrap();
    d.put(0x1_0000, 0); // would be 0 if truncated to u16
    assert_eq!(
        drv.pop_used(),
        Err(QueueError::BadIndex {
            index: 0x1_0000,
            num: NUM
        })
    );
    assert_driver_broken(&mut drv);
}

#[test]
fn driver_rejects_used_id_that_is_not_a_chain_head() {
    let (mut d, mut drv) = driver();
    // Chain 0 -> 1; descriptor 1 is inside the chain, not its head.
    assert_eq!(drv.add(&[buf(0, 8)], &[buf(1, 64)]).unwrap(), 0);
    drv.publish().unwrap();
    d.put(1, 0);
    assert_eq!(drv.pop_used(), Err(QueueError::NotOutstanding { id: 1 }));
    assert_driver_broken(&mut drv);
}

#[test]
fn driver_rejects_used_id_of_a_free_descriptor() {
    let (mut d, mut drv) = driver();
    drv.add(&[buf(0, 8)], &[]).unwrap();
    drv.publish().unwrap();
    d.put(5, 0);
    assert_eq!(drv.pop_used(), Err(QueueError::NotOutstanding { id: 5 }));
    assert_driver_broken(&mut drv);
}

#[test]
fn driver_rejects_used_id_of_an_unpublished_chain() {
    let (mut d, mut drv) = driver();
    let a = drv.add(&[buf(0, 8)], &[]).unwrap();
    drv.publish().unwrap();
    let b = drv.add(&[buf(1, 8)], &[]).unwrap();
    assert_ne!(a, b);
    // The device cannot know about `b` yet.
    d.put(u32::from(b), 0);
    assert_eq!(drv.pop_used(), Err(QueueError::NotOutstanding { id: b }));
    assert_driver_broken(&mut drv);
}

#[test]
fn driver_rejects_a_chain_returned_twice() {
    let (mut d, mut drv) = driver();
    let a = drv.add(&[], &[buf(0, 64)]).unwrap();
    drv.add(&[], &[buf(1, 64)]).unwrap();
    drv.publish().unwrap();
    d.put(u32::from(a), 10);
    d.put(u32::from(a), 10);
    assert_eq!(drv.pop_used(), Ok(Some(Used { head: a, len: 10 })));
    assert_eq!(drv.pop_used(), Err(QueueError::NotOutstanding { id: a }));
    assert_driver_broken(&mut drv);
}

#[test]
fn driver_rejects_used_len_larger_than_posted() {
    let (mut d, mut drv) = driver();
    let a = drv.add(&[buf(0, 100)], &[buf(1, 40), buf(2, 24)]).unwrap();
    drv.publish().unwrap();
    d.put(u32::from(a), 65);
    assert_eq!(
        drv.pop_used(),
        Err(QueueError::UsedLenTooLarge {
            head: a,
            len: 65,
            capacity: 64
        })
    );
    assert_driver_broken(&mut drv);
}

#[test]
fn driver_accepts_used_len_equal_to_posted() {
    let (mut d, mut drv) = driver();
    let a = drv.add(&[buf(0, 100)], &[buf(1, 40), buf(2, 24)]).unwrap();
    drv.publish().unwrap();
    d.put(u32::from(a), 64);
    assert_eq!(drv.pop_used(), Ok(Some(Used { head: a, len: 64 })));
    assert_eq!(drv.num_free(), 8);
}

#[test]
fn driver_ignores_used_len_of_read_only_chains() {
    // OpenAMP/NuttX devices report the whole buffer size for buffers they
    // only read (after-boot.bin: used len 1536 on the TX ring).
    let (mut d, mut drv) = driver();
    let a = drv.add(&[buf(0, 200)], &[]).unwrap();
    drv.publish().unwrap();
    d.put(u32::from(a), 1536);
    assert_eq!(drv.pop_used(), Ok(Some(Used { head: a, len: 0 })));
    assert!(!drv.is_broken());
}

#[test]
fn driver_rejects_used_index_jump() {
    let (mut d, mut drv) = driver();
    let a = drv.add(&[], &[buf(0, 64)]).unwrap();
    drv.publish().unwrap();
    // Two entries returned, one chain outstanding.
    d.put(u32::from(a), 0);
    d.put(u32::from(a), 0);
    assert_eq!(
        drv.has_used(),
        Err(QueueError::IndexJump {
            from: 0,
            to: 2,
            max: 1
        })
    );
    assert_driver_broken(&mut drv);
}

#[test]
fn driver_rejects_used_index_moving_with_nothing_outstanding() {
    let (mut d, mut drv) = driver();
    // Added but unpublished chains do not count either.
    drv.add(&[], &[buf(0, 64)]).unwrap();
    d.put(0, 0);
    assert_eq!(
        drv.pop_used(),
        Err(QueueError::IndexJump {
            from: 0,
            to: 1,
            max: 0
        })
    );
    assert_driver_broken(&mut drv);
}

#[test]
fn driver_rejects_used_index_going_backwards() {
    let (mut d, mut drv) = driver();
    let a = drv.add(&[], &[buf(0, 64)]).unwrap();
    drv.publish().unwrap();
    d.put(u32::from(a), 0);
    assert!(drv.pop_used().unwrap().is_some());
    d.r.store_u16(d.l.used_idx(), 0).unwrap();
    assert!(matches!(
        drv.pop_used(),
        Err(QueueError::IndexJump { from: 1, to: 0, .. })
    ));
    assert_driver_broken(&mut drv);
}

#[test]
fn driver_never_reads_back_descriptors_or_avail_ring() {
    let (mut d, mut drv) = driver();
    let a = drv.add(&[buf(0, 10)], &[buf(1, 20), buf(2, 30)]).unwrap();
    let b = drv.add(&[buf(3, 40)], &[]).unwrap();
    drv.publish().unwrap();
    // The device scribbles over the descriptor table, the avail ring and
    // avail.idx (all driver-owned).
    d.r.fill(d.l.desc, 16 * usize::from(NUM), 0xa5).unwrap();
    d.r.fill(d.l.avail, 4 + 2 * usize::from(NUM), 0x5a).unwrap();
    d.put(u32::from(b), 0);
    d.put(u32::from(a), 50);
    assert_eq!(drv.pop_used(), Ok(Some(Used { head: b, len: 0 })));
    assert_eq!(drv.pop_used(), Ok(Some(Used { head: a, len: 50 })));
    assert_eq!(drv.num_free(), 8);
    // The free list survived: eight single-buffer chains fit, and every
    // descriptor written is what we asked for.
    let mut heads = Vec::new();
    for i in 0..8 {
        heads.push(drv.add(&[], &[buf(i, 8 + i as u32)]).unwrap());
    }
    assert_eq!(
        drv.add(&[], &[buf(0, 1)]),
        Err(QueueError::Full { needed: 1, free: 0 })
    );
    heads.sort_unstable();
    assert_eq!(heads, (0..8).collect::<Vec<u16>>());
    drv.publish().unwrap();
    assert_eq!(d.r.load_u16(d.l.avail_idx()).unwrap(), 10);
    for slot in 0..8u16 {
        let head = d.r.read_u16(d.l.avail_ring((2 + slot) % NUM)).unwrap();
        let o = d.l.desc_at(head);
        let i = usize::from(slot);
        assert_eq!(d.r.read_u64(o).unwrap(), pa(BUFS + 256 * i));
        assert_eq!(d.r.read_u32(o + 8).unwrap(), 8 + slot as u32);
        assert_eq!(d.r.read_u16(o + 12).unwrap(), VRING_DESC_F_WRITE);
    }
}

#[test]
fn local_mistakes_do_not_break_the_queues() {
    let (_d, mut drv) = driver();
    assert_eq!(drv.add(&[], &[]), Err(QueueError::EmptyChain));
    assert_eq!(
        drv.add(&[buf(0, 1); 9], &[]),
        Err(QueueError::TooManyBufs { count: 9, num: 8 })
    );
    assert_eq!(
        drv.add(&[Buf::new(SIZE - 4, 5)], &[]),
        Err(QueueError::OffsetOutOfWindow {
            offset: SIZE - 4,
            len: 5
        })
    );
    drv.add(&[buf(0, 1); 6], &[]).unwrap();
    assert_eq!(
        drv.add(&[buf(0, 1)], &[buf(0, 1), buf(0, 1)]),
        Err(QueueError::Full { needed: 3, free: 2 })
    );
    assert!(!drv.is_broken());
    assert_eq!(drv.num_free(), 2);

    let (_r, mut dev) = device();
    assert_eq!(
        dev.push_used(0, 0),
        Err(QueueError::NotInFlight { head: 0 })
    );
    assert_eq!(
        dev.push_used(8, 0),
        Err(QueueError::NotInFlight { head: 8 })
    );
    assert!(!dev.is_broken());
}
