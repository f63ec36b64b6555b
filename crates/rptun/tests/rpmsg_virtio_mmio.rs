//! rpmsg-virtio over virtio-mmio, both roles in one process: our driver and
//! our device, with the rpmsg bus on top of each.

mod rpmsg_virtio_util;

use std::sync::{Arc, Mutex};

use rpmsg_virtio_util::*;
use rptun::rpmsg::virtio::{F_EVENT_IDX, F_VERSION_1};
use rptun::rpmsg::{
    on_message, Binding, EndpointConfig, EndpointId, HeldRx, Link, RpmsgError, RpmsgFeatures,
    RpmsgTransport, ADDR_ANY,
};
use rptun::virtio::{status, DeviceTransport};

type Msgs = Arc<Mutex<Vec<(u32, Vec<u8>)>>>;

fn collect<T: RpmsgTransport + 'static>(sink: &Msgs) -> impl rptun::rpmsg::EndpointHandler<T> {
    let sink = sink.clone();
    on_message(move |_ctx, msg| sink.lock().unwrap().push((msg.src(), msg.to_vec())))
}

fn msgs() -> Msgs {
    Arc::new(Mutex::new(Vec::new()))
}

/// Creates "svc" on both links (in the given order, pumping in between)
/// and returns the two endpoint ids.
fn bind_svc(
    a: &mut Link<Drv>,
    b: &mut Link<Vdev>,
    device_first: bool,
    ga: &Msgs,
    gb: &Msgs,
) -> (EndpointId, EndpointId) {
    let (ea, eb);
    if device_first {
        eb = b
            .create_endpoint(EndpointConfig::new("svc"), collect(gb))
            .unwrap();
        pump(a, b);
        ea = a
            .create_endpoint(EndpointConfig::new("svc"), collect(ga))
            .unwrap();
    } else {
        ea = a
            .create_endpoint(EndpointConfig::new("svc"), collect(ga))
            .unwrap();
        pump(a, b);
        eb = b
            .create_endpoint(EndpointConfig::new("svc"), collect(gb))
            .unwrap();
    }
    pump(a, b);
    (ea, eb)
}

#[test]
fn link_comes_up_with_nuttx_features_names_and_sizes() {
    let (a, b, dev) = links(&Setup::nuttx());
    assert_eq!(a.features(), RpmsgFeatures::NUTTX);
    assert_eq!(b.features(), RpmsgFeatures::NUTTX);
    assert_eq!(a.remote_cpu().as_str(), "proxy");
    assert_eq!(b.remote_cpu().as_str(), "server");
    assert_eq!(a.local_cpu().as_str(), "server");
    assert_eq!(a.max_payload(), 1536 - 16);
    assert_eq!(b.max_payload(), 1536 - 16);
    assert_eq!(a.transport().role(), "virtio driver");
    assert_eq!(b.transport().role(), "virtio device");
    // The driver ends with ACKNOWLEDGE|DRIVER|DRIVER_OK (legacy: no FEATURES_OK).
    assert_eq!(dev.status().unwrap(), 7);
    assert_eq!(dev.driver_features().unwrap(), 0xf);
    // Every RX buffer was posted: vring0 has 8 available, device holds none.
    let st = b.transport().buffer_stats();
    assert_eq!((st.tx_total, st.tx_free, st.rx_total), (8, 8, 8));
    let st = a.transport().buffer_stats();
    assert_eq!((st.tx_total, st.tx_free, st.rx_total), (8, 8, 8));
}

