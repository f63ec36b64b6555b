//! rpmsg over virtio: ONE implementation, two roles.
//!
//! - [`RpmsgVirtioDriver`] is the virtio **driver** ("virtio-rpmsg"): it
//!   negotiates features, sets up both vrings, allocates every buffer from the
//!   transport's shared memory, posts all RX buffers before `DRIVER_OK` and
//!   keeps the TX buffers; TX buffers come back through vring1's used ring.
//! - [`RpmsgVirtioDevice`] is the virtio **device** ("vhost-rpmsg"): it waits
//!   for `DRIVER_OK`, reads what the driver negotiated and configured, and
//!   uses only the buffers the driver posted (vring0 for TX, vring1 for RX).
//!
//! Both are written only against the virtio transport traits
//! ([`Transport`](crate::virtio::Transport) and
//! [`DeviceTransport`](crate::virtio::DeviceTransport)), so they run over a
//! remoteproc vdev, a virtio-mmio window or anything else that implements
//! them, without knowing which. Both implement
//! [`RpmsgTransport`](crate::rpmsg::RpmsgTransport), the lower half of an
//! rpmsg [`Link`](crate::rpmsg::Link).
//!
//! ```text
//!             driver ("host")                      device ("remote")
//!  vring0:    RX  (posts writable buffers)  ◄───   TX  (fills them, used ring)
//!  vring1:    TX  (posts readable buffers)  ───►   RX  (reads them, used ring)
//! ```
//!
//! # Features (rpmsg feature word, DESIGN.md §4)
//!
//! NS 0 (name service), ACK 1 (NuttX CREATE_ACK), BUFSZ 2 (buffer sizes in
//! config space; without it buffers are 512 bytes each way), CPUNAME 3 (cpu
//! names in config space), BUFADDR 4 (buffer pool addresses in config space,
//! current layout only). The transport bits `VIRTIO_RING_F_EVENT_IDX` and
//! `VIRTIO_F_VERSION_1` are accepted when offered and allowed by the options.
//!
//! # Config space
//!
//! When BUFSZ is negotiated the sizes in config space are authoritative; a
//! size of 0 there means "driver's choice": the driver writes its own
//! ([`RpmsgVirtioOptions::tx_buffer_size`] / `rx_buffer_size`) before
//! `DRIVER_OK`. When BUFADDR is negotiated, a non-zero pool address in config
//! space tells the driver where the buffers of that direction are (contiguous,
//! `count × size` bytes, in the peers' physical address space); a zero address
//! means the driver allocates them and writes the address back. With CPUNAME,
//! the name in config space is the authoritative remote name (a platform name
//! that disagrees is logged and overridden, DESIGN.md §3).
//!
//! # Link sessions
//!
//! [`link_session`](crate::rpmsg::RpmsgTransport::link_session) is `Some(n)`
//! while the virtio device is live: on the driver from `DRIVER_OK` until a
//! reset, `DEVICE_NEEDS_RESET`, `FAILED`, a broken ring or a transport that
//! reports [`VirtioError::Gone`]; on the device from the first
//! [`poll`](crate::rpmsg::RpmsgTransport::poll) that sees `DRIVER_OK` until
//! the driver resets or fails. `n` changes on every start. Buffer tokens
//! carry a tag of their session: tokens of an earlier session are refused
//! with `InvalidBuffer`.
//!
//! # Linux-compatible mode
//!
//! [`RpmsgVirtioOptions::linux`]: only NS is negotiated, buffers are 512
//! bytes, and descriptor and used lengths are the whole buffer (512): the
//! payload length is only in the rpmsg header (Linux and OpenAMP peers work
//! this way, DESIGN.md §10).
//!
//! # Wiring (what a platform or the simulator calls)
//!
//! Driver side (the master, by default):
//!
//! ```text
//! let t = VdevDriver::new(link)?;                     // or an MmioTransport
//! let drv = RpmsgVirtioDriver::<_, 8>::start_new(t, RpmsgVirtioOptions::new(local, remote))?;
//! let mut link = Link::new(drv);                      // or bus.add_link(...)
//! on every doorbell for the vdev or its vrings (and whenever convenient):
//!     link.poll()?;
//!     if let Some(DownReason::NeedsReset | DownReason::Broken(_)) =
//!         link.transport().down_reason() { link.transport_mut().restart()?; }
//! when the remote core stops: link.transport_mut().stop();
//! ```
//!
//! Device side (the remote):
//!
//! ```text
//! let dev = RpmsgVirtioDevice::<_, 8>::new(VdevDevice::new(link)?, options);
//! let mut link = Link::new(dev);
//! on every doorbell (and periodically until the link is up): link.poll()?;
//! ```
//!
//! The device attaches on the first poll that sees `DRIVER_OK` and follows
//! the driver's resets by itself: a status without `DRIVER_OK`, or used rings
//! it did not write (the driver re-initialised them between two polls). When
//! the platform learns by other means that the master restarted (a boot
//! handshake, an MMIO status hook), calling
//! [`RpmsgVirtioDevice::start`] forces a fresh attach on the next poll.
//! Neither role ever blocks; buffers are polled, doorbells only say when.
#![forbid(unsafe_code)]

