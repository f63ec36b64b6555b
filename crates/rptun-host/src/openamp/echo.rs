//! The demos' echo service on `rpmsg-openamp-demo-channel`.
//!
//! - Device side ([`serve_echo`]): what OpenAMP's `rpmsg-echo` does. It
//!   announces the channel (NS CREATE), returns every payload verbatim to its
//!   sender, stops on a payload that starts with the u32 0xEF56A55A (not
//!   echoed) and when the driver destroys the endpoint it was talking to
//!   (NS DESTROY).
//! - Driver side ([`EchoClient`]): what `rpmsg-echo-ping` does. It binds the
//!   channel the device announced (creating its own endpoint, which announces
//!   itself with NS CREATE), sends payloads, checks every byte of every echo,
//!   and finally destroys its endpoint (NS DESTROY).
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rptun::rpmsg::services::ping::PingReport;
use rptun::rpmsg::{
    EndpointConfig, EndpointHandler, EndpointId, Link, LinkCtx, Received, RpmsgError,
    RpmsgTransport,
};

use super::{OpenampError, OpenampLink, Woken, RESCAN_INTERVAL, SERVICE_NAME, SHUTDOWN_MAGIC};

/// Most echoes waiting for a TX buffer; beyond that, requests are dropped
/// (counted) rather than growing memory without bound.
pub const MAX_BACKLOG: usize = 1024;

/// Why the echo service stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EchoEnd {
    /// The driver destroyed its endpoint (NS DESTROY) at this address.
    PeerDestroyed {
        /// The driver's endpoint address (ANY if it never bound).
        addr: u32,
    },
    /// A payload starting with [`SHUTDOWN_MAGIC`] arrived.
    Shutdown,
    /// The driver reset the device or broke the link.
    LinkDown,
    /// The driver closed the kick socket without destroying its endpoint.
    PeerGone,
}

impl std::fmt::Display for EchoEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EchoEnd::PeerDestroyed { addr } => {
                write!(f, "driver destroyed its endpoint {addr:#x} (NS DESTROY)")
            }
            EchoEnd::Shutdown => f.write_str("shutdown message received"),
            EchoEnd::LinkDown => f.write_str("the driver reset the link"),
            EchoEnd::PeerGone => {
                f.write_str("the driver closed the kick socket without destroying its endpoint")
            }
        }
    }
}

/// The device side's endpoint state (its handler).
#[derive(Debug, Default)]
pub struct EchoHandler {
    /// Messages echoed.
    pub echoed: u64,
    /// Payload bytes echoed.
    pub bytes: u64,
    /// Requests dropped because the backlog was full.
    pub dropped: u64,
    /// The driver endpoint we talk to, once known.
    pub peer: Option<u32>,
    /// Why the service stopped, once it did.
    pub end: Option<EchoEnd>,
    backlog: VecDeque<(u32, Vec<u8>)>,
}

/// True if `payload` asks the echo to shut down.
pub fn is_shutdown(payload: &[u8]) -> bool {
    payload.get(..4) == Some(&SHUTDOWN_MAGIC.to_le_bytes()[..])
}

impl<T: RpmsgTransport + 'static> EndpointHandler<T> for EchoHandler {
    fn on_message(&mut self, ctx: &mut LinkCtx<'_, T>, msg: Received<'_>) {
        if self.end.is_some() {
            return;
        }
        let data = msg.to_vec();
        if self.peer.is_none() {
            self.peer = Some(msg.src());
        }
        if is_shutdown(&data) {
            self.end = Some(EchoEnd::Shutdown);
            return;
        }
        if self.backlog.is_empty() {
            match ctx.reply(&msg, &data) {
                Ok(()) => {
                    self.echoed += 1;
                    self.bytes += data.len() as u64;
                    return;
                }
                Err(RpmsgError::NoBuffer) => {}
                Err(e) => {
                    log::warn!("openamp echo: cannot echo {} bytes: {e}", data.len());
                    return;
                }
            }
        }
        if self.backlog.len() >= MAX_BACKLOG {
            self.dropped += 1;
            return;
        }
        self.backlog.push_back((msg.src(), data));
    }

    fn on_bound(&mut self, _ctx: &mut LinkCtx<'_, T>, dest: u32) {
        self.peer = Some(dest);
    }

    fn on_unbind(&mut self, ctx: &mut LinkCtx<'_, T>) {
        if self.end.is_none() {
            self.end = Some(if ctx.is_up() {
                EchoEnd::PeerDestroyed {
                    addr: self.peer.unwrap_or(rptun::rpmsg::ADDR_ANY),
                }
            } else {
                EchoEnd::LinkDown
            });
        }
    }
}

