//! rpmsg-ping: a responder and a pinger on the endpoint `"rpmsg-ping"`,
//! interoperable with NuttX's `rpmsg ping`.
//!
//! ```text
//! message (little-endian): u32 cmd, u32 len, u64 cookie, u8 data[]   (≥ 17 bytes)
//! cmd bit 0  the sender wants a reply
//!     bit 1  the receiver checks that every data byte equals the first
//!     bit 2  random length up to `len` (pinger side)
//!     bits 4..=7  0x00 request, 0x20 response
//! ```
//!
//! The responder echoes the whole message with `cmd` = 0x20 (and `len` = the
//! received length; a message whose type is neither request nor response
//! gets a 17-byte answer, as NuttX does). The pinger matches responses by
//! looking the cookie up in a table; a cookie is never used as a pointer.
#![forbid(unsafe_code)]

use zerocopy::byteorder::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::wire::rpmsg::RpmsgWireError;

/// The endpoint name.
pub const PING_EPT_NAME: &str = "rpmsg-ping";
/// Size of the ping header.
pub const PING_HEADER_LEN: usize = 16;
/// Smallest ping message (header + one data byte).
pub const PING_MIN_LEN: usize = 17;
/// cmd bit: the sender wants a reply.
pub const PING_ACK: u32 = 0x01;
/// cmd bit: the receiver checks the data bytes.
pub const PING_CHECK: u32 = 0x02;
/// cmd bit: random length up to `len`.
pub const PING_RANDOM_LEN: u32 = 0x04;
/// cmd field holding the message type.
pub const PING_CMD_MASK: u32 = 0xf0;
/// Type: request.
pub const PING_CMD_REQ: u32 = 0x00;
/// Type: response.
pub const PING_CMD_RSP: u32 = 0x20;

/// Byte layout of the ping header.
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct PingLayout {
    /// Command bits.
    pub cmd: U32,
    /// Message length (header included).
    pub len: U32,
    /// Opaque cookie, echoed back.
    pub cookie: U64,
}

const _: () = assert!(core::mem::size_of::<PingLayout>() == PING_HEADER_LEN);

/// The ping header, owned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PingHeader {
    /// Command bits.
    pub cmd: u32,
    /// Message length, header included (as the sender claims: untrusted).
    pub len: u32,
    /// Opaque cookie.
    pub cookie: u64,
}

impl PingHeader {
    /// Parses the first 16 bytes.
    pub fn parse(bytes: &[u8]) -> Result<PingHeader, RpmsgWireError> {
        let (l, _) =
            PingLayout::read_from_prefix(bytes).map_err(|_| RpmsgWireError::Truncated {
                need: PING_HEADER_LEN,
                got: bytes.len(),
            })?;
        Ok(PingHeader {
            cmd: l.cmd.get(),
            len: l.len.get(),
            cookie: l.cookie.get(),
        })
    }

    /// The 16 header bytes.
    pub fn to_bytes(&self) -> [u8; PING_HEADER_LEN] {
        let l = PingLayout {
            cmd: U32::new(self.cmd),
            len: U32::new(self.len),
            cookie: U64::new(self.cookie),
        };
        let mut out = [0u8; PING_HEADER_LEN];
        out.copy_from_slice(l.as_bytes());
        out
    }

    /// A response?
    pub fn is_response(&self) -> bool {
        self.cmd & PING_CMD_MASK == PING_CMD_RSP
    }
}

#[cfg(feature = "alloc")]
pub use imp::*;

#[cfg(feature = "alloc")]
mod imp {
    use super::*;
    use alloc::vec::Vec;
    use core::fmt;
    use core::time::Duration;

    use crate::rpmsg::endpoint::{EndpointConfig, EndpointHandler, EndpointId, Received};
    use crate::rpmsg::link::{Link, LinkCtx};
    use crate::rpmsg::registry::{Bus, LinkId, Service, ServiceId};
    use crate::rpmsg::transport::RpmsgTransport;
    use crate::rpmsg::wait::{deadline, Wait};
    use crate::rpmsg::{RemoteCpu, RpmsgError};

    const OUTSTANDING: usize = 8;
    const CHUNK: usize = 256;