#[test]
fn rx_buffers_are_posted_before_driver_ok() {
    // A hook that looks at vring0 the moment the driver writes DRIVER_OK.
    use rptun::virtio::mmio::{MmioDevice, MmioDeviceInfo, MmioHooks, SharedMemory};
    use rptun::virtio::queue::Window;
    use std::sync::atomic::{AtomicU32, Ordering};
    struct Spy {
        seen_avail: Arc<AtomicU32>,
        dev: Arc<Mutex<Option<Arc<MmioDevice<Spy>>>>>,
    }
    impl MmioHooks for Spy {
        fn status_changed(&self, st: u8) {
            if st & status::DRIVER_OK != 0 {
                let d = self.dev.lock().unwrap().clone().unwrap();
                let q = d.queue(0).unwrap();
                let idx = q.region.load_u16(q.layout.avail_idx()).unwrap();
                self.seen_avail.store(u32::from(idx) + 1, Ordering::SeqCst);
            }
        }
    }
    let s = Setup::nuttx();
    let region = rptun::shm::Region::new_heap(s.region_len);
    let window = Window::new(PA, 0, region.len());
    let seen = Arc::new(AtomicU32::new(0));
    let slot = Arc::new(Mutex::new(None));
    let dev = Arc::new(
        MmioDevice::with_hooks(
            MmioDeviceInfo {
                device_id: 7,
                vendor_id: 0,
                features: s.features,
                queue_max: &[8, 8],
                config: &s.config,
            },
            region.clone(),
            window,
            Spy {
                seen_avail: seen.clone(),
                dev: slot.clone(),
            },
        )
        .unwrap(),
    );
    *slot.lock().unwrap() = Some(dev.clone());
    let t = rptun::virtio::mmio::MmioTransport::new(
        dev.clone(),
        SharedMemory {
            region: region.clone(),
            window,
            pool: 0..region.len(),
            ring_align: 8,
        },
        Some(64),
    )
    .unwrap();
    let drv = rptun::rpmsg::virtio::RpmsgVirtioDriver::<_, 8>::start_new(t, driver_opts())
        .map_err(|(e, _)| e)
        .unwrap();
    assert_eq!(
        seen.load(Ordering::SeqCst),
        8 + 1,
        "8 RX buffers avail at DRIVER_OK"
    );
    // ...and the driver kicked vring0 after DRIVER_OK.
    assert_eq!(dev.take_notifications() & 1, 1);
    *slot.lock().unwrap() = None; // break the Arc cycle
    drop(drv);
}

#[test]
fn name_binding_device_announces_first_with_create_ack() {
    let (mut a, mut b, _) = links(&Setup::nuttx());
    let (ga, gb) = (msgs(), msgs());
    let eb = b
        .create_endpoint(EndpointConfig::new("svc"), collect(&gb))
        .unwrap();
    pump(&mut a, &mut b);
    assert!(a.pending_announcements().any(|p| p.name.as_str() == "svc"));
    let ea = a
        .create_endpoint(EndpointConfig::new("svc"), collect(&ga))
        .unwrap();
    // The announcement binds the driver's endpoint at once.
    let ia = a.endpoint(ea).unwrap();
    assert_eq!(ia.dest, b.endpoint(eb).unwrap().addr);
    assert_eq!(ia.binding, Binding::NameService);
    pump(&mut a, &mut b);
    // CREATE_ACK told the announcer, before any data message.
    let ib = b.endpoint(eb).unwrap();
    assert_eq!(ib.dest, ia.addr);
    assert_eq!(ib.binding, Binding::NameService);
    assert!(ga.lock().unwrap().is_empty() && gb.lock().unwrap().is_empty());
    a.trysend(ea, b"to device").unwrap();
    b.trysend(eb, b"to driver").unwrap();
    pump(&mut a, &mut b);
    assert_eq!(*gb.lock().unwrap(), vec![(ia.addr, b"to device".to_vec())]);
    assert_eq!(*ga.lock().unwrap(), vec![(ib.addr, b"to driver".to_vec())]);
}

#[test]
fn name_binding_driver_announces_first_with_create_ack() {
    let (mut a, mut b, _) = links(&Setup::nuttx());
    let (ga, gb) = (msgs(), msgs());
    let (ea, eb) = bind_svc(&mut a, &mut b, false, &ga, &gb);
    let (ia, ib) = (a.endpoint(ea).unwrap(), b.endpoint(eb).unwrap());
    assert_eq!(ia.dest, ib.addr);
    assert_eq!(ib.dest, ia.addr);
    assert_eq!(ia.binding, Binding::NameService, "bound by CREATE_ACK");
    b.trysend(eb, b"hi").unwrap();
    pump(&mut a, &mut b);
    assert_eq!(*ga.lock().unwrap(), vec![(ib.addr, b"hi".to_vec())]);
}

#[test]
fn destroy_unbinds_the_peer() {
    let (mut a, mut b, _) = links(&Setup::nuttx());
    let (ga, gb) = (msgs(), msgs());
    let unbound = Arc::new(Mutex::new(0));
    let u = unbound.clone();
    let eb = b
        .create_endpoint(
            EndpointConfig::new("svc"),
            on_message(|_ctx, _msg| {}).on_unbind(move |_ctx| *u.lock().unwrap() += 1),
        )
        .unwrap();
    pump(&mut a, &mut b);
    let ea = a
        .create_endpoint(EndpointConfig::new("svc"), collect(&ga))
        .unwrap();
    pump(&mut a, &mut b);
    assert_ne!(b.endpoint(eb).unwrap().dest, ADDR_ANY);
    a.destroy_endpoint(ea).unwrap();
    pump(&mut a, &mut b);
    assert_eq!(b.endpoint(eb).unwrap().dest, ADDR_ANY);
    assert_eq!(*unbound.lock().unwrap(), 1);
    assert_eq!(b.trysend(eb, b"x"), Err(RpmsgError::NotBound));
    drop(gb);
}