mod config;
mod device;
mod driver;

pub use device::RpmsgVirtioDevice;
pub use driver::RpmsgVirtioDriver;

use core::fmt;

use crate::rpmsg::cpu::{LocalCpu, RemoteCpu};
use crate::rpmsg::transport::{RpmsgFeatures, TransportError};
use crate::shm::ShmError;
use crate::virtio::queue::{QueueError, QueueIndices};
use crate::virtio::VirtioError;
use crate::wire::rpmsg_config::{
    ConfigError, ConfigLayout, VIRTIO_RPMSG_F_ACK, VIRTIO_RPMSG_F_BUFADDR, VIRTIO_RPMSG_F_BUFSZ,
    VIRTIO_RPMSG_F_CPUNAME, VIRTIO_RPMSG_F_NS,
};

/// Feature mask: name service.
pub const F_NS: u64 = 1 << VIRTIO_RPMSG_F_NS;
/// Feature mask: name-service CREATE_ACK (NuttX).
pub const F_ACK: u64 = 1 << VIRTIO_RPMSG_F_ACK;
/// Feature mask: buffer sizes in config space (NuttX).
pub const F_BUFSZ: u64 = 1 << VIRTIO_RPMSG_F_BUFSZ;
/// Feature mask: cpu names in config space (NuttX).
pub const F_CPUNAME: u64 = 1 << VIRTIO_RPMSG_F_CPUNAME;
/// Feature mask: buffer pool addresses in config space (NuttX, current
/// layout).
pub const F_BUFADDR: u64 = 1 << VIRTIO_RPMSG_F_BUFADDR;
/// Feature mask: `VIRTIO_RING_F_EVENT_IDX`.
pub const F_EVENT_IDX: u64 = 1 << crate::virtio::feature::RING_EVENT_IDX;
/// Feature mask: `VIRTIO_F_VERSION_1` (modern virtio; never over remoteproc).
pub const F_VERSION_1: u64 = 1 << crate::virtio::feature::VERSION_1;
/// Every rpmsg feature bit this implementation understands.
pub const F_RPMSG_ALL: u64 = F_NS | F_ACK | F_BUFSZ | F_CPUNAME | F_BUFADDR;
/// Every feature bit this implementation can accept.
pub const SUPPORTED_FEATURES: u64 = F_RPMSG_ALL | F_EVENT_IDX | F_VERSION_1;

/// Buffer size without BUFSZ (Linux's default), both directions.
pub const DEFAULT_BUFFER_SIZE: u32 = 512;
/// Smallest usable buffer: the 16-byte rpmsg header.
pub const MIN_BUFFER_SIZE: u32 = 16;
/// Largest buffer accepted from a config space: the rpmsg header's `u16 len`
/// cannot describe more payload than 65535 bytes.
pub const MAX_BUFFER_SIZE: u32 = 16 + 0xFFFF;

/// The virtqueue index the driver receives on (the device sends on).
pub const VRING_DRIVER_RX: u16 = 0;
/// The virtqueue index the driver sends on (the device receives on).
pub const VRING_DRIVER_TX: u16 = 1;

