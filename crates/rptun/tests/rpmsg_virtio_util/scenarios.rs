//! Scenarios run over every transport pair: generic over the driver-side
//! (`A`) and device-side (`B`) transports.

use std::sync::{Arc, Mutex};

use rptun::rpmsg::{
    on_message, Binding, EndpointConfig, EndpointHandler, EndpointId, HeldRx, Link, RpmsgError,
    RpmsgTransport, ADDR_ANY,
};

use super::pump;

pub type Msgs = Arc<Mutex<Vec<(u32, Vec<u8>)>>>;

pub fn collect<T: RpmsgTransport + 'static>(sink: &Msgs) -> impl EndpointHandler<T> {
    let sink = sink.clone();
    on_message(move |_ctx, msg| sink.lock().unwrap().push((msg.src(), msg.to_vec())))
}

pub fn msgs() -> Msgs {
    Arc::new(Mutex::new(Vec::new()))
}

/// Creates "svc" on both links (in the given order, pumping in between)
/// and returns the two endpoint ids.
pub fn bind_svc<A: RpmsgTransport + 'static, B: RpmsgTransport + 'static>(
    a: &mut Link<A>,
    b: &mut Link<B>,
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

pub fn binding_device_first<A: RpmsgTransport + 'static, B: RpmsgTransport + 'static>(
    a: &mut Link<A>,
    b: &mut Link<B>,
) {
    let (ga, gb) = (msgs(), msgs());
    let eb = b
        .create_endpoint(EndpointConfig::new("svc"), collect(&gb))
        .unwrap();
    pump(a, b);
    assert!(a.pending_announcements().any(|p| p.name.as_str() == "svc"));
    let ea = a
        .create_endpoint(EndpointConfig::new("svc"), collect(&ga))
        .unwrap();
    // The announcement binds the driver's endpoint at once.
    let ia = a.endpoint(ea).unwrap();
    assert_eq!(ia.dest, b.endpoint(eb).unwrap().addr);
    assert_eq!(ia.binding, Binding::NameService);
    pump(a, b);
    // CREATE_ACK told the announcer, before any data message.
    let ib = b.endpoint(eb).unwrap();
    assert_eq!(ib.dest, ia.addr);
    assert_eq!(ib.binding, Binding::NameService);
    assert!(ga.lock().unwrap().is_empty() && gb.lock().unwrap().is_empty());
    a.trysend(ea, b"to device").unwrap();
    b.trysend(eb, b"to driver").unwrap();
    pump(a, b);
    assert_eq!(*gb.lock().unwrap(), vec![(ia.addr, b"to device".to_vec())]);
    assert_eq!(*ga.lock().unwrap(), vec![(ib.addr, b"to driver".to_vec())]);
}

pub fn binding_driver_first<A: RpmsgTransport + 'static, B: RpmsgTransport + 'static>(
    a: &mut Link<A>,
    b: &mut Link<B>,
) {
    let (ga, gb) = (msgs(), msgs());
    let (ea, eb) = bind_svc(a, b, false, &ga, &gb);
    let (ia, ib) = (a.endpoint(ea).unwrap(), b.endpoint(eb).unwrap());
    assert_eq!(ia.dest, ib.addr);
    assert_eq!(ib.dest, ia.addr);
    assert_eq!(ia.binding, Binding::NameService, "bound by CREATE_ACK");
    b.trysend(eb, b"hi").unwrap();
    pump(a, b);
    assert_eq!(*ga.lock().unwrap(), vec![(ib.addr, b"hi".to_vec())]);
}

pub fn destroy_unbinds<A: RpmsgTransport + 'static, B: RpmsgTransport + 'static>(
    a: &mut Link<A>,
    b: &mut Link<B>,
) {
    let (ga, gb) = (msgs(), msgs());
    let unbound = Arc::new(Mutex::new(0));
    let u = unbound.clone();
    let eb = b
        .create_endpoint(
            EndpointConfig::new("svc"),
            on_message(|_ctx, _msg| {}).on_unbind(move |_ctx| *u.lock().unwrap() += 1),
        )
        .unwrap();
    pump(a, b);
    let ea = a
        .create_endpoint(EndpointConfig::new("svc"), collect(&ga))
        .unwrap();
    pump(a, b);
    assert_ne!(b.endpoint(eb).unwrap().dest, ADDR_ANY);
    a.destroy_endpoint(ea).unwrap();
    pump(a, b);
    assert_eq!(b.endpoint(eb).unwrap().dest, ADDR_ANY);
    assert_eq!(*unbound.lock().unwrap(), 1);
    assert_eq!(b.trysend(eb, b"x"), Err(RpmsgError::NotBound));
    drop(gb);
}

pub fn zero_copy<A: RpmsgTransport + 'static, B: RpmsgTransport + 'static>(
    a: &mut Link<A>,
    b: &mut Link<B>,
) {
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
    pump(a, b);
    let ea = a
        .create_endpoint(EndpointConfig::new("zc"), on_message(|_c, _m| {}))
        .unwrap();
    pump(a, b);
    let tx = a.try_get_tx(ea).unwrap();
    assert_eq!(tx.capacity(), a.max_payload());
    let addr = tx.payload().base_addr();
    let data: Vec<u8> = (0..a.max_payload() as u32).map(|i| (i * 7) as u8).collect();
    tx.write(0, &data).unwrap();
    a.send_nocopy(tx, data.len()).unwrap();
    pump(a, b);
    let got = seen.lock().unwrap().clone();
    assert_eq!(got, vec![(addr, data)], "same bytes, same address: no copy");
    let _ = eb;
}

/// Holds every message it receives.
pub fn holder<T: RpmsgTransport + 'static>(
    held: &Arc<Mutex<Vec<HeldRx>>>,
) -> impl EndpointHandler<T> {
    let held = held.clone();
    on_message(move |ctx, msg| {
        let h = ctx.hold(msg);
        held.lock().unwrap().push(h);
    })
}

