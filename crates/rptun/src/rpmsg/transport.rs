//! The seam between the rpmsg bus and what carries its messages.
//!
//! A link's lower half (rpmsg-virtio in the driver or the device role,
//! rpmsg-port over a byte stream, the in-memory [`loopback`](super::loopback))
//! implements [`RpmsgTransport`]. The bus above it only ever sees *buffers*:
//! each is named by a small `Copy` token ([`TxBuf`], [`RxBuf`]) that says
//! where the buffer lies in the transport's [`Region`]. The bus writes the
//! 16-byte rpmsg header and the payload straight into a TX buffer and reads
//! them straight out of an RX buffer, so no message is copied between the
//! application and the transport (zero copy).
//!
//! Ownership of a buffer moves with its token:
//!
//! ```text
//!  TX: get_tx() ──► bus/app writes header+payload ──► send(buf, len) ──► peer
//!                         └──────────► release_tx(buf) (unused)          │
//!      get_tx() again ◄── the transport collects it when the peer is done ┘
//!  RX: recv() ──► bus validates, dispatches, maybe holds ──► release_rx(buf)
//! ```
//!
//! What is trusted: a token's `offset`, `size` and `capacity` are the
//! transport's own bookkeeping (it must have checked them against its region).
//! What is **not** trusted: an RX buffer's `len` and every byte inside it
//! (header included) come from the peer; the bus validates them.
#![forbid(unsafe_code)]

use core::fmt;

use crate::rpmsg::cpu::{LocalCpu, RemoteCpu};
use crate::shm::{Region, ShmError};

/// rpmsg feature bits that matter to the bus, as negotiated on the link.
///
/// The bit positions are those of the rpmsg virtio feature word (NS 0,
/// ACK 1); the transport-only bits (BUFSZ 2, CPUNAME 3, BUFADDR 4) are the
/// transport's business and are ignored here. (Defined locally until
/// `wire::rpmsg_config` provides the shared constants.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct RpmsgFeatures(pub u32);

impl RpmsgFeatures {
    /// Bit: name service (CREATE/DESTROY announcements).
    pub const NS_BIT: u32 = 1 << 0;
    /// Bit: CREATE_ACK (NuttX extension; meaningful only with NS).
    pub const ACK_BIT: u32 = 1 << 1;
    /// No name service: endpoints must use fixed addresses.
    pub const NONE: RpmsgFeatures = RpmsgFeatures(0);
    /// What Linux offers: name service, no CREATE_ACK.
    pub const LINUX: RpmsgFeatures = RpmsgFeatures(Self::NS_BIT);
    /// What NuttX (and the rpmsg-port link) use: name service with CREATE_ACK.
    pub const NUTTX: RpmsgFeatures = RpmsgFeatures(Self::NS_BIT | Self::ACK_BIT);

    /// Name service negotiated.
    pub fn ns(self) -> bool {
        self.0 & Self::NS_BIT != 0
    }

    /// CREATE_ACK negotiated (requires name service).
    pub fn ack(self) -> bool {
        self.ns() && self.0 & Self::ACK_BIT != 0
    }
}

impl fmt::Display for RpmsgFeatures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.ns(), self.ack()) {
            (false, _) => f.write_str("none"),
            (true, false) => f.write_str("NS"),
            (true, true) => f.write_str("NS|ACK"),
        }
    }
}

/// A TX buffer lent by the transport: header and payload go at
/// `offset..offset + size` of [`RpmsgTransport::tx_region`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxBuf {
    /// The transport's own index for this buffer (descriptor id, slot...).
    pub index: u16,
    /// Where the rpmsg header starts in the TX region.
    pub offset: usize,
    /// Bytes available for the rpmsg header plus payload.
    pub size: usize,
}

