//! rpmsg-virtio over virtio-mmio, both roles in one process: our driver and
//! our device, with the rpmsg bus on top of each.

mod rpmsg_virtio_util;

use std::sync::{Arc, Mutex};

use rpmsg_virtio_util::scenarios::{self, checker, pattern, Checker};
use rpmsg_virtio_util::*;
use rptun::rpmsg::virtio::{F_EVENT_IDX, F_VERSION_1};
use rptun::rpmsg::{EndpointConfig, Link, RpmsgError, RpmsgFeatures, RpmsgTransport, ADDR_ANY};
use rptun::virtio::{status, DeviceTransport};

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
    scenarios::binding_device_first(&mut a, &mut b);
}

#[test]
fn name_binding_driver_announces_first_with_create_ack() {
    let (mut a, mut b, _) = links(&Setup::nuttx());
    scenarios::binding_driver_first(&mut a, &mut b);
}

#[test]
fn destroy_unbinds_the_peer() {
    let (mut a, mut b, _) = links(&Setup::nuttx());
    scenarios::destroy_unbinds(&mut a, &mut b);
}

#[test]
fn zero_copy_send_lands_in_the_same_shared_buffer() {
    let (mut a, mut b, _) = links(&Setup::nuttx());
    scenarios::zero_copy(&mut a, &mut b);
}

#[test]
fn driver_holds_rx_buffers_and_releases_them_in_any_order() {
    let (mut a, mut b, _) = links(&Setup::nuttx());
    scenarios::driver_holds(&mut a, &mut b, 8);
}

#[test]
fn device_holds_rx_buffers_and_releases_them_in_any_order() {
    let (mut a, mut b, _) = links(&Setup::nuttx());
    scenarios::device_holds(&mut a, &mut b, 8);
}

#[test]
fn thousand_unacknowledged_trysends_exhaust_exactly_the_buffers() {
    let (mut a, mut b, _) = links(&Setup::nuttx());
    scenarios::exhaustion(&mut a, &mut b, 8);
}

#[test]
fn hundred_thousand_messages_each_way_in_order_every_byte_checked() {
    let (mut a, mut b, _) = links(&Setup::nuttx());
    scenarios::exchange(&mut a, &mut b, if cfg!(miri) { 20 } else { 100_000 });
    // Every message the bus sent went through the virtio transport.
    assert_eq!(a.transport().stats().tx, a.stats().tx_messages);
    assert_eq!(b.transport().stats().tx, b.stats().tx_messages);
    assert!(b.transport().stats().rx >= 100_000);
}

#[test]
fn event_idx_is_negotiated_and_traffic_flows() {
    let mut s = Setup::nuttx();
    s.features |= F_EVENT_IDX;
    let (mut a, mut b, _) = links(&s);
    scenarios::exchange(&mut a, &mut b, if cfg!(miri) { 20 } else { 5_000 });
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
    const COUNT: u32 = if cfg!(miri) { 30 } else { 20_000 };
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
