//! rpmsg-virtio: Linux-compatible mode, link sessions and restarts, config
//! space options, and peers that break the protocol.

mod rpmsg_virtio_util;

use std::sync::{Arc, Mutex};

use rpmsg_virtio_util::*;
use rptun::rpmsg::virtio::{DownReason, RpmsgVirtioDriver, RpmsgVirtioOptions, F_BUFADDR};
use rptun::rpmsg::{
    on_message, EndpointConfig, EndpointId, Link, LocalCpu, RemoteCpu, RpmsgFeatures,
    RpmsgTransport, TransportError, ADDR_ANY,
};
use rptun::virtio::mmio::{MmioTransport, SharedMemory};
use rptun::virtio::queue::{Buf, DeviceQueue, DriverQueue, Used, Window};
use rptun::virtio::QueueMem;
use rptun::virtio::{status, DeviceTransport, Transport};
use rptun::wire::rpmsg_config::ConfigLayout;

type Msgs = Arc<Mutex<Vec<Vec<u8>>>>;

fn sink<T: RpmsgTransport + 'static>(m: &Msgs) -> impl rptun::rpmsg::EndpointHandler<T> {
    let m = m.clone();
    on_message(move |_c, msg| m.lock().unwrap().push(msg.to_vec()))
}

fn msgs() -> Msgs {
    Arc::new(Mutex::new(Vec::new()))
}

fn svc<A: RpmsgTransport + 'static, B: RpmsgTransport + 'static>(
    a: &mut Link<A>,
    b: &mut Link<B>,
    ga: &Msgs,
    gb: &Msgs,
) -> (EndpointId, EndpointId) {
    let eb = b
        .create_endpoint(EndpointConfig::new("svc"), sink(gb))
        .unwrap();
    pump(a, b);
    let ea = a
        .create_endpoint(EndpointConfig::new("svc"), sink(ga))
        .unwrap();
    pump(a, b);
    (ea, eb)
}

fn desc_len(q: &QueueMem, head: u16) -> (u32, u16) {
    let d = q.layout.desc_at(head);
    (
        q.region.read_u32(d + 8).unwrap(),
        q.region.read_u16(d + 12).unwrap(),
    )
}

fn linux_opts(local: &str, remote: &str) -> RpmsgVirtioOptions {
    RpmsgVirtioOptions::linux(
        LocalCpu::new(local).unwrap(),
        RemoteCpu::new(remote).unwrap(),
    )
}

#[test]
fn linux_compatible_link_uses_512_byte_buffers_and_whole_buffer_lengths() {
    // The device offers everything; the driver in Linux mode takes NS only.
    let mut s = Setup::nuttx();
    s.queue_max = 256;
    let (drv, vdev, dev) = pair(
        &s,
        linux_opts("host", "remote"),
        linux_opts("remote", "host"),
    );
    assert_eq!(dev.driver_features().unwrap(), 0x1);
    let (mut a, mut b) = (Link::new(drv), Link::new(vdev));
    pump(&mut a, &mut b);
    assert_eq!(a.features(), RpmsgFeatures::LINUX);
    assert_eq!(b.features(), RpmsgFeatures::LINUX);
    assert_eq!((a.max_payload(), b.max_payload()), (496, 496));
    // Without CPUNAME the platform names stand.
    assert_eq!(a.remote_cpu().as_str(), "remote");
    assert_eq!(b.remote_cpu().as_str(), "host");
    // 256 RX buffers of 512 bytes, device-writable, posted on vring0.
    let q0 = dev.queue(0).unwrap();
    assert_eq!(q0.layout.num, 256);
    for h in 0..256 {
        assert_eq!(desc_len(&q0, h), (512, 2), "desc {h}");
    }
    let (ga, gb) = (msgs(), msgs());
    let (ea, eb) = svc(&mut a, &mut b, &ga, &gb);
    assert_ne!(a.endpoint(ea).unwrap().dest, ADDR_ANY);
    assert_ne!(b.endpoint(eb).unwrap().dest, ADDR_ANY);

    // Driver → device: the descriptor says 512 whatever the message length.
    a.trysend(ea, b"hello").unwrap();
    let q1 = dev.queue(1).unwrap();
    let avail = q1.region.load_u16(q1.layout.avail_idx()).unwrap();
    let head = q1
        .region
        .read_u16(q1.layout.avail_ring((avail - 1) % q1.layout.num))
        .unwrap();
    assert_eq!(desc_len(&q1, head), (512, 0));
    // Device → driver: the used length is 512 too.
    b.trysend(eb, b"world").unwrap();
    let used = q0.region.load_u16(q0.layout.used_idx()).unwrap();
    let elem = q0.layout.used_elem((used - 1) % q0.layout.num);
    assert_eq!(q0.region.read_u32(elem + 4).unwrap(), 512);
    pump(&mut a, &mut b);
    assert_eq!(gb.lock().unwrap().last().unwrap(), b"hello");
    assert_eq!(ga.lock().unwrap().last().unwrap(), b"world");
    // The device gave the driver's TX buffers back with the whole length as
    // well (the driver ignores it for device-readable buffers).
    let used1 = q1.region.load_u16(q1.layout.used_idx()).unwrap();
    let e1 = q1.layout.used_elem((used1 - 1) % q1.layout.num);
    assert_eq!(q1.region.read_u32(e1 + 4).unwrap(), 512);
    // A full-size message fits and arrives intact.
    let big: Vec<u8> = (0..496u32).map(|i| i as u8).collect();
    a.trysend(ea, &big).unwrap();
    pump(&mut a, &mut b);
    assert_eq!(gb.lock().unwrap().last().unwrap(), &big);
}