/// How an rpmsg-virtio instance is set up.
///
/// The driver role uses every field; the device role takes the buffer counts
/// and sizes the driver configured and uses only `local_cpu`, `remote_cpu`,
/// `layout` and `linux_compat` (and `features` as a mask on what it reports).
#[derive(Debug, Clone, Copy)]
pub struct RpmsgVirtioOptions {
    /// This side's cpu name on the link.
    pub local_cpu: LocalCpu,
    /// The platform's name for the cpu at the other end. Overridden by the
    /// config-space name when CPUNAME is negotiated.
    pub remote_cpu: RemoteCpu,
    /// Feature bits this side is willing to use (a mask over
    /// [`SUPPORTED_FEATURES`]; the driver accepts `offered & features`).
    pub features: u64,
    /// TX (driver→device) buffers to allocate; capped by vring1's size.
    pub tx_buffers: u16,
    /// RX (device→driver) buffers to allocate; capped by vring0's size.
    pub rx_buffers: u16,
    /// Size of each TX buffer in bytes (rpmsg header included), used when
    /// BUFSZ is negotiated and the config space leaves the size to the
    /// driver (0). Without BUFSZ buffers are 512 bytes.
    pub tx_buffer_size: u32,
    /// Size of each RX buffer, as `tx_buffer_size`.
    pub rx_buffer_size: u32,
    /// Which config-space layout the peer uses.
    pub layout: ConfigLayout,
    /// Linux/OpenAMP-compatible mode: NS only, 512-byte buffers, descriptor
    /// and used lengths are the whole buffer.
    pub linux_compat: bool,
}

impl RpmsgVirtioOptions {
    /// NuttX-style defaults: every feature, 8 buffers of 0x600 bytes each
    /// way (what NuttX's simulator uses when the config space leaves the
    /// sizes open), current config layout.
    pub fn new(local_cpu: LocalCpu, remote_cpu: RemoteCpu) -> Self {
        RpmsgVirtioOptions {
            local_cpu,
            remote_cpu,
            features: SUPPORTED_FEATURES,
            tx_buffers: 8,
            rx_buffers: 8,
            tx_buffer_size: 0x600,
            rx_buffer_size: 0x600,
            layout: ConfigLayout::Current,
            linux_compat: false,
        }
    }

    /// Linux/OpenAMP-compatible: only NS, 256 buffers of 512 bytes each way
    /// (capped by the vring sizes), whole-buffer descriptor and used lengths.
    pub fn linux(local_cpu: LocalCpu, remote_cpu: RemoteCpu) -> Self {
        RpmsgVirtioOptions {
            features: F_NS,
            tx_buffers: 256,
            rx_buffers: 256,
            tx_buffer_size: DEFAULT_BUFFER_SIZE,
            rx_buffer_size: DEFAULT_BUFFER_SIZE,
            linux_compat: true,
            ..Self::new(local_cpu, remote_cpu)
        }
    }

    /// Sets the buffer count of both directions.
    pub fn buffers(mut self, count: u16) -> Self {
        self.tx_buffers = count;
        self.rx_buffers = count;
        self
    }

    /// Sets the buffer size of both directions (used with BUFSZ).
    pub fn buffer_size(mut self, size: u32) -> Self {
        self.tx_buffer_size = size;
        self.rx_buffer_size = size;
        self
    }

    /// Sets the config-space layout.
    pub fn layout(mut self, layout: ConfigLayout) -> Self {
        self.layout = layout;
        self
    }

    /// Restricts the features this side uses to `features`.
    pub fn features(mut self, features: u64) -> Self {
        self.features = features;
        self
    }

    /// The features this side may accept, given the options alone.
    pub(crate) fn allowed(&self) -> u64 {
        let mut f = self.features & SUPPORTED_FEATURES;
        if self.linux_compat {
            // NS only; the transport bits stay as allowed.
            f &= F_NS | F_EVENT_IDX | F_VERSION_1;
        }
        if self.layout == ConfigLayout::Legacy {
            f &= !F_BUFADDR;
        }
        f
    }
}