/// Sends what waits in the backlog while TX buffers last.
fn flush_backlog<T: RpmsgTransport + 'static>(link: &mut Link<T>, ept: EndpointId) {
    // Bounded by the backlog's length.
    for _ in 0..MAX_BACKLOG {
        let Some(h) = link.handler_mut::<EchoHandler>(ept) else {
            return;
        };
        let Some((dst, data)) = h.backlog.pop_front() else {
            return;
        };
        match link.trysendto(ept, dst, &data) {
            Ok(()) => {
                if let Some(h) = link.handler_mut::<EchoHandler>(ept) {
                    h.echoed += 1;
                    h.bytes += data.len() as u64;
                }
            }
            Err(e) => {
                let keep = e == RpmsgError::NoBuffer;
                if !keep {
                    log::warn!("openamp echo: cannot echo {} bytes: {e}", data.len());
                }
                if let Some(h) = link.handler_mut::<EchoHandler>(ept) {
                    if keep {
                        h.backlog.push_front((dst, data));
                    }
                }
                return;
            }
        }
    }
}

/// What [`serve_echo`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EchoSummary {
    /// Our endpoint's address.
    pub local: u32,
    /// Messages echoed.
    pub echoed: u64,
    /// Payload bytes echoed.
    pub bytes: u64,
    /// Requests dropped (backlog full).
    pub dropped: u64,
    /// Why it stopped.
    pub end: EchoEnd,
}

/// Serves the echo channel on a device-side link until the driver destroys
/// its endpoint, sends the shutdown message, resets the link or goes away.
///
/// `timeout` bounds the wait for the driver to set DRIVER_OK; once the link
/// is up the service runs until one of the ends above. `on_event` is told
/// when the link comes up and when the channel gets bound (for progress
/// lines).
pub fn serve_echo<T: RpmsgTransport + 'static>(
    ol: &mut OpenampLink<T>,
    timeout: Option<Duration>,
    mut on_event: impl FnMut(&str),
) -> Result<EchoSummary, OpenampError> {
    let ept = ol
        .link_mut()
        .create_endpoint(EndpointConfig::new(SERVICE_NAME), EchoHandler::default())?;
    let local = ol.link().endpoint(ept).map_or(0, |e| e.addr);
    let start = Instant::now();
    let mut was_up = false;
    let mut told_peer = None;
    let end = loop {
        let polled = ol.poll();
        if let Err(e) = polled {
            // A peer that breaks the link takes it down; report that below.
            log::warn!("openamp echo: {e}");
        }
        if ol.link().is_up() && !was_up {
            was_up = true;
            on_event(&format!(
                "link up, features {}; serving {SERVICE_NAME} at {local:#x}",
                ol.link().features()
            ));
        }
        flush_backlog(ol.link_mut(), ept);
        let Some(h) = ol.link().handler::<EchoHandler>(ept) else {
            break EchoEnd::LinkDown;
        };
        if let (Some(p), None) = (h.peer, told_peer) {
            told_peer = Some(p);
            on_event(&format!("bound to the driver's endpoint {p:#x}"));
        }
        if let Some(end) = h.end {
            break end;
        }
        if was_up && !ol.link().is_up() {
            break EchoEnd::LinkDown;
        }
        if !was_up {
            if let Some(t) = timeout {
                if start.elapsed() >= t {
                    return Err(OpenampError::Timeout {
                        what: "waiting for the driver to set DRIVER_OK",
                        after: t,
                    });
                }
            }
        }
        if ol.wait(RESCAN_INTERVAL)? == Woken::PeerClosed {
            let _ = ol.poll();
            flush_backlog(ol.link_mut(), ept);
            match ol.link().handler::<EchoHandler>(ept).and_then(|h| h.end) {
                Some(end) => break end,
                None if was_up => break EchoEnd::PeerGone,
                None => {
                    return Err(OpenampError::PeerGone {
                        what: "waiting for the driver to set DRIVER_OK",
                    })
                }
            }
        }
    };
    let (echoed, bytes, dropped) = ol
        .link()
        .handler::<EchoHandler>(ept)
        .map_or((0, 0, 0), |h| (h.echoed, h.bytes, h.dropped));
    if end == EchoEnd::Shutdown {
        // As rpmsg-echo: tell the driver the channel is gone.
        let _ = ol.link_mut().destroy_endpoint(ept);
    }
    Ok(EchoSummary {
        local,
        echoed,
        bytes,
        dropped,
        end,
    })
}

/// The driver side's endpoint state: echoes received, in order.
#[derive(Debug, Default)]
pub struct ReplySink {
    /// `(source address, payload)` of each message not yet taken.
    pub replies: VecDeque<(u32, Vec<u8>)>,
    /// The device destroyed the channel.
    pub unbound: bool,
}

