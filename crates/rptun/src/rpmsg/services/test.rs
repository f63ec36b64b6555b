//! rpmsg-test: proves that holding RX buffers works. One side sends every
//! TX buffer it has; the peer holds every one it receives, rewrites its
//! data in place, and releases them all later (NuttX's "hold rx" test).
//!
//! ```text
//! message (little-endian): u32 scratch[4], u32 cmd, u32 len, u64 cookie, u8 data[len]
//! cmd = type << 16 | value; type 1 = hold-rx, value 0 = more follow, 1 = last
//! sender fills data with 0x55; the holder checks it, rewrites it to 0xaa,
//! and checks 0xaa is still there when it releases the buffer.
//! ```
#![forbid(unsafe_code)]

use zerocopy::byteorder::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::wire::rpmsg::RpmsgWireError;

/// The endpoint name.
pub const TEST_EPT_NAME: &str = "rpmsg-test";
/// Size of the test header.
pub const TEST_HEADER_LEN: usize = 32;
/// Message type: hold the RX buffer.
pub const TEST_TYPE_HOLD_RX: u32 = 1;
/// Value: more hold-rx messages follow.
pub const TEST_VAL_HOLD_RX: u32 = 0;
/// Value: the last hold-rx message.
pub const TEST_VAL_HOLD_RX_END: u32 = 1;
/// Data byte the sender writes.
pub const TEST_MAGIC1: u8 = 0x55;
/// Data byte the holder rewrites.
pub const TEST_MAGIC2: u8 = 0xaa;

/// `type << 16 | value`.
pub const fn test_cmd(ty: u32, value: u32) -> u32 {
    (ty << 16) | (value & 0xffff)
}

/// Byte layout of the test header.
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct TestLayout {
    /// Scratch words (NuttX keeps a list node here; meaningless on the wire).
    pub scratch: [U32; 4],
    /// `type << 16 | value`.
    pub cmd: U32,
    /// Number of data bytes.
    pub len: U32,
    /// Opaque cookie.
    pub cookie: U64,
}

const _: () = assert!(core::mem::size_of::<TestLayout>() == TEST_HEADER_LEN);

/// The test header, owned (scratch words are ignored and sent as zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TestHeader {
    /// `type << 16 | value`.
    pub cmd: u32,
    /// Data bytes (as the sender claims: untrusted).
    pub len: u32,
    /// Opaque cookie.
    pub cookie: u64,
}

impl TestHeader {
    /// Parses the first 32 bytes.
    pub fn parse(bytes: &[u8]) -> Result<TestHeader, RpmsgWireError> {
        let (l, _) =
            TestLayout::read_from_prefix(bytes).map_err(|_| RpmsgWireError::Truncated {
                need: TEST_HEADER_LEN,
                got: bytes.len(),
            })?;
        Ok(TestHeader {
            cmd: l.cmd.get(),
            len: l.len.get(),
            cookie: l.cookie.get(),
        })
    }

    /// The 32 header bytes.
    pub fn to_bytes(&self) -> [u8; TEST_HEADER_LEN] {
        let l = TestLayout {
            scratch: [U32::new(0); 4],
            cmd: U32::new(self.cmd),
            len: U32::new(self.len),
            cookie: U64::new(self.cookie),
        };
        let mut out = [0u8; TEST_HEADER_LEN];
        out.copy_from_slice(l.as_bytes());
        out
    }
}

#[cfg(feature = "alloc")]
pub use imp::*;

#[cfg(feature = "alloc")]
mod imp {
    use super::*;
    use alloc::vec::Vec;

    use crate::rpmsg::endpoint::{EndpointConfig, EndpointHandler, EndpointId, HeldRx, Received};
    use crate::rpmsg::link::{Link, LinkCtx};
    use crate::rpmsg::registry::{LinkId, Service};
    use crate::rpmsg::transport::RpmsgTransport;
    use crate::rpmsg::RpmsgError;
    use crate::shm::Region;