/// Errors of setting up an rpmsg-virtio instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RpmsgVirtioError {
    /// The transport failed.
    #[error("virtio transport: {0}")]
    Virtio(#[from] VirtioError),
    /// A virtqueue could not be set up, or the peer broke one.
    #[error("virtqueue: {0}")]
    Queue(#[from] QueueError),
    /// Shared memory access failed.
    #[error(transparent)]
    Shm(#[from] ShmError),
    /// The config space could not be read as the chosen layout.
    #[error("rpmsg config space: {0}")]
    Config(#[from] ConfigError),
    /// The transport carries another kind of virtio device.
    #[error(
        "the virtio device has id {0}, not rpmsg (7); attach rpmsg-virtio only to rpmsg devices"
    )]
    NotRpmsg(u32),
    /// The device has fewer than two virtqueues.
    #[error(
        "the rpmsg virtio device has {0} virtqueue(s), it needs two (vring0 and vring1); \
         fix the resource table or device description"
    )]
    MissingQueues(u16),
    /// A vring is larger than this instance was built for.
    #[error(
        "vring{queue} has {num} entries but this rpmsg-virtio instance handles at most \
         {max}; build it with a larger capacity N or use a smaller vring"
    )]
    QueueTooLarge {
        /// Queue index.
        queue: u16,
        /// Entries in the ring.
        num: u16,
        /// The instance's capacity `N`.
        max: usize,
    },
    /// A buffer size (from config space or the options) is unusable.
    #[error(
        "rpmsg buffer size {size} is unusable (must be {min}..={max} bytes); fix the config \
         space or the options"
    )]
    BadBufferSize {
        /// The size found.
        size: u32,
        /// Smallest allowed.
        min: u32,
        /// Largest allowed.
        max: u32,
    },
    /// No buffers were requested.
    #[error("zero buffers requested for a direction; ask for at least one per direction")]
    NoBuffers,
    /// The buffer pool announced in config space lies outside the shared
    /// window.
    #[error(
        "the {what} buffer pool announced in config space ({addr:#x}, {len} bytes) lies \
         outside the shared memory; fix the config space or do not offer BUFADDR"
    )]
    BadBufferAddr {
        /// `"h2r"` or `"r2h"`.
        what: &'static str,
        /// Announced physical address.
        addr: u64,
        /// Bytes the pool needs.
        len: u64,
    },
}

impl RpmsgVirtioError {
    /// A short static description for [`TransportError::Peer`].
    pub(crate) fn as_peer(&self) -> TransportError {
        match self {
            RpmsgVirtioError::Virtio(VirtioError::Gone) => TransportError::LinkDown,
            RpmsgVirtioError::Shm(e) => TransportError::Shm(*e),
            RpmsgVirtioError::Queue(q) => queue_error(*q),
            _ => TransportError::Backend("rpmsg-virtio set-up failed (see the log)"),
        }
    }
}

/// Why an rpmsg-virtio link is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownReason {
    /// Never started, or stopped by the owner.
    Stopped,
    /// The device waits for the driver to set `DRIVER_OK`.
    WaitingForDriver,
    /// The driver reset the device (status 0, or `DRIVER_OK` cleared).
    Reset,
    /// The device asked for a reset (`DEVICE_NEEDS_RESET`).
    NeedsReset,
    /// The driver gave up on the device (`FAILED`).
    Failed,
    /// The peer broke a virtqueue or the configuration; the link stays down
    /// until a reset (the device sets `DEVICE_NEEDS_RESET`).
    Broken(RpmsgVirtioError),
    /// The transport reports the device gone.
    Gone,
}

impl fmt::Display for DownReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DownReason::Stopped => f.write_str("stopped"),
            DownReason::WaitingForDriver => f.write_str("waiting for DRIVER_OK"),
            DownReason::Reset => f.write_str("reset by the driver"),
            DownReason::NeedsReset => f.write_str("device needs reset"),
            DownReason::Failed => f.write_str("driver marked the device FAILED"),
            DownReason::Broken(e) => write!(f, "broken: {e}"),
            DownReason::Gone => f.write_str("device gone"),
        }
    }
}

/// Counters of what an rpmsg-virtio instance refused or dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VirtioStats {
    /// Sessions started.
    pub sessions: u32,
    /// Buffers returned to the peer unused because they were smaller than
    /// the negotiated size or had more than one segment (device role).
    pub dropped_small: u64,
    /// Messages sent.
    pub tx: u64,
    /// Messages received.
    pub rx: u64,
    /// Notifications sent to the peer.
    pub notifies: u64,
}

