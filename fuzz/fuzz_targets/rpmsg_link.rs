//! rpmsg bus: a `Link` over a scripted transport whose peer sends arbitrary
//! buffers (rpmsg headers with any lengths and addresses, name-service
//! messages with any names, addresses and flags), interleaved with local
//! endpoint creation/destruction, sends, held buffers and link resets.
//!
//! The transport checks the buffer-ownership contract on every call (only
//! buffers lent in this session are sent or released, each once, lengths
//! within the buffer). After every operation the target checks:
//! - every RX buffer the link took is back, except those an endpoint holds;
//! - exactly the well-formed messages addressed to an endpoint are
//!   delivered, with the peer's bytes, to that endpoint; everything else is
//!   dropped and counted (the counters add up to the buffers received);
//! - every message the link sends has a consistent header; name-service
//!   messages only when negotiated, well formed, from the endpoint they name;
//! - endpoint addresses are unique and outside the reserved range; an
//!   endpoint is bound exactly when it has a destination, and never to the
//!   name-service or the "any" address; pending announcements are bounded
//!   and name real addresses.
#![no_main]

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use rptun::rpmsg::link::MAX_PENDING_ANNOUNCEMENTS;
use rptun::rpmsg::{
    on_message, Binding, BufferStats, EndpointConfig, EndpointId, HeldRx, Link, LocalCpu,
    RemoteCpu, RpmsgFeatures, RpmsgTransport, RxBuf, TransportError, TxBuf, TxPayload,
};
use rptun::shm::Region;
use rptun::wire::rpmsg::{
    NsMessage, RpmsgHeader, ADDR_ANY, HEADER_LEN, NS_ADDR, NS_MESSAGE_LEN, RESERVED_ADDRESSES,
};

const NBUF: usize = 6;
const NAMES: [&str; 4] = ["rpmsg-ping", "rpmsg-test", "rpdev/dev/null", "x"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    Free,
    Queued,
    Lent,
    Sent,
}

/// What the peer put in one RX buffer.
#[derive(Debug, Clone)]
struct Queued {
    bytes: Vec<u8>,
    claimed: usize,
}

struct FuzzTransport {
    region: Region,
    size: usize,
    features: RpmsgFeatures,
    session: Option<u32>,
    rx: [St; NBUF],
    tx: [St; NBUF],
    rx_queue: VecDeque<u16>,
    rx_content: Vec<Option<Queued>>,
    /// (rx buffer content, in recv order) for the current poll.
    received: Vec<Queued>,
    sent: Vec<Vec<u8>>,
    /// Tokens that were not lent in this session (answered with an error,
    /// as the transport contract requires).
    bad_tokens: usize,
}

impl FuzzTransport {
    fn rx_off(&self, i: usize) -> usize {
        i * self.size
    }
    fn tx_off(&self, i: usize) -> usize {
        (NBUF + i) * self.size
    }
    fn reset_session(&mut self, up: Option<u32>) {
        self.session = up;
        self.rx = [St::Free; NBUF];
        self.tx = [St::Free; NBUF];
        self.rx_queue.clear();
        self.rx_content.iter_mut().for_each(|c| *c = None);
    }
    fn lent_rx(&self) -> usize {
        self.rx.iter().filter(|&&s| s == St::Lent).count()
    }
    /// The peer fills a free RX buffer.
    fn peer_send(&mut self, bytes: &[u8], claimed: usize) -> bool {
        if self.session.is_none() {
            return false;
        }
        let Some(i) = self.rx.iter().position(|&s| s == St::Free) else {
            return false;
        };
        let n = bytes.len().min(self.size);
        self.region.fill(self.rx_off(i), self.size, 0xCC).unwrap();
        self.region
            .write_bytes(self.rx_off(i), &bytes[..n])
            .unwrap();
        let mut stored = bytes[..n].to_vec();
        stored.resize(self.size, 0xCC);
        self.rx[i] = St::Queued;
        self.rx_content[i] = Some(Queued {
            bytes: stored,
            claimed,
        });
        self.rx_queue.push_back(i as u16);
        true
    }
    fn peer_return_tx(&mut self) {
        for s in self.tx.iter_mut() {
            if *s == St::Sent {
                *s = St::Free;
            }
        }
    }
    fn tx_token(&mut self, buf: TxBuf) -> Result<usize, TransportError> {
        let i = usize::from(buf.index);
        assert!(i < NBUF, "unknown TX token {buf:?}");
        assert_eq!((buf.offset, buf.size), (self.tx_off(i), self.size));
        if self.tx[i] != St::Lent {
            self.bad_tokens += 1;
            return Err(TransportError::InvalidBuffer { index: buf.index });
        }
        Ok(i)
    }
}