#[test]
fn linux_device_offering_only_ns_gets_the_default_512() {
    let s = Setup::linux(16);
    let (mut a, mut b, _dev) = links(&s);
    assert_eq!(a.features(), RpmsgFeatures::LINUX);
    assert_eq!((a.max_payload(), b.rx_max_payload()), (496, 496));
    assert_eq!(a.transport().tx_buffers(), (8, 512));
    let (ga, gb) = (msgs(), msgs());
    let (ea, _eb) = svc(&mut a, &mut b, &ga, &gb);
    a.trysend(ea, b"x").unwrap();
    pump(&mut a, &mut b);
    assert_eq!(*gb.lock().unwrap(), vec![b"x".to_vec()]);
}

#[test]
fn driver_restart_starts_new_sessions_and_refuses_old_tokens() {
    let (mut a, mut b, _dev) = links(&Setup::nuttx());
    let (ga, gb) = (msgs(), msgs());
    let (ea, eb) = svc(&mut a, &mut b, &ga, &gb);
    for i in 0..20u8 {
        a.trysend(ea, &[i]).unwrap();
        b.trysend(eb, &[i]).unwrap();
        pump(&mut a, &mut b);
    }
    let (sa, sb) = (a.session().unwrap(), b.session().unwrap());
    // Tokens taken from the transports directly, then a restart.
    let ta = a.transport_mut().get_tx().unwrap().unwrap();
    let tb = b.transport_mut().get_tx().unwrap().unwrap();
    a.transport_mut().restart().unwrap();
    assert!(matches!(
        a.transport_mut().send(ta, 16),
        Err(TransportError::InvalidBuffer { .. })
    ));
    assert!(matches!(
        a.transport_mut().release_tx(ta),
        Err(TransportError::InvalidBuffer { .. })
    ));
    // The device sees the new rings on its next poll and starts over.
    pump(&mut a, &mut b);
    let (sa2, sb2) = (a.session().unwrap(), b.session().unwrap());
    assert_ne!(sa, sa2);
    assert_ne!(sb, sb2);
    assert!(matches!(
        b.transport_mut().send(tb, 16),
        Err(TransportError::InvalidBuffer { .. })
    ));
    // The endpoints were re-announced and re-bound: traffic flows again.
    ga.lock().unwrap().clear();
    gb.lock().unwrap().clear();
    a.trysend(ea, b"after").unwrap();
    b.trysend(eb, b"restart").unwrap();
    pump(&mut a, &mut b);
    assert_eq!(*gb.lock().unwrap(), vec![b"after".to_vec()]);
    assert_eq!(*ga.lock().unwrap(), vec![b"restart".to_vec()]);
}

