//! One rpmsg link: a transport plus the endpoints on it.
#![forbid(unsafe_code)]

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::marker::PhantomData;
use core::ops::Deref;
use core::time::Duration;

use crate::rpmsg::cpu::{LocalCpu, RemoteCpu};
use crate::rpmsg::endpoint::{
    Binding, EndpointConfig, EndpointHandler, EndpointId, HeldEntry, HeldRx, Received, TxLease,
    TxPayload,
};
use crate::rpmsg::transport::{RpmsgFeatures, RpmsgTransport, RxBuf, TransportError, TxBuf};
use crate::rpmsg::wait::{deadline, Wait};
use crate::rpmsg::RpmsgError;
use crate::wire::rpmsg::{
    NsKind, NsMessage, RpmsgHeader, RpmsgName, RpmsgWireError, ADDR_ANY, HEADER_LEN, NS_ADDR,
    NS_MESSAGE_LEN, RESERVED_ADDRESSES,
};

/// Most name-service announcements kept while no endpoint or service
/// matches them; further ones are dropped (and counted) so a peer cannot
/// exhaust our memory.
pub const MAX_PENDING_ANNOUNCEMENTS: usize = 64;

/// Counters of one link (what was received, sent and dropped, and why).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LinkStats {
    /// Messages delivered to endpoints.
    pub rx_messages: u64,
    /// Messages sent (name-service messages included).
    pub tx_messages: u64,
    /// Name-service messages received and acted upon.
    pub ns_received: u64,
    /// Dropped: buffer shorter than the 16-byte header.
    pub dropped_short: u64,
    /// Dropped: header `len` larger than the buffer.
    pub dropped_bad_length: u64,
    /// Dropped: no endpoint at the destination address.
    pub dropped_unknown_dst: u64,
    /// Dropped: malformed name-service message (length, name, address).
    pub dropped_bad_ns: u64,
    /// Dropped: announcements beyond [`MAX_PENDING_ANNOUNCEMENTS`].
    pub dropped_announcements: u64,
    /// CREATE_ACKs that matched no endpoint.
    pub unmatched_acks: u64,
    /// Errors reported by the transport while receiving or releasing.
    pub transport_errors: u64,
}

/// A name-service announcement from the peer that no local endpoint took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Announcement {
    /// The announced service name.
    pub name: RpmsgName,
    /// The peer's endpoint address.
    pub addr: u32,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Pending {
    pub ann: Announcement,
    /// Already offered to the service registry.
    pub offered: bool,
}

/// A read-only description of one endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointInfo {
    /// Its id.
    pub id: EndpointId,
    /// Its name (empty if unnamed).
    pub name: RpmsgName,
    /// Local address.
    pub addr: u32,
    /// Destination address (ANY when unbound).
    pub dest: u32,
    /// How the destination was set.
    pub binding: Binding,
    /// The peer was told about this endpoint (CREATE or CREATE_ACK sent).
    pub announced: bool,
    /// Messages received.
    pub rx_messages: u64,
    /// Messages sent.
    pub tx_messages: u64,
    /// RX buffers held by this endpoint now.
    pub rx_held: usize,
    /// TX buffers lent to this endpoint's user now (not yet sent/released).
    pub tx_lent: usize,
}

pub(crate) struct Endpoint<T: RpmsgTransport> {
    pub name: RpmsgName,
    pub addr: u32,
    pub dest: u32,
    pub binding: Binding,
    pub announced: bool,
    pub handler: Option<Box<dyn EndpointHandler<T>>>,
    pub rx_messages: u64,
    pub tx_messages: u64,
}

pub(crate) struct Slot<T: RpmsgTransport> {
    pub gen: u32,
    pub ept: Option<Endpoint<T>>,
}

/// A tiny generational slab for local bookkeeping.
pub(crate) struct Slab<V> {
    items: Vec<(u32, Option<V>)>,
}

impl<V> Slab<V> {
    pub fn new() -> Self {
        Slab { items: Vec::new() }
    }
    pub fn insert(&mut self, v: V) -> (u32, u32) {
        if let Some(i) = self.items.iter().position(|(_, x)| x.is_none()) {
            let e = &mut self.items[i];
            e.1 = Some(v);
            return (i as u32, e.0);
        }
        self.items.push((0, Some(v)));
        ((self.items.len() - 1) as u32, 0)
    }
    pub fn remove(&mut self, index: u32, gen: u32) -> Option<V> {
        let e = self.items.get_mut(index as usize)?;
        if e.0 != gen {
            return None;
        }
        let v = e.1.take()?;
        e.0 = e.0.wrapping_add(1);
        Some(v)
    }
    pub fn clear(&mut self) {
        for e in &mut self.items {
            if e.1.take().is_some() {
                e.0 = e.0.wrapping_add(1);
            }
        }
    }
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.items.iter().filter_map(|(_, v)| v.as_ref())
    }
    pub fn len(&self) -> usize {
        self.values().count()
    }
}

/// What one [`Link::poll`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PollSummary {
    /// Buffers taken from the transport (delivered or dropped).
    pub received: usize,
    /// The per-poll budget ran out with more messages possibly waiting:
    /// poll again.
    pub more: bool,
    /// The link came up during this poll.
    pub came_up: bool,
    /// The link went down during this poll.
    pub went_down: bool,
}

