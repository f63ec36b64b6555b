//! Notification suppression: used.flags NO_NOTIFY, avail.flags NO_INTERRUPT,
//! and the EVENT_IDX fields, including across the 16-bit index wrap.

use rptun::shm::Region;
use rptun::virtio::queue::*;

const PA: u64 = 0x8000_0000;

struct Pair {
    r: Region,
    l: QueueLayout,
    drv: DriverQueue<8>,
    dev: DeviceQueue,
}

fn pair(event_idx: bool) -> Pair {
    let r = Region::new_heap(8192);
    let l = QueueLayout::legacy(0, PA, 8, 8).unwrap();
    let w = Window::new(PA, 0, r.len());
    let drv = DriverQueue::new(r.clone(), l, w, event_idx).unwrap();
    let dev = DeviceQueue::new(r.clone(), l, w, event_idx).unwrap();
    Pair { r, l, drv, dev }
}

impl Pair {
    fn add(&mut self) -> u16 {
        self.drv.add(&[], &[Buf::new(4096, 64)]).unwrap()
    }
    /// Runs `k` chains all the way through, without looking at notifications.
    fn advance(&mut self, k: u32) {
        for _ in 0..k {
            self.add();
            self.drv.publish().unwrap();
            let c = self.dev.pop::<1>().unwrap().unwrap();
            self.dev.push_used(c.head(), 1).unwrap();
            self.dev.should_notify().unwrap();
            self.drv.pop_used().unwrap().unwrap();
        }
    }
    fn serve_one(&mut self) {
        let c = self.dev.pop::<1>().unwrap().unwrap();
        self.dev.push_used(c.head(), 1).unwrap();
    }
    fn avail_event(&self) -> u16 {
        self.r.load_u16(self.l.avail_event()).unwrap()
    }
    fn used_event(&self) -> u16 {
        self.r.load_u16(self.l.used_event()).unwrap()
    }
}

#[test]
fn publishing_nothing_never_notifies() {
    for event_idx in [false, true] {
        let mut p = pair(event_idx);
        assert!(!p.drv.publish().unwrap());
        assert!(!p.dev.should_notify().unwrap());
    }
}

#[test]
fn device_no_notify_flag_suppresses_kicks() {
    let mut p = pair(false);
    p.add();
    assert!(p.drv.publish().unwrap(), "kicks are on by default");
    p.dev.disable_notifications().unwrap();
    assert_eq!(
        p.r.load_u16(p.l.used_flags()).unwrap(),
        VRING_USED_F_NO_NOTIFY
    );
    p.add();
    assert!(!p.drv.publish().unwrap());
    // Re-enabling reports the chains that arrived meanwhile.
    assert!(p.dev.enable_notifications().unwrap());
    assert_eq!(p.r.load_u16(p.l.used_flags()).unwrap(), 0);
    p.serve_one();
    p.serve_one();
    assert!(!p.dev.enable_notifications().unwrap());
    p.add();
    assert!(p.drv.publish().unwrap());
    // The driver never writes EVENT_IDX fields when it was not negotiated.
    assert_eq!(p.r.load_u16(p.l.avail_event()).unwrap(), 0);
}

#[test]
fn driver_no_interrupt_flag_suppresses_interrupts() {
    let mut p = pair(false);
    p.add();
    p.drv.publish().unwrap();
    p.serve_one();
    assert!(
        p.dev.should_notify().unwrap(),
        "interrupts are on by default"
    );
    assert!(!p.dev.should_notify().unwrap(), "nothing new since");
    p.drv.pop_used().unwrap().unwrap();

    p.drv.disable_interrupts().unwrap();
    assert_eq!(
        p.r.load_u16(p.l.avail_flags()).unwrap(),
        VRING_AVAIL_F_NO_INTERRUPT
    );
    p.add();
    p.drv.publish().unwrap();
    p.serve_one();
    assert!(!p.dev.should_notify().unwrap());
    // Re-enabling reports the chain returned meanwhile.
    assert!(p.drv.enable_interrupts().unwrap());
    assert_eq!(p.r.load_u16(p.l.avail_flags()).unwrap(), 0);
    p.drv.pop_used().unwrap().unwrap();
    assert!(!p.drv.enable_interrupts().unwrap());
    p.add();
    p.drv.publish().unwrap();
    p.serve_one();
    assert!(p.dev.should_notify().unwrap());
    assert_eq!(p.r.load_u16(p.l.used_event()).unwrap(), 0);
}