impl RpmsgTransport for FuzzTransport {
    fn role(&self) -> &str {
        "fuzz"
    }
    fn local_cpu(&self) -> LocalCpu {
        LocalCpu::new("local").unwrap()
    }
    fn remote_cpu(&self) -> RemoteCpu {
        RemoteCpu::new("peer").unwrap()
    }
    fn features(&self) -> RpmsgFeatures {
        self.features
    }
    fn link_session(&self) -> Option<u32> {
        self.session
    }
    fn tx_buffer_size(&self) -> usize {
        self.size
    }
    fn rx_buffer_size(&self) -> usize {
        self.size
    }
    fn tx_region(&self) -> &Region {
        &self.region
    }
    fn rx_region(&self) -> &Region {
        &self.region
    }
    fn poll(&mut self) -> Result<(), TransportError> {
        Ok(())
    }
    fn get_tx(&mut self) -> Result<Option<TxBuf>, TransportError> {
        self.session.ok_or(TransportError::LinkDown)?;
        let Some(i) = self.tx.iter().position(|&s| s == St::Free) else {
            return Ok(None);
        };
        self.tx[i] = St::Lent;
        Ok(Some(TxBuf {
            index: i as u16,
            offset: self.tx_off(i),
            size: self.size,
        }))
    }
    fn send(&mut self, buf: TxBuf, len: usize) -> Result<(), TransportError> {
        let i = self.tx_token(buf)?;
        assert!(
            len <= self.size,
            "send of {len} bytes from a {}-byte buffer",
            self.size
        );
        let mut v = vec![0u8; len];
        self.region.read_bytes(buf.offset, &mut v).unwrap();
        self.sent.push(v);
        self.tx[i] = St::Sent;
        Ok(())
    }
    fn release_tx(&mut self, buf: TxBuf) -> Result<(), TransportError> {
        let i = self.tx_token(buf)?;
        self.tx[i] = St::Free;
        Ok(())
    }
    fn recv(&mut self) -> Result<Option<RxBuf>, TransportError> {
        self.session.ok_or(TransportError::LinkDown)?;
        let Some(i) = self.rx_queue.pop_front() else {
            return Ok(None);
        };
        let i = usize::from(i);
        self.rx[i] = St::Lent;
        let q = self.rx_content[i].clone().unwrap();
        let claimed = q.claimed;
        self.received.push(q);
        Ok(Some(RxBuf {
            index: i as u16,
            offset: self.rx_off(i),
            capacity: self.size,
            len: claimed,
        }))
    }
    fn release_rx(&mut self, buf: RxBuf) -> Result<(), TransportError> {
        let i = usize::from(buf.index);
        assert!(i < NBUF);
        assert_eq!(buf.offset, self.rx_off(i));
        if self.rx[i] != St::Lent {
            self.bad_tokens += 1;
            return Err(TransportError::InvalidBuffer { index: buf.index });
        }
        self.rx[i] = St::Free;
        Ok(())
    }
    fn buffer_stats(&self) -> BufferStats {
        BufferStats {
            tx_total: NBUF,
            tx_free: self.tx.iter().filter(|&&s| s == St::Free).count(),
            rx_total: NBUF,
        }
    }
    fn describe(&self, out: &mut dyn fmt::Write) -> fmt::Result {
        write!(out, "fuzz transport, session {:?}", self.session)
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Addr {
    Any,
    Ns,
    Local(u8),
    Raw(u32),
}

#[derive(Arbitrary, Debug, Clone)]
enum NameSel {
    Known(u8),
    Raw([u8; 32]),
    Unnamed,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Behaviour {
    Nothing,
    Hold,
    Reply,
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// A message from the peer: header fields chosen, payload, lengths.
    PeerMsg {
        src: Addr,
        dst: Addr,
        payload: Vec<u8>,
        len_delta: i8,
        claimed_delta: i16,
        flags: u16,
    },
    /// A name-service message from the peer.
    PeerNs {
        name: NameSel,
        addr: Addr,
        flags: u32,
        len_delta: i8,
    },
    /// Raw bytes in an RX buffer.
    PeerRaw {
        bytes: Vec<u8>,
        claimed: u16,
    },
    PeerReturnTx,
    LinkReset,
    Poll,
    Create {
        name: NameSel,
        addr: Addr,
        dest: Addr,
        behaviour: Behaviour,
    },
    Destroy(u8),
    ReleaseHeld(u8),
    TrySend {
        ept: u8,
        len: u16,
    },
    TrySendTo {
        ept: u8,
        dst: Addr,
        len: u16,
    },
    GetTx {
        ept: u8,
    },
    SendLent {
        pick: u8,
        len: u16,
        dst: Option<Addr>,
    },
    ReleaseLent(u8),
}

#[derive(Arbitrary, Debug)]
struct Input {
    features: u8,
    size_sel: u8,
    ops: Vec<Op>,
}

/// What endpoint callbacks saw.
#[derive(Default)]
struct Log {
    delivered: Vec<(u32, u32, u32, Vec<u8>)>, // (endpoint addr, src, dst, payload)
    held: Vec<(u32, HeldRx)>,                 // (session, buffer)
}

fn name_of(sel: &NameSel) -> String {
    match sel {
        NameSel::Known(i) => NAMES[usize::from(*i) % NAMES.len()].to_string(),
        NameSel::Raw(b) => String::from_utf8_lossy(b).chars().take(40).collect(),
        NameSel::Unnamed => String::new(),
    }
}

fn name_field(sel: &NameSel) -> [u8; 32] {
    match sel {
        NameSel::Raw(b) => *b,
        other => {
            let mut f = [0u8; 32];
            let n = name_of(other);
            let n = &n.as_bytes()[..n.len().min(31)];
            f[..n.len()].copy_from_slice(n);
            f
        }
    }
}

type L = Link<FuzzTransport>;

fn addr(link: &L, a: Addr) -> u32 {
    match a {
        Addr::Any => ADDR_ANY,
        Addr::Ns => NS_ADDR,
        Addr::Local(i) => {
            let e: Vec<u32> = link.endpoints().map(|e| e.addr).collect();
            if e.is_empty() {
                RESERVED_ADDRESSES + u32::from(i % 4)
            } else {
                e[usize::from(i) % e.len()]
            }
        }
        Addr::Raw(v) => v,
    }
}

fn pick_ept(link: &L, i: u8) -> Option<EndpointId> {
    let ids: Vec<EndpointId> = link.endpoints().map(|e| e.id).collect();
    (!ids.is_empty()).then(|| ids[usize::from(i) % ids.len()])
}

fn check_link(link: &L, log: &Log) {
    let t = link.transport();
    let session = t.session.unwrap_or(u32::MAX);
    let held_now = log.held.iter().filter(|(s, _)| *s == session).count();
    if t.session.is_some() {
        assert_eq!(t.lent_rx(), held_now, "RX buffers not given back");
    }
    let mut addrs: Vec<u32> = Vec::new();
    for e in link.endpoints() {
        assert!(e.addr >= RESERVED_ADDRESSES && e.addr != ADDR_ANY);
        assert!(!addrs.contains(&e.addr), "two endpoints at {:#x}", e.addr);
        addrs.push(e.addr);
        assert_eq!(e.binding == Binding::Unbound, e.dest == ADDR_ANY, "{e:?}");
        assert_ne!(e.dest, NS_ADDR, "{e:?} bound to the name service");
    }
    let pending: Vec<_> = link.pending_announcements().collect();
    assert!(pending.len() <= MAX_PENDING_ANNOUNCEMENTS);
    for p in &pending {
        assert!(p.addr != ADDR_ANY && p.addr != NS_ADDR);
    }
    let s = link.stats();
    let _ = (s, link.dump_string());
}

trait DumpString {
    fn dump_string(&self) -> String;
}

impl DumpString for L {
    fn dump_string(&self) -> String {
        format!("{}", self.dump())
    }
}

/// Checks what the link sent since the last check.
fn check_sent(link: &mut L, peer_src_ns: bool) {
    let ns = link.features().ns();
    let ack = link.features().ack();
    let sent = std::mem::take(&mut link.transport_mut().sent);
    for m in sent {
        assert!(m.len() >= HEADER_LEN);
        let h = RpmsgHeader::parse(&m).unwrap();
        assert_eq!(
            usize::from(h.len) + HEADER_LEN,
            m.len(),
            "header len disagrees with the send"
        );
        assert!(
            h.src >= RESERVED_ADDRESSES && h.src != ADDR_ANY,
            "sent from {:#x}",
            h.src
        );
        assert_ne!(h.dst, ADDR_ANY, "sent to ANY");
        if h.dst == NS_ADDR {
            let parsed = if m.len() == HEADER_LEN + NS_MESSAGE_LEN {
                NsMessage::parse(&m[HEADER_LEN..]).ok()
            } else {
                None
            };
            match parsed {
                Some(ns_msg) if ns_msg.addr == h.src && ns_msg.flags <= 2 => {
                    assert!(ns, "name-service message without NS negotiated");
                    if ns_msg.flags == 2 {
                        assert!(ack, "CREATE_ACK without ACK negotiated");
                    }
                    assert!(!ns_msg.name.is_empty());
                }
                // Application data to 0x35 only when the peer itself used
                // that address as a source (a reply, or a binding it chose).
                _ => assert!(peer_src_ns, "malformed name-service message sent: {m:?}"),
            }
        }
    }
}

fuzz_target!(|input: Input| {
    let features = match input.features % 3 {
        0 => RpmsgFeatures::NONE,
        1 => RpmsgFeatures::LINUX,
        _ => RpmsgFeatures::NUTTX,
    };
    let size = [16usize, 40, 56, 64, 200, 512][usize::from(input.size_sel) % 6];
    let region = Region::new_heap(2 * NBUF * size);
    let t = FuzzTransport {
        region,
        size,
        features,
        session: Some(1),
        rx: [St::Free; NBUF],
        tx: [St::Free; NBUF],
        rx_queue: VecDeque::new(),
        rx_content: vec![None; NBUF],
        received: Vec::new(),
        sent: Vec::new(),
        bad_tokens: 0,
    };
    let mut link = Link::new(t);
    let log = Arc::new(Mutex::new(Log::default()));
    let mut lent: Vec<TxPayload> = Vec::new();
    let mut next_session = 2u32;
    let mut peer_src_ns = false;
    let mut total_received = 0usize;
    link.poll().unwrap();

    for op in input.ops.iter().take(128) {
        // Between a transport session change and the link's next poll, the
        // link may still hand back tokens of the old session.
        let stale = link.session() != link.transport().session;
        match op {
            Op::PeerMsg {
                src,
                dst,
                payload,
                len_delta,
                claimed_delta,
                flags,
            } => {
                let src = addr(&link, *src);
                let dst = addr(&link, *dst);
                peer_src_ns |= src == NS_ADDR;
                let payload = &payload[..payload.len().min(600)];
                let len = (payload.len() as i64 + i64::from(*len_delta)).clamp(0, 0xffff) as u16;
                let h = RpmsgHeader {
                    src,
                    dst,
                    reserved: 0,
                    len,
                    flags: *flags,
                };
                let mut b = h.to_bytes().to_vec();
                b.extend_from_slice(payload);
                let claimed = (b.len() as i64 + i64::from(*claimed_delta)).max(0) as usize;
                link.transport_mut().peer_send(&b, claimed);
            }
            Op::PeerNs {
                name,
                addr: a,
                flags,
                len_delta,
            } => {
                let a = addr(&link, *a);
                let mut body = name_field(name).to_vec();
                body.extend_from_slice(&a.to_le_bytes());
                body.extend_from_slice(&(flags % 5).to_le_bytes());
                let len = (40 + i64::from(*len_delta % 4)).max(0) as u16;
                let h = RpmsgHeader {
                    src: a,
                    dst: NS_ADDR,
                    reserved: 0,
                    len,
                    flags: 0,
                };
                peer_src_ns |= a == NS_ADDR;
                let mut b = h.to_bytes().to_vec();
                b.extend_from_slice(&body);
                let claimed = b.len();
                link.transport_mut().peer_send(&b, claimed);
            }
            Op::PeerRaw { bytes, claimed } => {
                if bytes.len() >= 4 {
                    peer_src_ns |= bytes[..4] == NS_ADDR.to_le_bytes();
                }
                link.transport_mut().peer_send(bytes, usize::from(*claimed));
            }
            Op::PeerReturnTx => link.transport_mut().peer_return_tx(),
            Op::LinkReset => {
                let up = if link.transport().session.is_some() {
                    None
                } else {
                    next_session += 1;
                    Some(next_session)
                };
                link.transport_mut().reset_session(up);
            }
            Op::Poll => {
                // Expected deliveries: well-formed, not name service, to an
                // endpoint that exists (callbacks do not create or destroy
                // endpoints here).
                let ns = link.features().ns();
                let epts: Vec<u32> = link.endpoints().map(|e| e.addr).collect();
                link.transport_mut().received.clear();
                let before = link.stats();
                let delivered_before = log.lock().unwrap().delivered.len();
                let r = link.poll();
                assert!(r.is_ok(), "poll failed: {r:?}");
                let sum = r.unwrap();
                let received = std::mem::take(&mut link.transport_mut().received);
                assert_eq!(sum.received, received.len());
                total_received += received.len();
                let mut want = Vec::new();
                for q in &received {
                    let avail = q.claimed.min(size);
                    if avail < HEADER_LEN {
                        continue;
                    }
                    let h = RpmsgHeader::parse(&q.bytes[..HEADER_LEN]).unwrap();
                    let len = usize::from(h.len);
                    if HEADER_LEN + len > avail || (ns && h.dst == NS_ADDR) {
                        continue;
                    }
                    if epts.contains(&h.dst) {
                        want.push((
                            h.dst,
                            h.src,
                            h.dst,
                            q.bytes[HEADER_LEN..HEADER_LEN + len].to_vec(),
                        ));
                    }
                }
                let l = log.lock().unwrap();
                assert_eq!(
                    &l.delivered[delivered_before..],
                    &want[..],
                    "deliveries differ"
                );
                drop(l);
                let s = link.stats();
                let counted = (s.rx_messages - before.rx_messages)
                    + (s.ns_received - before.ns_received)
                    + (s.dropped_short - before.dropped_short)
                    + (s.dropped_bad_length - before.dropped_bad_length)
                    + (s.dropped_unknown_dst - before.dropped_unknown_dst)
                    + (s.dropped_bad_ns - before.dropped_bad_ns);
                assert_eq!(counted as usize, received.len(), "{before:?} -> {s:?}");
                assert_eq!(s.transport_errors, 0);
            }
            Op::Create {
                name,
                addr: a,
                dest,
                behaviour,
            } => {
                let a = addr(&link, *a);
                let d = addr(&link, *dest);
                let n = name_of(name);
                let cfg = if matches!(name, NameSel::Unnamed) {
                    EndpointConfig::unnamed()
                } else {
                    EndpointConfig::new(&n)
                }
                .addr(a)
                .dest(d);
                let lg = log.clone();
                let beh = *behaviour;
                let r = link.create_endpoint(
                    cfg,
                    on_message(move |ctx, msg| {
                        let me = ctx.endpoint(ctx.this_endpoint()).unwrap().addr;
                        lg.lock()
                            .unwrap()
                            .delivered
                            .push((me, msg.src(), msg.dst(), msg.to_vec()));
                        match beh {
                            Behaviour::Nothing => {}
                            Behaviour::Hold => {
                                let s = ctx.session().unwrap();
                                let h = ctx.hold(msg);
                                lg.lock().unwrap().held.push((s, h));
                            }
                            Behaviour::Reply => {
                                let data = msg.to_vec();
                                let _ = ctx.reply(&msg, &data);
                            }
                        }
                    }),
                );
                if let Ok(id) = r {
                    let e = link.endpoint(id).unwrap();
                    assert_eq!(
                        e.name.as_str(),
                        if matches!(name, NameSel::Unnamed) {
                            ""
                        } else {
                            n.as_str()
                        }
                    );
                    if a != ADDR_ANY {
                        assert_eq!(e.addr, a);
                    }
                } else if let Err(e) = r {
                    assert!(!e.to_string().is_empty());
                }
            }
            Op::Destroy(i) => {
                if let Some(id) = pick_ept(&link, *i) {
                    link.destroy_endpoint(id).unwrap();
                    assert!(link.endpoint(id).is_none());
                    assert_eq!(
                        link.destroy_endpoint(id).err(),
                        Some(rptun::rpmsg::RpmsgError::NoEndpoint)
                    );
                }
            }
            Op::ReleaseHeld(i) => {
                let mut l = log.lock().unwrap();
                if !l.held.is_empty() {
                    let k = usize::from(*i) % l.held.len();
                    let (_, h) = l.held.remove(k);
                    drop(l);
                    let r = link.release_rx(h);
                    assert!(r.is_ok() || stale, "{r:?}");
                }
            }
            Op::TrySend { ept, len } => {
                if let Some(id) = pick_ept(&link, *ept) {
                    let data = vec![0x5Au8; usize::from(*len) % 700];
                    let _ = link.trysend(id, &data);
                }
            }
            Op::TrySendTo { ept, dst, len } => {
                if let Some(id) = pick_ept(&link, *ept) {
                    let d = addr(&link, *dst);
                    if d == NS_ADDR {
                        continue; // application data to 0x35 is the caller's business
                    }
                    let data = vec![0xA5u8; usize::from(*len) % 700];
                    let _ = link.trysendto(id, d, &data);
                }
            }
            Op::GetTx { ept } => {
                if let Some(id) = pick_ept(&link, *ept) {
                    if let Ok(tx) = link.try_get_tx(id) {
                        assert_eq!(tx.capacity(), size - HEADER_LEN);
                        tx.write(0, &vec![7u8; tx.capacity()]).unwrap();
                        assert!(tx.write(tx.capacity(), &[1]).is_err());
                        lent.push(tx);
                    }
                }
            }
            Op::SendLent { pick, len, dst } => {
                if !lent.is_empty() {
                    let tx = lent.remove(usize::from(*pick) % lent.len());
                    let len = usize::from(*len) % (size + 8);
                    let r = match dst {
                        Some(a) => {
                            let d = addr(&link, *a);
                            if d == NS_ADDR {
                                let _ = link.release_tx(tx);
                                continue;
                            }
                            link.sendto_nocopy(tx, d, len)
                        }
                        None => link.send_nocopy(tx, len),
                    };
                    if len > size - HEADER_LEN {
                        assert!(r.is_err());
                    }
                }
            }
            Op::ReleaseLent(i) => {
                if !lent.is_empty() {
                    let tx = lent.remove(usize::from(*i) % lent.len());
                    let r = link.release_tx(tx);
                    assert!(r.is_ok() || stale, "{r:?}");
                }
            }
        }
        let bad = std::mem::take(&mut link.transport_mut().bad_tokens);
        assert!(
            bad == 0 || stale,
            "the link used {bad} tokens not lent in this session"
        );
        check_sent(&mut link, peer_src_ns);
        check_link(&link, &log.lock().unwrap());
    }
    let _ = total_received;
    // Tear down: everything lent comes back.
    for tx in lent.drain(..) {
        let _ = link.release_tx(tx);
    }
    let held: Vec<(u32, HeldRx)> = log.lock().unwrap().held.drain(..).collect();
    let stale = link.session() != link.transport().session;
    for (_, h) in held {
        let r = link.release_rx(h);
        assert!(r.is_ok() || stale, "{r:?}");
    }
    if link.transport().session.is_some() {
        assert_eq!(link.transport().lent_rx(), 0);
        assert!(
            link.transport().tx.iter().all(|&s| s != St::Lent),
            "TX buffer leaked"
        );
    }
});
