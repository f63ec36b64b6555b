//! Two rpmsg buses talking over two `PortTransport`s joined by an in-memory
//! byte pipe: name binding, 10^4 ordered messages under back-pressure, a
//! restart of one side, and garbage on the wire.
#![cfg(feature = "alloc")]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use rptun::rpmsg::port::{ByteIo, ByteIoError, CrcMode, PortConfig, PortTransport};
use rptun::rpmsg::{
    on_message, EndpointConfig, EndpointId, Link, LocalCpu, RemoteCpu, RpmsgError, RpmsgTransport,
    ADDR_ANY,
};

/// One direction of the pipe, with a capacity (a full pipe refuses bytes,
/// as a socket buffer does).
#[derive(Clone)]
struct Wire {
    bytes: Arc<Mutex<VecDeque<u8>>>,
    cap: usize,
}

impl Wire {
    fn new(cap: usize) -> Wire {
        Wire {
            bytes: Arc::new(Mutex::new(VecDeque::new())),
            cap,
        }
    }
    fn inject(&self, garbage: &[u8]) {
        self.bytes.lock().unwrap().extend(garbage);
    }
    fn len(&self) -> usize {
        self.bytes.lock().unwrap().len()
    }
}

/// One end of the pipe: reads `rx`, writes `tx`, at most `chunk` bytes per
/// call (so frames arrive in pieces).
#[derive(Clone)]
struct End {
    rx: Wire,
    tx: Wire,
    chunk: usize,
}

impl ByteIo for End {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, ByteIoError> {
        let mut q = self.rx.bytes.lock().unwrap();
        let n = buf.len().min(q.len()).min(self.chunk);
        for (d, s) in buf.iter_mut().zip(q.drain(..n)) {
            *d = s;
        }
        Ok(n)
    }
    fn write(&mut self, buf: &[u8]) -> Result<usize, ByteIoError> {
        let mut q = self.tx.bytes.lock().unwrap();
        let n = buf.len().min(self.tx.cap - q.len()).min(self.chunk);
        q.extend(&buf[..n]);
        Ok(n)
    }
}

fn pipe(cap: usize, chunk: usize) -> (End, End) {
    let (ab, ba) = (Wire::new(cap), Wire::new(cap));
    (
        End {
            rx: ba.clone(),
            tx: ab.clone(),
            chunk,
        },
        End {
            rx: ab,
            tx: ba,
            chunk,
        },
    )
}

type PortLink = Link<PortTransport<End>>;

fn link(io: End, local: &str, remote: &str, crc: CrcMode) -> PortLink {
    let cfg = PortConfig::new(
        LocalCpu::new(local).unwrap(),
        RemoteCpu::new(remote).unwrap(),
    )
    .crc(crc);
    Link::new(PortTransport::with_heap(io, cfg).unwrap())
}

/// Polls both links until `done` holds; every 10th round is a timer tick.
/// Panics (never hangs) after a fixed number of rounds.
fn run_until(
    a: &mut PortLink,
    b: &mut PortLink,
    what: &str,
    mut done: impl FnMut(&mut PortLink, &mut PortLink) -> bool,
) {
    for round in 0..20_000 {
        if done(a, b) {
            return;
        }
        if round % 10 == 9 {
            a.transport_mut().tick().unwrap();
            b.transport_mut().tick().unwrap();
        }
        a.poll().unwrap();
        b.poll().unwrap();
    }
    panic!("gave up waiting for: {what}");
}

type Log = Arc<Mutex<Vec<Vec<u8>>>>;

/// An endpoint that records every payload.
fn recorder(l: &mut PortLink, name: &str) -> (EndpointId, Log) {
    let log: Log = Arc::default();
    let sink = log.clone();
    let id = l
        .create_endpoint(
            EndpointConfig::new(name),
            on_message(move |_ctx, msg| sink.lock().unwrap().push(msg.to_vec())),
        )
        .unwrap();
    (id, log)
}

fn bound(l: &PortLink, id: EndpointId) -> bool {
    l.endpoint(id).is_some_and(|e| e.dest != ADDR_ANY)
}

fn connected_pair(crc: CrcMode) -> (PortLink, PortLink, End, End) {
    let (ea, eb) = pipe(1 << 16, 4096);
    let mut a = link(ea.clone(), "server", "proxy", crc);
    let mut b = link(eb.clone(), "proxy", "server", crc);
    run_until(&mut a, &mut b, "link up", |a, b| a.is_up() && b.is_up());
    (a, b, ea, eb)
}