#[test]
#[cfg_attr(
    miri,
    ignore = "runs 65k chains to reach the wrap: too slow under Miri"
)]
fn event_idx_kicks_across_the_index_wrap() {
    let mut p = pair(true);
    p.advance(65_533);
    assert_eq!(p.dev.indices().last_avail, 65_533);
    assert!(!p.dev.enable_notifications().unwrap());
    assert_eq!(p.avail_event(), 65_533);
    // 65533 -> 65534 crosses avail_event.
    p.add();
    assert!(p.drv.publish().unwrap());
    // 65534 -> 65535 does not: the device has not caught up.
    p.add();
    assert!(!p.drv.publish().unwrap());
    // Popping with notifications on moves avail_event along.
    p.serve_one();
    p.serve_one();
    assert_eq!(p.avail_event(), 65_535);
    // 65535 -> 1 (two chains) crosses 65535 through the wrap.
    p.add();
    p.add();
    assert!(p.drv.publish().unwrap());
    assert_eq!(p.drv.indices().avail_idx, 1);
    p.serve_one();
    assert_eq!(p.avail_event(), 0);
    p.serve_one();
    assert_eq!(p.avail_event(), 1);
    // Disabled: avail_event is moved half the index space away; no kicks.
    p.dev.disable_notifications().unwrap();
    assert_eq!(p.avail_event(), 0x8001);
    for _ in 0..2 {
        p.add();
        assert!(!p.drv.publish().unwrap());
    }
    // And the pops no longer move it.
    p.serve_one();
    assert_eq!(p.avail_event(), 0x8001);
    assert!(p.dev.enable_notifications().unwrap());
    assert_eq!(p.avail_event(), 2);
    // avail.flags / used.flags stay 0 under EVENT_IDX.
    assert_eq!(p.r.load_u16(p.l.used_flags()).unwrap(), 0);
}

#[test]
#[cfg_attr(
    miri,
    ignore = "runs 65k chains to reach the wrap: too slow under Miri"
)]
fn event_idx_interrupts_across_the_index_wrap() {
    let mut p = pair(true);
    p.advance(65_534);
    assert!(!p.drv.enable_interrupts().unwrap());
    assert_eq!(p.used_event(), 65_534);
    for _ in 0..4 {
        p.add();
    }
    p.drv.publish().unwrap();
    // used 65534 -> 65535 crosses used_event.
    p.serve_one();
    assert!(p.dev.should_notify().unwrap());
    // 65535 -> 0: the driver has not popped, used_event is still 65534.
    p.serve_one();
    assert!(!p.dev.should_notify().unwrap());
    // Popping with interrupts on moves used_event along.
    p.drv.pop_used().unwrap().unwrap();
    p.drv.pop_used().unwrap().unwrap();
    assert_eq!(p.used_event(), 0);
    // 0 -> 1 crosses 0, just past the wrap.
    p.serve_one();
    assert!(p.dev.should_notify().unwrap());
    // Disabled: used_event out of reach, no interrupts.
    p.drv.disable_interrupts().unwrap();
    assert_eq!(p.used_event(), 0x8000);
    p.drv.pop_used().unwrap().unwrap();
    assert_eq!(p.used_event(), 0x8000);
    p.serve_one();
    assert!(!p.dev.should_notify().unwrap());
    assert!(p.drv.enable_interrupts().unwrap());
    assert_eq!(p.used_event(), 1);
    assert_eq!(p.r.load_u16(p.l.avail_flags()).unwrap(), 0);
}

#[test]
fn device_restarting_on_a_running_ring_serves_unreturned_chains_again() {
    let mut p = pair(false);
    for _ in 0..3 {
        p.add();
    }
    p.drv.publish().unwrap();
    // The first device instance serves one chain and takes another, then dies.
    p.serve_one();
    let lost = p.dev.pop::<1>().unwrap().unwrap().head();
    // A new instance attaches: it starts at used.idx = 1, so the lost chain
    // and the untouched one are available again, in order.
    let w = *p.dev.window();
    let mut dev = DeviceQueue::new(p.r.clone(), p.l, w, false).unwrap();
    assert_eq!(dev.indices().last_avail, 1);
    let c = dev.pop::<1>().unwrap().unwrap();
    assert_eq!(c.head(), lost);
    dev.push_used(c.head(), 7).unwrap();
    let c = dev.pop::<1>().unwrap().unwrap();
    dev.push_used(c.head(), 8).unwrap();
    assert!(dev.pop::<1>().unwrap().is_none());
    let mut lens = Vec::new();
    while let Some(u) = p.drv.pop_used().unwrap() {
        lens.push(u.len);
    }
    assert_eq!(lens, [1, 7, 8]);
    assert_eq!(p.drv.num_free(), 8);
}