/// One rpmsg link: a transport, its endpoints and its name service.
///
/// Single-threaded by design: every operation takes `&mut self`; a host puts
/// the link (or the whole [`Bus`](super::Bus)) behind its own lock or in its
/// own thread. Nothing blocks except the calls that take a [`Wait`].
///
/// Received messages are processed only in [`Link::poll`]; endpoint
/// callbacks run from there and receive a [`LinkCtx`], which can send, hold
/// buffers and manage endpoints but cannot poll, so callbacks never nest.
pub struct Link<T: RpmsgTransport> {
    pub(crate) transport: T,
    pub(crate) slots: Vec<Slot<T>>,
    pub(crate) held: Slab<HeldEntry>,
    pub(crate) leases: Slab<TxLease>,
    pub(crate) ns_out: VecDeque<(u32, NsMessage)>,
    pub(crate) pending: Vec<Pending>,
    pub(crate) session: Option<u32>,
    pub(crate) stats: LinkStats,
    /// The RX buffer being dispatched was held by its callback.
    cur_rx_taken: bool,
}

impl<T: RpmsgTransport + 'static> Link<T> {
    /// A link over `transport`. Nothing is sent until the first
    /// [`Link::poll`] (or endpoint creation) sees the link up.
    pub fn new(transport: T) -> Link<T> {
        Link {
            transport,
            slots: Vec::new(),
            held: Slab::new(),
            leases: Slab::new(),
            ns_out: VecDeque::new(),
            pending: Vec::new(),
            session: None,
            stats: LinkStats::default(),
            cur_rx_taken: false,
        }
    }

    // ----------------------------------------------------------------- info

    /// The transport.
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// The transport, mutable (for its owner: feeding a byte stream,
    /// handling a doorbell). Do not take or give buffers behind the link's
    /// back.
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    /// The link as last seen by [`Link::poll`]: up?
    pub fn is_up(&self) -> bool {
        self.session.is_some()
    }

    /// The session last seen by [`Link::poll`] (`None` while down).
    pub fn session(&self) -> Option<u32> {
        self.session
    }

    /// Negotiated features.
    pub fn features(&self) -> RpmsgFeatures {
        self.transport.features()
    }

    /// This side's name on the link.
    pub fn local_cpu(&self) -> LocalCpu {
        self.transport.local_cpu()
    }

    /// The other side's name.
    pub fn remote_cpu(&self) -> RemoteCpu {
        self.transport.remote_cpu()
    }

    /// Largest payload one message can carry towards the peer
    /// (TX buffer size − 16, at most 65535).
    pub fn max_payload(&self) -> usize {
        self.transport
            .tx_buffer_size()
            .saturating_sub(HEADER_LEN)
            .min(u16::MAX as usize)
    }

    /// Largest payload the peer can send us (RX buffer size − 16).
    pub fn rx_max_payload(&self) -> usize {
        self.transport
            .rx_buffer_size()
            .saturating_sub(HEADER_LEN)
            .min(u16::MAX as usize)
    }

    /// Counters.
    pub fn stats(&self) -> LinkStats {
        self.stats
    }

    /// Describes one endpoint (`None` for a stale id).
    pub fn endpoint(&self, id: EndpointId) -> Option<EndpointInfo> {
        let e = self.ept(id)?;
        Some(self.info(id, e))
    }

    /// Describes every endpoint.
    pub fn endpoints(&self) -> impl Iterator<Item = EndpointInfo> + '_ {
        self.slots.iter().enumerate().filter_map(|(i, s)| {
            let e = s.ept.as_ref()?;
            Some(self.info(
                EndpointId {
                    slot: i as u32,
                    gen: s.gen,
                },
                e,
            ))
        })
    }

    /// The first endpoint with this name.
    pub fn find_endpoint(&self, name: &str) -> Option<EndpointId> {
        self.endpoints().find(|e| e.name == name).map(|e| e.id)
    }

    /// The endpoint at a local address.
    pub fn endpoint_at(&self, addr: u32) -> Option<EndpointId> {
        self.endpoints().find(|e| e.addr == addr).map(|e| e.id)
    }

    /// Announcements from the peer that no endpoint or service took yet.
    pub fn pending_announcements(&self) -> impl Iterator<Item = Announcement> + '_ {
        self.pending.iter().map(|p| p.ann)
    }

    /// Removes a pending announcement (e.g. after binding it by hand).
    /// Returns whether it was there.
    pub fn take_announcement(&mut self, name: &str, addr: u32) -> bool {
        let before = self.pending.len();
        self.pending
            .retain(|p| !(p.ann.name == name && p.ann.addr == addr));
        before != self.pending.len()
    }

    /// The handler of an endpoint as its concrete type (its private state).
    /// `None` for a stale id, another type, or while its own callback runs.
    pub fn handler_mut<H: 'static>(&mut self, id: EndpointId) -> Option<&mut H> {
        self.ept_mut(id)?
            .handler
            .as_mut()?
            .as_mut()
            .as_any_mut()
            .downcast_mut::<H>()
    }

    /// Read-only access to a handler's state.
    pub fn handler<H: 'static>(&self, id: EndpointId) -> Option<&H> {
        self.ept(id)?
            .handler
            .as_ref()?
            .as_ref()
            .as_any()
            .downcast_ref::<H>()
    }

    fn info(&self, id: EndpointId, e: &Endpoint<T>) -> EndpointInfo {
        EndpointInfo {
            id,
            name: e.name,
            addr: e.addr,
            dest: e.dest,
            binding: e.binding,
            announced: e.announced,
            rx_messages: e.rx_messages,
            tx_messages: e.tx_messages,
            rx_held: self.held.values().filter(|h| h.ept == id).count(),
            tx_lent: self.leases.values().filter(|l| l.ept == id).count(),
        }
    }

    pub(crate) fn ept(&self, id: EndpointId) -> Option<&Endpoint<T>> {
        let s = self.slots.get(id.slot as usize)?;
        if s.gen != id.gen {
            return None;
        }
        s.ept.as_ref()
    }

    pub(crate) fn ept_mut(&mut self, id: EndpointId) -> Option<&mut Endpoint<T>> {
        let s = self.slots.get_mut(id.slot as usize)?;
        if s.gen != id.gen {
            return None;
        }
        s.ept.as_mut()
    }

    pub(crate) fn ids(&self) -> Vec<EndpointId> {
        self.endpoints().map(|e| e.id).collect()
    }

    /// The transport agrees the link is up in the session we know.
    fn check_up(&self) -> Result<(), RpmsgError> {
        match self.session {
            Some(s) if self.transport.link_session() == Some(s) => Ok(()),
            _ => Err(RpmsgError::LinkDown),
        }
    }

    // ------------------------------------------------------------ endpoints

    /// Creates an endpoint.
    ///
    /// Local address ANY allocates the lowest free address ≥ 1024; a fixed
    /// address must be ≥ 1024 and free. A named endpoint with destination
    /// ANY announces itself (NS CREATE) when the name service is negotiated;
    /// if the peer already announced the same name, the endpoint binds to it
    /// at once (and tells the peer with CREATE_ACK, or CREATE without ACK).
    /// A named endpoint with a fixed destination sends CREATE_ACK when ACK is
    /// negotiated (this is how a service binding an announced name answers).
    pub fn create_endpoint(
        &mut self,
        cfg: EndpointConfig,
        handler: impl EndpointHandler<T>,
    ) -> Result<EndpointId, RpmsgError> {
        self.create_endpoint_boxed(cfg, Box::new(handler))
    }

    /// [`Link::create_endpoint`] with an already boxed handler.
    pub fn create_endpoint_boxed(
        &mut self,
        cfg: EndpointConfig,
        handler: Box<dyn EndpointHandler<T>>,
    ) -> Result<EndpointId, RpmsgError> {
        let name = cfg.name.map_err(RpmsgError::InvalidName)?;
        let addr = if cfg.addr == ADDR_ANY {
            self.allocate_addr()?
        } else if cfg.addr < RESERVED_ADDRESSES {
            return Err(RpmsgError::ReservedAddress(cfg.addr));
        } else if self.endpoint_at(cfg.addr).is_some() {
            return Err(RpmsgError::AddressInUse(cfg.addr));
        } else {
            cfg.addr
        };
        if cfg.dest == NS_ADDR {
            return Err(RpmsgError::ReservedAddress(cfg.dest));
        }
        let (mut dest, mut binding) = if cfg.dest == ADDR_ANY {
            (ADDR_ANY, Binding::Unbound)
        } else {
            (cfg.dest, Binding::Fixed)
        };
        let up = self.check_up().is_ok();
        let mut bound_now = false;
        if up && !name.is_empty() {
            if binding == Binding::Unbound {
                if let Some(i) = self.pending.iter().position(|p| p.ann.name == name) {
                    dest = self.pending.remove(i).ann.addr;
                    binding = Binding::NameService;
                    bound_now = true;
                }
            } else {
                self.pending
                    .retain(|p| !(p.ann.name == name && p.ann.addr == dest));
            }
        }
        let ept = Endpoint {
            name,
            addr,
            dest,
            binding,
            announced: false,
            handler: Some(handler),
            rx_messages: 0,
            tx_messages: 0,
        };
        let id = match self.slots.iter().position(|s| s.ept.is_none()) {
            Some(i) => {
                let s = &mut self.slots[i];
                s.ept = Some(ept);
                EndpointId {
                    slot: i as u32,
                    gen: s.gen,
                }
            }
            None => {
                self.slots.push(Slot {
                    gen: 0,
                    ept: Some(ept),
                });
                EndpointId {
                    slot: (self.slots.len() - 1) as u32,
                    gen: 0,
                }
            }
        };
        if up {
            if bound_now {
                let f = self.features();
                let kind = if f.ack() {
                    Some(NsKind::CreateAck)
                } else if f.ns() {
                    Some(NsKind::Create)
                } else {
                    None
                };
                if let Some(kind) = kind {
                    self.queue_ns(id, kind);
                }
            } else {
                self.queue_announce(id);
            }
            self.flush_ns();
            if bound_now {
                self.call_bound(id, dest);
            }
        }
        Ok(id)
    }

    /// Destroys an endpoint; tells the peer (NS DESTROY) if it was announced.
    /// RX buffers it still holds stay valid until released.
    pub fn destroy_endpoint(&mut self, id: EndpointId) -> Result<(), RpmsgError> {
        let slot = self
            .slots
            .get_mut(id.slot as usize)
            .filter(|s| s.gen == id.gen && s.ept.is_some())
            .ok_or(RpmsgError::NoEndpoint)?;
        let e = slot.ept.take().ok_or(RpmsgError::NoEndpoint)?;
        slot.gen = slot.gen.wrapping_add(1);
        if e.announced && self.features().ns() && self.check_up().is_ok() {
            self.ns_out
                .push_back((e.addr, NsMessage::new(e.name, e.addr, NsKind::Destroy)));
            self.flush_ns();
        }
        // The handler (e) is dropped here, unless its callback is running
        // (then the dispatcher drops it when the callback returns).
        Ok(())
    }

    fn allocate_addr(&self) -> Result<u32, RpmsgError> {
        let mut used: Vec<u32> = self.endpoints().map(|e| e.addr).collect();
        used.sort_unstable();
        let mut candidate = RESERVED_ADDRESSES;
        for a in used {
            if a == candidate {
                candidate = candidate.checked_add(1).ok_or(RpmsgError::NoFreeAddress)?;
            } else if a > candidate {
                break;
            }
        }
        if candidate == ADDR_ANY {
            return Err(RpmsgError::NoFreeAddress);
        }
        Ok(candidate)
    }

    // ----------------------------------------------------------------- send

    fn resolve(
        &self,
        ept: EndpointId,
        dst: Option<u32>,
        len: usize,
    ) -> Result<(u32, u32), RpmsgError> {
        self.check_up()?;
        let e = self.ept(ept).ok_or(RpmsgError::NoEndpoint)?;
        let dst = dst.unwrap_or(e.dest);
        if dst == ADDR_ANY {
            return Err(RpmsgError::NotBound);
        }
        let max = self.max_payload();
        if len > max {
            return Err(RpmsgError::TooLong { len, max });
        }
        Ok((e.addr, dst))
    }

    fn get_tx_buf(&mut self) -> Result<TxBuf, RpmsgError> {
        match self.transport.get_tx() {
            Ok(Some(b)) => Ok(b),
            Ok(None) => Err(RpmsgError::NoBuffer),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes the header, sends; gives the buffer back on any failure.
    fn finish_send(
        &mut self,
        buf: TxBuf,
        src: u32,
        dst: u32,
        payload: Option<&[u8]>,
        len: usize,
    ) -> Result<(), RpmsgError> {
        let r = self.write_and_send(buf, src, dst, payload, len);
        if r.is_err() {
            let _ = self.transport.release_tx(buf);
        } else {
            self.stats.tx_messages += 1;
        }
        r
    }

    fn write_and_send(
        &mut self,
        buf: TxBuf,
        src: u32,
        dst: u32,
        payload: Option<&[u8]>,
        len: usize,
    ) -> Result<(), RpmsgError> {
        let max = buf.size.saturating_sub(HEADER_LEN).min(u16::MAX as usize);
        if len > max {
            return Err(RpmsgError::TooLong { len, max });
        }
        let hdr = RpmsgHeader {
            src,
            dst,
            reserved: 0,
            len: len as u16,
            flags: 0,
        };
        let region = self.transport.tx_region();
        region.write_bytes(buf.offset, &hdr.to_bytes())?;
        if let Some(p) = payload {
            region.write_bytes(buf.offset + HEADER_LEN, p)?;
        }
        self.transport.send(buf, HEADER_LEN + len)?;
        Ok(())
    }

    fn count_tx(&mut self, ept: EndpointId) {
        if let Some(e) = self.ept_mut(ept) {
            e.tx_messages += 1;
        }
    }

    /// Sends `data` to the endpoint's destination without blocking:
    /// [`RpmsgError::NoBuffer`] when every TX buffer is in use.
    pub fn trysend(&mut self, ept: EndpointId, data: &[u8]) -> Result<(), RpmsgError> {
        self.trysend_inner(ept, None, data)
    }

    /// Sends `data` to address `dst` without blocking.
    pub fn trysendto(&mut self, ept: EndpointId, dst: u32, data: &[u8]) -> Result<(), RpmsgError> {
        self.trysend_inner(ept, Some(dst), data)
    }

    fn trysend_inner(
        &mut self,
        ept: EndpointId,
        dst: Option<u32>,
        data: &[u8],
    ) -> Result<(), RpmsgError> {
        let (src, dst) = self.resolve(ept, dst, data.len())?;
        let buf = self.get_tx_buf()?;
        self.finish_send(buf, src, dst, Some(data), data.len())?;
        self.count_tx(ept);
        Ok(())
    }

    /// Sends `data` to the endpoint's destination, waiting up to `timeout`
    /// for a TX buffer ([`RpmsgError::Timeout`] if none frees up).
    pub fn send(
        &mut self,
        ept: EndpointId,
        data: &[u8],
        wait: &mut dyn Wait,
        timeout: Duration,
    ) -> Result<(), RpmsgError> {
        self.send_blocking(ept, None, data, wait, timeout)
    }

    /// Sends `data` to address `dst`, waiting up to `timeout` for a buffer.
    pub fn sendto(
        &mut self,
        ept: EndpointId,
        dst: u32,
        data: &[u8],
        wait: &mut dyn Wait,
        timeout: Duration,
    ) -> Result<(), RpmsgError> {
        self.send_blocking(ept, Some(dst), data, wait, timeout)
    }

    fn send_blocking(
        &mut self,
        ept: EndpointId,
        dst: Option<u32>,
        data: &[u8],
        wait: &mut dyn Wait,
        timeout: Duration,
    ) -> Result<(), RpmsgError> {
        let end = deadline(wait, timeout);
        loop {
            match self.trysend_inner(ept, dst, data) {
                Err(RpmsgError::NoBuffer) => {}
                r => return r,
            }
            self.wait_for_buffer(wait, end)?;
        }
    }

    fn wait_for_buffer(&mut self, wait: &mut dyn Wait, end: u64) -> Result<(), RpmsgError> {
        if wait.now_ns() >= end {
            return Err(RpmsgError::Timeout);
        }
        wait.wait_until(end);
        self.transport.poll()?;
        Ok(())
    }

    /// Lends a TX buffer for zero-copy sending, without blocking
    /// ([`RpmsgError::NoBuffer`] if none is free).
    pub fn try_get_tx(&mut self, ept: EndpointId) -> Result<TxPayload, RpmsgError> {
        self.check_up()?;
        let e = self.ept(ept).ok_or(RpmsgError::NoEndpoint)?;
        let ept_addr = e.addr;
        let buf = self.get_tx_buf()?;
        let cap = buf.size.saturating_sub(HEADER_LEN).min(u16::MAX as usize);
        let payload = match self
            .transport
            .tx_region()
            .subregion(buf.offset + HEADER_LEN, cap)
        {
            Ok(r) => r,
            Err(err) => {
                let _ = self.transport.release_tx(buf);
                return Err(err.into());
            }
        };
        let (index, gen) = self.leases.insert(TxLease { buf, ept, ept_addr });
        Ok(TxPayload {
            index,
            gen,
            ept,
            payload,
        })
    }

    /// Lends a TX buffer, waiting up to `timeout` for one.
    pub fn get_tx(
        &mut self,
        ept: EndpointId,
        wait: &mut dyn Wait,
        timeout: Duration,
    ) -> Result<TxPayload, RpmsgError> {
        // The clock only when there is no buffer at once (the usual case
        // on a link that keeps up does not read it at all).
        let mut end = None;
        loop {
            match self.try_get_tx(ept) {
                Err(RpmsgError::NoBuffer) => {}
                r => return r,
            }
            let end = *end.get_or_insert_with(|| deadline(wait, timeout));
            self.wait_for_buffer(wait, end)?;
        }
    }

    /// Sends the first `len` payload bytes of a lent buffer to its
    /// endpoint's destination, without copying. Never blocks. The buffer is
    /// consumed whatever the result (on error it goes back to the transport).
    pub fn send_nocopy(&mut self, tx: TxPayload, len: usize) -> Result<(), RpmsgError> {
        self.send_nocopy_inner(tx, None, len)
    }

    /// [`Link::send_nocopy`] to address `dst`.
    pub fn sendto_nocopy(&mut self, tx: TxPayload, dst: u32, len: usize) -> Result<(), RpmsgError> {
        self.send_nocopy_inner(tx, Some(dst), len)
    }

    fn send_nocopy_inner(
        &mut self,
        tx: TxPayload,
        dst: Option<u32>,
        len: usize,
    ) -> Result<(), RpmsgError> {
        // A lease missing means the session ended: the buffer is void.
        let lease = self
            .leases
            .remove(tx.index, tx.gen)
            .ok_or(RpmsgError::LinkDown)?;
        let resolved = match self.ept(tx.ept) {
            Some(_) => self.resolve(tx.ept, dst, len),
            // The endpoint was destroyed meanwhile: allowed with an explicit
            // destination, from its old address.
            None => match dst {
                Some(ADDR_ANY) => Err(RpmsgError::NotBound),
                Some(d) => self.check_up().map(|_| (lease.ept_addr, d)),
                None => Err(RpmsgError::NoEndpoint),
            },
        };
        let (src, dst) = match resolved {
            Ok(v) => v,
            Err(e) => {
                let _ = self.transport.release_tx(lease.buf);
                return Err(e);
            }
        };
        self.finish_send(lease.buf, src, dst, None, len)?;
        self.count_tx(tx.ept);
        Ok(())
    }

    /// Gives a lent TX buffer back unused.
    pub fn release_tx(&mut self, tx: TxPayload) -> Result<(), RpmsgError> {
        match self.leases.remove(tx.index, tx.gen) {
            Some(lease) => self.transport.release_tx(lease.buf).map_err(Into::into),
            // From an earlier session: void, nothing to give back.
            None => Ok(()),
        }
    }

    /// Gives a held RX buffer back to the peer.
    pub fn release_rx(&mut self, held: HeldRx) -> Result<(), RpmsgError> {
        match self.held.remove(held.index, held.gen) {
            Some(h) => self.transport.release_rx(h.buf).map_err(Into::into),
            // From an earlier session: void, nothing to give back.
            None => Ok(()),
        }
    }

    // ----------------------------------------------------------------- poll

    /// Services the link: transport housekeeping, link up/down, then up to a
    /// bounded number of received messages (each validated, then delivered
    /// to its endpoint's callback or dropped and counted), then queued
    /// name-service messages.
    pub fn poll(&mut self) -> Result<PollSummary, RpmsgError> {
        let mut sum = PollSummary::default();
        let polled = self.transport.poll();
        self.sync_session(&mut sum);
        polled?;
        if self.session.is_none() {
            return Ok(sum);
        }
        self.flush_ns();
        let budget = self
            .transport
            .buffer_stats()
            .rx_total
            .saturating_mul(2)
            .max(16);
        sum.more = true;
        for _ in 0..budget {
            match self.transport.recv() {
                Ok(Some(rx)) => {
                    sum.received += 1;
                    self.handle_rx(rx);
                }
                Ok(None) => {
                    sum.more = false;
                    break;
                }
                Err(TransportError::LinkDown) => {
                    sum.more = false;
                    break;
                }
                Err(e) => {
                    self.stats.transport_errors += 1;
                    // The error may have taken the transport down: let the
                    // link see it now (endpoints unbound, buffers void).
                    self.sync_session(&mut sum);
                    return Err(e.into());
                }
            }
        }
        self.sync_session(&mut sum);
        self.flush_ns();
        Ok(sum)
    }

    fn sync_session(&mut self, sum: &mut PollSummary) {
        let now = self.transport.link_session();
        if now == self.session {
            return;
        }
        if self.session.is_some() {
            self.on_down();
            sum.went_down = true;
        }
        if let Some(s) = now {
            self.on_up(s);
            sum.came_up = true;
        }
    }

    fn on_down(&mut self) {
        log::info!(
            "rpmsg link to {} ({}) is down",
            self.transport.remote_cpu(),
            self.transport.role()
        );
        self.session = None;
        self.held.clear();
        self.leases.clear();
        self.ns_out.clear();
        self.pending.clear();
        for id in self.ids() {
            let Some(e) = self.ept_mut(id) else { continue };
            let was_bound = e.binding != Binding::Unbound;
            e.announced = false;
            if matches!(e.binding, Binding::NameService | Binding::FirstMessage) {
                e.dest = ADDR_ANY;
                e.binding = Binding::Unbound;
            }
            if was_bound {
                self.call_unbind(id);
            }
        }
    }

    fn on_up(&mut self, session: u32) {
        log::info!(
            "rpmsg link to {} ({}) is up, features {}",
            self.transport.remote_cpu(),
            self.transport.role(),
            self.transport.features()
        );
        self.session = Some(session);
        for id in self.ids() {
            self.queue_announce(id);
        }
    }

    fn release_rx_buf(&mut self, rx: RxBuf) {
        if let Err(e) = self.transport.release_rx(rx) {
            self.stats.transport_errors += 1;
            log::warn!("rpmsg: could not give RX buffer #{} back: {e}", rx.index);
        }
    }

    fn handle_rx(&mut self, rx: RxBuf) {
        let avail = rx.len.min(rx.capacity);
        let mut hb = [0u8; HEADER_LEN];
        if avail < HEADER_LEN
            || self
                .transport
                .rx_region()
                .read_bytes(rx.offset, &mut hb)
                .is_err()
        {
            self.stats.dropped_short += 1;
            log::warn!(
                "rpmsg: dropped a {}-byte buffer from {}: shorter than the rpmsg header",
                rx.len,
                self.transport.remote_cpu()
            );
            self.release_rx_buf(rx);
            return;
        }
        let Ok(hdr) = RpmsgHeader::parse(&hb) else {
            // 16 bytes always parse; keep the path total anyway.
            self.stats.dropped_short += 1;
            self.release_rx_buf(rx);
            return;
        };
        let len = match hdr.check_fits(avail) {
            Ok(l) => l,
            Err(e) => {
                self.stats.dropped_bad_length += 1;
                log::warn!("rpmsg: {e}");
                self.release_rx_buf(rx);
                return;
            }
        };
        if hdr.dst == NS_ADDR && self.features().ns() {
            let mut nb = [0u8; NS_MESSAGE_LEN];
            let parsed = if len != NS_MESSAGE_LEN {
                Err(RpmsgWireError::NsLength { len })
            } else {
                match self
                    .transport
                    .rx_region()
                    .read_bytes(rx.offset + HEADER_LEN, &mut nb)
                {
                    Ok(()) => NsMessage::parse(&nb),
                    Err(_) => Err(RpmsgWireError::Truncated {
                        need: NS_MESSAGE_LEN,
                        got: 0,
                    }),
                }
            };
            // The message is copied: give the buffer back first.
            self.release_rx_buf(rx);
            match parsed {
                Ok(m) => self.handle_ns(m),
                Err(e) => {
                    self.stats.dropped_bad_ns += 1;
                    log::warn!("rpmsg: bad name-service message: {e}");
                }
            }
            return;
        }
        let Some(id) = self.endpoint_at(hdr.dst) else {
            self.stats.dropped_unknown_dst += 1;
            log::debug!(
                "rpmsg: dropped a message from {:#x} to {:#x}: no endpoint there",
                hdr.src,
                hdr.dst
            );
            self.release_rx_buf(rx);
            return;
        };
        let payload = match self
            .transport
            .rx_region()
            .subregion(rx.offset + HEADER_LEN, len)
        {
            Ok(p) => p,
            Err(_) => {
                self.stats.dropped_bad_length += 1;
                self.release_rx_buf(rx);
                return;
            }
        };
        let handler = match self.ept_mut(id) {
            Some(e) => {
                if e.dest == ADDR_ANY && hdr.src != ADDR_ANY && hdr.src != NS_ADDR {
                    // As OpenAMP: the first message tells an unbound
                    // endpoint where its peer is. Not a message "from" ANY
                    // or the name-service address: no endpoint may be bound
                    // to those (it would stay unbound while claiming a
                    // binding, or send its data to the peer's name service).
                    e.dest = hdr.src;
                    e.binding = Binding::FirstMessage;
                }
                e.rx_messages += 1;
                e.handler.take()
            }
            None => None,
        };
        let Some(mut handler) = handler else {
            self.release_rx_buf(rx);
            return;
        };
        self.stats.rx_messages += 1;
        self.cur_rx_taken = false;
        let msg = Received {
            buf: rx,
            src: hdr.src,
            dst: hdr.dst,
            flags: hdr.flags,
            payload,
            _cb: PhantomData,
        };
        {
            let mut ctx = LinkCtx {
                link: self,
                ept: id,
            };
            handler.on_message(&mut ctx, msg);
        }
        self.restore_handler(id, handler);
        if !self.cur_rx_taken {
            self.release_rx_buf(rx);
        }
        self.cur_rx_taken = false;
    }

    fn restore_handler(&mut self, id: EndpointId, handler: Box<dyn EndpointHandler<T>>) {
        if let Some(e) = self.ept_mut(id) {
            if e.handler.is_none() {
                e.handler = Some(handler);
            }
        }
        // else: destroyed during its own callback; drop the handler now.
    }

    pub(crate) fn call_bound(&mut self, id: EndpointId, dest: u32) {
        let Some(mut h) = self.ept_mut(id).and_then(|e| e.handler.take()) else {
            return;
        };
        {
            let mut ctx = LinkCtx {
                link: self,
                ept: id,
            };
            h.on_bound(&mut ctx, dest);
        }
        self.restore_handler(id, h);
    }

    pub(crate) fn call_unbind(&mut self, id: EndpointId) {
        let Some(mut h) = self.ept_mut(id).and_then(|e| e.handler.take()) else {
            return;
        };
        {
            let mut ctx = LinkCtx {
                link: self,
                ept: id,
            };
            h.on_unbind(&mut ctx);
        }
        self.restore_handler(id, h);
    }

    // ------------------------------------------------------- name service

    /// Queues the announcement an endpoint owes the peer in this session.
    pub(crate) fn queue_announce(&mut self, id: EndpointId) {
        let f = self.features();
        let Some(e) = self.ept(id) else { return };
        if e.name.is_empty() || !f.ns() {
            return;
        }
        if e.dest == ADDR_ANY {
            self.queue_ns(id, NsKind::Create);
        } else if f.ack() {
            self.queue_ns(id, NsKind::CreateAck);
        }
    }

    pub(crate) fn queue_ns(&mut self, id: EndpointId, kind: NsKind) {
        let Some(e) = self.ept_mut(id) else { return };
        e.announced = true;
        let m = NsMessage::new(e.name, e.addr, kind);
        let src = e.addr;
        self.ns_out.push_back((src, m));
    }

    /// Sends queued name-service messages while TX buffers last.
    pub(crate) fn flush_ns(&mut self) {
        while let Some(&(src, m)) = self.ns_out.front() {
            if self.check_up().is_err() {
                return;
            }
            let buf = match self.transport.get_tx() {
                Ok(Some(b)) => b,
                _ => return,
            };
            let bytes = m.to_bytes();
            match self.finish_send(buf, src, NS_ADDR, Some(&bytes), bytes.len()) {
                Ok(()) => {
                    self.ns_out.pop_front();
                }
                Err(e) => {
                    log::warn!("rpmsg: could not send a name-service message: {e}");
                    return;
                }
            }
        }
    }

    /// Announcements not yet offered to the registry (marks them offered).
    pub(crate) fn unoffered(&mut self) -> Vec<Announcement> {
        let mut v = Vec::new();
        for p in &mut self.pending {
            if !p.offered {
                p.offered = true;
                v.push(p.ann);
            }
        }
        v
    }

    pub(crate) fn mark_rx_taken(&mut self) {
        self.cur_rx_taken = true;
    }

    pub(crate) fn insert_held(&mut self, entry: HeldEntry) -> (u32, u32) {
        self.held.insert(entry)
    }
}

/// What an endpoint callback may do with its link: send (to anyone), hold
/// the message it got, release buffers, create and destroy endpoints, and
/// read everything ([`Deref`] to [`Link`]). It cannot poll: callbacks never
/// nest.
///
/// A blocking send from a callback only makes progress if its [`Wait`] lets
/// the peer return buffers (another thread, another core); prefer the `try`
/// variants in callbacks.
pub struct LinkCtx<'a, T: RpmsgTransport> {
    link: &'a mut Link<T>,
    ept: EndpointId,
}

