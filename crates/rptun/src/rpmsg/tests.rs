//! Bus tests over the loopback pair.

use std::sync::{Arc, Mutex};
use std::vec::Vec;

use core::time::Duration;

use crate::rpmsg::loopback::{Loopback, LoopbackConfig};
use crate::rpmsg::services::{ping, test as rtest};
use crate::rpmsg::wait::{Clock, TickWait};
use crate::rpmsg::*;
use crate::wire::rpmsg::{NsKind, NsMessage, RpmsgHeader, HEADER_LEN};

type L = Link<Loopback>;
type Log = Arc<Mutex<Vec<(u32, Vec<u8>)>>>;

fn links(cfg: LoopbackConfig) -> (L, L) {
    let (a, b) = Loopback::pair(cfg).unwrap();
    let (mut la, mut lb) = (Link::new(a), Link::new(b));
    la.poll().unwrap();
    lb.poll().unwrap();
    (la, lb)
}

/// Polls both sides until neither receives anything.
fn pump(a: &mut L, b: &mut L) {
    for _ in 0..100 {
        let x = a.poll().unwrap();
        let y = b.poll().unwrap();
        if x.received == 0 && y.received == 0 {
            return;
        }
    }
    panic!("links never went quiet");
}

fn collector(log: &Log) -> impl EndpointHandler<Loopback> {
    let log = log.clone();
    on_message(move |_ctx, msg| log.lock().unwrap().push((msg.src(), msg.to_vec())))
}

fn echo() -> impl EndpointHandler<Loopback> {
    on_message(|ctx, msg| {
        let d = msg.to_vec();
        ctx.reply(&msg, &d).unwrap();
    })
}

/// Sends raw bytes through A's transport, bypassing A's bus: the header says
/// `hdr_len`, the transport reports `reported` bytes.
fn inject(link: &mut L, src: u32, dst: u32, payload: &[u8], hdr_len: u16, reported: usize) {
    let t = link.transport_mut();
    let buf = t.get_tx().unwrap().expect("a free TX buffer");
    let hdr = RpmsgHeader {
        src,
        dst,
        reserved: 0,
        len: hdr_len,
        flags: 0,
    };
    t.tx_region()
        .write_bytes(buf.offset, &hdr.to_bytes())
        .unwrap();
    t.tx_region()
        .write_bytes(buf.offset + HEADER_LEN, payload)
        .unwrap();
    t.send(buf, reported).unwrap();
}

fn inject_ns(link: &mut L, m: NsMessage) {
    let b = m.to_bytes();
    inject(link, m.addr, NS_ADDR, &b, 40, HEADER_LEN + 40);
}

// ------------------------------------------------------------- endpoints

#[test]
fn endpoints_get_addresses_from_1024_and_reserved_ones_are_refused() {
    let (mut a, _b) = links(LoopbackConfig::default());
    let e0 = a
        .create_endpoint(EndpointConfig::unnamed(), on_message(|_, _| {}))
        .unwrap();
    let e1 = a
        .create_endpoint(EndpointConfig::unnamed(), on_message(|_, _| {}))
        .unwrap();
    let e2 = a
        .create_endpoint(EndpointConfig::unnamed(), on_message(|_, _| {}))
        .unwrap();
    let addr = |a: &L, e| a.endpoint(e).unwrap().addr;
    assert_eq!(
        [addr(&a, e0), addr(&a, e1), addr(&a, e2)],
        [1024, 1025, 1026]
    );
    a.destroy_endpoint(e1).unwrap();
    assert!(a.endpoint(e1).is_none());
    assert_eq!(a.destroy_endpoint(e1), Err(RpmsgError::NoEndpoint));
    assert_eq!(a.trysend(e1, b"x"), Err(RpmsgError::NoEndpoint));
    let e3 = a
        .create_endpoint(EndpointConfig::unnamed(), on_message(|_, _| {}))
        .unwrap();
    assert_eq!(addr(&a, e3), 1025, "lowest free address is reused");
    assert_ne!(e3, e1, "a reused slot gets a new id");
    assert!(a.endpoint(e1).is_none());

    let h = || on_message::<Loopback, _>(|_, _| {});
    assert_eq!(
        a.create_endpoint(EndpointConfig::unnamed().addr(1000), h()),
        Err(RpmsgError::ReservedAddress(1000))
    );
    assert_eq!(
        a.create_endpoint(EndpointConfig::unnamed().addr(NS_ADDR), h()),
        Err(RpmsgError::ReservedAddress(NS_ADDR))
    );
    assert_eq!(
        a.create_endpoint(EndpointConfig::unnamed().addr(1026), h()),
        Err(RpmsgError::AddressInUse(1026))
    );
    assert_eq!(
        a.create_endpoint(EndpointConfig::unnamed().dest(NS_ADDR), h()),
        Err(RpmsgError::ReservedAddress(NS_ADDR))
    );
    assert!(matches!(
        a.create_endpoint(EndpointConfig::new(&"n".repeat(32)), h()),
        Err(RpmsgError::InvalidName(NameError::TooLong { len: 32 }))
    ));
    let e5 = a
        .create_endpoint(EndpointConfig::unnamed().addr(5000), h())
        .unwrap();
    assert_eq!(addr(&a, e5), 5000);
    assert_eq!(a.max_payload(), 512 - 16);
}

#[test]
fn fixed_addresses_talk_without_name_service() {
    let (mut a, mut b) = links(LoopbackConfig {
        features: RpmsgFeatures::NONE,
        ..Default::default()
    });
    let log = Log::default();
    b.create_endpoint(EndpointConfig::unnamed().addr(2000), collector(&log))
        .unwrap();
    let ea = a
        .create_endpoint(EndpointConfig::new("x").dest(2000), on_message(|_, _| {}))
        .unwrap();
    a.trysend(ea, b"fixed").unwrap();
    pump(&mut a, &mut b);
    assert_eq!(*log.lock().unwrap(), vec![(1024, b"fixed".to_vec())]);
    assert_eq!(
        b.stats().ns_received,
        0,
        "no name-service traffic without NS"
    );
}