#[test]
fn zero_copy_send_lands_in_the_same_shared_buffer() {
    let (mut a, mut b, _) = links(&Setup::nuttx());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let eb = b
        .create_endpoint(
            EndpointConfig::new("zc"),
            on_message(move |_ctx, msg| {
                s2.lock()
                    .unwrap()
                    .push((msg.payload().base_addr(), msg.to_vec()))
            }),
        )
        .unwrap();
    pump(&mut a, &mut b);
    let ea = a
        .create_endpoint(EndpointConfig::new("zc"), on_message(|_c, _m| {}))
        .unwrap();
    pump(&mut a, &mut b);
    let tx = a.try_get_tx(ea).unwrap();
    assert_eq!(tx.capacity(), 1536 - 16);
    let addr = tx.payload().base_addr();
    let data: Vec<u8> = (0..1520u32).map(|i| (i * 7) as u8).collect();
    tx.write(0, &data).unwrap();
    a.send_nocopy(tx, data.len()).unwrap();
    pump(&mut a, &mut b);
    let got = seen.lock().unwrap().clone();
    assert_eq!(got, vec![(addr, data)], "same bytes, same address: no copy");
    let _ = eb;
}

/// Holds every message it receives.
fn holder<T: RpmsgTransport + 'static>(
    held: &Arc<Mutex<Vec<HeldRx>>>,
) -> impl rptun::rpmsg::EndpointHandler<T> {
    let held = held.clone();
    on_message(move |ctx, msg| {
        let h = ctx.hold(msg);
        held.lock().unwrap().push(h);
    })
}

fn payload(h: &HeldRx) -> Vec<u8> {
    let mut v = vec![0u8; h.len()];
    h.payload().read_bytes(0, &mut v).unwrap();
    v
}

#[test]
fn driver_holds_rx_buffers_and_releases_them_in_any_order() {
    let (mut a, mut b, _) = links(&Setup::nuttx());
    let held = Arc::new(Mutex::new(Vec::new()));
    let ea = a
        .create_endpoint(EndpointConfig::new("hold"), holder(&held))
        .unwrap();
    pump(&mut a, &mut b);
    let eb = b
        .create_endpoint(EndpointConfig::new("hold"), on_message(|_c, _m| {}))
        .unwrap();
    pump(&mut a, &mut b);
    // The device can fill the 8 RX buffers the driver posted, no more.
    for i in 0..8u8 {
        b.trysend(eb, &[i; 40]).unwrap();
    }
    assert_eq!(b.trysend(eb, b"9th"), Err(RpmsgError::NoBuffer));
    pump(&mut a, &mut b);
    let mut h: Vec<HeldRx> = std::mem::take(&mut *held.lock().unwrap());
    assert_eq!(h.len(), 8);
    assert_eq!(a.endpoint(ea).unwrap().rx_held, 8);
    assert_eq!(b.trysend(eb, b"still none"), Err(RpmsgError::NoBuffer));
    // Release three, out of order.
    for i in [5usize, 1, 6] {
        let x = h.remove(i.min(h.len() - 1));
        a.release_rx(x).unwrap();
    }
    pump(&mut a, &mut b);
    for _ in 0..3 {
        b.trysend(eb, &[0xEE; 40]).unwrap();
    }
    assert_eq!(b.trysend(eb, b"4th"), Err(RpmsgError::NoBuffer));
    // The buffers still held kept their contents.
    for x in &h {
        let p = payload(x);
        assert_eq!(p.len(), 40);
        assert!(p.iter().all(|&c| c == p[0] && c < 8), "held buffer intact");
    }
    pump(&mut a, &mut b);
    let second = std::mem::take(&mut *held.lock().unwrap());
    assert_eq!(second.len(), 3);
    assert!(second.iter().all(|x| payload(x) == vec![0xEE; 40]));
    // Release everything (reverse order) and the device can use all 8 again.
    for x in h.into_iter().rev().chain(second) {
        a.release_rx(x).unwrap();
    }
    pump(&mut a, &mut b);
    for _ in 0..8 {
        b.trysend(eb, b"again").unwrap();
    }
    assert_eq!(b.trysend(eb, b"x"), Err(RpmsgError::NoBuffer));
}