pub fn payload(h: &HeldRx) -> Vec<u8> {
    let mut v = vec![0u8; h.len()];
    h.payload().read_bytes(0, &mut v).unwrap();
    v
}

pub fn driver_holds<A: RpmsgTransport + 'static, B: RpmsgTransport + 'static>(
    a: &mut Link<A>,
    b: &mut Link<B>,
    n: usize,
) {
    let held = Arc::new(Mutex::new(Vec::new()));
    let ea = a
        .create_endpoint(EndpointConfig::new("hold"), holder(&held))
        .unwrap();
    pump(a, b);
    let eb = b
        .create_endpoint(EndpointConfig::new("hold"), on_message(|_c, _m| {}))
        .unwrap();
    pump(a, b);
    // The device can fill the n RX buffers the driver posted, no more.
    for i in 0..n {
        b.trysend(eb, &[i as u8; 40]).unwrap();
    }
    assert_eq!(b.trysend(eb, b"one more"), Err(RpmsgError::NoBuffer));
    pump(a, b);
    let mut h: Vec<HeldRx> = std::mem::take(&mut *held.lock().unwrap());
    assert_eq!(h.len(), n);
    assert_eq!(a.endpoint(ea).unwrap().rx_held, n);
    assert_eq!(b.trysend(eb, b"still none"), Err(RpmsgError::NoBuffer));
    // Release three, out of order.
    for i in [5usize, 1, 6] {
        let x = h.remove(i.min(h.len() - 1));
        a.release_rx(x).unwrap();
    }
    pump(a, b);
    for _ in 0..3 {
        b.trysend(eb, &[0xEE; 40]).unwrap();
    }
    assert_eq!(b.trysend(eb, b"4th"), Err(RpmsgError::NoBuffer));
    // The buffers still held kept their contents.
    for x in &h {
        let p = payload(x);
        assert_eq!(p.len(), 40);
        assert!(
            p.iter().all(|&c| c == p[0] && usize::from(c) < n),
            "held buffer intact"
        );
    }
    pump(a, b);
    let second = std::mem::take(&mut *held.lock().unwrap());
    assert_eq!(second.len(), 3);
    assert!(second.iter().all(|x| payload(x) == vec![0xEE; 40]));
    // Release everything (reverse order) and the device can use all n again.
    for x in h.into_iter().rev().chain(second) {
        a.release_rx(x).unwrap();
    }
    pump(a, b);
    for _ in 0..n {
        b.trysend(eb, b"again").unwrap();
    }
    assert_eq!(b.trysend(eb, b"x"), Err(RpmsgError::NoBuffer));
}