#[test]
fn names_bind_both_ways_with_create_ack() {
    let (mut a, mut b, _, _) = connected_pair(CrcMode::Off);
    assert_eq!(a.remote_cpu().as_str(), "proxy");
    assert_eq!(b.remote_cpu().as_str(), "server");
    assert_eq!(a.features().to_string(), "NS|ACK");

    // Same name on both sides: CREATE one way, CREATE_ACK the other.
    let (ea, log_a) = recorder(&mut a, "rpmsg-echo");
    let (eb, log_b) = recorder(&mut b, "rpmsg-echo");
    run_until(&mut a, &mut b, "echo bound", |a, b| {
        bound(a, ea) && bound(b, eb)
    });
    assert_eq!(a.endpoint(ea).unwrap().dest, b.endpoint(eb).unwrap().addr);
    assert_eq!(b.endpoint(eb).unwrap().dest, a.endpoint(ea).unwrap().addr);

    // A name only B has is pending on A until A creates it.
    let (only_b, _) = recorder(&mut b, "late-service");
    run_until(&mut a, &mut b, "announcement", |a, _| {
        a.pending_announcements().any(|p| p.name == "late-service")
    });
    assert!(!bound(&b, only_b));
    let (late, _) = recorder(&mut a, "late-service");
    assert!(bound(&a, late), "binds at once to the pending announcement");
    run_until(&mut a, &mut b, "CREATE_ACK", |_, b| bound(b, only_b));

    a.trysend(ea, b"to b").unwrap();
    b.trysend(eb, b"to a").unwrap();
    run_until(&mut a, &mut b, "messages", |_, _| {
        !log_a.lock().unwrap().is_empty() && !log_b.lock().unwrap().is_empty()
    });
    assert_eq!(*log_b.lock().unwrap(), [b"to b".to_vec()]);
    assert_eq!(*log_a.lock().unwrap(), [b"to a".to_vec()]);
}

/// Message `i`: its sequence number, a length that varies with it, and
/// bytes that hit every escape case.
fn message(i: u32) -> Vec<u8> {
    let len = 4 + (i as usize * 37) % 300;
    let mut m = i.to_le_bytes().to_vec();
    m.extend((4..len).map(|j| (i as usize + j) as u8 ^ 0x70));
    m
}

#[test]
fn ten_thousand_messages_arrive_in_order_under_back_pressure() {
    // A small pipe that takes 100 bytes per call: the sender's buffers
    // fill up and trysend reports NoBuffer again and again.
    let (ea, eb) = pipe(2048, 100);
    let mut a = link(ea, "server", "proxy", CrcMode::On);
    let mut b = link(eb, "proxy", "server", CrcMode::Off);
    let (ta, _) = recorder(&mut a, "seq");
    let (tb, log) = recorder(&mut b, "seq");
    run_until(&mut a, &mut b, "bound", |a, b| bound(a, ta) && bound(b, tb));

    const N: u32 = 10_000;
    let mut next = 0;
    let mut no_buffer = 0;
    run_until(&mut a, &mut b, "all sent", |a, _| {
        while next < N {
            match a.trysend(ta, &message(next)) {
                Ok(()) => next += 1,
                Err(RpmsgError::NoBuffer) => {
                    no_buffer += 1;
                    break;
                }
                Err(e) => panic!("send {next}: {e}"),
            }
        }
        next == N
    });
    run_until(&mut a, &mut b, "all received", |_, _| {
        log.lock().unwrap().len() == N as usize
    });
    let got = log.lock().unwrap();
    for (i, m) in got.iter().enumerate() {
        assert_eq!(*m, message(i as u32), "message {i}");
    }
    assert!(no_buffer > 0, "the pipe never pushed back");
    assert_eq!(b.transport().deframer_stats().frames_dropped(), 0);
    assert_eq!(
        a.transport().stats().frames_sent,
        b.transport().stats().frames_received
    );
    assert_eq!(b.stats().dropped_unknown_dst, 0);
}

