//! The hostile-peer suite: the other core runs firmware that may be buggy
//! or compromised. Our side runs the real stack (rpmsg link over
//! rpmsg-virtio over the remoteproc vdev transport) in the driver role
//! (master) or the device role (remote); the peer is played by the test
//! with raw writes into the shared region (`hostile_util`).
//!
//! Every case checks that the error is counted where a user can see it
//! (link stats, the dump, an error value or the down reason), that the link
//! either keeps serving (message-level garbage) or goes down cleanly and can
//! be brought back (ring and configuration corruption), and that our side
//! wrote nothing into memory the peer owns. Nothing here waits: every case
//! is a bounded sequence of polls.

mod hostile_util;

use hostile_util::*;
use rptun::rpmsg::virtio::{DownReason, RpmsgVirtioError};
use rptun::rpmsg::{RpmsgError, RpmsgTransport, TransportError};
use rptun::virtio::queue::QueueError;
use rptun::virtio::VirtioError;

// ====================================================== message-level garbage

/// The peer sends one buffer; our side polls. Our side must not write
/// into anything the peer owns while it handles it.
fn deliver(s: &mut dyn Side, bytes: &[u8], len: Option<u32>, what: &str) {
    s.peer_send(bytes, len);
    let guard = s.untouched();
    s.poll().unwrap();
    guard.check(what);
}

#[test]
fn rpmsg_len_beyond_the_buffer_is_dropped_and_counted_on_both_sides() {
    for mut s in both_sides() {
        let our = s.our_addr();
        // 0xffff payload bytes claimed in a 1536-byte buffer.
        let mut m = header(PEER_ADDR, our, 0xffff).to_vec();
        m.extend_from_slice(&[0x55; 64]);
        deliver(&mut *s, &m, None, "len 0xffff");
        // One byte past the payload capacity (1520), whole buffer reported.
        let mut m = header(PEER_ADDR, our, 1521).to_vec();
        m.resize(BUF, 0x66);
        deliver(&mut *s, &m, Some(BUF as u32), "len 1521");
        // Inside the buffer but past the length the peer reported.
        let mut m = header(PEER_ADDR, our, 100).to_vec();
        m.resize(16 + 100, 0x77);
        deliver(&mut *s, &m, Some(16 + 50), "len past the reported length");
        assert_eq!(s.stats().dropped_bad_length, 3, "{}", s.dump());
        assert!(s.delivered().is_empty());
        assert!(s.dump().contains("bad length 3"), "{}", s.dump());
        s.still_serves(b"after bad lengths");
    }
}

#[test]
fn buffers_shorter_than_an_rpmsg_header_are_dropped_and_counted() {
    for mut s in both_sides() {
        let our = s.our_addr();
        let m = message(PEER_ADDR, our, b"cut short");
        for len in [0, 1, 15] {
            deliver(&mut *s, &m, Some(len), "short buffer");
        }
        assert_eq!(s.stats().dropped_short, 3, "{}", s.dump());
        assert!(s.delivered().is_empty());
        s.still_serves(b"after short buffers");
    }
}

#[test]
fn messages_to_nobody_are_dropped_and_counted() {
    for mut s in both_sides() {
        for dst in [0x9999, 0xffff_ffff, 0, 1023] {
            let m = message(PEER_ADDR, dst, b"anyone?");
            deliver(&mut *s, &m, None, "unknown destination");
        }
        assert_eq!(s.stats().dropped_unknown_dst, 4, "{}", s.dump());
        s.still_serves(b"after unknown destinations");
    }
}

/// Name-service payloads the bus must refuse: (what, 40-byte payload).
fn bad_ns_payloads() -> Vec<(&'static str, Vec<u8>)> {
    let mut unterminated = [b'A'; 32];
    unterminated[0] = b's';
    let mut not_utf8 = name_field("svc");
    not_utf8[1] = 0xff;
    vec![
        (
            "name without NUL",
            ns_payload(&unterminated, PEER_ADDR + 1, NS_CREATE),
        ),
        (
            "name not UTF-8",
            ns_payload(&not_utf8, PEER_ADDR + 2, NS_CREATE),
        ),
        (
            "address ANY",
            ns_payload(&name_field("svc"), 0xffff_ffff, NS_CREATE),
        ),
        (
            "address of the name service",
            ns_payload(&name_field("svc"), NS, NS_CREATE),
        ),
        (
            "empty name (CREATE)",
            ns_payload(&[0; 32], PEER_ADDR + 3, NS_CREATE),
        ),
        (
            "empty name (DESTROY)",
            ns_payload(&[0; 32], PEER_ADDR, NS_DESTROY),
        ),
        (
            "39 bytes",
            ns_payload(&name_field("svc"), PEER_ADDR + 4, NS_CREATE)[..39].to_vec(),
        ),
        ("41 bytes", {
            let mut p = ns_payload(&name_field("svc"), PEER_ADDR + 5, NS_CREATE);
            p.push(0);
            p
        }),
        ("nothing", Vec::new()),
    ]
}

#[test]
fn malformed_name_service_messages_are_dropped_and_counted() {
    for mut s in both_sides() {
        let bad = bad_ns_payloads();
        for (what, p) in &bad {
            deliver(&mut *s, &message(PEER_ADDR, NS, p), None, what);
        }
        assert_eq!(
            s.stats().dropped_bad_ns,
            bad.len() as u64,
            "every one of {:?} refused: {}",
            bad.iter().map(|b| b.0).collect::<Vec<_>>(),
            s.dump()
        );
        assert_eq!(s.pending(), 0, "nothing kept as an announcement");
        assert_eq!(s.svc_dest(), PEER_ADDR, "our binding untouched");
        s.still_serves(b"after bad name service");
    }
}