impl<T: RpmsgTransport + 'static> EndpointHandler<T> for ReplySink {
    fn on_message(&mut self, _ctx: &mut LinkCtx<'_, T>, msg: Received<'_>) {
        // At most one reply per request is outstanding; a peer that sends
        // more is caught by the byte check, not by memory growth.
        if self.replies.len() < 64 {
            self.replies.push_back((msg.src(), msg.to_vec()));
        }
    }

    fn on_unbind(&mut self, _ctx: &mut LinkCtx<'_, T>) {
        self.unbound = true;
    }
}

/// The payload of echo request `seq` of `len` bytes: a pattern that differs
/// from message to message and from byte to byte, and never starts with
/// the shutdown magic.
pub fn echo_payload(seq: u64, len: usize) -> Vec<u8> {
    let mut v: Vec<u8> = (0..len)
        .map(|j| (seq.wrapping_mul(31).wrapping_add(j as u64 * 7) ^ (j as u64 >> 8)) as u8)
        .collect();
    if is_shutdown(&v) {
        v[0] ^= 0xff;
    }
    v
}

/// Round-trip statistics of an echo run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EchoStats {
    /// Echoes checked.
    pub count: u64,
    /// Payload bytes sent (and received back).
    pub bytes: u64,
    /// Sum of round trips, ns.
    pub total_ns: u64,
    /// Shortest round trip, ns.
    pub min_ns: u64,
    /// Longest round trip, ns.
    pub max_ns: u64,
}

impl EchoStats {
    /// Records one round trip of `len` payload bytes.
    pub fn record(&mut self, len: usize, rtt: Duration) {
        let ns = u64::try_from(rtt.as_nanos()).unwrap_or(u64::MAX);
        self.min_ns = if self.count == 0 {
            ns
        } else {
            self.min_ns.min(ns)
        };
        self.max_ns = self.max_ns.max(ns);
        self.count += 1;
        self.bytes += len as u64;
        self.total_ns = self.total_ns.saturating_add(ns);
    }

    /// The NuttX `rpmsg ping` report of the run; `send_len` is the mean
    /// payload length (so `rate` is the run's throughput).
    pub fn report(&self, buffer_len: usize) -> PingReport {
        let n = self.count.max(1);
        PingReport {
            times: u32::try_from(self.count).unwrap_or(u32::MAX),
            buffer_len,
            send_len: (self.bytes / n) as usize,
            avg_ns: self.total_ns / n,
            min_ns: self.min_ns,
            max_ns: self.max_ns,
        }
    }
}

/// The driver side of the echo channel.
#[derive(Debug, Clone, Copy)]
pub struct EchoClient {
    ept: EndpointId,
    local: u32,
    peer: u32,
    seq: u64,
}