impl<T: RpmsgTransport> Deref for LinkCtx<'_, T> {
    type Target = Link<T>;
    fn deref(&self) -> &Link<T> {
        self.link
    }
}

impl<T: RpmsgTransport + 'static> LinkCtx<'_, T> {
    /// The endpoint whose callback is running.
    pub fn this_endpoint(&self) -> EndpointId {
        self.ept
    }

    /// Keeps the message's RX buffer after the callback returns. The
    /// endpoint is recorded as its holder (dumps show it) until
    /// `release_rx`.
    pub fn hold(&mut self, msg: Received<'_>) -> HeldRx {
        let ept_addr = self.link.ept(self.ept).map(|e| e.addr).unwrap_or(msg.dst);
        let (index, gen) = self.link.insert_held(HeldEntry {
            buf: msg.buf,
            ept: self.ept,
            ept_addr,
        });
        self.link.mark_rx_taken();
        HeldRx {
            index,
            gen,
            src: msg.src,
            dst: msg.dst,
            payload: msg.payload,
        }
    }

    /// Gives a held RX buffer back.
    pub fn release_rx(&mut self, held: HeldRx) -> Result<(), RpmsgError> {
        self.link.release_rx(held)
    }

    /// Answers `msg`'s sender from this endpoint, without blocking.
    pub fn reply(&mut self, msg: &Received<'_>, data: &[u8]) -> Result<(), RpmsgError> {
        let ept = self.ept;
        self.link.trysendto(ept, msg.src, data)
    }