#[test]
fn stop_takes_both_ends_down_and_start_brings_them_back() {
    let (mut a, mut b, dev) = links(&Setup::nuttx());
    a.transport_mut().stop();
    assert_eq!(dev.status().unwrap(), 0);
    pump(&mut a, &mut b);
    assert!(!a.is_up() && !b.is_up());
    assert_eq!(b.transport().down_reason(), Some(DownReason::Reset));
    assert_eq!(a.transport().down_reason(), Some(DownReason::Stopped));
    a.transport_mut().start().unwrap();
    pump(&mut a, &mut b);
    assert!(a.is_up() && b.is_up());
    let (ga, gb) = (msgs(), msgs());
    let (ea, _) = svc(&mut a, &mut b, &ga, &gb);
    a.trysend(ea, b"back").unwrap();
    pump(&mut a, &mut b);
    assert_eq!(*gb.lock().unwrap(), vec![b"back".to_vec()]);
}

#[test]
fn needs_reset_takes_the_link_down_until_the_driver_restarts() {
    let (mut a, mut b, dev) = links(&Setup::nuttx());
    // As our device does when the driver breaks the protocol.
    rptun::virtio::mmio::MmioDevice::set_needs_reset(&dev).unwrap();
    pump(&mut a, &mut b);
    assert!(!a.is_up() && !b.is_up());
    assert_eq!(a.transport().down_reason(), Some(DownReason::NeedsReset));
    assert_eq!(
        a.transport_mut().get_tx().unwrap_err(),
        TransportError::LinkDown
    );
    a.transport_mut().restart().unwrap();
    pump(&mut a, &mut b);
    assert!(a.is_up() && b.is_up());
}

/// A hand-driven driver over MMIO (for feeding the device bad input).
struct RawDriver {
    t: MmioTransport<Dev>,
    rx: DriverQueue<8>,
    tx: DriverQueue<8>,
}

fn raw_driver(features: u64) -> (RawDriver, Vdev, Dev) {
    let mut s = Setup::linux(8);
    s.ring_align = 8;
    let (dev, region) = mmio_device(&s);
    let mut t = mmio_transport(&s, &dev, &region);
    t.set_status(0).unwrap();
    t.set_status(status::ACKNOWLEDGE | status::DRIVER).unwrap();
    t.set_driver_features(features).unwrap();
    let q0 = t.setup_queue(0, 8).unwrap();
    let q1 = t.setup_queue(1, 8).unwrap();
    let rx = DriverQueue::<8>::new(q0.region, q0.layout, q0.window, false).unwrap();
    let tx = DriverQueue::<8>::new(q1.region, q1.layout, q1.window, false).unwrap();
    let vdev = Vdev::new(dev.clone(), device_opts());
    (RawDriver { t, rx, tx }, vdev, dev)
}

impl RawDriver {
    fn buf(&mut self, len: u32) -> Buf {
        Buf::new(self.t.alloc_shared(len as usize, 16).unwrap(), len)
    }
    fn driver_ok(&mut self) {
        self.t
            .set_status(status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK)
            .unwrap();
    }
}

#[test]
fn device_returns_too_small_buffers_unused_and_counts_them() {
    let (mut d, mut v, _dev) = raw_driver(0x1);
    let small = d.buf(100);
    let good = d.buf(512);
    let h_small = d.rx.add(&[], &[small]).unwrap();
    let h_good = d.rx.add(&[], &[good]).unwrap();
    d.rx.publish().unwrap();
    // Nothing happens before DRIVER_OK.
    v.poll().unwrap();
    assert_eq!(v.link_session(), None);
    assert_eq!(v.down_reason(), Some(DownReason::WaitingForDriver));
    d.driver_ok();
    v.poll().unwrap();
    assert!(v.link_session().is_some());
    let tb = v.get_tx().unwrap().unwrap();
    assert_eq!((tb.offset, tb.size), (good.offset, 512));
    assert_eq!(v.stats().dropped_small, 1);
    assert_eq!(
        d.rx.pop_used().unwrap(),
        Some(Used {
            head: h_small,
            len: 0
        })
    );
    assert_eq!(v.get_tx().unwrap(), None, "no other buffer");
    v.tx_region().write_bytes(tb.offset, &[7u8; 20]).unwrap();
    v.send(tb, 20).unwrap();
    assert_eq!(
        d.rx.pop_used().unwrap(),
        Some(Used {
            head: h_good,
            len: 20
        })
    );
}