    /// What the ping endpoint has seen.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub struct PingStats {
        /// Requests received.
        pub requests: u64,
        /// Replies sent.
        pub replies: u64,
        /// Replies not sent (no TX buffer free in the callback).
        pub replies_dropped: u64,
        /// Requests whose data failed the check (bit 1).
        pub check_errors: u64,
        /// Responses that matched an outstanding cookie.
        pub responses: u64,
        /// Responses whose cookie matched nothing (late, or forged).
        pub unknown_cookies: u64,
        /// Messages shorter than the ping header.
        pub malformed: u64,
    }

    /// The "rpmsg-ping" endpoint's handler: answers requests and records
    /// responses to the pinger's outstanding cookies.
    #[derive(Debug, Default)]
    pub struct PingHandler {
        outstanding: [Option<(u64, bool)>; OUTSTANDING],
        /// Counters.
        pub stats: PingStats,
    }

    impl PingHandler {
        /// A fresh handler.
        pub fn new() -> PingHandler {
            PingHandler::default()
        }

        fn expect(&mut self, cookie: u64) -> bool {
            match self.outstanding.iter_mut().find(|s| s.is_none()) {
                Some(s) => {
                    *s = Some((cookie, false));
                    true
                }
                None => false,
            }
        }

        /// `Some(true)` once the response arrived (the cookie is forgotten),
        /// `Some(false)` while waiting, `None` for an unknown cookie.
        fn take_done(&mut self, cookie: u64) -> Option<bool> {
            let s = self
                .outstanding
                .iter_mut()
                .find(|s| matches!(s, Some((c, _)) if *c == cookie))?;
            let done = matches!(s, Some((_, true)));
            if done {
                *s = None;
            }
            Some(done)
        }

        fn forget(&mut self, cookie: u64) {
            for s in &mut self.outstanding {
                if matches!(s, Some((c, _)) if *c == cookie) {
                    *s = None;
                }
            }
        }

        fn respond<T: RpmsgTransport + 'static>(
            &mut self,
            ctx: &mut LinkCtx<'_, T>,
            msg: &Received<'_>,
            hdr: PingHeader,
        ) {
            self.stats.requests += 1;
            if hdr.cmd & PING_ACK == 0 {
                return;
            }
            let got = msg.len();
            if hdr.cmd & PING_CHECK != 0 {
                let data_len = (hdr.len as usize).min(got).saturating_sub(PING_HEADER_LEN);
                if let Some(bad) = check_data(msg, data_len) {
                    self.stats.check_errors += 1;
                    log::error!("rpmsg-ping: receive data error at {bad} of {data_len}");
                }
            }
            let reply_len = if hdr.cmd & PING_CMD_MASK == PING_CMD_REQ {
                got
            } else {
                PING_MIN_LEN
            };
            let ept = ctx.this_endpoint();
            let tx = match ctx.try_get_tx(ept) {
                Ok(tx) => tx,
                Err(e) => {
                    self.stats.replies_dropped += 1;
                    log::warn!("rpmsg-ping: reply not sent: {e}");
                    return;
                }
            };
            let reply_len = reply_len.min(tx.capacity()).max(PING_HEADER_LEN);
            let mut chunk = [0u8; CHUNK];
            let mut off = 0;
            let mut ok = true;
            while off < reply_len {
                let n = CHUNK.min(reply_len - off);
                let c = &mut chunk[..n];
                if off < got {
                    let m = n.min(got - off);
                    ok &= msg.read(off, &mut c[..m]).is_ok();
                    c[m..].fill(0);
                } else {
                    c.fill(0);
                }
                ok &= tx.write(off, c).is_ok();
                off += n;
            }
            let rsp = PingHeader {
                cmd: PING_CMD_RSP,
                len: reply_len as u32,
                cookie: hdr.cookie,
            };
            ok &= tx.write(0, &rsp.to_bytes()).is_ok();
            if !ok {
                let _ = ctx.release_tx(tx);
                self.stats.replies_dropped += 1;
                return;
            }
            match ctx.sendto_nocopy(tx, msg.src(), reply_len) {
                Ok(()) => self.stats.replies += 1,
                Err(e) => {
                    self.stats.replies_dropped += 1;
                    log::warn!("rpmsg-ping: reply not sent: {e}");
                }
            }
        }
    }

    /// Index of the first data byte that differs from the first one.
    fn check_data(msg: &Received<'_>, data_len: usize) -> Option<usize> {
        let mut first = [0u8; 1];
        if data_len == 0 || msg.read(PING_HEADER_LEN, &mut first).is_err() {
            return None;
        }
        let mut chunk = [0u8; CHUNK];
        let mut off = 0;
        while off < data_len {
            let n = CHUNK.min(data_len - off);
            if msg.read(PING_HEADER_LEN + off, &mut chunk[..n]).is_err() {
                return Some(off);
            }
            if let Some(i) = chunk[..n].iter().position(|&b| b != first[0]) {
                return Some(off + i);
            }
            off += n;
        }
        None
    }

    impl<T: RpmsgTransport + 'static> EndpointHandler<T> for PingHandler {
        fn on_message(&mut self, ctx: &mut LinkCtx<'_, T>, msg: Received<'_>) {
            let mut hb = [0u8; PING_HEADER_LEN];
            if msg.len() < PING_HEADER_LEN || msg.read(0, &mut hb).is_err() {
                self.stats.malformed += 1;
                return;
            }
            let Ok(hdr) = PingHeader::parse(&hb) else {
                self.stats.malformed += 1;
                return;
            };
            if hdr.is_response() {
                let slot = self
                    .outstanding
                    .iter_mut()
                    .find(|s| matches!(s, Some((c, false)) if *c == hdr.cookie));
                match slot {
                    Some(s) => {
                        *s = Some((hdr.cookie, true));
                        self.stats.responses += 1;
                    }
                    None => self.stats.unknown_cookies += 1,
                }
                return;
            }
            self.respond(ctx, &msg, hdr);
        }
    }

    /// Creates the "rpmsg-ping" endpoint (destination ANY: it announces
    /// itself and binds to the peer's one).
    pub fn create_endpoint<T: RpmsgTransport + 'static>(
        link: &mut Link<T>,
    ) -> Result<EndpointId, RpmsgError> {
        link.create_endpoint(EndpointConfig::new(PING_EPT_NAME), PingHandler::new())
    }

    /// What to ping with (NuttX's `rpmsg ping <cpu> <times> <len> <cmd>
    /// <sleep>`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct PingParams {
        /// Number of pings.
        pub times: u32,
        /// Message length, ping header included (clamped to 17..=capacity).
        pub len: usize,
        /// Command bits ([`PING_ACK`], [`PING_CHECK`], [`PING_RANDOM_LEN`]).
        pub cmd: u32,
        /// Pause between pings.
        pub sleep: Duration,
        /// How long to wait for a buffer, and then for each response.
        pub timeout: Duration,
    }

    impl PingParams {
        /// `times` pings of `len` bytes that want a reply, 1 s timeout.
        pub fn new(times: u32, len: usize) -> PingParams {
            PingParams {
                times,
                len,
                cmd: PING_ACK,
                sleep: Duration::ZERO,
                timeout: Duration::from_secs(1),
            }
        }

        fn bit(mut self, bit: u32, on: bool) -> Self {
            if on {
                self.cmd |= bit
            } else {
                self.cmd &= !bit
            }
            self
        }

        /// Ask for a reply (default on).
        pub fn ack(self, on: bool) -> Self {
            self.bit(PING_ACK, on)
        }
        /// Ask the responder to check the data bytes.
        pub fn check(self, on: bool) -> Self {
            self.bit(PING_CHECK, on)
        }
        /// Random lengths up to `len`.
        pub fn random_len(self, on: bool) -> Self {
            self.bit(PING_RANDOM_LEN, on)
        }
        /// Pause between pings.
        pub fn sleep(mut self, d: Duration) -> Self {
            self.sleep = d;
            self
        }
        /// Timeout per buffer wait and per response.
        pub fn timeout(mut self, d: Duration) -> Self {
            self.timeout = d;
            self
        }
    }

    /// The result of a ping run.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct PingReport {
        /// Pings done.
        pub times: u32,
        /// TX payload capacity of the link.
        pub buffer_len: usize,
        /// Length of the last message sent (ping header included).
        pub send_len: usize,
        /// Average round trip in ns.
        pub avg_ns: u64,
        /// Shortest round trip in ns.
        pub min_ns: u64,
        /// Longest round trip in ns.
        pub max_ns: u64,
    }

    impl PingReport {
        /// send_len · 8 / avg, in bit/s.
        pub fn rate_bits_per_sec(&self) -> u64 {
            let bits = (self.send_len as u128) * 8 * 1_000_000_000;
            (bits / u128::from(self.avg_ns.max(1))).min(u128::from(u64::MAX)) as u64
        }
    }

    fn ns_line(f: &mut fmt::Formatter<'_>, what: &str, ns: u64) -> fmt::Result {
        writeln!(
            f,
            "{what}: {} s, {} ns",
            ns / 1_000_000_000,
            ns % 1_000_000_000
        )
    }

    /// The same lines as NuttX's `rpmsg ping`.
    impl fmt::Display for PingReport {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            writeln!(f, "ping times: {}", self.times)?;
            writeln!(
                f,
                "buffer_len: {}, send_len: {}",
                self.buffer_len, self.send_len
            )?;
            ns_line(f, "avg", self.avg_ns)?;
            ns_line(f, "min", self.min_ns)?;
            ns_line(f, "max", self.max_ns)?;
            let rate = self.rate_bits_per_sec();
            writeln!(
                f,
                "rate: {}.{:06} Mbits/sec",
                rate / 1_000_000,
                rate % 1_000_000
            )
        }
    }

    /// Why a ping run failed.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
    pub enum PingError {
        /// `times` was 0.
        #[error("ping times must be at least 1")]
        NoTimes,
        /// The endpoint is not a ping endpoint.
        #[error(
            "that endpoint is not an rpmsg-ping endpoint (create it with \
             ping::create_endpoint or the PingService)"
        )]
        NotPingEndpoint,
        /// No ping endpoint on the link to this cpu.
        #[error("no link to that cpu has an rpmsg-ping endpoint (is the service registered?)")]
        NoLink,
        /// Waiting for a response took longer than the timeout.
        #[error(
            "no ping response within the timeout: the peer has no rpmsg-ping endpoint, \
             is not bound yet, or is not polling"
        )]
        NoResponse,
        /// The bus failed.
        #[error(transparent)]
        Rpmsg(#[from] RpmsgError),
    }

    /// Pings the peer's "rpmsg-ping" endpoint from `ept` (which must have a
    /// [`PingHandler`]) and measures round trips on `wait`'s clock.
    ///
    /// Polls `link` while waiting for responses; `wait` must let the peer run
    /// (another thread or core, or a closure that polls it in tests).
    pub fn ping<T: RpmsgTransport + 'static>(
        link: &mut Link<T>,
        ept: EndpointId,
        params: &PingParams,
        wait: &mut dyn Wait,
    ) -> Result<PingReport, PingError> {
        if params.times == 0 {
            return Err(PingError::NoTimes);
        }
        if link.handler::<PingHandler>(ept).is_none() {
            return Err(PingError::NotPingEndpoint);
        }
        let mut rng = wait.now_ns() ^ 0x9e37_79b9_7f4a_7c15 | 1;
        let mut cookie = rng.rotate_left(17);
        let (mut min, mut max, mut total) = (u64::MAX, 0u64, 0u128);
        let (mut buffer_len, mut send_len) = (0, 0);
        // The request type is 0x00: the cmd carries only the option bits.
        let cmd = params.cmd & !PING_CMD_MASK;
        for i in 0..params.times {
            let t0 = wait.now_ns();
            let tx = link.get_tx(ept, wait, params.timeout)?;
            buffer_len = tx.capacity();
            let mut len = params.len;
            if cmd & PING_RANDOM_LEN != 0 {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                len = (rng % (params.len as u64 + 1)) as usize;
            }
            let len = len.max(PING_MIN_LEN).min(buffer_len);
            cookie = cookie.wrapping_add(1);
            let hdr = PingHeader {
                cmd,
                len: len as u32,
                cookie,
            };
            let byte = if cmd & PING_CHECK != 0 { i as u8 } else { 0 };
            let filled = tx.write(0, &hdr.to_bytes()).and_then(|_| {
                tx.payload()
                    .fill(PING_HEADER_LEN, len - PING_HEADER_LEN, byte)
            });
            if let Err(e) = filled {
                link.release_tx(tx)?;
                return Err(RpmsgError::from(e).into());
            }
            let wants_reply = cmd & PING_ACK != 0;
            if wants_reply {
                let h = link
                    .handler_mut::<PingHandler>(ept)
                    .ok_or(PingError::NotPingEndpoint)?;
                if !h.expect(cookie) {
                    link.release_tx(tx)?;
                    return Err(PingError::Rpmsg(RpmsgError::NoBuffer));
                }
            }
            if let Err(e) = link.send_nocopy(tx, len) {
                if let Some(h) = link.handler_mut::<PingHandler>(ept) {
                    h.forget(cookie);
                }
                return Err(e.into());
            }
            send_len = len;
            if wants_reply {
                let end = deadline(wait, params.timeout);
                loop {
                    link.poll()?;
                    match link
                        .handler_mut::<PingHandler>(ept)
                        .and_then(|h| h.take_done(cookie))
                    {
                        Some(true) => break,
                        Some(false) => {}
                        None => return Err(PingError::NotPingEndpoint),
                    }
                    if wait.now_ns() >= end {
                        if let Some(h) = link.handler_mut::<PingHandler>(ept) {
                            h.forget(cookie);
                        }
                        return Err(PingError::NoResponse);
                    }
                    wait.wait_until(end);
                }
            }
            let t = wait.now_ns().saturating_sub(t0);
            min = min.min(t);
            max = max.max(t);
            total += u128::from(t);
            if !params.sleep.is_zero() {
                let end = deadline(wait, params.sleep);
                while wait.now_ns() < end {
                    wait.wait_until(end);
                    link.poll()?;
                }
            }
        }
        Ok(PingReport {
            times: params.times,
            buffer_len,
            send_len,
            avg_ns: (total / u128::from(params.times)) as u64,
            min_ns: min,
            max_ns: max,
        })
    }

    /// The rpmsg-ping service for a [`Bus`]: an "rpmsg-ping" endpoint on
    /// every link (created when the link comes up).
    #[derive(Debug, Default)]
    pub struct PingService {
        epts: Vec<(LinkId, EndpointId)>,
    }

    impl PingService {
        /// A fresh service.
        pub fn new() -> PingService {
            PingService::default()
        }

        /// Its endpoint on a link.
        pub fn endpoint(&self, link: LinkId) -> Option<EndpointId> {
            self.epts.iter().find(|(l, _)| *l == link).map(|(_, e)| *e)
        }
    }

    impl<T: RpmsgTransport + 'static> Service<T> for PingService {
        fn device_created(&mut self, link: &mut Link<T>, id: LinkId) {
            match create_endpoint(link) {
                Ok(e) => self.epts.push((id, e)),
                Err(e) => log::error!("rpmsg-ping: cannot create endpoint: {e}"),
            }
        }

        fn device_destroyed(&mut self, link: &mut Link<T>, id: LinkId) {
            self.epts.retain(|&(l, e)| {
                if l == id {
                    let _ = link.destroy_endpoint(e);
                }
                l != id
            });
        }
    }

    /// Pings the link to `cpu` through a registered [`PingService`]
    /// (`rpmsg ping <cpu> ...`).
    pub fn ping_cpu<T: RpmsgTransport + 'static>(
        bus: &mut Bus<T>,
        svc: &ServiceId<PingService>,
        cpu: &RemoteCpu,
        params: &PingParams,
        wait: &mut dyn Wait,
    ) -> Result<PingReport, PingError> {
        let lid = bus.link_by_cpu(cpu).ok_or(PingError::NoLink)?;
        let (s, link) = bus
            .service_and_link_mut(svc, lid)
            .ok_or(PingError::NoLink)?;
        let ept = s.endpoint(lid).ok_or(PingError::NoLink)?;
        ping(link, ept, params, wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_header_hand_derived_bytes() {
        let bytes = [
            0x03, 0x00, 0x00, 0x00, // cmd: ACK | CHECK, request
            0x11, 0x00, 0x00, 0x00, // len 17
            0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01, // cookie
        ];
        let h = PingHeader::parse(&bytes).unwrap();
        assert_eq!(
            h,
            PingHeader {
                cmd: PING_ACK | PING_CHECK,
                len: 17,
                cookie: 0x0102_0304_0506_0708
            }
        );
        assert!(!h.is_response());
        assert_eq!(h.to_bytes(), bytes);
        let rsp = PingHeader {
            cmd: PING_CMD_RSP,
            ..h
        };
        assert!(rsp.is_response());
        assert_eq!(rsp.to_bytes()[0], 0x20);
        assert!(PingHeader::parse(&bytes[..15]).is_err());
    }

    #[cfg(feature = "alloc")]
    #[test]
    fn report_prints_nuttx_lines() {
        let r = PingReport {
            times: 10,
            buffer_len: 1520,
            send_len: 1520,
            avg_ns: 1_000_000,
            min_ns: 999,
            max_ns: 2_000_000_001,
        };
        // 1520 bytes · 8 / 1 ms = 12.16 Mbit/s
        assert_eq!(
            r.to_string(),
            "ping times: 10\n\
             buffer_len: 1520, send_len: 1520\n\
             avg: 0 s, 1000000 ns\n\
             min: 0 s, 999 ns\n\
             max: 2 s, 1 ns\n\
             rate: 12.160000 Mbits/sec\n"
        );
    }
}