    /// See [`Link::trysend`].
    pub fn trysend(&mut self, ept: EndpointId, data: &[u8]) -> Result<(), RpmsgError> {
        self.link.trysend(ept, data)
    }

    /// See [`Link::trysendto`].
    pub fn trysendto(&mut self, ept: EndpointId, dst: u32, data: &[u8]) -> Result<(), RpmsgError> {
        self.link.trysendto(ept, dst, data)
    }

    /// See [`Link::send`].
    pub fn send(
        &mut self,
        ept: EndpointId,
        data: &[u8],
        wait: &mut dyn Wait,
        timeout: Duration,
    ) -> Result<(), RpmsgError> {
        self.link.send(ept, data, wait, timeout)
    }

    /// See [`Link::sendto`].
    pub fn sendto(
        &mut self,
        ept: EndpointId,
        dst: u32,
        data: &[u8],
        wait: &mut dyn Wait,
        timeout: Duration,
    ) -> Result<(), RpmsgError> {
        self.link.sendto(ept, dst, data, wait, timeout)
    }

    /// See [`Link::try_get_tx`].
    pub fn try_get_tx(&mut self, ept: EndpointId) -> Result<TxPayload, RpmsgError> {
        self.link.try_get_tx(ept)
    }

    /// See [`Link::get_tx`].
    pub fn get_tx(
        &mut self,
        ept: EndpointId,
        wait: &mut dyn Wait,
        timeout: Duration,
    ) -> Result<TxPayload, RpmsgError> {
        self.link.get_tx(ept, wait, timeout)
    }