pub fn device_holds<A: RpmsgTransport + 'static, B: RpmsgTransport + 'static>(
    a: &mut Link<A>,
    b: &mut Link<B>,
    n: usize,
) {
    let held = Arc::new(Mutex::new(Vec::new()));
    let _eb = b
        .create_endpoint(EndpointConfig::new("hold"), holder(&held))
        .unwrap();
    pump(a, b);
    let ea = a
        .create_endpoint(EndpointConfig::new("hold"), on_message(|_c, _m| {}))
        .unwrap();
    pump(a, b);
    for i in 0..n {
        a.trysend(ea, &[i as u8; 100]).unwrap();
    }
    assert_eq!(a.trysend(ea, b"one more"), Err(RpmsgError::NoBuffer));
    pump(a, b);
    let mut h: Vec<HeldRx> = std::mem::take(&mut *held.lock().unwrap());
    assert_eq!(h.len(), n);
    // The driver gets nothing back while the device holds everything.
    assert_eq!(a.trysend(ea, b"x"), Err(RpmsgError::NoBuffer));
    // Release in a scrambled order.
    let mut released = 0;
    while !h.is_empty() {
        let i = (released * 5 + 3) % h.len();
        b.release_rx(h.remove(i)).unwrap();
        released += 1;
        pump(a, b);
        // Exactly the released buffers came back to the driver.
        for _ in 0..released {
            a.trysend(ea, &[0x55; 10]).unwrap();
        }
        assert_eq!(
            a.trysend(ea, b"x"),
            Err(RpmsgError::NoBuffer),
            "after {released}"
        );
        pump(a, b);
        // Hold the new ones too, then give them back in reverse order.
        let new: Vec<HeldRx> = std::mem::take(&mut *held.lock().unwrap());
        assert_eq!(new.len(), released);
        for x in new.into_iter().rev() {
            assert_eq!(payload(&x), vec![0x55; 10]);
            b.release_rx(x).unwrap();
        }
        pump(a, b);
    }
    assert!(h.is_empty());
}

pub fn exhaustion<A: RpmsgTransport + 'static, B: RpmsgTransport + 'static>(
    a: &mut Link<A>,
    b: &mut Link<B>,
    n: usize,
) {
    let (ga, gb) = (msgs(), msgs());
    let (ea, eb) = bind_svc(a, b, true, &ga, &gb);
    for dir in [0, 1] {
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
        pump(a, b);
        let got = if dir == 0 { &gb } else { &ga };
        let got: Vec<u32> = std::mem::take(&mut *got.lock().unwrap())
            .into_iter()
            .map(|(_, v)| u32::from_le_bytes(v.try_into().unwrap()))
            .collect();
        assert_eq!(
            got,
            (0..n as u32).collect::<Vec<_>>(),
            "the first n, in order"
        );
    }
    // Buffers all came back: both sides can send a full window again.
    for _ in 0..n {
        a.trysend(ea, b"a").unwrap();
        b.trysend(eb, b"b").unwrap();
    }
    assert_eq!(a.transport().buffer_stats().tx_free, 0);
}

pub fn pattern(seq: u32, max: usize) -> Vec<u8> {
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
pub struct Checker {
    pub next: u32,
    pub max: usize,
    pub bad: u32,
}

pub fn checker<T: RpmsgTransport + 'static>(c: &Arc<Mutex<Checker>>) -> impl EndpointHandler<T> {
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

pub fn exchange<A: RpmsgTransport + 'static, B: RpmsgTransport + 'static>(
    a: &mut Link<A>,
    b: &mut Link<B>,
    count: u32,
) {
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
    pump(a, b);
    let ea = a
        .create_endpoint(EndpointConfig::new("order"), checker(&ca))
        .unwrap();
    pump(a, b);
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
}
