//! The name service (address 0x35): what the bus does with the peer's
//! CREATE, DESTROY and CREATE_ACK messages.
//!
//! Sending side (in [`Link`]): a named endpoint with destination ANY
//! announces itself with CREATE when NS is negotiated; a named endpoint that
//! gets bound to an announced name answers CREATE_ACK with its own address
//! when ACK is negotiated (NuttX), so the announcer learns its destination
//! without waiting for a first message; destroying an announced endpoint
//! sends DESTROY. Messages that cannot go out for lack of a TX buffer are
//! queued and sent on the next poll.
//!
//! Receiving side (here):
//! - CREATE(name, addr): a local endpoint with that name that is unbound (or
//!   already bound to `addr`) binds to `addr` (and answers CREATE_ACK if
//!   ACK). Otherwise the announcement is kept as *pending*: the service
//!   registry offers it to services (`ns_match`/`ns_bind`), replays it when
//!   a matching service registers later, and a local endpoint created later
//!   with the same name binds to it.
//! - CREATE_ACK(name, addr): the unbound local endpoint with that name binds
//!   to `addr`.
//! - DESTROY(name, addr) — any flags with bit 0 set, as Linux tests
//!   `flags & 1`: endpoints with that name bound to `addr` unbind (their
//!   `on_unbind` runs), and a pending announcement of it is forgotten.
//!
//! Linux-compatible mode is simply a transport negotiating NS without ACK:
//! binding then works from CREATE alone, and an announcer learns its
//! destination from the first message it receives.
#![forbid(unsafe_code)]

use crate::rpmsg::endpoint::{Binding, EndpointId};
use crate::rpmsg::link::{Announcement, Link, Pending, MAX_PENDING_ANNOUNCEMENTS};
use crate::rpmsg::transport::RpmsgTransport;
use crate::wire::rpmsg::{NsKind, NsMessage, ADDR_ANY, NS_ADDR};

impl<T: RpmsgTransport + 'static> Link<T> {
    /// Endpoint named `name` bound to `addr`, else one named `name` unbound.
    fn ns_lookup(&self, m: &NsMessage) -> Option<(EndpointId, bool)> {
        let mut unbound = None;
        for e in self.endpoints() {
            if e.name != m.name.as_str() {
                continue;
            }
            if e.dest == m.addr {
                return Some((e.id, false));
            }
            if e.dest == ADDR_ANY && unbound.is_none() {
                unbound = Some((e.id, true));
            }
        }
        unbound
    }

    fn forget_pending(&mut self, m: &NsMessage) {
        self.pending
            .retain(|p| !(p.ann.name == m.name && p.ann.addr == m.addr));
    }

    pub(crate) fn handle_ns(&mut self, m: NsMessage) {
        if m.name.is_empty() {
            // Would match (and bind or unbind) our unnamed endpoints, which
            // are never announced.
            self.stats.dropped_bad_ns += 1;
            log::warn!("rpmsg: name-service message with an empty name (dropped)");
            return;
        }
        if m.addr == ADDR_ANY || m.addr == NS_ADDR {
            self.stats.dropped_bad_ns += 1;
            log::warn!(
                "rpmsg: name-service message for {:?} names address {:#x}, which no endpoint \
                 can have (dropped)",
                m.name,
                m.addr
            );
            return;
        }
        self.stats.ns_received += 1;
        match m.kind() {
            NsKind::Destroy => {
                self.forget_pending(&m);
                let ids: alloc::vec::Vec<EndpointId> = self
                    .endpoints()
                    .filter(|e| e.name == m.name.as_str() && e.dest == m.addr)
                    .map(|e| e.id)
                    .collect();
                for id in ids {
                    if let Some(e) = self.ept_mut(id) {
                        e.dest = ADDR_ANY;
                        e.binding = Binding::Unbound;
                    }
                    self.call_unbind(id);
                }
            }
            NsKind::CreateAck => {
                self.forget_pending(&m);
                match self.ns_lookup(&m) {
                    Some((id, true)) => self.bind(id, m.addr),
                    Some((_, false)) => {}
                    None => {
                        self.stats.unmatched_acks += 1;
                        log::debug!(
                            "rpmsg: CREATE_ACK for {:?} at {:#x} matches no endpoint",
                            m.name,
                            m.addr
                        );
                    }
                }
            }
            NsKind::Create => match self.ns_lookup(&m) {
                Some((id, newly)) => {
                    self.forget_pending(&m);
                    if self.features().ack() {
                        self.queue_ns(id, NsKind::CreateAck);
                        self.flush_ns();
                    }
                    if newly {
                        self.bind(id, m.addr);
                    }
                }
                None => {
                    if self
                        .pending
                        .iter()
                        .any(|p| p.ann.name == m.name && p.ann.addr == m.addr)
                    {
                        return;
                    }
                    if self.pending.len() >= MAX_PENDING_ANNOUNCEMENTS {
                        self.stats.dropped_announcements += 1;
                        log::warn!(
                            "rpmsg: too many unbound announcements from {}; dropped {:?}",
                            self.remote_cpu(),
                            m.name
                        );
                        return;
                    }
                    log::debug!(
                        "rpmsg: {} announced {:?} at {:#x}; no endpoint yet",
                        self.remote_cpu(),
                        m.name,
                        m.addr
                    );
                    self.pending.push(Pending {
                        ann: Announcement {
                            name: m.name,
                            addr: m.addr,
                        },
                        offered: false,
                    });
                }
            },
        }
    }

    fn bind(&mut self, id: EndpointId, dest: u32) {
        if let Some(e) = self.ept_mut(id) {
            e.dest = dest;
            e.binding = Binding::NameService;
        }
        self.call_bound(id, dest);
    }
}