impl EchoClient {
    /// Waits up to `timeout` for the device to announce the channel, then
    /// binds it: our endpoint (address 0x400 on a fresh link) is created
    /// with the announced destination and announces itself (NS CREATE).
    pub fn bind<T: RpmsgTransport + 'static>(
        ol: &mut OpenampLink<T>,
        timeout: Duration,
    ) -> Result<EchoClient, OpenampError> {
        let peer = ol.run_until(
            timeout,
            "waiting for the device to announce rpmsg-openamp-demo-channel",
            |link| {
                link.pending_announcements()
                    .find(|a| a.name == SERVICE_NAME)
                    .map(|a| a.addr)
            },
        )?;
        let ept = ol
            .link_mut()
            .create_endpoint(EndpointConfig::new(SERVICE_NAME), ReplySink::default())?;
        let info = ol.link().endpoint(ept).ok_or(RpmsgError::NoEndpoint)?;
        if info.dest != peer {
            log::warn!(
                "openamp: our endpoint bound to {:#x}, not the announced {peer:#x}",
                info.dest
            );
        }
        Ok(EchoClient {
            ept,
            local: info.addr,
            peer: info.dest,
            seq: 0,
        })
    }

    /// Our endpoint.
    pub fn endpoint(&self) -> EndpointId {
        self.ept
    }

    /// Our endpoint's address.
    pub fn local(&self) -> u32 {
        self.local
    }

    /// The device's endpoint address.
    pub fn peer(&self) -> u32 {
        self.peer
    }

    /// Sends `payload` and waits up to `timeout` for its echo; checks that
    /// it comes from the device's endpoint and equals `payload` byte for
    /// byte. Returns the round trip.
    pub fn echo<T: RpmsgTransport + 'static>(
        &mut self,
        ol: &mut OpenampLink<T>,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<Duration, OpenampError> {
        let ept = self.ept;
        let t0 = Instant::now();
        ol.run_until(timeout, "waiting for a TX buffer", |link| {
            match link.trysend(ept, payload) {
                Err(RpmsgError::NoBuffer) => None,
                r => Some(r),
            }
        })??;
        let (src, got) = ol.run_until(timeout, "waiting for an echo", |link| {
            let h = link.handler_mut::<ReplySink>(ept)?;
            h.replies.pop_front()
        })?;
        let rtt = t0.elapsed();
        self.seq += 1;
        if src != self.peer {
            return Err(OpenampError::EchoMismatch {
                len: payload.len(),
                detail: format!("it came from {src:#x}, not the device's {:#x}", self.peer),
            });
        }
        if got != payload {
            let first = got
                .iter()
                .zip(payload)
                .position(|(a, b)| a != b)
                .unwrap_or(got.len().min(payload.len()));
            return Err(OpenampError::EchoMismatch {
                len: payload.len(),
                detail: format!("{} bytes back, first difference at byte {first}", got.len()),
            });
        }
        Ok(rtt)
    }

    /// Sends the shutdown message (not echoed by the device).
    pub fn send_shutdown<T: RpmsgTransport + 'static>(
        &self,
        ol: &mut OpenampLink<T>,
        timeout: Duration,
    ) -> Result<(), OpenampError> {
        let ept = self.ept;
        let msg = SHUTDOWN_MAGIC.to_le_bytes();
        ol.run_until(timeout, "waiting for a TX buffer", |link| {
            match link.trysend(ept, &msg) {
                Err(RpmsgError::NoBuffer) => None,
                r => Some(r),
            }
        })??;
        Ok(())
    }

    /// After [`send_shutdown`](Self::send_shutdown): waits up to `timeout`
    /// for the device to destroy the channel (NS DESTROY, as `rpmsg-echo`
    /// does before it exits). Returns false if the device exited without.
    pub fn wait_channel_destroyed<T: RpmsgTransport + 'static>(
        &self,
        ol: &mut OpenampLink<T>,
        timeout: Duration,
    ) -> Result<bool, OpenampError> {
        let ept = self.ept;
        let r = ol.run_until(
            timeout,
            "waiting for the device to destroy the channel",
            |link| {
                link.handler::<ReplySink>(ept)
                    .filter(|h| h.unbound)
                    .map(|_| ())
            },
        );
        match r {
            Ok(()) => Ok(true),
            Err(OpenampError::PeerGone { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Destroys our endpoint (the device gets NS DESTROY) and waits up to
    /// `timeout` for the device to take every message we sent. Returns
    /// whether it did (a device that exits at once may not return the last
    /// buffer: that is not an error).
    pub fn close<T: RpmsgTransport + 'static>(
        self,
        ol: &mut OpenampLink<T>,
        timeout: Duration,
    ) -> Result<bool, OpenampError> {
        let before = ol.link().stats().tx_messages;
        ol.link_mut().destroy_endpoint(self.ept)?;
        ol.run_until(timeout, "sending NS DESTROY", |link| {
            (link.stats().tx_messages > before).then_some(())
        })?;
        let drained = ol.run_until(
            timeout,
            "waiting for the device to take our messages",
            |link| {
                let s = link.transport().buffer_stats();
                (s.tx_free >= s.tx_total).then_some(())
            },
        );
        match drained {
            Ok(()) => Ok(true),
            Err(OpenampError::PeerGone { .. } | OpenampError::Timeout { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_vary_and_never_ask_for_shutdown() {
        for seq in 0..2000u64 {
            for len in [1usize, 3, 4, 5, 17, 496] {
                let p = echo_payload(seq, len);
                assert_eq!(p.len(), len);
                assert!(!is_shutdown(&p));
            }
        }
        assert_ne!(echo_payload(1, 16), echo_payload(2, 16));
        let p = echo_payload(0, 496);
        assert!(p.windows(2).any(|w| w[0] != w[1]));
    }

    #[test]
    fn shutdown_magic_is_little_endian() {
        assert!(is_shutdown(&[0x5a, 0xa5, 0x56, 0xef]));
        assert!(is_shutdown(&[0x5a, 0xa5, 0x56, 0xef, 1, 2]));
        assert!(!is_shutdown(&[0xef, 0x56, 0xa5, 0x5a]));
        assert!(!is_shutdown(&[0x5a, 0xa5, 0x56]));
    }

    #[test]
    fn stats_make_a_nuttx_report() {
        let mut s = EchoStats::default();
        s.record(100, Duration::from_micros(10));
        s.record(300, Duration::from_micros(30));
        let r = s.report(496);
        assert_eq!((r.times, r.buffer_len, r.send_len), (2, 496, 200));
        assert_eq!((r.avg_ns, r.min_ns, r.max_ns), (20_000, 10_000, 30_000));
        let text = r.to_string();
        assert!(text.contains("ping times: 2"), "{text}");
        assert!(text.contains("buffer_len: 496, send_len: 200"), "{text}");
    }
}
