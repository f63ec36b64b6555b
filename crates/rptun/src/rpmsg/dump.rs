//! What a link (and the bus) looks like right now: the data behind
//! `rpmsg dump`, as plain structs with a `Display`.
#![forbid(unsafe_code)]

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::rpmsg::cpu::{LocalCpu, RemoteCpu};
use crate::rpmsg::link::{Announcement, EndpointInfo, Link, LinkStats};
use crate::rpmsg::transport::{RpmsgFeatures, RpmsgTransport};
use crate::wire::rpmsg::ADDR_ANY;

/// One link.
#[derive(Debug, Clone)]
pub struct LinkDump {
    /// This side's name.
    pub local_cpu: LocalCpu,
    /// The other side's name.
    pub remote_cpu: RemoteCpu,
    /// The transport's role string.
    pub role: String,
    /// Up or down (as of the last poll).
    pub up: bool,
    /// Negotiated features.
    pub features: RpmsgFeatures,
    /// TX buffer size (header included).
    pub tx_buffer_size: usize,
    /// RX buffer size (header included).
    pub rx_buffer_size: usize,
    /// TX buffers in the session.
    pub tx_total: usize,
    /// TX buffers free now.
    pub tx_free: usize,
    /// TX buffers lent to applications (zero-copy, not yet sent).
    pub tx_lent: usize,
    /// TX buffers sent and not yet returned by the peer.
    pub tx_pending: usize,
    /// RX buffers in the session.
    pub rx_total: usize,
    /// RX buffers held by endpoints beyond their callbacks.
    pub rx_held: usize,
    /// Name-service messages waiting for a TX buffer.
    pub ns_queued: usize,
    /// Endpoints.
    pub endpoints: Vec<EndpointInfo>,
    /// Who holds which buffer: (RX?, buffer index, endpoint address).
    pub held_by: Vec<HeldBy>,
    /// The peer's announcements nobody took yet.
    pub pending: Vec<Announcement>,
    /// Counters.
    pub stats: LinkStats,
    /// Transport-specific lines.
    pub transport: String,
}

/// One buffer held outside the transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldBy {
    /// An RX buffer held by an endpoint (else a TX buffer lent to one).
    pub rx: bool,
    /// The transport's buffer index.
    pub index: u16,
    /// The holder's local address.
    pub addr: u32,
}

fn addr(f: &mut fmt::Formatter<'_>, a: u32) -> fmt::Result {
    if a == ADDR_ANY {
        write!(f, "{:>6}", "any")
    } else {
        write!(f, "{a:>6}")
    }
}

impl fmt::Display for LinkDump {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "rpmsg link: local {} remote {} role {} {} features {}",
            self.local_cpu,
            self.remote_cpu,
            self.role,
            if self.up { "up" } else { "down" },
            self.features
        )?;
        writeln!(
            f,
            "  tx buffers: {} x {} B (payload {}), free {}, lent {}, pending {}",
            self.tx_total,
            self.tx_buffer_size,
            self.tx_buffer_size.saturating_sub(16),
            self.tx_free,
            self.tx_lent,
            self.tx_pending
        )?;
        writeln!(
            f,
            "  rx buffers: {} x {} B, held {}",
            self.rx_total, self.rx_buffer_size, self.rx_held
        )?;
        writeln!(f, "  endpoints: {}", self.endpoints.len())?;
        for e in &self.endpoints {
            write!(f, "    addr")?;
            addr(f, e.addr)?;
            write!(f, " dest")?;
            addr(f, e.dest)?;
            writeln!(
                f,
                " {:<32} {}{} rx {} tx {} held {} lent {}",
                alloc::format!("{:?}", e.name.as_str()),
                e.binding,
                if e.announced { ", announced" } else { "" },
                e.rx_messages,
                e.tx_messages,
                e.rx_held,
                e.tx_lent
            )?;
        }
        for h in &self.held_by {
            writeln!(
                f,
                "    {} buffer #{} held by {}",
                if h.rx { "rx" } else { "tx" },
                h.index,
                h.addr
            )?;
        }
        for p in &self.pending {
            writeln!(
                f,
                "  pending announcement {:?} at {}",
                p.name.as_str(),
                p.addr
            )?;
        }
        if self.ns_queued > 0 {
            writeln!(f, "  name-service messages queued: {}", self.ns_queued)?;
        }
        let s = &self.stats;
        writeln!(
            f,
            "  messages: rx {} tx {} ns {}; dropped: short {}, bad length {}, unknown dst {}, \
             bad ns {}, announcements {}; unmatched acks {}; transport errors {}",
            s.rx_messages,
            s.tx_messages,
            s.ns_received,
            s.dropped_short,
            s.dropped_bad_length,
            s.dropped_unknown_dst,
            s.dropped_bad_ns,
            s.dropped_announcements,
            s.unmatched_acks,
            s.transport_errors
        )?;
        for line in self.transport.lines() {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

impl<T: RpmsgTransport + 'static> Link<T> {
    /// A snapshot of the link for `rpmsg dump`.
    pub fn dump(&self) -> LinkDump {
        let b = self.transport.buffer_stats();
        let tx_lent = self.leases.len();
        let rx_held = self.held.len();
        let mut transport = String::new();
        let _ = self.transport.describe(&mut transport);
        let mut held_by: Vec<HeldBy> = self
            .held
            .values()
            .map(|h| HeldBy {
                rx: true,
                index: h.buf.index,
                addr: h.ept_addr,
            })
            .collect();
        held_by.extend(self.leases.values().map(|l| HeldBy {
            rx: false,
            index: l.buf.index,
            addr: l.ept_addr,
        }));
        LinkDump {
            local_cpu: self.local_cpu(),
            remote_cpu: self.remote_cpu(),
            role: self.transport.role().into(),
            up: self.is_up(),
            features: self.features(),
            tx_buffer_size: self.transport.tx_buffer_size(),
            rx_buffer_size: self.transport.rx_buffer_size(),
            tx_total: b.tx_total,
            tx_free: b.tx_free,
            tx_lent,
            tx_pending: b.tx_total.saturating_sub(b.tx_free + tx_lent),
            rx_total: b.rx_total,
            rx_held,
            ns_queued: self.ns_out.len(),
            endpoints: self.endpoints().collect(),
            held_by,
            pending: self.pending_announcements().collect(),
            stats: self.stats(),
            transport,
        }
    }
}