#[test]
fn device_breaks_on_a_readable_buffer_in_its_tx_ring() {
    let (mut d, mut v, dev) = raw_driver(0x1);
    let wrong = d.buf(512);
    d.rx.add(&[wrong], &[]).unwrap();
    d.rx.publish().unwrap();
    d.driver_ok();
    v.poll().unwrap();
    assert!(matches!(v.get_tx(), Err(TransportError::Peer(_))));
    assert_eq!(v.link_session(), None);
    assert!(matches!(v.down_reason(), Some(DownReason::Broken(_))));
    assert_ne!(dev.status().unwrap() & status::DEVICE_NEEDS_RESET, 0);
    // Still down on later polls: it waits for the driver's reset.
    v.poll().unwrap();
    assert_eq!(v.link_session(), None);
}

#[test]
fn device_breaks_on_a_writable_buffer_in_its_rx_ring() {
    let (mut d, mut v, dev) = raw_driver(0x1);
    let wrong = d.buf(64);
    d.tx.add(&[], &[wrong]).unwrap();
    d.tx.publish().unwrap();
    d.driver_ok();
    v.poll().unwrap();
    assert!(matches!(v.recv(), Err(TransportError::Peer(_))));
    assert!(matches!(v.down_reason(), Some(DownReason::Broken(_))));
    assert_ne!(dev.status().unwrap() & status::DEVICE_NEEDS_RESET, 0);
}

#[test]
fn device_passes_untrusted_rx_lengths_through_clamped() {
    let (mut d, mut v, _dev) = raw_driver(0x1);
    // A 5-byte message (shorter than a header) and an oversized one.
    let short = d.buf(5);
    let big = d.buf(4096);
    d.tx.add(&[short], &[]).unwrap();
    d.tx.add(&[big], &[]).unwrap();
    d.tx.publish().unwrap();
    d.driver_ok();
    v.poll().unwrap();
    let r1 = v.recv().unwrap().unwrap();
    assert_eq!((r1.len, r1.capacity), (5, 5));
    let r2 = v.recv().unwrap().unwrap();
    assert_eq!((r2.len, r2.capacity), (4096, 512));
    assert_eq!(v.recv().unwrap(), None);
    // Released in reverse order; each comes back to the driver with 0.
    v.release_rx(r2).unwrap();
    v.release_rx(r1).unwrap();
    assert!(matches!(
        v.release_rx(r1),
        Err(TransportError::InvalidBuffer { .. })
    ));
    assert_eq!(d.tx.pop_used().unwrap().map(|u| u.len), Some(0));
    assert_eq!(d.tx.pop_used().unwrap().map(|u| u.len), Some(0));
}

#[test]
fn driver_breaks_on_a_used_length_beyond_the_buffer() {
    let (mut drv, _vdev, dev) = pair(&Setup::nuttx(), driver_opts(), device_opts());
    let q0 = dev.queue(0).unwrap();
    let mut dq = DeviceQueue::new(q0.region.clone(), q0.layout, q0.window, false).unwrap();
    let c = dq.pop::<1>().unwrap().unwrap();
    dq.push_used(c.head(), 5000).unwrap();
    assert!(matches!(drv.recv(), Err(TransportError::Peer(_))));
    assert_eq!(drv.link_session(), None);
    assert!(matches!(drv.down_reason(), Some(DownReason::Broken(_))));
    assert_eq!(drv.get_tx(), Err(TransportError::LinkDown));
    let old = drv.negotiated_features();
    drv.restart().unwrap();
    assert!(drv.link_session().is_some());
    assert_eq!(drv.negotiated_features(), old);
}

#[test]
fn cpuname_in_config_space_overrides_the_platform_names() {
    let s = Setup::nuttx();
    let mut dopts = driver_opts();
    dopts.remote_cpu = RemoteCpu::new("wrong").unwrap();
    let mut vopts = device_opts();
    vopts.remote_cpu = RemoteCpu::new("nobody").unwrap();
    let (drv, mut vdev, _dev) = pair(&s, dopts, vopts);
    vdev.poll().unwrap();
    assert_eq!(drv.remote_cpu().as_str(), "proxy");
    assert_eq!(vdev.remote_cpu().as_str(), "server");
}