#[test]
fn both_sides_announcing_bind_to_each_other() {
    let (mut a, mut b) = links(LoopbackConfig::default());
    // B gets a second endpoint first so the two addresses differ.
    b.create_endpoint(EndpointConfig::unnamed(), on_message(|_, _| {}))
        .unwrap();
    let ea = a
        .create_endpoint(EndpointConfig::new("svc"), echo())
        .unwrap();
    let log = Log::default();
    let eb = b
        .create_endpoint(EndpointConfig::new("svc"), collector(&log))
        .unwrap();
    assert_eq!(a.endpoint(ea).unwrap().binding, Binding::Unbound);
    pump(&mut a, &mut b);
    let (ia, ib) = (a.endpoint(ea).unwrap(), b.endpoint(eb).unwrap());
    assert_eq!((ia.dest, ib.dest), (ib.addr, ia.addr));
    assert_eq!(ia.binding, Binding::NameService);
    assert_eq!(ib.binding, Binding::NameService);
    b.trysend(eb, b"ping").unwrap();
    pump(&mut a, &mut b);
    assert_eq!(*log.lock().unwrap(), vec![(1024, b"ping".to_vec())]);
}

#[test]
fn endpoint_created_after_the_announcement_binds_from_pending_and_acks() {
    let (mut a, mut b) = links(LoopbackConfig::default());
    let ea = a
        .create_endpoint(EndpointConfig::new("late"), echo())
        .unwrap();
    pump(&mut a, &mut b);
    let pending: Vec<_> = b.pending_announcements().collect();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].name, "late");
    assert_eq!(pending[0].addr, 1024);
    assert!(b
        .dump()
        .to_string()
        .contains("pending announcement \"late\" at 1024"));

    let bound = Arc::new(Mutex::new(None));
    let seen = bound.clone();
    let eb = b
        .create_endpoint(
            EndpointConfig::new("late"),
            on_message(|_, _| {}).on_bound(move |_, d| *seen.lock().unwrap() = Some(d)),
        )
        .unwrap();
    assert_eq!(b.endpoint(eb).unwrap().dest, 1024, "bound at creation");
    assert_eq!(*bound.lock().unwrap(), Some(1024));
    assert_eq!(b.pending_announcements().count(), 0);
    pump(&mut a, &mut b);
    // B's CREATE_ACK told A where B is, before any data message.
    let ia = a.endpoint(ea).unwrap();
    assert_eq!(ia.dest, b.endpoint(eb).unwrap().addr);
    assert_eq!(ia.binding, Binding::NameService);
}

#[test]
fn destroy_sends_ns_destroy_and_the_peer_unbinds() {
    let (mut a, mut b) = links(LoopbackConfig::default());
    let ea = a
        .create_endpoint(EndpointConfig::new("svc"), echo())
        .unwrap();
    let unbound = Arc::new(Mutex::new(0));
    let u = unbound.clone();
    let eb = b
        .create_endpoint(
            EndpointConfig::new("svc"),
            on_message(|_, _| {}).on_unbind(move |_| *u.lock().unwrap() += 1),
        )
        .unwrap();
    pump(&mut a, &mut b);
    assert_eq!(b.endpoint(eb).unwrap().dest, 1024);
    a.destroy_endpoint(ea).unwrap();
    pump(&mut a, &mut b);
    assert_eq!(*unbound.lock().unwrap(), 1);
    let ib = b.endpoint(eb).unwrap();
    assert_eq!((ib.dest, ib.binding), (ADDR_ANY, Binding::Unbound));
    assert_eq!(b.trysend(eb, b"x"), Err(RpmsgError::NotBound));
}

#[test]
fn unbind_callback_may_destroy_its_own_endpoint() {
    let (mut a, mut b) = links(LoopbackConfig::default());
    let ea = a
        .create_endpoint(EndpointConfig::new("svc"), echo())
        .unwrap();
    let eb = b
        .create_endpoint(
            EndpointConfig::new("svc"),
            on_message(|_, _| {}).on_unbind(|ctx| {
                let me = ctx.this_endpoint();
                ctx.destroy_endpoint(me).unwrap();
            }),
        )
        .unwrap();
    pump(&mut a, &mut b);
    a.destroy_endpoint(ea).unwrap();
    pump(&mut a, &mut b);
    assert!(b.endpoint(eb).is_none());
    assert_eq!(b.endpoints().count(), 0);
}

#[test]
fn first_message_binds_an_unbound_endpoint() {
    let (mut a, mut b) = links(LoopbackConfig {
        features: RpmsgFeatures::NONE,
        ..Default::default()
    });
    let eb = b
        .create_endpoint(EndpointConfig::unnamed().addr(3000), echo())
        .unwrap();
    let log = Log::default();
    let ea = a
        .create_endpoint(EndpointConfig::unnamed(), collector(&log))
        .unwrap();
    a.trysendto(ea, 3000, b"hi").unwrap();
    pump(&mut a, &mut b);
    let ib = b.endpoint(eb).unwrap();
    assert_eq!((ib.dest, ib.binding), (1024, Binding::FirstMessage));
    assert_eq!(*log.lock().unwrap(), vec![(3000, b"hi".to_vec())]);
}

#[test]
fn a_first_message_from_any_or_the_name_service_address_does_not_bind() {
    // Found by the rpmsg_link fuzz target: a hostile peer sending from ANY
    // left the endpoint "bound (first message)" to ANY; sending from 0x35
    // bound it to the peer's name service.
    let (mut a, mut b) = links(LoopbackConfig {
        features: RpmsgFeatures::NONE,
        ..Default::default()
    });
    let log = Log::default();
    let eb = b
        .create_endpoint(EndpointConfig::unnamed().addr(3000), collector(&log))
        .unwrap();
    inject(&mut a, ADDR_ANY, 3000, b"x", 1, HEADER_LEN + 1);
    inject(&mut a, NS_ADDR, 3000, b"y", 1, HEADER_LEN + 1);
    pump(&mut a, &mut b);
    // Delivered, but the endpoint stays unbound.
    assert_eq!(
        *log.lock().unwrap(),
        vec![(ADDR_ANY, b"x".to_vec()), (NS_ADDR, b"y".to_vec())]
    );
    let ib = b.endpoint(eb).unwrap();
    assert_eq!((ib.dest, ib.binding), (ADDR_ANY, Binding::Unbound));
    assert_eq!(b.trysend(eb, b"z"), Err(RpmsgError::NotBound));
    // A real source still binds it.
    inject(&mut a, 1500, 3000, b"w", 1, HEADER_LEN + 1);
    pump(&mut a, &mut b);
    let ib = b.endpoint(eb).unwrap();
    assert_eq!((ib.dest, ib.binding), (1500, Binding::FirstMessage));
}