#[test]
fn an_empty_name_never_binds_or_unbinds_unnamed_endpoints() {
    // Regression: an unnamed endpoint (no name service) was bound by a
    // CREATE with an empty name and unbound by a DESTROY with one.
    let mut s = DriverSide::new();
    let got = Got::default();
    let plain = s
        .link
        .create_endpoint(rptun::rpmsg::EndpointConfig::unnamed(), sink(&got))
        .unwrap();
    s.peer.ns(&[0; 32], PEER_ADDR + 7, NS_CREATE);
    s.link.poll().unwrap();
    let e = s.link.endpoint(plain).unwrap();
    assert_eq!(e.dest, rptun::rpmsg::ADDR_ANY, "{e:?}");
    assert_eq!(e.binding, rptun::rpmsg::Binding::Unbound);
    // Bound by a first message (as OpenAMP does), then a DESTROY with an
    // empty name for that address must not unbind it.
    s.peer.send(PEER_ADDR + 8, e.addr, b"first message binds");
    s.link.poll().unwrap();
    assert_eq!(s.link.endpoint(plain).unwrap().dest, PEER_ADDR + 8);
    s.peer.ns(&[0; 32], PEER_ADDR + 8, NS_DESTROY);
    s.link.poll().unwrap();
    assert_eq!(s.link.endpoint(plain).unwrap().dest, PEER_ADDR + 8);
    assert_eq!(s.link.stats().dropped_bad_ns, 2);
    // Nothing was sent in answer (no CREATE_ACK for the empty name).
    assert!(s.peer.drain().is_empty());
}

#[test]
fn an_announcement_flood_is_bounded_and_counted() {
    for mut s in both_sides() {
        for i in 0..200u32 {
            let name = format!("flood-{i}");
            s.peer_send(
                &message(
                    PEER_ADDR,
                    NS,
                    &ns_payload(&name_field(&name), 0x1000 + i, NS_CREATE),
                ),
                None,
            );
            // The peer has 8 buffers: let our side consume as it goes.
            s.poll().unwrap();
        }
        assert_eq!(s.pending(), rptun::rpmsg::link::MAX_PENDING_ANNOUNCEMENTS);
        assert_eq!(
            s.stats().dropped_announcements,
            200 - rptun::rpmsg::link::MAX_PENDING_ANNOUNCEMENTS as u64,
            "{}",
            s.dump()
        );
        s.still_serves(b"after a flood");
    }
}

#[test]
fn message_garbage_at_random_never_stops_the_link() {
    // Random bytes, random lengths, random destinations (ours, the name
    // service, nobody): every buffer is delivered or dropped and counted,
    // and the link serves after each burst.
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    for mut s in both_sides() {
        let our = s.our_addr();
        let mut sent = 0u64;
        for burst in 0..50 {
            for _ in 0..6 {
                let mut m = vec![0u8; rng.below(BUF + 1)];
                m.iter_mut().for_each(|b| *b = rng.next_u64() as u8);
                if m.len() >= 16 {
                    let dst = [our, NS, 0x9999, rng.next_u64() as u32][rng.below(4)];
                    m[4..8].copy_from_slice(&dst.to_le_bytes());
                }
                let len = match rng.below(3) {
                    0 => None,
                    1 => Some(BUF as u32),
                    _ => Some(rng.below(BUF + 1) as u32),
                };
                s.peer_send(&m, len);
                sent += 1;
            }
            let guard = s.untouched();
            s.poll().unwrap();
            guard.check("random garbage");
            s.still_serves(format!("burst {burst}").as_bytes());
            sent += 1;
        }
        let st = s.stats();
        let accounted = st.rx_messages
            + st.ns_received
            + st.dropped_short
            + st.dropped_bad_length
            + st.dropped_unknown_dst
            + st.dropped_bad_ns;
        // Every buffer is either delivered, acted upon or dropped (the
        // binding exchange before the bursts adds one or two).
        assert!(
            accounted >= sent && accounted <= sent + 2,
            "{accounted} accounted for {sent} sent: {}",
            s.dump()
        );
    }
}

/// xorshift64*: deterministic, no dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

// ============================================ ring corruption: our side drives

/// The driver went down with a broken ring: visible in the down reason and
/// the dump; a restart brings a new session with every buffer back.
fn assert_driver_down_broken(
    s: &mut DriverSide,
    r: Result<(), RpmsgError>,
    want: &dyn Fn(&QueueError) -> bool,
) {
    assert!(
        matches!(r, Err(RpmsgError::Transport(TransportError::Peer(_)))),
        "{r:?}"
    );
    assert!(!s.link.is_up());
    let reason = s.link.transport().down_reason();
    assert!(
        matches!(reason, Some(DownReason::Broken(RpmsgVirtioError::Queue(ref e))) if want(e)),
        "{reason:?}"
    );
    assert!(s.link.dump().to_string().contains("broken"));
    // Further polls are quiet and do not touch the rings.
    let guard = s.untouched();
    for _ in 0..3 {
        s.link.poll().unwrap();
    }
    guard.check("polls of a broken link");
    assert_eq!(
        s.link.trysend(s.svc, b"x"),
        Err(RpmsgError::LinkDown),
        "sending on a broken link is refused"
    );
}

/// Restarts our driver and re-attaches the fake device; the link serves
/// and every buffer is accounted for.
fn restart_driver(s: &mut DriverSide) {
    let sessions = s.link.transport().stats().sessions;
    s.link.transport_mut().restart().unwrap();
    s.link.poll().unwrap();
    assert!(s.link.is_up());
    assert_eq!(s.link.transport().stats().sessions, sessions + 1);
    s.peer = FakeDevice::attach(&s.r);
    // Our "svc" announces itself again in the new session.
    let ann = s.peer.drain();
    assert_eq!(ann.len(), 1, "{ann:?}");
    s.peer.ns(&name_field("svc"), PEER_ADDR, NS_CREATE);
    s.link.poll().unwrap();
    s.peer.drain();
    let b = s.link.transport().buffer_stats();
    assert_eq!((b.tx_total, b.tx_free, b.rx_total), (8, 8, 8));
    s.still_serves(b"after restart");
}