/// Maps a queue error to a transport error.
pub(crate) fn queue_error(e: QueueError) -> TransportError {
    match e {
        QueueError::Shm(s) => TransportError::Shm(s),
        QueueError::Full { .. } => {
            TransportError::Backend("virtqueue full: more buffers lent than descriptors")
        }
        QueueError::Broken => TransportError::Peer("the virtqueue is broken; reset the link"),
        _ if e.breaks_queue() => TransportError::Peer("the peer corrupted a virtqueue (see log)"),
        _ => TransportError::Backend("virtqueue misuse (see log)"),
    }
}

/// Maps a virtio transport error met on the data path.
pub(crate) fn virtio_error(e: VirtioError) -> TransportError {
    match e {
        VirtioError::Gone | VirtioError::NotReady(_) => TransportError::LinkDown,
        VirtioError::Shm(s) => TransportError::Shm(s),
        _ => TransportError::Backend("virtio transport failure (see log)"),
    }
}

/// The rpmsg bits of `features` as the bus sees them.
pub(crate) fn bus_features(features: u64) -> RpmsgFeatures {
    RpmsgFeatures((features & (F_NS | F_ACK)) as u32)
}

/// Session-tagged buffer tokens: the low `bits` of a token index are the
/// buffer (or descriptor) index, the rest is a tag of the session, so tokens
/// of an earlier session are recognised and refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tagger {
    bits: u32,
    tag: u16,
}

impl Tagger {
    /// Tokens for indices `0..count` (count ≤ 32768) in `session`.
    pub(crate) fn new(count: usize, session: u32) -> Tagger {
        let bits = usize::BITS - count.saturating_sub(1).leading_zeros();
        let bits = bits.min(15);
        let tag_mask = (1u32 << (16 - bits)) - 1;
        Tagger {
            bits,
            tag: (session & tag_mask) as u16,
        }
    }

    pub(crate) fn encode(&self, idx: u16) -> u16 {
        if self.bits >= 16 {
            return idx;
        }
        idx | (self.tag << self.bits)
    }

    /// The index inside a token of this session, if it is one.
    pub(crate) fn decode(&self, token: u16) -> Option<u16> {
        let mask = (1u32 << self.bits) - 1;
        let idx = (u32::from(token) & mask) as u16;
        let tag = (u32::from(token) >> self.bits) as u16;
        (tag == self.tag).then_some(idx)
    }
}

/// Writes one vring's line for `describe`.
pub(crate) fn describe_ring(
    out: &mut dyn fmt::Write,
    name: &str,
    what: &str,
    i: &QueueIndices,
    extra: (&str, usize),
) -> fmt::Result {
    write!(
        out,
        "  {name} ({what}): num {} avail.idx {} used.idx {} last_avail {} last_used {} \
         in_flight {}",
        i.num, i.avail_idx, i.used_idx, i.last_avail, i.last_used, i.in_flight
    )?;
    write!(out, " {} {}", extra.0, extra.1)?;
    if i.broken {
        out.write_str(" BROKEN")?;
    }
    out.write_str("\n")
}

/// Prints a feature word as `NS|ACK|...`.
pub(crate) struct FeatureNames(pub u64);

impl fmt::Display for FeatureNames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = [
            (F_NS, "NS"),
            (F_ACK, "ACK"),
            (F_BUFSZ, "BUFSZ"),
            (F_CPUNAME, "CPUNAME"),
            (F_BUFADDR, "BUFADDR"),
            (F_EVENT_IDX, "EVENT_IDX"),
            (F_VERSION_1, "VERSION_1"),
        ];
        let mut first = true;
        for (bit, name) in names {
            if self.0 & bit != 0 {
                if !first {
                    f.write_str("|")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        if first {
            f.write_str("none")?;
        }
        write!(f, " ({:#x})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_separate_sessions() {
        for count in [1usize, 2, 8, 9, 256, 32768] {
            let a = Tagger::new(count, 1);
            let b = Tagger::new(count, 2);
            for idx in [0u16, (count - 1) as u16] {
                let t = a.encode(idx);
                assert_eq!(a.decode(t), Some(idx));
                assert_eq!(b.decode(t), None, "count {count} idx {idx}");
            }
        }
    }

    #[test]
    fn feature_names() {
        assert_eq!(
            format!("{}", FeatureNames(0xf)),
            "NS|ACK|BUFSZ|CPUNAME (0xf)"
        );
        assert_eq!(format!("{}", FeatureNames(0)), "none (0x0)");
    }
}