#[test]
fn device_holds_rx_buffers_and_releases_them_in_any_order() {
    let (mut a, mut b, _) = links(&Setup::nuttx());
    let held = Arc::new(Mutex::new(Vec::new()));
    let _eb = b
        .create_endpoint(EndpointConfig::new("hold"), holder(&held))
        .unwrap();
    pump(&mut a, &mut b);
    let ea = a
        .create_endpoint(EndpointConfig::new("hold"), on_message(|_c, _m| {}))
        .unwrap();
    pump(&mut a, &mut b);
    for i in 0..8u8 {
        a.trysend(ea, &[i; 100]).unwrap();
    }
    assert_eq!(a.trysend(ea, b"9th"), Err(RpmsgError::NoBuffer));
    pump(&mut a, &mut b);
    let mut h: Vec<HeldRx> = std::mem::take(&mut *held.lock().unwrap());
    assert_eq!(h.len(), 8);
    // The driver gets nothing back while the device holds everything.
    assert_eq!(a.trysend(ea, b"x"), Err(RpmsgError::NoBuffer));
    let order = [3usize, 0, 4, 1, 3, 0, 1, 0];
    let mut released = 0;
    for i in order {
        b.release_rx(h.remove(i)).unwrap();
        released += 1;
        pump(&mut a, &mut b);
        // Exactly the released buffers came back to the driver.
        for _ in 0..released {
            a.trysend(ea, &[0x55; 10]).unwrap();
        }
        assert_eq!(
            a.trysend(ea, b"x"),
            Err(RpmsgError::NoBuffer),
            "after {released}"
        );
        pump(&mut a, &mut b);
        // Hold the new ones too, then give them back in reverse order.
        let new: Vec<HeldRx> = std::mem::take(&mut *held.lock().unwrap());
        assert_eq!(new.len(), released);
        for x in new.into_iter().rev() {
            assert_eq!(payload(&x), vec![0x55; 10]);
            b.release_rx(x).unwrap();
        }
        pump(&mut a, &mut b);
    }
    assert!(h.is_empty());
}