fn check_driver_ring_case(
    what: &str,
    corrupt: impl Fn(&mut DriverSide),
    want: impl Fn(&QueueError) -> bool,
) {
    let mut s = DriverSide::new();
    s.still_serves(b"before");
    // A message in flight to the peer, so vring1 has something to return.
    s.link.trysend(s.svc, b"in flight").unwrap();
    let guard = s.untouched();
    corrupt(&mut s);
    let guard2 = s.untouched();
    let r = s.link.poll().map(|_| ());
    guard2.check(what);
    drop(guard);
    assert_driver_down_broken(&mut s, r, &want);
    restart_driver(&mut s);
}

#[test]
fn driver_takes_out_of_range_used_ids_as_ring_corruption() {
    for (q, id) in [(0, 8u32), (0, 0xffff_ffff), (1, 8), (1, 0x1_0000)] {
        check_driver_ring_case(
            "used id out of range",
            |s| {
                if q == 0 {
                    s.peer.pop(0);
                }
                s.peer.push_used(q, id, 16);
            },
            |e| {
                *e == QueueError::BadIndex {
                    index: id,
                    num: NUM,
                }
            },
        );
    }
}

#[test]
fn driver_takes_huge_used_lengths_as_ring_corruption() {
    for len in [BUF as u32 + 1, 0xffff_ffff] {
        check_driver_ring_case(
            "used length beyond the buffer",
            |s| {
                let (head, off, _) = s.peer.pop(0).unwrap();
                s.r.write_bytes(off, &message(PEER_ADDR, 1024, b"x"))
                    .unwrap();
                s.peer.push_used(0, u32::from(head), len);
            },
            |e| {
                matches!(e, QueueError::UsedLenTooLarge { len: l, capacity, .. }
                    if *l == len && *capacity == BUF as u32)
            },
        );
    }
}

#[test]
fn driver_refuses_buffers_returned_twice_or_never_sent() {
    // vring1 head 5 was never made available (only one TX is in flight).
    check_driver_ring_case(
        "used id never sent",
        |s| s.peer.push_used(1, 5, 0),
        |e| {
            matches!(
                e,
                QueueError::NotOutstanding { id: 5 } | QueueError::IndexJump { .. }
            )
        },
    );
    // The in-flight TX buffer returned twice in one go.
    check_driver_ring_case(
        "used id returned twice",
        |s| {
            let (head, _, _) = s.peer.pop(1).unwrap();
            s.peer.push_used(1, u32::from(head), 0);
            s.peer.push_used(1, u32::from(head), 0);
        },
        |e| {
            matches!(
                e,
                QueueError::NotOutstanding { .. } | QueueError::IndexJump { .. }
            )
        },
    );
}

#[test]
fn driver_refuses_used_index_jumps() {
    check_driver_ring_case(
        "used index jump",
        |s| s.peer.v0.set_used_idx(100),
        |e| {
            matches!(
                e,
                QueueError::IndexJump {
                    to: 100,
                    max: NUM,
                    ..
                }
            )
        },
    );
}

#[test]
fn driver_follows_a_device_that_asks_for_a_reset() {
    let mut s = DriverSide::new();
    let st = s.peer.map.status();
    let v = s.r.read_u8(st).unwrap();
    s.r.write_u8(st, v | S_NEEDS_RESET).unwrap();
    let guard = s.untouched();
    s.link.poll().unwrap();
    guard.check("needs reset");
    assert!(!s.link.is_up());
    assert_eq!(
        s.link.transport().down_reason(),
        Some(DownReason::NeedsReset)
    );
    assert!(s.link.dump().to_string().contains("needs reset"));
    restart_driver(&mut s);
}

// ========================================= ring corruption: our side serves

/// The device went down: DEVICE_NEEDS_RESET is set for the driver, the
/// down reason names the violation, later polls are quiet.
fn assert_device_down(s: &mut DeviceSide, r: Result<(), RpmsgError>) -> DownReason {
    assert!(
        matches!(r, Err(RpmsgError::Transport(TransportError::Peer(_)))),
        "{r:?}"
    );
    // A send that met the corruption returns the error at once; the link
    // state follows on the next poll.
    s.link.poll().unwrap();
    assert!(!s.link.is_up());
    let reason = s.link.transport().down_reason().unwrap();
    assert!(matches!(reason, DownReason::Broken(_)), "{reason:?}");
    assert_ne!(
        s.r.read_u8(s.peer.map.status()).unwrap() & S_NEEDS_RESET,
        0,
        "the driver is asked for a reset"
    );
    assert!(s.link.dump().to_string().contains("broken"));
    let guard = s.untouched();
    for _ in 0..3 {
        s.link.poll().unwrap();
    }
    guard.check("polls of a broken device");
    assert_eq!(s.link.trysend(s.svc, b"x"), Err(RpmsgError::LinkDown));
    reason
}

/// The fake driver resets and boots again; our device attaches to the new
/// rings and serves.
fn reboot_driver(s: &mut DeviceSide) {
    let sessions = s.link.transport().stats().sessions;
    let pool = s.peer.rx_buf;
    s.peer = FakeDriver::boot(&s.r, pool, 0xf, BUF as u32);
    s.link.poll().unwrap();
    assert!(s.link.is_up(), "{}", s.link.dump());
    assert_eq!(s.link.transport().stats().sessions, sessions + 1);
    s.bind();
    let b = s.link.transport().buffer_stats();
    assert_eq!((b.tx_total, b.rx_total), (8, 8));
    s.still_serves(b"after the driver's reset");
}