#[test]
fn name_service_messages_with_an_empty_name_are_dropped() {
    // Found by the rpmsg_link fuzz target: a CREATE with an empty name bound
    // an unnamed endpoint (and made us CREATE_ACK with an empty name); a
    // DESTROY with an empty name unbound an unnamed endpoint with a fixed
    // destination.
    let (mut a, mut b) = links(LoopbackConfig::default());
    let free = b
        .create_endpoint(EndpointConfig::unnamed(), on_message(|_, _| {}))
        .unwrap();
    let fixed = b
        .create_endpoint(EndpointConfig::unnamed().dest(2000), on_message(|_, _| {}))
        .unwrap();
    let empty = RpmsgName::new("").unwrap();
    inject_ns(&mut a, NsMessage::new(empty, 1500, NsKind::Create));
    inject_ns(&mut a, NsMessage::new(empty, 2000, NsKind::Destroy));
    pump(&mut a, &mut b);
    assert_eq!(b.stats().dropped_bad_ns, 2);
    assert_eq!(b.stats().tx_messages, 0, "no CREATE_ACK sent");
    let f = b.endpoint(free).unwrap();
    assert_eq!((f.dest, f.binding), (ADDR_ANY, Binding::Unbound));
    let x = b.endpoint(fixed).unwrap();
    assert_eq!((x.dest, x.binding), (2000, Binding::Fixed));
    assert_eq!(b.pending_announcements().count(), 0);
}

#[test]
fn callbacks_can_create_endpoints_and_destroy_themselves() {
    let (mut a, mut b) = links(LoopbackConfig::default());
    let eb = b
        .create_endpoint(
            EndpointConfig::new("ctl"),
            on_message(|ctx, msg| match msg.to_vec().as_slice() {
                b"spawn" => {
                    let new = ctx
                        .create_endpoint(EndpointConfig::unnamed(), echo())
                        .unwrap();
                    let addr = ctx.endpoint(new).unwrap().addr;
                    ctx.reply(&msg, &addr.to_le_bytes()).unwrap();
                }
                b"die" => {
                    let me = ctx.this_endpoint();
                    ctx.destroy_endpoint(me).unwrap();
                }
                _ => {}
            }),
        )
        .unwrap();
    let log = Log::default();
    let ea = a
        .create_endpoint(EndpointConfig::new("ctl"), collector(&log))
        .unwrap();
    pump(&mut a, &mut b);
    a.trysend(ea, b"spawn").unwrap();
    pump(&mut a, &mut b);
    let got = log.lock().unwrap().pop().unwrap().1;
    let spawned = u32::from_le_bytes(got.try_into().unwrap());
    assert!(b.endpoint_at(spawned).is_some());
    a.trysendto(ea, spawned, b"echo me").unwrap();
    pump(&mut a, &mut b);
    assert_eq!(
        log.lock().unwrap().pop(),
        Some((spawned, b"echo me".to_vec()))
    );
    let b_addr = b.endpoint(eb).unwrap().addr;
    a.trysend(ea, b"die").unwrap();
    pump(&mut a, &mut b);
    assert!(b.endpoint(eb).is_none());
    // B's DESTROY unbound A's endpoint; an explicit address still goes out
    assert_eq!(a.trysend(ea, b"anyone?"), Err(RpmsgError::NotBound));
    a.trysendto(ea, b_addr, b"anyone?").unwrap();
    pump(&mut a, &mut b);
    assert_eq!(b.stats().dropped_unknown_dst, 1);
}

// ------------------------------------------------------------ registry

/// Binds any announcement of `name` with an echo endpoint; counts hooks.
#[derive(Default)]
struct Binder {
    name: &'static str,
    created: usize,
    destroyed: usize,
    bound: Vec<(EndpointId, u32)>,
    unbinds: Arc<Mutex<usize>>,
}

impl Service<Loopback> for Binder {
    fn device_created(&mut self, _link: &mut L, _id: LinkId) {
        self.created += 1;
    }
    fn device_destroyed(&mut self, _link: &mut L, _id: LinkId) {
        self.destroyed += 1;
    }
    fn ns_match(&mut self, _link: &L, name: &str, _addr: u32) -> bool {
        name == self.name
    }
    fn ns_bind(&mut self, link: &mut L, _id: LinkId, name: &str, addr: u32) {
        let u = self.unbinds.clone();
        let e = link
            .create_endpoint(
                EndpointConfig::new(name).dest(addr),
                on_message(|ctx, msg| {
                    let d = msg.to_vec();
                    ctx.reply(&msg, &d).unwrap();
                })
                .on_unbind(move |_| *u.lock().unwrap() += 1),
            )
            .unwrap();
        self.bound.push((e, addr));
    }
}

fn binder(name: &'static str) -> Binder {
    Binder {
        name,
        ..Default::default()
    }
}

fn pump_bus(a: &mut L, bus: &mut Bus<Loopback>) {
    for _ in 0..100 {
        let x = a.poll().unwrap();
        let ids = bus.link_ids();
        let mut y = 0;
        for id in ids {
            y += bus.poll(id).unwrap().received;
        }
        if x.received == 0 && y == 0 {
            return;
        }
    }
    panic!("links never went quiet");
}

#[test]
fn service_registered_first_binds_the_announcement_with_create_ack() {
    let (mut a, b) = links(LoopbackConfig::default());
    let mut bus = Bus::new();
    let sid = bus.register(ServiceConfig::any("binder"), binder("svc"));
    let lid = bus.add_link(b);
    pump_bus(&mut a, &mut bus);
    assert_eq!(bus.service_mut(&sid).unwrap().created, 1);
    let log = Log::default();
    let ea = a
        .create_endpoint(EndpointConfig::new("svc"), collector(&log))
        .unwrap();
    pump_bus(&mut a, &mut bus);
    let (eb, dest) = bus.service_mut(&sid).unwrap().bound[0];
    assert_eq!(dest, 1024);
    let ib = bus.link(lid).unwrap().endpoint(eb).unwrap();
    // CREATE_ACK: A knows B's address before any data message.
    let ia = a.endpoint(ea).unwrap();
    assert_eq!((ia.dest, ia.binding), (ib.addr, Binding::NameService));
    a.trysend(ea, b"round trip").unwrap();
    pump_bus(&mut a, &mut bus);
    assert_eq!(
        *log.lock().unwrap(),
        vec![(ib.addr, b"round trip".to_vec())]
    );
}