#[test]
fn thousand_unacknowledged_trysends_exhaust_exactly_the_buffers() {
    let (mut a, mut b, _) = links(&Setup::nuttx());
    let (ga, gb) = (msgs(), msgs());
    let (ea, eb) = bind_svc(&mut a, &mut b, true, &ga, &gb);
    for (dir, n) in [(0, 8), (1, 8)] {
        let mut ok = 0;
        for i in 0..1000u32 {
            let r = if dir == 0 {
                a.trysend(ea, &i.to_le_bytes())
            } else {
                b.trysend(eb, &i.to_le_bytes())
            };
            match r {
                Ok(()) => ok += 1,
                Err(RpmsgError::NoBuffer) => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(ok, n);
        pump(&mut a, &mut b);
        let got = if dir == 0 { &gb } else { &ga };
        let got: Vec<u32> = std::mem::take(&mut *got.lock().unwrap())
            .into_iter()
            .map(|(_, v)| u32::from_le_bytes(v.try_into().unwrap()))
            .collect();
        assert_eq!(got, (0..8).collect::<Vec<_>>(), "the first 8, in order");
    }
    // Buffers all came back: both sides can send a full window again.
    for _ in 0..8 {
        a.trysend(ea, b"a").unwrap();
        b.trysend(eb, b"b").unwrap();
    }
    assert_eq!(a.transport().buffer_stats().tx_free, 0);
}

fn pattern(seq: u32, max: usize) -> Vec<u8> {
    let len = if seq % 97 == 0 {
        max
    } else {
        4 + (seq as usize * 31) % 61
    };
    let mut v = vec![0u8; len];
    v[..4].copy_from_slice(&seq.to_le_bytes());
    for (i, b) in v.iter_mut().enumerate().skip(4) {
        *b = (seq as u8).wrapping_mul(31).wrapping_add(i as u8);
    }
    v
}

/// Checks that messages arrive in order and intact.
struct Checker {
    next: u32,
    max: usize,
    bad: u32,
}

fn checker<T: RpmsgTransport + 'static>(
    c: &Arc<Mutex<Checker>>,
) -> impl rptun::rpmsg::EndpointHandler<T> {
    let c = c.clone();
    on_message(move |_ctx, msg| {
        let mut c = c.lock().unwrap();
        let want = pattern(c.next, c.max);
        if msg.to_vec() != want {
            c.bad += 1;
        }
        c.next += 1;
    })
}

fn exchange(s: &Setup, count: u32) -> (Link<Drv>, Link<Vdev>) {
    let (mut a, mut b, _) = links(s);
    let max = a.max_payload();
    let ca = Arc::new(Mutex::new(Checker {
        next: 0,
        max,
        bad: 0,
    }));
    let cb = Arc::new(Mutex::new(Checker {
        next: 0,
        max,
        bad: 0,
    }));
    let eb = b
        .create_endpoint(EndpointConfig::new("order"), checker(&cb))
        .unwrap();
    pump(&mut a, &mut b);
    let ea = a
        .create_endpoint(EndpointConfig::new("order"), checker(&ca))
        .unwrap();
    pump(&mut a, &mut b);
    let (mut sa, mut sb) = (0u32, 0u32);
    let mut rounds = 0u64;
    while sa < count
        || sb < count
        || ca.lock().unwrap().next < count
        || cb.lock().unwrap().next < count
    {
        rounds += 1;
        assert!(rounds < 10 * u64::from(count) + 1000, "no progress");
        while sa < count {
            match a.trysend(ea, &pattern(sa, max)) {
                Ok(()) => sa += 1,
                Err(RpmsgError::NoBuffer) => break,
                Err(e) => panic!("{e}"),
            }
        }
        while sb < count {
            match b.trysend(eb, &pattern(sb, max)) {
                Ok(()) => sb += 1,
                Err(RpmsgError::NoBuffer) => break,
                Err(e) => panic!("{e}"),
            }
        }
        b.poll().unwrap();
        a.poll().unwrap();
    }
    for c in [&ca, &cb] {
        let c = c.lock().unwrap();
        assert_eq!(
            (c.next, c.bad),
            (count, 0),
            "all in order, every byte right"
        );
    }
    assert_eq!(
        a.stats().dropped_bad_length + b.stats().dropped_bad_length,
        0
    );
    (a, b)
}

#[test]
fn hundred_thousand_messages_each_way_in_order_every_byte_checked() {
    let (a, b) = exchange(&Setup::nuttx(), 100_000);
    // Every message the bus sent went through the virtio transport.
    assert_eq!(a.transport().stats().tx, a.stats().tx_messages);
    assert_eq!(b.transport().stats().tx, b.stats().tx_messages);
    assert!(b.transport().stats().rx >= 100_000);
}

#[test]
fn event_idx_is_negotiated_and_traffic_flows() {
    let mut s = Setup::nuttx();
    s.features |= F_EVENT_IDX;
    let (a, b) = exchange(&s, 5_000);
    assert_ne!(a.transport().negotiated_features() & F_EVENT_IDX, 0);
    assert_ne!(b.transport().negotiated_features() & F_EVENT_IDX, 0);
}

#[test]
fn modern_device_gets_features_ok() {
    let mut s = Setup::nuttx();
    s.features |= F_VERSION_1;
    let (_a, _b, dev) = links(&s);
    assert_eq!(
        dev.status().unwrap(),
        0xf,
        "ACK|DRIVER|FEATURES_OK|DRIVER_OK"
    );
    assert_eq!(dev.driver_features().unwrap(), 0xf | F_VERSION_1);
}

/// One end of the two-thread exchange: announce "order", then send
/// `count` patterned messages while checking the peer's.
fn run_end<T: RpmsgTransport + 'static>(mut link: Link<T>, count: u32) -> (u32, u32) {
    let max = 1536 - 16;
    let c = Arc::new(Mutex::new(Checker {
        next: 0,
        max,
        bad: 0,
    }));
    let e = link
        .create_endpoint(EndpointConfig::new("order"), checker(&c))
        .unwrap();
    let mut sent = 0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        link.poll().unwrap();
        if link.endpoint(e).unwrap().dest != ADDR_ANY {
            while sent < count {
                match link.trysend(e, &pattern(sent, max)) {
                    Ok(()) => sent += 1,
                    Err(RpmsgError::NoBuffer) => break,
                    Err(x) => panic!("{x}"),
                }
            }
        }
        if sent == count && c.lock().unwrap().next >= count {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "exchange stalled");
        std::thread::yield_now();
    }
    let c = c.lock().unwrap();
    (c.next, c.bad)
}

#[test]
fn two_threads_exchange_in_order() {
    const COUNT: u32 = 20_000;
    let s = Setup::nuttx();
    let (dev, region) = mmio_device(&s);
    let t = mmio_transport(&s, &dev, &region);
    let dev2 = dev.clone();
    let tb = std::thread::spawn(move || run_end(Link::new(Vdev::new(dev2, device_opts())), COUNT));
    let ta = std::thread::spawn(move || {
        let drv = Drv::start_new(t, driver_opts())
            .map_err(|(e, _)| e)
            .unwrap();
        run_end(Link::new(drv), COUNT)
    });
    assert_eq!(ta.join().unwrap(), (COUNT, 0));
    assert_eq!(tb.join().unwrap(), (COUNT, 0));
}