/// A received buffer: the rpmsg header starts at `offset` of
/// [`RpmsgTransport::rx_region`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RxBuf {
    /// The transport's own index for this buffer.
    pub index: u16,
    /// Where the rpmsg header starts in the RX region (validated by the
    /// transport: `offset..offset + capacity` lies inside the region).
    pub offset: usize,
    /// The buffer's size from `offset`, as the transport allocated it
    /// (trusted).
    pub capacity: usize,
    /// Bytes the peer says it wrote (untrusted: may exceed `capacity`, may be
    /// the whole buffer as OpenAMP peers report; the rpmsg header's own `len`
    /// is what counts, after validation).
    pub len: usize,
}

/// Buffer totals reported by a transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BufferStats {
    /// TX buffers the transport has in this session.
    pub tx_total: usize,
    /// TX buffers `get_tx` could hand out now (after collecting returned ones).
    pub tx_free: usize,
    /// RX buffers the transport has in this session.
    pub rx_total: usize,
}

/// Errors of a transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// The link is down: the peer is not (yet) ready, or was reset.
    #[error("rpmsg link is down (peer not ready or reset); wait for the link to come up")]
    LinkDown,
    /// A token this transport did not hand out, or already got back.
    #[error(
        "buffer #{index} is not currently lent out by this transport (double release or \
         a token from an earlier link session)"
    )]
    InvalidBuffer {
        /// The token's index.
        index: u16,
    },
    /// A length larger than the buffer.
    #[error("message of {len} bytes does not fit buffer #{index} of {size} bytes")]
    TooLong {
        /// The buffer's index.
        index: u16,
        /// Requested length.
        len: usize,
        /// Buffer size.
        size: usize,
    },
    /// The peer broke the protocol below rpmsg (ring corruption...).
    #[error("the peer broke the transport protocol: {0}; reset the link")]
    Peer(&'static str),
    /// Shared-memory access failed.
    #[error(transparent)]
    Shm(#[from] ShmError),
    /// A backend failure (stream closed, doorbell failed...).
    #[error("transport backend failed: {0}")]
    Backend(&'static str),
}

/// The lower half of an rpmsg link.
///
/// Implemented by rpmsg-virtio (driver and device role), rpmsg-port and the
/// loopback. One transport carries one link: one local cpu, one remote cpu.
/// No method may block: "nothing available now" is `Ok(None)`; the bus does
/// the waiting (through a caller-supplied [`Wait`](super::wait::Wait)).
///
/// Sessions: [`link_session`](RpmsgTransport::link_session) is `Some(n)`
/// while the link is up; `n` must change every time the link is
/// (re-)established. When a session ends, every token lent out in it is void:
/// the bus stops using them (it tracks sessions), and the transport must
/// answer any that still come back with an error, never by corrupting its
/// state.
pub trait RpmsgTransport {
    /// A short role string for dumps, e.g. `"virtio driver"`,
    /// `"virtio device"`, `"port"`, `"loopback"`.
    fn role(&self) -> &str;

    /// This side's cpu name on this link.
    fn local_cpu(&self) -> LocalCpu;

    /// The authoritative name of the cpu at the other end: the config-space
    /// name when CPUNAME was negotiated, else the platform's.
    fn remote_cpu(&self) -> RemoteCpu;

    /// Features negotiated with the peer (meaningful while the link is up).
    fn features(&self) -> RpmsgFeatures;

    /// `Some(session)` while the link is up, `None` while it is down.
    fn link_session(&self) -> Option<u32>;

    /// Size of each TX buffer in bytes, rpmsg header included (payload
    /// capacity is this minus 16).
    fn tx_buffer_size(&self) -> usize;

    /// Size of each RX buffer in bytes, rpmsg header included.
    fn rx_buffer_size(&self) -> usize;

    /// The region TX tokens point into. Must stay the same within a session.
    fn tx_region(&self) -> &Region;

    /// The region RX tokens point into. Must stay the same within a session.
    fn rx_region(&self) -> &Region;

    /// Housekeeping that never blocks: collect TX buffers the peer has
    /// returned, update the link state, progress handshakes. The bus calls it
    /// on every `Link::poll` and while a blocking send waits.
    fn poll(&mut self) -> Result<(), TransportError>;

    /// Lends a free TX buffer, collecting returned ones first if none is
    /// free. `Ok(None)` means "no buffer now" (every buffer is with the peer
    /// or the application): an ordinary condition, not an error.
    /// `Err(LinkDown)` while the link is down.
    fn get_tx(&mut self) -> Result<Option<TxBuf>, TransportError>;

    /// Sends the first `len` bytes of `buf` (rpmsg header + payload, written
    /// by the caller at `buf.offset` of the TX region) and notifies the peer.
    /// On success the buffer belongs to the transport again; on error it is
    /// still the caller's (which will `release_tx` it).
    fn send(&mut self, buf: TxBuf, len: usize) -> Result<(), TransportError>;

    /// Takes back a TX buffer that will not be sent.
    fn release_tx(&mut self, buf: TxBuf) -> Result<(), TransportError>;

    /// The next received buffer, if any. Its contents and `len` are
    /// untrusted; the caller owns it until [`release_rx`](Self::release_rx).
    fn recv(&mut self) -> Result<Option<RxBuf>, TransportError>;

    /// Gives a received buffer back so the peer can reuse it. Buffers may be
    /// released in any order (the bus lets applications hold some).
    fn release_rx(&mut self, buf: RxBuf) -> Result<(), TransportError>;

    /// Buffer totals for dumps and leak checks.
    fn buffer_stats(&self) -> BufferStats;

    /// Transport-specific dump lines (vring indices, stream state...).
    fn describe(&self, out: &mut dyn fmt::Write) -> fmt::Result {
        let _ = out;
        Ok(())
    }
}

macro_rules! forward_transport {
    () => {
        fn role(&self) -> &str {
            (**self).role()
        }
        fn local_cpu(&self) -> LocalCpu {
            (**self).local_cpu()
        }
        fn remote_cpu(&self) -> RemoteCpu {
            (**self).remote_cpu()
        }
        fn features(&self) -> RpmsgFeatures {
            (**self).features()
        }
        fn link_session(&self) -> Option<u32> {
            (**self).link_session()
        }
        fn tx_buffer_size(&self) -> usize {
            (**self).tx_buffer_size()
        }
        fn rx_buffer_size(&self) -> usize {
            (**self).rx_buffer_size()
        }
        fn tx_region(&self) -> &Region {
            (**self).tx_region()
        }
        fn rx_region(&self) -> &Region {
            (**self).rx_region()
        }
        fn poll(&mut self) -> Result<(), TransportError> {
            (**self).poll()
        }
        fn get_tx(&mut self) -> Result<Option<TxBuf>, TransportError> {
            (**self).get_tx()
        }
        fn send(&mut self, buf: TxBuf, len: usize) -> Result<(), TransportError> {
            (**self).send(buf, len)
        }
        fn release_tx(&mut self, buf: TxBuf) -> Result<(), TransportError> {
            (**self).release_tx(buf)
        }
        fn recv(&mut self) -> Result<Option<RxBuf>, TransportError> {
            (**self).recv()
        }
        fn release_rx(&mut self, buf: RxBuf) -> Result<(), TransportError> {
            (**self).release_rx(buf)
        }
        fn buffer_stats(&self) -> BufferStats {
            (**self).buffer_stats()
        }
        fn describe(&self, out: &mut dyn fmt::Write) -> fmt::Result {
            (**self).describe(out)
        }
    };
}

impl<T: RpmsgTransport + ?Sized> RpmsgTransport for &mut T {
    forward_transport!();
}

#[cfg(feature = "alloc")]
impl<T: RpmsgTransport + ?Sized> RpmsgTransport for alloc::boxed::Box<T> {
    forward_transport!();
}