#[test]
fn announcement_first_is_kept_and_replayed_when_the_service_registers() {
    let (mut a, b) = links(LoopbackConfig::default());
    let mut bus = Bus::new();
    let lid = bus.add_link(b);
    let log = Log::default();
    let ea = a
        .create_endpoint(EndpointConfig::new("svc"), collector(&log))
        .unwrap();
    pump_bus(&mut a, &mut bus);
    let dump = bus.dump();
    assert_eq!(
        dump.links[0].pending.len(),
        1,
        "unmatched announcement kept"
    );
    assert_eq!(a.endpoint(ea).unwrap().binding, Binding::Unbound);

    let sid = bus.register(ServiceConfig::any("binder"), binder("svc"));
    assert_eq!(
        bus.service_mut(&sid).unwrap().created,
        1,
        "device_created replayed"
    );
    assert_eq!(
        bus.service_mut(&sid).unwrap().bound.len(),
        1,
        "announcement replayed"
    );
    assert_eq!(bus.link(lid).unwrap().pending_announcements().count(), 0);
    pump_bus(&mut a, &mut bus);
    assert_eq!(a.endpoint(ea).unwrap().binding, Binding::NameService);
    a.trysend(ea, b"late but bound").unwrap();
    pump_bus(&mut a, &mut bus);
    assert_eq!(log.lock().unwrap().len(), 1);
}

#[test]
fn ns_destroy_reaches_the_service_endpoint_unbind() {
    let (mut a, b) = links(LoopbackConfig::default());
    let mut bus = Bus::new();
    let svc = binder("svc");
    let unbinds = svc.unbinds.clone();
    bus.register(ServiceConfig::any("binder"), svc);
    bus.add_link(b);
    let ea = a
        .create_endpoint(EndpointConfig::new("svc"), on_message(|_, _| {}))
        .unwrap();
    pump_bus(&mut a, &mut bus);
    a.destroy_endpoint(ea).unwrap();
    pump_bus(&mut a, &mut bus);
    assert_eq!(*unbinds.lock().unwrap(), 1);
}

#[test]
fn linux_mode_binds_from_create_alone_and_destroy_flags_3_destroys() {
    let (mut a, b) = links(LoopbackConfig::linux());
    let mut bus = Bus::new();
    let svc = binder("svc");
    let unbinds = svc.unbinds.clone();
    let sid = bus.register(ServiceConfig::any("binder"), svc);
    let lid = bus.add_link(b);
    let log = Log::default();
    let ea = a
        .create_endpoint(EndpointConfig::new("svc"), collector(&log))
        .unwrap();
    pump_bus(&mut a, &mut bus);
    let (eb, dest) = bus.service_mut(&sid).unwrap().bound[0];
    assert_eq!(dest, 1024, "bound from CREATE alone");
    // No CREATE_ACK in Linux mode: A is still unbound...
    assert_eq!(a.endpoint(ea).unwrap().binding, Binding::Unbound);
    assert_eq!(a.trysend(ea, b"x"), Err(RpmsgError::NotBound));
    assert_eq!(a.stats().unmatched_acks, 0);
    // ...until B's first message tells it where B is.
    let link_b = bus.link_mut(lid).unwrap();
    let b_addr = link_b.endpoint(eb).unwrap().addr;
    link_b.trysend(eb, b"hello from the binder").unwrap();
    pump_bus(&mut a, &mut bus);
    assert_eq!(a.endpoint(ea).unwrap().binding, Binding::FirstMessage);
    assert_eq!(a.endpoint(ea).unwrap().dest, b_addr);
    a.trysend(ea, b"and back").unwrap();
    pump_bus(&mut a, &mut bus);
    assert_eq!(log.lock().unwrap().len(), 2, "the binder echoed");
    // Linux tests `flags & 1`: flags 3 is a destroy.
    let mut m = NsMessage::new(RpmsgName::new("svc").unwrap(), 1024, NsKind::Destroy);
    m.flags = 3;
    inject_ns(&mut a, m);
    pump_bus(&mut a, &mut bus);
    assert_eq!(*unbinds.lock().unwrap(), 1);
    let ib = bus.link(lid).unwrap().endpoint(eb).unwrap();
    assert_eq!(ib.dest, ADDR_ANY);
}

#[test]
fn a_service_for_the_local_cpu_name_is_reported_unmatched() {
    let (_a, b) = links(LoopbackConfig::default());
    let mut bus = Bus::new();
    bus.add_link(b); // local "proxy", remote "server"
                     // The classic mistake: our own name where the remote one is meant.
    let wrong = bus.register(
        ServiceConfig::for_cpu("wrong", RemoteCpu::new("proxy").unwrap()),
        binder("x"),
    );
    let right = bus.register(
        ServiceConfig::for_cpu("right", RemoteCpu::new("server").unwrap()),
        binder("y"),
    );
    assert_eq!(bus.service_mut(&wrong).unwrap().created, 0);
    assert_eq!(bus.service_mut(&right).unwrap().created, 1);
    assert_eq!(bus.unmatched_services(), vec!["wrong".to_string()]);
    let text = bus.dump().to_string();
    let line = text.lines().find(|l| l.contains("wrong")).unwrap();
    assert!(line.contains("UNMATCHED"), "{text}");
    assert!(!text
        .lines()
        .find(|l| l.contains("right"))
        .unwrap()
        .contains("UNMATCHED"));
    let server = RemoteCpu::new("server").unwrap();
    assert!(bus.link_by_cpu(&server).is_some());
    assert!(bus.dump_cpu(&server).is_some());
    assert!(bus.link_by_cpu(&RemoteCpu::new("proxy").unwrap()).is_none());
}

#[test]
fn link_down_and_removal_reach_services() {
    let (a, b) = links(LoopbackConfig::default());
    let mut bus = Bus::new();
    let sid = bus.register(ServiceConfig::any("binder"), binder("svc"));
    let lid = bus.add_link(b);
    bus.poll(lid).unwrap();
    assert_eq!(bus.service_mut(&sid).unwrap().created, 1);
    drop(a); // the peer core stops
    let s = bus.poll(lid).unwrap();
    assert!(s.went_down);
    assert_eq!(bus.service_mut(&sid).unwrap().destroyed, 1);
    assert!(!bus.link(lid).unwrap().is_up());
    assert_eq!(
        bus.link_mut(lid)
            .unwrap()
            .create_endpoint(EndpointConfig::unnamed(), on_message(|_, _| {}))
            .map(|_| ()),
        Ok(()),
        "endpoints may be created while down"
    );
    let link = bus.remove_link(lid).unwrap();
    assert_eq!(bus.service_mut(&sid).unwrap().destroyed, 1, "not twice");
    assert_eq!(link.endpoints().count(), 1);
    assert!(bus.link(lid).is_none());
    let svc = bus.unregister(sid).unwrap();
    assert_eq!(svc.name, "svc");
}