#[test]
fn restart_of_one_side_reruns_the_handshake() {
    let (mut a, mut b, _, eb) = connected_pair(CrcMode::Off);
    let (ea_id, log_a) = recorder(&mut a, "svc");
    let (eb_id, _) = recorder(&mut b, "svc");
    run_until(&mut a, &mut b, "bound", |a, b| {
        bound(a, ea_id) && bound(b, eb_id)
    });
    let session = a.session();

    // B dies with a message for A half on the wire; A has messages queued
    // for the old B.
    b.trysend(eb_id, &[0x55; 200]).unwrap();
    b.transport_mut().poll().unwrap();
    let wire = eb.tx.bytes.clone();
    let half = wire.lock().unwrap().len() / 2;
    wire.lock().unwrap().truncate(half);
    drop(b);
    for i in 0..3u8 {
        a.trysend(ea_id, &[i; 10]).unwrap();
    }

    // A new B on the same stream.
    let mut b = link(eb, "proxy", "server", CrcMode::Off);
    let (eb_id, log_b) = recorder(&mut b, "svc");
    run_until(&mut a, &mut b, "new session", |a, b| {
        a.is_up() && a.session() != session && bound(a, ea_id) && bound(b, eb_id)
    });
    assert!(a.session().unwrap() > session.unwrap());
    assert_eq!(a.transport().link_stats().link_downs, 1);
    assert!(
        log_a.lock().unwrap().is_empty(),
        "the half message was dropped"
    );

    // Only new-session traffic reaches the new B.
    a.trysend(ea_id, b"hello again").unwrap();
    run_until(&mut a, &mut b, "message", |_, _| {
        !log_b.lock().unwrap().is_empty()
    });
    assert_eq!(*log_b.lock().unwrap(), [b"hello again".to_vec()]);
}

/// A tiny deterministic generator (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn garbage_and_corruption_on_the_wire_are_survived() {
    let (mut a, mut b, ea, _) = connected_pair(CrcMode::On);
    let (ta, _) = recorder(&mut a, "seq");
    let (tb, log) = recorder(&mut b, "seq");
    run_until(&mut a, &mut b, "bound", |a, b| bound(a, ta) && bound(b, tb));

    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    const N: u32 = 300;
    const CORRUPT: u32 = 123;
    for i in 0..N {
        a.trysend(ta, &message(i)).unwrap();
        assert!(
            !a.transport().wants_write(),
            "the pipe took the whole frame"
        );
        if i == CORRUPT {
            // Flip one bit of a payload byte that needs no escape either
            // way: the CRC catches it and the frame is dropped.
            let mut q = ea.tx.bytes.lock().unwrap();
            let at = (0..q.len() - 20).rev().find(|&k| q[k] < 0x60).unwrap();
            q[at] ^= 0x01;
        }
        // Line noise between frames: anything but command bytes (those
        // are the protocol's business, not noise).
        let noise: Vec<u8> = (0..rng.next() % 24)
            .map(|_| rng.next() as u8)
            .filter(|b| !(0x74..=0x7e).contains(b) || *b == 0x7c)
            .collect();
        ea.tx.inject(&noise);
        if i % 16 == 15 {
            run_until(&mut a, &mut b, "drain", |_, _| ea.tx.len() == 0);
        }
    }
    run_until(&mut a, &mut b, "all but one", |_, _| {
        log.lock().unwrap().len() == N as usize - 1
    });
    let want: Vec<Vec<u8>> = (0..N).filter(|&i| i != CORRUPT).map(message).collect();
    assert_eq!(*log.lock().unwrap(), want);
    let st = *b.transport().deframer_stats();
    assert_eq!(st.bad_crc, 1, "{st:?}");
    assert!(st.garbage_bytes > 0, "{st:?}");
    assert!(a.is_up() && b.is_up());
    assert_eq!(
        a.transport().link_stats().link_ups,
        1,
        "noise never reset the link"
    );
}

#[test]
fn lost_connreqs_are_repeated_on_ticks() {
    // Both CONNREQs of the start are lost on the line: the timer repeats
    // them until the handshake goes through.
    let (ea, eb) = pipe(1 << 16, 4096);
    let mut a = link(ea.clone(), "server", "proxy", CrcMode::Off);
    let mut b = link(eb.clone(), "proxy", "server", CrcMode::Off);
    a.transport_mut().poll().unwrap();
    ea.tx.bytes.lock().unwrap().clear();
    b.transport_mut().poll().unwrap();
    eb.tx.bytes.lock().unwrap().clear();
    a.poll().unwrap();
    b.poll().unwrap();
    assert!(!a.is_up() && !b.is_up());
    run_until(&mut a, &mut b, "link up", |a, b| a.is_up() && b.is_up());
    assert!(a.transport().link_stats().connreqs_sent >= 2);
    assert_eq!(a.transport().link_stats().link_ups, 1);
}