    /// See [`Link::send_nocopy`].
    pub fn send_nocopy(&mut self, tx: TxPayload, len: usize) -> Result<(), RpmsgError> {
        self.link.send_nocopy(tx, len)
    }

    /// See [`Link::sendto_nocopy`].
    pub fn sendto_nocopy(&mut self, tx: TxPayload, dst: u32, len: usize) -> Result<(), RpmsgError> {
        self.link.sendto_nocopy(tx, dst, len)
    }

    /// See [`Link::release_tx`].
    pub fn release_tx(&mut self, tx: TxPayload) -> Result<(), RpmsgError> {
        self.link.release_tx(tx)
    }

    /// See [`Link::create_endpoint`].
    pub fn create_endpoint(
        &mut self,
        cfg: EndpointConfig,
        handler: impl EndpointHandler<T>,
    ) -> Result<EndpointId, RpmsgError> {
        self.link.create_endpoint(cfg, handler)
    }

    /// See [`Link::destroy_endpoint`] (destroying the running endpoint
    /// itself is allowed).
    pub fn destroy_endpoint(&mut self, id: EndpointId) -> Result<(), RpmsgError> {
        self.link.destroy_endpoint(id)
    }

    /// See [`Link::handler_mut`] (not the running endpoint's own handler).
    pub fn handler_mut<H: 'static>(&mut self, id: EndpointId) -> Option<&mut H> {
        self.link.handler_mut(id)
    }
}