fn check_device_ring_case(
    what: &str,
    corrupt: impl Fn(&mut DeviceSide),
    want: impl Fn(&DownReason) -> bool,
) {
    let mut s = DeviceSide::new();
    s.bind();
    s.still_serves(b"before");
    corrupt(&mut s);
    let guard = s.untouched();
    // The device looks at vring1 on poll and at vring0 when it sends.
    let r = s
        .link
        .poll()
        .map(|_| ())
        .and_then(|()| s.link.trysend(s.svc, b"to the peer"));
    guard.check(what);
    let reason = assert_device_down(&mut s, r);
    assert!(want(&reason), "{what}: {reason:?}");
    reboot_driver(&mut s);
}

fn queue(want: impl Fn(&QueueError) -> bool) -> impl Fn(&DownReason) -> bool {
    move |r| matches!(r, DownReason::Broken(RpmsgVirtioError::Queue(e)) if want(e))
}

fn protocol(what: &'static str) -> impl Fn(&DownReason) -> bool {
    move |r| *r == DownReason::Broken(RpmsgVirtioError::Virtio(VirtioError::Protocol(what)))
}

#[test]
fn device_refuses_out_of_range_avail_heads() {
    for (q, head) in [(1, 8u16), (1, 0xffff), (0, 8), (0, 0x8000)] {
        check_device_ring_case(
            "avail head out of range",
            |s| {
                if q == 0 {
                    // Take back every RX buffer we posted, so the next one
                    // the device looks at is the bad one.
                    for _ in 0..8 {
                        s.link.trysend(s.svc, b"fill").unwrap();
                    }
                    s.peer.recv();
                    // recv re-posted them: replace the next entry.
                    let slot = s.peer.avail[0].wrapping_sub(8);
                    s.peer.v0.set_avail_entry(slot, head);
                } else {
                    s.peer.post(1, head);
                }
            },
            queue(move |e| {
                *e == QueueError::BadIndex {
                    index: u32::from(head),
                    num: NUM,
                }
            }),
        );
    }
}

#[test]
fn device_refuses_looping_and_multi_descriptor_chains() {
    check_device_ring_case(
        "looping chain",
        |s| {
            let b = pa(s.peer.tx(0));
            s.peer.v1.set_desc(0, b, 16, DESC_F_NEXT, 1);
            s.peer.v1.set_desc(1, b, 16, DESC_F_NEXT, 0);
            s.peer.post(1, 0);
        },
        queue(|e| {
            matches!(
                e,
                QueueError::ChainTooLong { head: 0, .. } | QueueError::ChainLoop { head: 0 }
            )
        }),
    );
    check_device_ring_case(
        "self loop",
        |s| {
            s.peer.v1.set_desc(3, pa(s.peer.tx(3)), 16, DESC_F_NEXT, 3);
            s.peer.post(1, 3);
        },
        queue(|e| {
            matches!(
                e,
                QueueError::ChainTooLong { head: 3, .. } | QueueError::ChainLoop { head: 3 }
            )
        }),
    );
}

#[test]
fn device_refuses_addresses_outside_the_window() {
    for (addr, len) in [
        (0u64, 16u32),
        (pa(REGION_LEN), 16),
        (pa(REGION_LEN - 8), 16),
        (u64::MAX - 8, 16),
        (pa(0x10000), 0xffff_ffff),
    ] {
        check_device_ring_case(
            "buffer outside the window",
            |s| {
                s.peer.v1.set_desc(2, addr, len, 0, 0);
                s.peer.post(1, 2);
            },
            queue(move |e| {
                *e == QueueError::AddrOutOfWindow {
                    addr,
                    len: u64::from(len),
                }
            }),
        );
    }
}

#[test]
fn device_refuses_buffers_in_the_wrong_direction_or_indirect() {
    check_device_ring_case(
        "writable buffer on vring1",
        |s| {
            s.peer.v1.set_desc(1, pa(s.peer.tx(1)), 64, DESC_F_WRITE, 0);
            s.peer.post(1, 1);
        },
        protocol("the driver posted a device-writable buffer on vring1 (its TX ring)"),
    );
    check_device_ring_case(
        "indirect descriptor",
        |s| {
            s.peer
                .v1
                .set_desc(1, pa(s.peer.tx(1)), 64, DESC_F_INDIRECT, 0);
            s.peer.post(1, 1);
        },
        queue(|e| *e == QueueError::IndirectUnsupported { head: 1 }),
    );
}

#[test]
fn device_refuses_avail_index_jumps() {
    check_device_ring_case(
        "avail index jump",
        |s| s.peer.v1.set_avail_idx(s.peer.avail[1].wrapping_add(9)),
        queue(|e| matches!(e, QueueError::IndexJump { max: NUM, .. })),
    );
}

#[test]
fn device_clamps_huge_descriptor_lengths_inside_the_window() {
    // A descriptor far longer than the negotiated buffer size, still inside
    // the region: the device reads at most the negotiated size, so a header
    // claiming more than that is dropped, a sane one delivered.
    let mut s = DeviceSide::new();
    s.bind();
    let our = s.our_addr();
    let mut m = header(PEER_ADDR, our, 2000).to_vec();
    m.resize(2016, 0x42);
    s.peer.send_raw(&m[..BUF], Some(0x8000));
    s.peer
        .send_raw(&message(PEER_ADDR, our, b"sane"), Some(0x8000));
    let guard = s.untouched();
    s.link.poll().unwrap();
    assert_eq!(s.link.stats().dropped_bad_length, 1);
    assert_eq!(*s.got.lock().unwrap(), vec![(PEER_ADDR, b"sane".to_vec())]);
    guard.check("long descriptors");
    s.still_serves(b"after long descriptors");
}