    /// What the test endpoint has seen.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub struct TestStats {
        /// Buffers held.
        pub held: u64,
        /// Buffers released.
        pub released: u64,
        /// Data that was not what it should be (on arrival or at release).
        pub check_errors: u64,
        /// Messages too short or of unknown type.
        pub malformed: u64,
        /// "Last" messages seen.
        pub rounds: u64,
    }

    /// The "rpmsg-test" endpoint's handler.
    #[derive(Debug, Default)]
    pub struct TestHandler {
        held: Vec<(HeldRx, usize)>,
        release_due: bool,
        armed: bool,
        /// Counters.
        pub stats: TestStats,
    }

    impl TestHandler {
        /// A fresh handler.
        pub fn new() -> TestHandler {
            TestHandler::default()
        }

        /// RX buffers held now.
        pub fn held(&self) -> usize {
            self.held.len()
        }

        /// The last message of a round arrived: the held buffers should be
        /// released.
        pub fn release_due(&self) -> bool {
            self.release_due
        }
    }

    fn all_equal(r: &Region, off: usize, len: usize, byte: u8) -> bool {
        let mut chunk = [0u8; 256];
        let mut done = 0;
        while done < len {
            let n = chunk.len().min(len - done);
            if r.read_bytes(off + done, &mut chunk[..n]).is_err() {
                return false;
            }
            if chunk[..n].iter().any(|&b| b != byte) {
                return false;
            }
            done += n;
        }
        true
    }

    impl<T: RpmsgTransport + 'static> EndpointHandler<T> for TestHandler {
        fn on_message(&mut self, ctx: &mut LinkCtx<'_, T>, msg: Received<'_>) {
            let mut hb = [0u8; TEST_HEADER_LEN];
            let hdr = match msg
                .read(0, &mut hb)
                .ok()
                .and_then(|_| TestHeader::parse(&hb).ok())
            {
                Some(h) if msg.len() >= TEST_HEADER_LEN => h,
                _ => {
                    self.stats.malformed += 1;
                    return;
                }
            };
            if hdr.cmd >> 16 != TEST_TYPE_HOLD_RX {
                self.stats.malformed += 1;
                return;
            }
            let data_len = (hdr.len as usize).min(msg.len() - TEST_HEADER_LEN);
            let p = msg.payload();
            if !all_equal(p, TEST_HEADER_LEN, data_len, TEST_MAGIC1) {
                self.stats.check_errors += 1;
                log::error!("rpmsg-test: held buffer did not arrive as 0x55 bytes");
            }
            if p.fill(TEST_HEADER_LEN, data_len, TEST_MAGIC2).is_err() {
                self.stats.check_errors += 1;
            }
            let held = ctx.hold(msg);
            self.held.push((held, data_len));
            self.stats.held += 1;
            if hdr.cmd & 0xffff == TEST_VAL_HOLD_RX_END {
                self.stats.rounds += 1;
                self.release_due = true;
            }
        }
    }

    /// Creates the "rpmsg-test" endpoint.
    pub fn create_endpoint<T: RpmsgTransport + 'static>(
        link: &mut Link<T>,
    ) -> Result<EndpointId, RpmsgError> {
        link.create_endpoint(EndpointConfig::new(TEST_EPT_NAME), TestHandler::new())
    }

    /// Sends every TX buffer the link has to the peer's test endpoint, the
    /// last one marked "last". Returns how many were sent. Never blocks.
    pub fn send_hold_rx<T: RpmsgTransport + 'static>(
        link: &mut Link<T>,
        ept: EndpointId,
    ) -> Result<usize, RpmsgError> {
        let mut cur = link.try_get_tx(ept)?;
        let mut sent = 0;
        loop {
            let next = match link.try_get_tx(ept) {
                Ok(t) => Some(t),
                Err(RpmsgError::NoBuffer) => None,
                Err(e) => {
                    link.release_tx(cur)?;
                    return Err(e);
                }
            };
            let space = cur.capacity();
            let data_len = space.saturating_sub(TEST_HEADER_LEN);
            let value = if next.is_some() {
                TEST_VAL_HOLD_RX
            } else {
                TEST_VAL_HOLD_RX_END
            };
            let hdr = TestHeader {
                cmd: test_cmd(TEST_TYPE_HOLD_RX, value),
                len: data_len as u32,
                cookie: 0,
            };
            let filled = cur
                .write(0, &hdr.to_bytes())
                .and_then(|_| cur.payload().fill(TEST_HEADER_LEN, data_len, TEST_MAGIC1));
            let r = match filled {
                Ok(()) => link.send_nocopy(cur, space),
                Err(e) => link.release_tx(cur).and(Err(e.into())),
            };
            if let Err(e) = r {
                if let Some(n) = next {
                    link.release_tx(n)?;
                }
                return Err(e);
            }
            sent += 1;
            match next {
                Some(n) => cur = n,
                None => return Ok(sent),
            }
        }
    }

    /// What a release round found.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub struct ReleaseReport {
        /// Buffers released.
        pub released: usize,
        /// Buffers whose data was no longer 0xaa.
        pub check_errors: usize,
    }

    /// Checks and releases every RX buffer the test endpoint holds.
    pub fn release_held<T: RpmsgTransport + 'static>(
        link: &mut Link<T>,
        ept: EndpointId,
    ) -> Result<ReleaseReport, RpmsgError> {
        let h = link
            .handler_mut::<TestHandler>(ept)
            .ok_or(RpmsgError::NoEndpoint)?;
        let held = core::mem::take(&mut h.held);
        h.release_due = false;
        h.armed = false;
        let mut rep = ReleaseReport::default();
        let mut first_err = None;
        for (buf, data_len) in held {
            if !all_equal(buf.payload(), TEST_HEADER_LEN, data_len, TEST_MAGIC2) {
                rep.check_errors += 1;
            }
            match link.release_rx(buf) {
                Ok(()) => rep.released += 1,
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Some(h) = link.handler_mut::<TestHandler>(ept) {
            h.stats.released += rep.released as u64;
            h.stats.check_errors += rep.check_errors as u64;
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(rep),
        }
    }

    /// The rpmsg-test service for a [`Bus`](crate::rpmsg::Bus): an
    /// "rpmsg-test" endpoint on every link; held buffers are released on the
    /// bus poll *after* the one that delivered the last message of a round.
    #[derive(Debug, Default)]
    pub struct TestService {
        epts: Vec<(LinkId, EndpointId)>,
    }

    impl TestService {
        /// A fresh service.
        pub fn new() -> TestService {
            TestService::default()
        }

        /// Its endpoint on a link.
        pub fn endpoint(&self, link: LinkId) -> Option<EndpointId> {
            self.epts.iter().find(|(l, _)| *l == link).map(|(_, e)| *e)
        }
    }

    impl<T: RpmsgTransport + 'static> Service<T> for TestService {
        fn device_created(&mut self, link: &mut Link<T>, id: LinkId) {
            match create_endpoint(link) {
                Ok(e) => self.epts.push((id, e)),
                Err(e) => log::error!("rpmsg-test: cannot create endpoint: {e}"),
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

        fn poll(&mut self, link: &mut Link<T>, id: LinkId) {
            let Some(ept) = self.endpoint(id) else { return };
            let Some(h) = link.handler_mut::<TestHandler>(ept) else {
                return;
            };
            if !h.release_due {
                return;
            }
            if !h.armed {
                h.armed = true;
                return;
            }
            match release_held(link, ept) {
                Ok(r) => log::info!(
                    "rpmsg-test: released {} held rx buffers, {} check errors",
                    r.released,
                    r.check_errors
                ),
                Err(e) => log::error!("rpmsg-test: release failed: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_header_hand_derived_bytes() {
        let mut bytes = [0u8; 32];
        bytes[16..20].copy_from_slice(&[0x01, 0x00, 0x01, 0x00]); // cmd 0x00010001
        bytes[20..24].copy_from_slice(&[0xd0, 0x01, 0x00, 0x00]); // len 464
        let h = TestHeader::parse(&bytes).unwrap();
        assert_eq!(h.cmd, test_cmd(TEST_TYPE_HOLD_RX, TEST_VAL_HOLD_RX_END));
        assert_eq!(h.len, 464);
        assert_eq!(h.to_bytes(), bytes);
    }
}