// ------------------------------------------------------------- buffers

#[test]
fn zero_copy_send_to_any_after_destroy_is_refused() {
    // Found by the rpmsg_link fuzz target: with the endpoint destroyed,
    // sendto_nocopy skipped the "destination is ANY" check and sent a
    // message to 0xFFFFFFFF.
    let (mut a, mut b) = links(LoopbackConfig::default());
    let ea = a
        .create_endpoint(EndpointConfig::unnamed(), on_message(|_, _| {}))
        .unwrap();
    let free = a.transport().buffer_stats().tx_free;
    let tx = a.try_get_tx(ea).unwrap();
    a.destroy_endpoint(ea).unwrap();
    assert_eq!(a.sendto_nocopy(tx, ADDR_ANY, 1), Err(RpmsgError::NotBound));
    assert_eq!(
        a.transport().buffer_stats().tx_free,
        free,
        "buffer given back"
    );
    assert_eq!(a.stats().tx_messages, 0);
    pump(&mut a, &mut b);
    assert_eq!(b.stats().dropped_unknown_dst, 0);
}

#[test]
fn zero_copy_send_and_unused_release() {
    let (mut a, mut b) = links(LoopbackConfig::default());
    let log = Log::default();
    b.create_endpoint(EndpointConfig::new("z"), collector(&log))
        .unwrap();
    let ea = a
        .create_endpoint(EndpointConfig::new("z"), on_message(|_, _| {}))
        .unwrap();
    pump(&mut a, &mut b);
    let free = a.transport().buffer_stats().tx_free;
    let tx = a.try_get_tx(ea).unwrap();
    assert_eq!(tx.capacity(), 496);
    tx.write(0, b"written in place").unwrap();
    assert!(
        tx.write(490, &[0; 7]).is_err(),
        "cannot write past the payload"
    );
    assert_eq!(a.dump().tx_lent, 1);
    assert_eq!(a.endpoint(ea).unwrap().tx_lent, 1);
    a.send_nocopy(tx, 16).unwrap();
    let unused = a.try_get_tx(ea).unwrap();
    a.release_tx(unused).unwrap();
    pump(&mut a, &mut b);
    assert_eq!(log.lock().unwrap()[0].1, b"written in place");
    assert_eq!(a.transport().buffer_stats().tx_free, free);
    assert_eq!(a.dump().tx_lent, 0);
    // Too long for the buffer: refused, and the buffer is not lost.
    let tx = a.try_get_tx(ea).unwrap();
    assert_eq!(
        a.send_nocopy(tx, 497),
        Err(RpmsgError::TooLong { len: 497, max: 496 })
    );
    assert_eq!(a.transport().buffer_stats().tx_free, free);
    assert_eq!(
        a.trysend(ea, &[0; 497]),
        Err(RpmsgError::TooLong { len: 497, max: 496 })
    );
}

/// Holds every message; the test releases them from outside.
#[derive(Default)]
struct Holder {
    held: Vec<HeldRx>,
}

impl EndpointHandler<Loopback> for Holder {
    fn on_message(&mut self, ctx: &mut LinkCtx<'_, Loopback>, msg: Received<'_>) {
        // rewrite in place, then keep it
        msg.payload().fill(0, msg.len(), 0xee).unwrap();
        let h = ctx.hold(msg);
        self.held.push(h);
    }
}

#[test]
fn held_rx_buffers_stay_out_until_released() {
    let (mut a, mut b) = links(LoopbackConfig {
        buffers: 4,
        ..Default::default()
    });
    let eb = b
        .create_endpoint(EndpointConfig::new("h"), Holder::default())
        .unwrap();
    let ea = a
        .create_endpoint(EndpointConfig::new("h"), on_message(|_, _| {}))
        .unwrap();
    pump(&mut a, &mut b);
    for i in 0..4u8 {
        a.trysend(ea, &[i; 10]).unwrap();
    }
    pump(&mut a, &mut b);
    assert_eq!(b.handler::<Holder>(eb).unwrap().held.len(), 4);
    let d = b.dump();
    assert_eq!(d.rx_held, 4);
    assert_eq!(d.endpoints.iter().find(|e| e.id == eb).unwrap().rx_held, 4);
    assert_eq!(
        d.held_by.iter().filter(|h| h.rx && h.addr == 1024).count(),
        4
    );
    assert!(d.to_string().contains("rx buffer #"));
    // Every A→B buffer is held by B: A cannot send.
    assert_eq!(a.trysend(ea, b"x"), Err(RpmsgError::NoBuffer));
    let held = std::mem::take(&mut b.handler_mut::<Holder>(eb).unwrap().held);
    for (i, h) in held.into_iter().enumerate() {
        let mut buf = [0u8; 10];
        h.payload().read_bytes(0, &mut buf).unwrap();
        assert_eq!(buf, [0xee; 10], "message {i} rewritten in place");
        assert_eq!(h.src(), a.endpoint(ea).unwrap().addr);
        b.release_rx(h).unwrap();
    }
    assert_eq!(b.dump().rx_held, 0);
    a.trysend(ea, b"x").unwrap();
}