#[test]
fn device_returns_rx_buffers_smaller_than_negotiated_unused() {
    let mut s = DeviceSide::new();
    s.bind();
    // Every RX buffer the driver has posted is replaced by 64-byte ones.
    for _ in 0..8 {
        s.link.trysend(s.svc, b"fill").unwrap();
    }
    for m in s.peer.recv() {
        assert_eq!(m.payload, b"fill");
    }
    // recv re-posted all 8 with 1536 bytes; shrink them before the device
    // looks again.
    for i in 0..8 {
        s.peer.v0.set_desc(i, pa(s.peer.rx(i)), 64, DESC_F_WRITE, 0);
    }
    let guard = s.untouched();
    assert_eq!(s.link.trysend(s.svc, b"no room"), Err(RpmsgError::NoBuffer));
    guard.check("small buffers");
    assert_eq!(s.link.transport().stats().dropped_small, 8);
    assert!(s.link.dump().to_string().contains("dropped small 8"));
    assert!(s.link.is_up());
    // They came back unused (used length 0); the driver posts proper ones.
    let back = s.peer.recv();
    assert!(back.is_empty(), "{back:?}");
    for i in 0..8 {
        s.peer
            .v0
            .set_desc(i, pa(s.peer.rx(i)), BUF as u32, DESC_F_WRITE, 0);
    }
    s.still_serves(b"after small buffers");
}

// ============================================================ config space

#[test]
fn driver_start_refuses_unusable_buffer_sizes_in_config_space() {
    for (h2r, r2h, want) in [
        (0xffff_ffff, BUF as u32, 0xffff_ffff),
        (BUF as u32, 15, 15),
        (BUF as u32, 0x1_0010, 0x1_0010),
    ] {
        let (r, info, _) = prepared(0xf, &config(h2r, r2h));
        let bell = Bell::default();
        let t = rptun::remoteproc::vdev::VdevDriver::new(rptun::remoteproc::vdev::VdevLink::new(
            r.clone(),
            map(),
            info,
            bell,
        ))
        .unwrap();
        let (e, _) = RDrv::start_new(t, driver_opts()).unwrap_err();
        assert!(
            matches!(e, RpmsgVirtioError::BadBufferSize { size, .. } if size == want),
            "{e:?}"
        );
        assert!(e.to_string().contains("fix the config space"), "{e}");
        assert_eq!(
            r.read_u8(info.status_offset()).unwrap() & S_FAILED,
            S_FAILED,
            "the device is told the driver gave up"
        );
    }
}

#[test]
fn driver_start_refuses_buffers_that_do_not_fit_the_carveout() {
    // The largest legal size (65551) times 8 buffers each way does not fit
    // the 128 KiB carveout: a clean error, nothing leaked.
    let (r, info, _) = prepared(0xf, &config(0x1_000f, 0x1_000f));
    let t = rptun::remoteproc::vdev::VdevDriver::new(rptun::remoteproc::vdev::VdevLink::new(
        r,
        map(),
        info,
        Bell::default(),
    ))
    .unwrap();
    let (e, mut t) = RDrv::start_new(t, driver_opts()).unwrap_err();
    assert!(
        matches!(
            e,
            RpmsgVirtioError::Virtio(VirtioError::NoSharedMemory { .. })
        ),
        "{e:?}"
    );
    // The pool is whole again: the biggest block is still available.
    use rptun::virtio::Transport;
    let pool = info.pool.unwrap();
    let a = t.alloc_shared(pool.len, 16).unwrap();
    assert_eq!(a, pool.offset);
}

#[test]
fn driver_uses_defaults_when_config_space_is_too_short() {
    // dfeatures offer BUFSZ|CPUNAME but config_len is 8: the driver does
    // not read beyond it and negotiates NS|ACK with 512-byte buffers.
    let s = DriverSide::with(0xf, &[0x11; 8], driver_opts());
    let drv = s.link.transport();
    assert_eq!(drv.negotiated_features(), 0x3);
    assert_eq!(drv.tx_buffers(), (8, 512));
    assert_eq!(s.link.max_payload(), 496);
    let mut s = s;
    s.still_serves(b"with short config");
}

#[test]
fn device_refuses_unusable_buffer_sizes_in_config_space() {
    for (h2r, r2h) in [
        (0, BUF as u32),
        (BUF as u32, 0),
        (0xffff_ffff, BUF as u32),
        (BUF as u32, 8),
    ] {
        let mut s = DeviceSide::with(0xf, &config(h2r, r2h), 0xf, BUF as u32);
        // The first poll (in `with`) saw DRIVER_OK and refused to attach.
        assert!(!s.link.is_up());
        let reason = s.link.transport().down_reason().unwrap();
        assert!(
            matches!(
                reason,
                DownReason::Broken(RpmsgVirtioError::BadBufferSize { .. })
            ),
            "{reason:?}"
        );
        assert_ne!(s.r.read_u8(s.peer.map.status()).unwrap() & S_NEEDS_RESET, 0);
        let guard = s.untouched();
        for _ in 0..3 {
            s.link.poll().unwrap();
        }
        guard.check("refused config");
        assert!(!s.link.is_up());
    }
}

#[test]
fn device_uses_defaults_when_config_space_is_too_short() {
    // The driver accepted BUFSZ|CPUNAME although config_len is 8: the
    // device does not read past it and uses 512-byte buffers.
    let mut s = DeviceSide::with(0xf, &[0x11; 8], 0xf, BUF as u32);
    s.bind();
    assert_eq!(s.link.max_payload(), 496);
    assert_eq!(s.link.remote_cpu().as_str(), "server");
    s.still_serves(b"with short config");
}