/// One registered service.
#[derive(Debug, Clone)]
pub struct ServiceDump {
    /// The service's name (for people).
    pub name: String,
    /// The remote cpu it is restricted to, if any.
    pub cpu: Option<RemoteCpu>,
    /// Links it is attached to (device created) now.
    pub links: usize,
    /// Configured for a cpu that no link has: it will never run.
    pub unmatched: bool,
}

/// The whole bus.
#[derive(Debug, Clone)]
pub struct BusDump {
    /// Every link.
    pub links: Vec<LinkDump>,
    /// Every service.
    pub services: Vec<ServiceDump>,
}

impl fmt::Display for BusDump {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for l in &self.links {
            write!(f, "{l}")?;
        }
        writeln!(f, "rpmsg services: {}", self.services.len())?;
        for s in &self.services {
            write!(f, "  {:<24} cpu ", s.name)?;
            match &s.cpu {
                Some(c) => write!(f, "{c}")?,
                None => write!(f, "any")?,
            }
            write!(f, ", on {} link(s)", s.links)?;
            if s.unmatched {
                write!(
                    f,
                    "  UNMATCHED: no link to this cpu (is it the remote cpu's name?)"
                )?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpmsg::endpoint::Binding;
    use crate::rpmsg::loopback::{Loopback, LoopbackConfig};
    use crate::rpmsg::{on_message, EndpointConfig};

    #[test]
    fn dump_lists_names_endpoints_buffers_and_holders() {
        let (a, b) = Loopback::pair(LoopbackConfig::default()).unwrap();
        let (mut la, mut lb) = (Link::new(a), Link::new(b));
        la.poll().unwrap();
        lb.poll().unwrap();
        let e = la
            .create_endpoint(EndpointConfig::new("svc"), on_message(|_, _| {}))
            .unwrap();
        let tx = la.try_get_tx(e).unwrap();
        let d = la.dump();
        assert_eq!(d.local_cpu.as_str(), "server");
        assert_eq!(d.remote_cpu.as_str(), "proxy");
        assert_eq!(d.role, "loopback");
        assert_eq!(d.endpoints.len(), 1);
        assert_eq!(d.endpoints[0].binding, Binding::Unbound);
        assert_eq!(d.tx_lent, 1);
        assert_eq!(d.tx_pending, 1, "the CREATE announcement is with the peer");
        assert_eq!(
            d.held_by,
            vec![HeldBy {
                rx: false,
                index: d.held_by[0].index,
                addr: 1024
            }]
        );
        let text = d.to_string();
        assert!(text.contains("local server remote proxy role loopback up features NS|ACK"));
        assert!(text.contains("\"svc\""));
        assert!(text.contains("tx buffer #"));
        la.release_tx(tx).unwrap();
    }
}