#[test]
fn a_thousand_trysends_without_a_reader_fail_cleanly_and_leak_nothing() {
    let (mut a, mut b) = links(LoopbackConfig::default());
    let count = Arc::new(Mutex::new(0usize));
    let c = count.clone();
    b.create_endpoint(
        EndpointConfig::new("sink"),
        on_message(move |_, _| *c.lock().unwrap() += 1),
    )
    .unwrap();
    let ea = a
        .create_endpoint(EndpointConfig::new("sink"), on_message(|_, _| {}))
        .unwrap();
    pump(&mut a, &mut b);
    let (mut ok, mut no_buffer) = (0, 0);
    for i in 0..1000u32 {
        match a.trysend(ea, &i.to_le_bytes()) {
            Ok(()) => ok += 1,
            Err(RpmsgError::NoBuffer) => no_buffer += 1,
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!((ok, no_buffer), (8, 992));
    let d = a.dump();
    assert_eq!((d.tx_free, d.tx_pending, d.tx_lent), (0, 8, 0));
    // A blocking send whose wait cannot make the peer run times out cleanly.
    let mut w = TickWait::new(1_000_000, || {});
    assert_eq!(
        a.send(ea, b"x", &mut w, Duration::from_millis(10)),
        Err(RpmsgError::Timeout)
    );
    assert!(w.now_ns() >= 10_000_000);
    assert_eq!(a.try_get_tx(ea).map(|_| ()), Err(RpmsgError::NoBuffer));
    pump(&mut a, &mut b);
    assert_eq!(*count.lock().unwrap(), 8);
    let d = a.dump();
    assert_eq!((d.tx_free, d.tx_pending, d.tx_lent), (8, 0, 0));
    let d = b.dump();
    assert_eq!((d.rx_held, d.tx_pending), (0, 0));
    // and the link still works at full capacity
    for _ in 0..8 {
        a.trysend(ea, b"again").unwrap();
    }
}

#[test]
fn blocking_send_waits_for_the_peer_to_drain() {
    let (mut a, mut b) = links(LoopbackConfig::default());
    let count = Arc::new(Mutex::new(0usize));
    let c = count.clone();
    b.create_endpoint(
        EndpointConfig::new("sink"),
        on_message(move |_, _| *c.lock().unwrap() += 1),
    )
    .unwrap();
    let ea = a
        .create_endpoint(EndpointConfig::new("sink"), on_message(|_, _| {}))
        .unwrap();
    pump(&mut a, &mut b);
    let mut w = TickWait::new(1_000_000, || {
        b.poll().unwrap();
    });
    for _ in 0..100 {
        a.send(ea, b"m", &mut w, Duration::from_secs(1)).unwrap();
    }
    // the blocking zero-copy path waits the same way
    for _ in 0..20 {
        let tx = a.get_tx(ea, &mut w, Duration::from_secs(1)).unwrap();
        tx.write(0, b"z").unwrap();
        a.send_nocopy(tx, 1).unwrap();
    }
    pump(&mut a, &mut b);
    assert_eq!(*count.lock().unwrap(), 120);
    let d = a.dump();
    assert_eq!((d.tx_free, d.tx_lent, d.tx_pending), (8, 0, 0));
}

/// Checks an ordered stream: message n carries n and a pattern.
#[derive(Default)]
struct Checker {
    next: u32,
    errors: u64,
    bytes: u64,
}

fn pattern(seq: u32, max: usize) -> Vec<u8> {
    let len = 4 + (seq as usize * 7919) % (max - 3);
    let mut v = vec![0u8; len];
    v[..4].copy_from_slice(&seq.to_le_bytes());
    for (j, b) in v[4..].iter_mut().enumerate() {
        *b = (seq as u8).wrapping_mul(31).wrapping_add(j as u8);
    }
    v
}

impl EndpointHandler<Loopback> for Checker {
    fn on_message(&mut self, ctx: &mut LinkCtx<'_, Loopback>, msg: Received<'_>) {
        let want = pattern(self.next, ctx.rx_max_payload());
        if msg.to_vec() != want {
            self.errors += 1;
        }
        self.bytes += msg.len() as u64;
        self.next += 1;
    }
}

#[test]
fn a_hundred_thousand_messages_arrive_in_order_byte_for_byte() {
    let (mut a, mut b) = links(LoopbackConfig::default());
    let eb = b
        .create_endpoint(EndpointConfig::new("stream"), Checker::default())
        .unwrap();
    let ea = a
        .create_endpoint(EndpointConfig::new("stream"), on_message(|_, _| {}))
        .unwrap();
    pump(&mut a, &mut b);
    const N: u32 = if cfg!(miri) { 40 } else { 100_000 };
    let max = a.max_payload();
    let mut seq = 0;
    let mut expected_bytes = 0u64;
    while seq < N {
        let m = pattern(seq, max);
        match a.trysend(ea, &m) {
            Ok(()) => {
                expected_bytes += m.len() as u64;
                seq += 1;
            }
            Err(RpmsgError::NoBuffer) => {
                b.poll().unwrap();
            }
            Err(e) => panic!("{e}"),
        }
    }
    pump(&mut a, &mut b);
    let c = b.handler::<Checker>(eb).unwrap();
    assert_eq!((c.next, c.errors, c.bytes), (N, 0, expected_bytes));
    assert_eq!(b.stats().rx_messages, u64::from(N));
}

#[test]
fn two_threads_exchange_ordered_messages() {
    let (mut a, mut b) = links(LoopbackConfig::default());
    let eb = b
        .create_endpoint(EndpointConfig::new("stream"), Checker::default())
        .unwrap();
    let ea = a
        .create_endpoint(EndpointConfig::new("stream"), on_message(|_, _| {}))
        .unwrap();
    pump(&mut a, &mut b);
    const N: u32 = if cfg!(miri) { 40 } else { 20_000 };
    let reader = std::thread::spawn(move || {
        let give_up = std::time::Instant::now() + Duration::from_secs(120);
        while b.handler::<Checker>(eb).unwrap().next < N && std::time::Instant::now() < give_up {
            if b.poll().unwrap().received == 0 {
                std::thread::yield_now();
            }
        }
        b
    });
    let max = a.max_payload();
    let give_up = std::time::Instant::now() + Duration::from_secs(120);
    let mut seq = 0;
    while seq < N && std::time::Instant::now() < give_up {
        match a.trysend(ea, &pattern(seq, max)) {
            Ok(()) => seq += 1,
            Err(RpmsgError::NoBuffer) => std::thread::yield_now(),
            Err(e) => panic!("{e}"),
        }
    }
    let b = reader.join().unwrap();
    let c = b.handler::<Checker>(eb).unwrap();
    assert_eq!((c.next, c.errors), (N, 0));
}

// ------------------------------------------------------------ malformed

#[test]
fn malformed_input_is_dropped_counted_and_buffers_come_back() {
    let (mut a, mut b) = links(LoopbackConfig::default());
    let log = Log::default();
    let eb = b
        .create_endpoint(EndpointConfig::new("m"), collector(&log))
        .unwrap();
    let ea = a
        .create_endpoint(EndpointConfig::new("m"), on_message(|_, _| {}))
        .unwrap();
    pump(&mut a, &mut b);
    let b_addr = b.endpoint(eb).unwrap().addr;
    let before = b.stats();
    // header len larger than the whole buffer
    inject(&mut a, 1024, b_addr, b"", 600, 512);
    // header len larger than what the transport reports
    inject(&mut a, 1024, b_addr, &[1; 100], 100, HEADER_LEN + 50);
    // shorter than a header
    inject(&mut a, 1024, b_addr, b"", 0, 8);
    // unknown destination
    inject(&mut a, 1024, 4242, b"lost", 4, HEADER_LEN + 4);
    pump(&mut a, &mut b);
    // name without NUL in 32 bytes
    let mut ns = NsMessage::new(RpmsgName::new("x").unwrap(), 2000, NsKind::Create).to_bytes();
    ns[..32].fill(b'x');
    inject(&mut a, 2000, NS_ADDR, &ns, 40, HEADER_LEN + 40);
    // name-service message of the wrong length
    inject(&mut a, 2000, NS_ADDR, &ns[..39], 39, HEADER_LEN + 39);
    // name-service message naming address ANY
    inject_ns(
        &mut a,
        NsMessage::new(RpmsgName::new("y").unwrap(), ADDR_ANY, NsKind::Create),
    );
    // the transport reports the whole buffer (as OpenAMP peers do): the
    // header's length decides
    inject(&mut a, 1024, b_addr, b"fine", 4, 512);
    pump(&mut a, &mut b);
    let s = b.stats();
    assert_eq!(s.dropped_bad_length - before.dropped_bad_length, 2);
    assert_eq!(s.dropped_short - before.dropped_short, 1);
    assert_eq!(s.dropped_unknown_dst - before.dropped_unknown_dst, 1);
    assert_eq!(s.dropped_bad_ns - before.dropped_bad_ns, 3);
    assert_eq!(b.pending_announcements().count(), 0);
    assert_eq!(*log.lock().unwrap(), vec![(1024, b"fine".to_vec())]);
    // every buffer came back and the link still works
    assert_eq!(a.transport().buffer_stats().tx_free, 8);
    a.trysend(ea, b"ok").unwrap();
    pump(&mut a, &mut b);
    assert_eq!(log.lock().unwrap().len(), 2);
    let text = b.dump().to_string();
    assert!(
        text.contains("bad length 2, unknown dst 1, bad ns 3"),
        "{text}"
    );
}

#[test]
fn announcement_flood_is_bounded() {
    let (mut a, mut b) = links(LoopbackConfig::default());
    for i in 0..(link::MAX_PENDING_ANNOUNCEMENTS as u32 + 10) {
        let name = format!("s{i}");
        inject_ns(
            &mut a,
            NsMessage::new(RpmsgName::new(&name).unwrap(), 2000 + i, NsKind::Create),
        );
        pump(&mut a, &mut b);
    }
    assert_eq!(
        b.pending_announcements().count(),
        link::MAX_PENDING_ANNOUNCEMENTS
    );
    assert_eq!(b.stats().dropped_announcements, 10);
}

// ------------------------------------------------------------- services

#[test]
fn ping_checks_data_at_17_bytes_and_at_maximum_payload() {
    let (mut a, mut b) = links(LoopbackConfig::default());
    let pa = ping::create_endpoint(&mut a).unwrap();
    let pb = ping::create_endpoint(&mut b).unwrap();
    pump(&mut a, &mut b);
    let mut w = TickWait::new(1_000, || {
        b.poll().unwrap();
    });
    let r = ping::ping(
        &mut a,
        pa,
        &ping::PingParams::new(5, 17).check(true),
        &mut w,
    )
    .unwrap();
    assert_eq!((r.times, r.send_len, r.buffer_len), (5, 17, 496));
    assert!(r.min_ns <= r.avg_ns && r.avg_ns <= r.max_ns);
    let r = ping::ping(
        &mut a,
        pa,
        &ping::PingParams::new(3, 100_000).check(true),
        &mut w,
    )
    .unwrap();
    assert_eq!(r.send_len, 496, "clamped to the maximum payload");
    let r = ping::ping(
        &mut a,
        pa,
        &ping::PingParams::new(20, 300).check(true).random_len(true),
        &mut w,
    )
    .unwrap();
    assert!((17..=300).contains(&r.send_len));
    let s = b.handler::<ping::PingHandler>(pb).unwrap().stats;
    assert_eq!((s.requests, s.replies, s.check_errors), (28, 28, 0));
    assert_eq!(
        a.handler::<ping::PingHandler>(pa).unwrap().stats.responses,
        28
    );
    let text = r.to_string();
    assert!(text.starts_with("ping times: 20\nbuffer_len: 496, send_len: "));
    assert!(text.contains("\nrate: ") && text.ends_with(" Mbits/sec\n"));
}

#[test]
fn ping_responder_reports_bad_data_and_ignores_unknown_cookies() {
    let (mut a, mut b) = links(LoopbackConfig::default());
    let pa = ping::create_endpoint(&mut a).unwrap();
    let pb = ping::create_endpoint(&mut b).unwrap();
    pump(&mut a, &mut b);
    let a_addr = a.endpoint(pa).unwrap().addr;
    let b_addr = b.endpoint(pb).unwrap().addr;
    // A request with the check bit whose data bytes differ.
    let mut m = ping::PingHeader {
        cmd: ping::PING_ACK | ping::PING_CHECK,
        len: 20,
        cookie: 7,
    }
    .to_bytes()
    .to_vec();
    m.extend_from_slice(&[1, 1, 2, 1]);
    inject(&mut a, a_addr, b_addr, &m, 20, HEADER_LEN + 20);
    pump(&mut a, &mut b);
    assert_eq!(
        b.handler::<ping::PingHandler>(pb)
            .unwrap()
            .stats
            .check_errors,
        1
    );
    // The reply carried cookie 7, which A never sent: looked up, not trusted.
    let sa = a.handler::<ping::PingHandler>(pa).unwrap().stats;
    assert_eq!((sa.unknown_cookies, sa.responses), (1, 0));
    // Too short to be a ping.
    inject(&mut a, a_addr, b_addr, &[0; 8], 8, HEADER_LEN + 8);
    pump(&mut a, &mut b);
    assert_eq!(
        b.handler::<ping::PingHandler>(pb).unwrap().stats.malformed,
        1
    );
    // No response at all: a clear error, not a hang.
    let mut w = TickWait::new(1_000_000, || {});
    assert_eq!(
        ping::ping(
            &mut a,
            pa,
            &ping::PingParams::new(1, 17).timeout(Duration::from_millis(5)),
            &mut w
        ),
        Err(ping::PingError::NoResponse)
    );
}

#[test]
fn ping_service_on_two_buses_by_remote_cpu_name() {
    let (a, b) = Loopback::pair(LoopbackConfig::default()).unwrap();
    let (mut bus_a, mut bus_b) = (Bus::new(), Bus::new());
    let sa = bus_a.register(ServiceConfig::any("ping"), ping::PingService::new());
    bus_a.add_link(Link::new(a));
    bus_b.add_link(Link::new(b));
    let sb = bus_b.register(ServiceConfig::any("ping"), ping::PingService::new());
    for _ in 0..5 {
        bus_a.poll_all().unwrap();
        bus_b.poll_all().unwrap();
    }
    let proxy = RemoteCpu::new("proxy").unwrap();
    let mut w = TickWait::new(1_000, || {
        bus_b.poll_all().unwrap();
    });
    let params = ping::PingParams::new(4, 1000).check(true);
    let r = ping::ping_cpu(&mut bus_a, &sa, &proxy, &params, &mut w).unwrap();
    assert_eq!((r.times, r.send_len), (4, 496));
    assert_eq!(
        ping::ping_cpu(
            &mut bus_a,
            &sa,
            &RemoteCpu::new("nobody").unwrap(),
            &params,
            &mut w
        ),
        Err(ping::PingError::NoLink)
    );
    let lb = bus_b.link_ids()[0];
    let (svc, link) = bus_b.service_and_link_mut(&sb, lb).unwrap();
    let ept = svc.endpoint(lb).unwrap();
    let s = link.handler::<ping::PingHandler>(ept).unwrap().stats;
    assert_eq!((s.replies, s.check_errors), (4, 0));
}

#[test]
fn rpmsg_test_holds_every_buffer_and_releases_later() {
    let (mut a, b) = links(LoopbackConfig::default());
    let mut bus = Bus::new();
    let sid = bus.register(ServiceConfig::any("test"), rtest::TestService::new());
    let lid = bus.add_link(b);
    let ea = rtest::create_endpoint(&mut a).unwrap();
    pump_bus(&mut a, &mut bus);
    assert_eq!(rtest::send_hold_rx(&mut a, ea).unwrap(), 8);
    bus.poll(lid).unwrap();
    let (svc, link) = bus.service_and_link_mut(&sid, lid).unwrap();
    let eb = svc.endpoint(lid).unwrap();
    let h = link.handler::<rtest::TestHandler>(eb).unwrap();
    assert_eq!((h.held(), h.stats.check_errors), (8, 0));
    assert!(h.release_due());
    assert_eq!(link.dump().rx_held, 8);
    assert_eq!(a.trysend(ea, b"x"), Err(RpmsgError::NoBuffer));
    // released on the next poll
    bus.poll(lid).unwrap();
    let link = bus.link_mut(lid).unwrap();
    let h = link.handler::<rtest::TestHandler>(eb).unwrap();
    assert_eq!(
        (h.held(), h.stats.released, h.stats.check_errors),
        (0, 8, 0)
    );
    assert_eq!(link.dump().rx_held, 0);
    assert_eq!(a.transport().buffer_stats().tx_free, 8);
    // and a second round works the same way
    assert_eq!(rtest::send_hold_rx(&mut a, ea).unwrap(), 8);
    bus.poll(lid).unwrap();
    bus.poll(lid).unwrap();
    let link = bus.link_mut(lid).unwrap();
    let h = link.handler::<rtest::TestHandler>(eb).unwrap();
    assert_eq!((h.stats.rounds, h.stats.released), (2, 16));
}

#[test]
fn link_down_voids_held_buffers_and_unbinds() {
    let (a, mut b) = links(LoopbackConfig::default());
    let mut a = a;
    let unbound = Arc::new(Mutex::new(0));
    let u = unbound.clone();
    let eb = b
        .create_endpoint(
            EndpointConfig::new("h"),
            on_message(|_, _| {}).on_unbind(move |_| *u.lock().unwrap() += 1),
        )
        .unwrap();
    let ea = a
        .create_endpoint(EndpointConfig::new("h"), on_message(|_, _| {}))
        .unwrap();
    pump(&mut a, &mut b);
    let lent = b.try_get_tx(eb).unwrap();
    a.trysend(ea, b"x").unwrap();
    drop(a);
    let s = b.poll().unwrap();
    assert!(s.went_down);
    assert_eq!(*unbound.lock().unwrap(), 1);
    assert_eq!(b.endpoint(eb).unwrap().dest, ADDR_ANY);
    assert_eq!(b.trysend(eb, b"x"), Err(RpmsgError::LinkDown));
    // A buffer lent in the old session is void: releasing it is harmless.
    b.release_tx(lent).unwrap();
    assert_eq!(b.dump().tx_lent, 0);
    assert!(b.dump().to_string().contains(" down "));
}

#[test]
fn one_bus_carries_links_of_different_transport_types() {
    type Dyn = Box<dyn RpmsgTransport + Send>;
    let (a, b) = Loopback::pair(LoopbackConfig::default()).unwrap();
    let mut bus: Bus<Dyn> = Bus::new();
    let sid = bus.register(ServiceConfig::any("ping"), ping::PingService::new());
    let lid = bus.add_link(Link::new(Box::new(a) as Dyn));
    let mut peer = Link::new(b);
    let pb = ping::create_endpoint(&mut peer).unwrap();
    for _ in 0..5 {
        bus.poll_all().unwrap();
        peer.poll().unwrap();
    }
    let mut w = TickWait::new(1_000, || {
        peer.poll().unwrap();
    });
    let proxy = RemoteCpu::new("proxy").unwrap();
    let r = ping::ping_cpu(
        &mut bus,
        &sid,
        &proxy,
        &ping::PingParams::new(2, 64),
        &mut w,
    )
    .unwrap();
    assert_eq!(r.send_len, 64);
    assert_eq!(bus.link(lid).unwrap().transport().role(), "loopback");
    assert_eq!(
        peer.handler::<ping::PingHandler>(pb).unwrap().stats.replies,
        2
    );
}