// ============================================= the resource table after boot

use rptun::remoteproc::instance::{Event, InstanceError, State, VdevState};
use rptun::remoteproc::table::TableError;
use rptun::shm::Region;

type Change = (&'static str, fn(&Region, &TableMap));

/// What a peer may rewrite in the table after both sides booted.
fn table_changes() -> Vec<Change> {
    fn add(r: &Region, at: usize, d: u32) {
        r.write_u32(at, r.read_u32(at).unwrap().wrapping_add(d))
            .unwrap();
    }
    vec![
        ("vring0 da moved", |r, m| add(r, m.vring(0), 0x100)),
        ("vring1 da moved outside the region", |r, m| {
            r.write_u32(m.vring(1), 0x0100_0000).unwrap()
        }),
        ("vring1 num changed", |r, m| {
            r.write_u32(m.vring(1) + 8, 16).unwrap()
        }),
        ("vring0 align changed", |r, m| {
            r.write_u32(m.vring(0) + 4, 4096).unwrap()
        }),
        ("vring1 notifyid changed", |r, m| {
            r.write_u32(m.vring(1) + 12, 77).unwrap()
        }),
        ("vdev notifyid changed", |r, m| {
            r.write_u32(m.notifyid(), 55).unwrap()
        }),
        ("vdev count changed", |r, m| {
            r.write_u32(m.num_entries(), 1).unwrap()
        }),
        ("entry count huge", |r, m| {
            r.write_u32(m.num_entries(), 0xffff_ffff).unwrap()
        }),
        ("vdev offset pointing elsewhere", |r, m| {
            add(r, m.offset_of_entry(0), 4)
        }),
        ("carveout offset pointing past the region", |r, m| {
            r.write_u32(m.offset_of_entry(1), 0x7fff_0000).unwrap()
        }),
        ("carveout len changed", |r, m| {
            r.write_u32(m.carveout_len(), 0x100).unwrap()
        }),
        ("num_of_vrings changed", |r, m| {
            r.write_u8(m.num_vrings(), 1).unwrap()
        }),
        ("config_len changed", |r, m| {
            r.write_u32(m.config_len(), 8).unwrap()
        }),
        ("device id changed", |r, m| {
            r.write_u32(m.vdev + 4, 4).unwrap()
        }),
    ]
}

/// The instance saw the change on its next doorbell: crashed, every vdev
/// failed with `ChangedAfterBoot`, its handler removed, the events out.
fn assert_table_refused(us: &InstanceSide, what: &str) {
    assert_eq!(us.inst.state(), State::Crashed, "{what}");
    let err = InstanceError::Table(TableError::ChangedAfterBoot);
    let v = us.inst.vdevs();
    assert_eq!(v.len(), 1, "{what}");
    assert_eq!(v[0].state, VdevState::Failed(err), "{what}");
    let ev = us.events.lock().unwrap();
    assert!(ev.contains(&Event::VdevDown {
        index: 0,
        id: rptun::virtio::id::RPMSG
    }));
    assert!(ev.contains(&Event::VdevFailed {
        index: 0,
        id: rptun::virtio::id::RPMSG,
        error: err
    }));
    assert!(err.to_string().contains("restart"), "{err}");
    assert!(us.drv.lock().unwrap().is_none() && us.dev.lock().unwrap().is_none());
}

#[test]
fn master_takes_the_link_down_when_the_remote_rewrites_the_table() {
    for (what, change) in table_changes() {
        let r = Region::new_heap(REGION_LEN);
        fill_guard(&r);
        let mut us = InstanceSide::new(true, &r);
        us.inst.start().unwrap();
        let mut peer = FakeDevice::attach(&r);
        let (svc, got) = {
            let mut g = us.drv.lock().unwrap();
            let link = g.as_mut().unwrap();
            link.poll().unwrap();
            bind_as_driver(link, &mut peer)
        };
        for tag in [&b"one"[..], b"two"] {
            let mut g = us.drv.lock().unwrap();
            driver_round_trip(g.as_mut().unwrap(), &mut peer, svc, &got, tag);
        }
        // A doorbell with nothing changed keeps everything running.
        us.doorbell();
        assert_eq!(us.inst.state(), State::Running);

        change(&r, &peer.map);
        let mut spans = peer.own_spans();
        spans.push((GUARD, GUARD_LEN));
        let guard = Untouched::new(&r, spans);
        us.doorbell();
        guard.check(what);
        assert_table_refused(&us, what);
        // The driver told its device it is gone.
        assert_eq!(r.read_u8(peer.map.status()).unwrap(), 0, "{what}");
        // Later doorbells are quiet.
        us.doorbell();
        guard.check(what);

        // A restart writes a fresh table; the link serves again.
        us.inst.start().unwrap();
        assert_eq!(us.inst.state(), State::Running);
        let mut peer = FakeDevice::attach(&r);
        let mut g = us.drv.lock().unwrap();
        let link = g.as_mut().unwrap();
        link.poll().unwrap();
        let (svc, got) = bind_as_driver(link, &mut peer);
        driver_round_trip(link, &mut peer, svc, &got, b"after restart");
    }
}

/// A link that verifies its table only every few doorbells (as a fast host
/// link does, with its own clock on top) still takes itself down within
/// that many doorbells, and at once when its owner asks.
#[test]
fn a_thinned_table_check_takes_the_link_down_within_its_bound() {
    const EVERY: u32 = 4;
    for (what, change) in table_changes() {
        for ask in [false, true] {
            let r = Region::new_heap(REGION_LEN);
            fill_guard(&r);
            let mut us = InstanceSide::new(true, &r);
            us.inst.set_table_check_every(EVERY);
            us.inst.start().unwrap();
            let mut peer = FakeDevice::attach(&r);
            let (svc, got) = {
                let mut g = us.drv.lock().unwrap();
                let link = g.as_mut().unwrap();
                link.poll().unwrap();
                bind_as_driver(link, &mut peer)
            };
            for tag in [&b"one"[..], b"two"] {
                let mut g = us.drv.lock().unwrap();
                driver_round_trip(g.as_mut().unwrap(), &mut peer, svc, &got, tag);
            }
            for _ in 0..2 * EVERY {
                us.doorbell();
            }
            assert_eq!(us.inst.state(), State::Running, "{what}");

            change(&r, &peer.map);
            if ask {
                assert!(!us.inst.verify_table(), "{what}");
            } else {
                for _ in 0..EVERY {
                    us.doorbell();
                }
            }
            assert_table_refused(&us, what);
        }
    }
}

/// The fake master's table, written and assigned; returns the pool offset.
fn fake_master_table(r: &Region) -> usize {
    r.fill(RSC, RSC_MAX, 0).unwrap();
    r.write_bytes(RSC, &table(0xf, &config(BUF as u32, BUF as u32)))
        .unwrap();
    let mut scratch = vec![0u8; RSC_MAX];
    let t = rptun::remoteproc::table::assign(r, loc(), &map(), &mut scratch).unwrap();
    let info = *t.vdev(0).unwrap().as_ref().unwrap();
    info.pool.unwrap().offset
}

#[test]
fn remote_takes_the_link_down_when_the_master_rewrites_the_table() {
    for (what, change) in table_changes() {
        let r = Region::new_heap(REGION_LEN);
        fill_guard(&r);
        let pool = fake_master_table(&r);
        let mut us = InstanceSide::new(false, &r);
        us.inst.start().unwrap();
        assert_eq!(us.inst.vdevs()[0].state, VdevState::WaitingForDriver);
        let mut peer = FakeDriver::boot(&r, pool, 0xf, BUF as u32);
        us.doorbell();
        assert_eq!(us.inst.vdevs()[0].state, VdevState::Active);
        let (svc, got) = {
            let mut g = us.dev.lock().unwrap();
            let link = g.as_mut().unwrap();
            link.poll().unwrap();
            bind_as_device(link, &mut peer)
        };
        for tag in [&b"one"[..], b"two"] {
            let mut g = us.dev.lock().unwrap();
            device_round_trip(g.as_mut().unwrap(), &mut peer, svc, &got, tag);
        }
        us.doorbell();
        assert_eq!(us.inst.state(), State::Running);

        change(&r, &peer.map);
        // The device writes nothing when it leaves: not even the status.
        let mut spans = peer.own_spans();
        spans.push((GUARD, GUARD_LEN));
        spans.push((RSC, RSC_MAX));
        spans.push(peer.v0.device_area());
        spans.push(peer.v1.device_area());
        let guard = Untouched::new(&r, spans);
        us.doorbell();
        guard.check(what);
        assert_table_refused(&us, what);
        us.doorbell();
        guard.check(what);

        // The master restarts with a fresh table; so does our remote.
        let pool = fake_master_table(&r);
        us.inst.start().unwrap();
        let mut peer = FakeDriver::boot(&r, pool, 0xf, BUF as u32);
        us.doorbell();
        assert_eq!(us.inst.state(), State::Running);
        let mut g = us.dev.lock().unwrap();
        let link = g.as_mut().unwrap();
        link.poll().unwrap();
        let (svc, got) = bind_as_device(link, &mut peer);
        device_round_trip(link, &mut peer, svc, &got, b"after restart");
    }
}

/// The refactored NuttX master writes a vdev's vring addresses only when it
/// creates that vdev, after `bootm = OK`: our remote comes up with them
/// still 0, waits, binds them at DRIVER_OK and serves; a change after
/// DRIVER_OK still takes the link down.
#[test]
fn remote_takes_vring_addresses_the_master_writes_after_boot() {
    let r = Region::new_heap(REGION_LEN);
    fill_guard(&r);
    let pool = fake_master_table(&r);
    let map = TableMap::read(&r);
    let das = [map.vring(0), map.vring(1)].map(|at| (at, r.read_u32(at).unwrap()));
    for (at, _) in das {
        r.write_u32(at, 0).unwrap();
    }
    let mut us = InstanceSide::new(false, &r);
    us.inst.start().unwrap();
    assert_eq!(us.inst.vdevs()[0].state, VdevState::WaitingForDriver);
    us.doorbell();
    // The master creates the vdev: vring addresses, then the driver's boot.
    for (at, da) in das {
        r.write_u32(at, da).unwrap();
    }
    us.doorbell();
    assert_eq!(us.inst.state(), State::Running);
    assert_eq!(us.inst.vdevs()[0].state, VdevState::WaitingForDriver);
    let mut peer = FakeDriver::boot(&r, pool, 0xf, BUF as u32);
    us.doorbell();
    assert_eq!(us.inst.vdevs()[0].state, VdevState::Active);
    let (svc, got) = {
        let mut g = us.dev.lock().unwrap();
        let link = g.as_mut().unwrap();
        link.poll().unwrap();
        bind_as_device(link, &mut peer)
    };
    for tag in [&b"one"[..], b"two"] {
        let mut g = us.dev.lock().unwrap();
        device_round_trip(g.as_mut().unwrap(), &mut peer, svc, &got, tag);
    }
    us.doorbell();
    assert_eq!(us.inst.state(), State::Running);
    // After DRIVER_OK the vring entries are guarded like the rest.
    r.write_u32(das[0].0, das[0].1 + 0x100).unwrap();
    us.doorbell();
    assert_table_refused(&us, "vring0 da moved after DRIVER_OK");
}

/// A driver that sets DRIVER_OK while a vring is still unassigned (or bad)
/// fails that vdev only: the link stays up, nothing is written.
#[test]
fn remote_fails_only_the_vdev_whose_vrings_are_unusable_at_driver_ok() {
    for (what, field, value) in [
        ("vring0 da still 0", 0, 0),
        ("vring1 outside the shared memory", 1, 0x0100_0000),
    ] {
        let r = Region::new_heap(REGION_LEN);
        fill_guard(&r);
        fake_master_table(&r);
        let map = TableMap::read(&r);
        let mut us = InstanceSide::new(false, &r);
        us.inst.start().unwrap();
        r.write_u32(map.vring(field), value).unwrap();
        r.write_u8(map.status(), S_ACK | S_DRIVER | S_DRIVER_OK)
            .unwrap();
        let guard = Untouched::new(&r, vec![(0, REGION_LEN)]);
        us.doorbell();
        guard.check(what);
        assert_eq!(us.inst.state(), State::Running, "{what}");
        let v = us.inst.vdevs();
        assert!(
            matches!(v[0].state, VdevState::Failed(InstanceError::Table(_))),
            "{what}: {:?}",
            v[0].state
        );
        let ev = us.events.lock().unwrap();
        assert!(
            ev.iter()
                .any(|e| matches!(e, Event::VdevFailed { index: 0, .. })),
            "{what}"
        );
        assert!(us.dev.lock().unwrap().is_none(), "{what}");
    }
}

#[test]
fn run_time_fields_of_the_table_are_not_changes() {
    // gfeatures, config space and the mailbox words are written at run
    // time; rewriting them is not a table change (the transports validate
    // them where they use them).
    let r = Region::new_heap(REGION_LEN);
    fill_guard(&r);
    let mut us = InstanceSide::new(true, &r);
    us.inst.start().unwrap();
    let mut peer = FakeDevice::attach(&r);
    let (svc, got) = {
        let mut g = us.drv.lock().unwrap();
        let link = g.as_mut().unwrap();
        link.poll().unwrap();
        bind_as_driver(link, &mut peer)
    };
    let m = peer.map;
    r.write_u32(m.gfeatures(), 0x1).unwrap();
    r.fill(m.config(), 64, 0xee).unwrap();
    us.doorbell();
    assert_eq!(us.inst.state(), State::Running);
    let mut g = us.drv.lock().unwrap();
    driver_round_trip(g.as_mut().unwrap(), &mut peer, svc, &got, b"still");
}

// ============================================================= status games

#[test]
fn driver_goes_down_when_the_device_clears_its_status() {
    let mut s = DriverSide::new();
    let st = s.peer.map.status();
    s.r.write_u8(st, 0).unwrap();
    let guard = s.untouched();
    s.link.poll().unwrap();
    guard.check("status cleared");
    assert!(!s.link.is_up());
    assert_eq!(s.link.transport().down_reason(), Some(DownReason::Reset));
    restart_driver(&mut s);
}

#[test]
fn device_follows_a_driver_that_flips_its_status() {
    let mut s = DeviceSide::new();
    s.bind();
    let st = s.peer.map.status();
    let sessions = s.link.transport().stats().sessions;
    for (status, reason) in [
        (S_ACK | S_DRIVER, DownReason::Reset),
        (
            S_ACK | S_DRIVER | S_DRIVER_OK | S_FAILED,
            DownReason::Failed,
        ),
    ] {
        s.r.write_u8(st, status).unwrap();
        let guard = s.untouched();
        s.link.poll().unwrap();
        guard.check("status flips");
        assert!(!s.link.is_up());
        assert_eq!(s.link.transport().down_reason(), Some(reason));
        assert_eq!(s.link.trysend(s.svc, b"x"), Err(RpmsgError::LinkDown));
        // DRIVER_OK again on the same rings: a new session on them.
        s.r.write_u8(st, S_ACK | S_DRIVER | S_DRIVER_OK).unwrap();
        s.link.poll().unwrap();
        assert!(s.link.is_up(), "{}", s.link.dump());
        s.peer.recv(); // our re-announcement
        s.peer.ns(&name_field("svc"), PEER_ADDR, NS_CREATE);
        s.link.poll().unwrap();
        s.peer.recv();
        s.still_serves(b"after a status flip");
    }
    assert_eq!(s.link.transport().stats().sessions, sessions + 2);
}

#[test]
fn device_survives_rx_buffers_that_overlap_its_own_used_ring() {
    // The driver posts vring0 buffers whose address is vring0's used ring:
    // the device's message lands on its own ring. Whatever follows, it is
    // bounded, stays inside the region and out of the guard and the table,
    // and ends up serving or down with a reason.
    let mut s = DeviceSide::new();
    s.bind();
    for _ in 0..8 {
        s.link.trysend(s.svc, b"fill").unwrap();
    }
    s.peer.recv();
    let used = s.peer.v0.used;
    for i in 0..8 {
        s.peer.v0.set_desc(i, pa(used), BUF as u32, DESC_F_WRITE, 0);
    }
    let m = s.peer.map;
    let guard = Untouched::new(
        &s.r,
        vec![
            (GUARD, GUARD_LEN),
            (RSC, m.status() - RSC),
            (m.status() + 1, m.end() - m.status() - 1),
        ],
    );
    for i in 0..20 {
        let _ = s
            .link
            .trysend(s.svc, format!("onto the ring {i}").as_bytes());
        let _ = s.link.poll();
    }
    guard.check("buffers over the used ring");
    let up = s.link.is_up();
    let reason = s.link.transport().down_reason();
    assert!(up || reason.is_some(), "{}", s.link.dump());
    // A driver reset always brings it back.
    reboot_driver(&mut s);
}