#[test]
fn legacy_layout_names_and_no_bufaddr() {
    let mut s = Setup::nuttx();
    s.features = 0x1f;
    s.config = config(0x400, 0x300, "host1", "rem1", ConfigLayout::Legacy);
    let (drv, mut vdev, dev) = pair(
        &s,
        driver_opts().layout(ConfigLayout::Legacy),
        device_opts().layout(ConfigLayout::Legacy),
    );
    vdev.poll().unwrap();
    assert_eq!(dev.driver_features().unwrap(), 0xf, "no BUFADDR in legacy");
    assert_eq!(drv.remote_cpu().as_str(), "rem1");
    assert_eq!(vdev.remote_cpu().as_str(), "host1");
    assert_eq!(drv.tx_buffers(), (8, 0x400));
    assert_eq!(drv.rx_buffers(), (8, 0x300));
    assert_eq!(
        (vdev.rx_buffer_size(), vdev.tx_buffer_size()),
        (0x400, 0x300)
    );
}

#[test]
fn zero_sizes_and_empty_host_name_are_filled_in_by_the_driver() {
    let mut s = Setup::nuttx();
    s.config = config(0, 0, "", "proxy", ConfigLayout::Current);
    let (drv, mut vdev, dev) = pair(
        &s,
        driver_opts().buffer_size(0x300).buffers(4),
        device_opts(),
    );
    let mut cfg = [0u8; 40];
    dev.read_config(0, &mut cfg).unwrap();
    assert_eq!(&cfg[0..8], &[0, 3, 0, 0, 0, 3, 0, 0]);
    assert_eq!(&cfg[24..32], b"server\0\0");
    assert_eq!(drv.tx_buffers(), (4, 0x300));
    vdev.poll().unwrap();
    assert_eq!(
        (vdev.tx_buffer_size(), vdev.rx_buffer_size()),
        (0x300, 0x300)
    );
    assert_eq!(vdev.remote_cpu().as_str(), "server");
    // 4 RX buffers posted in an 8-entry ring.
    assert_eq!(vdev.buffer_stats().tx_free, 4);
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

#[test]
fn bufaddr_driver_announces_where_it_put_the_buffers() {
    let mut s = Setup::nuttx();
    s.features = 0x1f;
    let (_drv, mut vdev, dev) = pair(&s, driver_opts(), device_opts());
    assert_eq!(dev.driver_features().unwrap(), 0x1f);
    let mut cfg = [0u8; 40];
    dev.read_config(0, &mut cfg).unwrap();
    let (h2r, r2h) = (u64_at(&cfg, 8), u64_at(&cfg, 16));
    assert!(h2r >= PA && r2h >= PA && h2r != r2h);
    // Every RX descriptor on vring0 points into the announced r2h pool.
    let q0 = dev.queue(0).unwrap();
    let mut addrs: Vec<u64> = (0..8)
        .map(|h| q0.region.read_u64(q0.layout.desc_at(h)).unwrap())
        .collect();
    addrs.sort_unstable();
    let want: Vec<u64> = (0..8).map(|i| r2h + i * 1536).collect();
    assert_eq!(addrs, want);
    // The device's TX buffers are exactly those.
    vdev.poll().unwrap();
    let tb = vdev.get_tx().unwrap().unwrap();
    assert!(want.contains(&(PA + tb.offset as u64)));
}

#[test]
fn bufaddr_driver_uses_the_pools_the_config_announces() {
    let mut s = Setup::nuttx();
    s.features = 0x1f;
    let (h2r, r2h) = (PA + 0xC_0000, PA + 0xE_0000);
    s.config[8..16].copy_from_slice(&h2r.to_le_bytes());
    s.config[16..24].copy_from_slice(&r2h.to_le_bytes());
    let (dev, region) = mmio_device(&s);
    // The transport's own pool stays below the announced buffers.
    let t = MmioTransport::new(
        dev.clone(),
        SharedMemory {
            region: region.clone(),
            window: Window::new(PA, 0, region.len()),
            pool: 0..0x8_0000,
            ring_align: 8,
        },
        Some(64),
    )
    .unwrap();
    let mut drv = RpmsgVirtioDriver::<_, 8>::start_new(t, driver_opts())
        .map_err(|(e, _)| e)
        .unwrap();
    let q0 = dev.queue(0).unwrap();
    let mut addrs: Vec<u64> = (0..8)
        .map(|h| q0.region.read_u64(q0.layout.desc_at(h)).unwrap())
        .collect();
    addrs.sort_unstable();
    assert_eq!(addrs, (0..8).map(|i| r2h + i * 1536).collect::<Vec<_>>());
    let tb = drv.get_tx().unwrap().unwrap();
    assert!((0xC_0000..0xC_0000 + 8 * 1536).contains(&tb.offset));
    // A pool announced outside the shared memory is refused.
    let mut s2 = s;
    s2.config[16..24].copy_from_slice(&(PA + 0x10_0000 - 100).to_le_bytes());
    let (dev2, region2) = mmio_device(&s2);
    let t2 = mmio_transport(&s2, &dev2, &region2);
    let err = RpmsgVirtioDriver::<_, 8>::start_new(t2, driver_opts())
        .map(|_| ())
        .unwrap_err()
        .0;
    assert!(matches!(
        err,
        rptun::rpmsg::virtio::RpmsgVirtioError::BadBufferAddr { what: "r2h", .. }
    ));
    assert_ne!(dev2.status().unwrap() & status::FAILED, 0);
}

#[test]
fn driver_refuses_a_device_that_is_not_rpmsg() {
    let s = Setup::nuttx();
    let region = rptun::shm::Region::new_heap(1 << 16);
    let window = Window::new(PA, 0, region.len());
    let dev = Arc::new(
        rptun::virtio::mmio::MmioDevice::new(
            rptun::virtio::mmio::MmioDeviceInfo {
                device_id: 4,
                vendor_id: 0,
                features: 0,
                queue_max: &[8],
                config: &[],
            },
            region.clone(),
            window,
        )
        .unwrap(),
    );
    let t = MmioTransport::new(dev, SharedMemory::whole_window(region, window), None).unwrap();
    let (err, _t) = RpmsgVirtioDriver::<_, 8>::start_new(t, driver_opts()).unwrap_err();
    assert_eq!(err, rptun::rpmsg::virtio::RpmsgVirtioError::NotRpmsg(4));
    let _ = s;
}

#[test]
fn a_small_capacity_driver_caps_large_device_queues() {
    let mut s = Setup::nuttx();
    s.queue_max = 1024;
    let (dev, region) = mmio_device(&s);
    let t = mmio_transport(&s, &dev, &region);
    let drv = RpmsgVirtioDriver::<_, 4>::start_new(t, driver_opts())
        .map_err(|(e, _)| e)
        .unwrap();
    assert_eq!(dev.queue(0).unwrap().layout.num, 4);
    assert_eq!(drv.tx_buffers(), (4, 1536));
    // A device built for at most 2 entries refuses and asks for a reset.
    let mut v = rptun::rpmsg::virtio::RpmsgVirtioDevice::<_, 2>::new(dev.clone(), device_opts());
    assert!(v.poll().is_err());
    assert!(matches!(
        v.down_reason(),
        Some(DownReason::Broken(
            rptun::rpmsg::virtio::RpmsgVirtioError::QueueTooLarge { num: 4, .. }
        ))
    ));
}

#[test]
fn dump_shows_each_vrings_indices() {
    let (mut a, mut b, _dev) = links(&Setup::nuttx());
    let (ga, gb) = (msgs(), msgs());
    let (ea, _eb) = svc(&mut a, &mut b, &ga, &gb);
    a.trysend(ea, b"x").unwrap();
    let da = a.dump().to_string();
    let db = b.dump().to_string();
    assert!(da.contains("rpmsg-virtio driver: up, session 1"), "{da}");
    assert!(da.contains("vring0 (rx): num 8 avail.idx"), "{da}");
    assert!(da.contains("vring1 (tx): num 8"), "{da}");
    assert!(db.contains("rpmsg-virtio device: up, session 1"), "{db}");
    assert!(db.contains("vring0 (tx): num 8"), "{db}");
    assert!(db.contains("vring1 (rx): num 8"), "{db}");
    assert!(da.contains("NS|ACK|BUFSZ|CPUNAME"), "{da}");
    print!("{da}\n{db}");
    let _ = F_BUFADDR;
}
