//! The platform trait: what a board (or a host simulator) provides to run a
//! remoteproc link — the equivalent of NuttX's `rptun_ops_s`.
//!
//! | NuttX `rptun_ops_s`   | here                                   |
//! |-----------------------|----------------------------------------|
//! | `get_cpuname`         | [`Platform::remote_cpu`]               |
//! | `get_firmware`        | [`Platform::firmware`]                 |
//! | `get_addrenv`         | [`Platform::address_map`]              |
//! | `get_resource`        | [`Platform::resource_table`] (+ [`Platform::region`]) |
//! | `is_autostart`        | [`Platform::is_autostart`]             |
//! | `is_master`           | [`Platform::is_master`]                |
//! | `config`              | [`Platform::config`]                   |
//! | `start` / `stop`      | [`Platform::start`] / [`Platform::stop`] |
//! | `notify(vqid)`        | [`Platform::notifier`] → [`Notify::notify`] |
//! | `register_callback`   | none: the platform calls `Instance::handle_doorbell` |
//! | `reset` / `panic`     | [`Platform::reset`] / [`Platform::panic`] (optional) |
//!
//! Doorbells go the other way: the platform's interrupt handler (or poller)
//! tells the instance which notify id rang, or [`Doorbell::All`] when the
//! hardware cannot say (NuttX's `RPTUN_NOTIFY_ALL`).
//!
//! Outgoing notifications go through a separate, cloneable [`Notify`]
//! handle ([`Platform::Notifier`]) because every virtio transport of the
//! link needs one, and transports must not borrow the platform (they live in
//! device handlers, possibly without `alloc`).
#![forbid(unsafe_code)]

use core::fmt;

use crate::remoteproc::addr::AddressMap;
use crate::shm::Region;

/// Most address-environment windows a platform can describe
/// ([`Platform::address_map`]).
pub const MAX_ADDR_WINDOWS: usize = 4;

/// The address map of a link: `da ↔ pa` windows (the platform's address
/// environment, NuttX's `rptun_addrenv`) chained with where the shared region
/// sits in the physical space.
pub type LinkMap = AddressMap<MAX_ADDR_WINDOWS>;

/// Longest remote cpu name, in bytes (NuttX's `RPMSG_NAME_SIZE`).
pub const CPU_NAME_MAX: usize = 32;

/// Errors a platform reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PlatformError {
    /// The platform does not implement the operation (the instance then
    /// falls back, e.g. to the command mailbox for `reset`/`panic`/`stop`).
    #[error("the platform does not support {0}; the operation has no fallback here")]
    Unsupported(&'static str),
    /// The operation failed.
    #[error("the platform failed to {0}; check the board's remote-core wiring and logs")]
    Failed(&'static str),
    /// The peer did not answer in time (boot handshake, ...).
    #[error("timed out waiting for the remote core ({0}); is it running the link?")]
    Timeout(&'static str),
    /// A remote cpu name is empty, too long or contains NUL.
    #[error(
        "remote cpu name is invalid (empty, longer than 32 bytes, or with a NUL byte); \
         pass the REMOTE core's name"
    )]
    BadCpuName,
}

/// The name of the **remote** cpu of a link (never this side's own name).
///
/// Every API that takes or returns a cpu name means the remote one; this type
/// exists so that a board cannot silently pass its own name where the remote
/// one is expected (DESIGN.md §3).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RemoteCpuName {
    buf: [u8; CPU_NAME_MAX],
    len: u8,
}

impl RemoteCpuName {
    /// The remote cpu named `name` (1 to 32 bytes, no NUL).
    pub fn new(name: &str) -> Result<Self, PlatformError> {
        let b = name.as_bytes();
        if b.is_empty() || b.len() > CPU_NAME_MAX || b.contains(&0) {
            return Err(PlatformError::BadCpuName);
        }
        let mut buf = [0u8; CPU_NAME_MAX];
        buf[..b.len()].copy_from_slice(b);
        Ok(RemoteCpuName {
            buf,
            // b.len() <= 32
            len: b.len() as u8,
        })
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        // Built from a &str, so always valid UTF-8.
        core::str::from_utf8(&self.buf[..usize::from(self.len)]).unwrap_or("")
    }
}

impl fmt::Debug for RemoteCpuName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RemoteCpuName")
            .field(&self.as_str())
            .finish()
    }
}

impl fmt::Display for RemoteCpuName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The firmware a master boots the remote with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware<'a> {
    /// An ELF image in memory (`include_bytes!`, a flash partition, a file
    /// the host read): the instance loads its `PT_LOAD` segments into the
    /// region through [`Platform::address_map`] and uses its
    /// `.resource_table` section as the link's resource table.
    Elf(&'a [u8]),
    /// A firmware the platform loads itself in [`Platform::start`] (a file
    /// path, a boot-ROM image name...). The resource table then comes from
    /// [`Platform::resource_table`].
    Named(&'a str),
}

/// Where the resource table lives in the shared region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableLocation {
    /// Region offset of the table header (must be 4-byte aligned: the
    /// command mailbox overlays its reserved words).
    pub offset: usize,
    /// Most bytes the table (with any carveouts embedded in it) may span.
    pub max_len: usize,
}

/// Which queues a doorbell concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Doorbell {
    /// The vdev or vring with this notify id.
    Id(u32),
    /// Unknown or everything: poll every device (NuttX `RPTUN_NOTIFY_ALL`).
    All,
}

impl Doorbell {
    /// NuttX's `RPTUN_NOTIFY_ALL` (`UINT32_MAX`).
    pub const ALL_ID: u32 = u32::MAX;

    /// The doorbell for a raw notify id (`u32::MAX` means all).
    pub const fn from_raw(id: u32) -> Doorbell {
        if id == Self::ALL_ID {
            Doorbell::All
        } else {
            Doorbell::Id(id)
        }
    }

    /// The raw notify id (`u32::MAX` for all).
    pub const fn to_raw(self) -> u32 {
        match self {
            Doorbell::Id(id) => id,
            Doorbell::All => Self::ALL_ID,
        }
    }
}

/// Rings the peer's doorbell: the `notify(vqid)` half of the platform.
///
/// Cloned into every vdev transport of the link, so keep it cheap to clone
/// (a register address, a counter offset in a [`Region`], an `Arc`...). It
/// may be called from any context that runs virtio code.
pub trait Notify {
    /// Tells the peer that the queue (or vdev) with this notify id has work.
    fn notify(&self, target: Doorbell) -> Result<(), PlatformError>;
}

impl<N: Notify + ?Sized> Notify for &N {
    fn notify(&self, target: Doorbell) -> Result<(), PlatformError> {
        (**self).notify(target)
    }
}

#[cfg(feature = "alloc")]
impl<N: Notify + ?Sized> Notify for alloc::sync::Arc<N> {
    fn notify(&self, target: Doorbell) -> Result<(), PlatformError> {
        (**self).notify(target)
    }
}

/// What a board or host provides to run one remoteproc link (one remote
/// cpu). See the module docs for the mapping to NuttX's `rptun_ops_s`.
///
/// The instance calls, in this order, on `start`:
/// [`config`](Self::config) → [`region`](Self::region) → on a master with
/// [`Firmware::Elf`]: [`address_map`](Self::address_map) and the ELF load;
/// otherwise [`resource_table`](Self::resource_table) then
/// [`address_map`](Self::address_map) → table assignment (master) or
/// adoption (remote) → [`start`](Self::start) → vdev creation. A remote
/// platform that learns the table from a boot handshake (as NuttX's
/// simulator does) performs that handshake in `resource_table`, and may
/// learn the physical base there too, since `address_map` is called after it.
pub trait Platform {
    /// The doorbell handle given to every vdev transport.
    type Notifier: Notify + Clone;

    /// The name of the **remote** cpu (the other end of this link).
    fn remote_cpu(&self) -> RemoteCpuName;

    /// True when this side is the master (owns the resource table).
    fn is_master(&self) -> bool;

    /// True when the link should be started at initialisation
    /// (`Instance::autostart`).
    fn is_autostart(&self) -> bool {
        false
    }

    /// The firmware to boot the remote with (master only); `None` when the
    /// remote runs already or boots by itself.
    fn firmware(&self) -> Option<Firmware<'_>> {
        None
    }

    /// Prepares the remote core before anything is loaded (clocks, power,
    /// memory protection). Master only in NuttX; called on both sides here.
    fn config(&mut self) -> Result<(), PlatformError> {
        Ok(())
    }

    /// The shared memory of the link.
    fn region(&self) -> Region;

    /// Where the resource table is. A master's platform may write its
    /// initial table there first (as NuttX's simulator does); a remote's
    /// returns once the master's table is ready.
    fn resource_table(&mut self) -> Result<TableLocation, PlatformError>;

    /// The address map: `da ↔ pa` windows and the region's physical base.
    fn address_map(&self) -> Result<LinkMap, PlatformError>;

    /// Starts the remote core (master) or completes this side's part of the
    /// boot (remote; usually nothing).
    fn start(&mut self) -> Result<(), PlatformError>;

    /// Stops the remote core. Return [`PlatformError::Unsupported`] to have a
    /// master instance ask the remote through the command mailbox (STOP).
    fn stop(&mut self) -> Result<(), PlatformError>;

    /// A doorbell handle for the transports.
    fn notifier(&self) -> Self::Notifier;

    /// Resets the remote core with `value`. The default says unsupported,
    /// and the instance sends RESET through the command mailbox.
    fn reset(&mut self, value: u16) -> Result<(), PlatformError> {
        let _ = value;
        Err(PlatformError::Unsupported("reset"))
    }

    /// Makes the remote core panic (dump and halt). The default says
    /// unsupported, and the instance sends PANIC through the command mailbox.
    fn panic(&mut self) -> Result<(), PlatformError> {
        Err(PlatformError::Unsupported("panic"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_cpu_names_are_checked() {
        assert_eq!(RemoteCpuName::new("proxy").unwrap().as_str(), "proxy");
        let long = "x".repeat(32);
        assert_eq!(RemoteCpuName::new(&long).unwrap().as_str(), long);
        assert_eq!(
            RemoteCpuName::new(&"x".repeat(33)),
            Err(PlatformError::BadCpuName)
        );
        assert_eq!(RemoteCpuName::new(""), Err(PlatformError::BadCpuName));
        assert_eq!(RemoteCpuName::new("a\0b"), Err(PlatformError::BadCpuName));
    }

    #[test]
    fn doorbell_raw_ids() {
        assert_eq!(Doorbell::from_raw(5), Doorbell::Id(5));
        assert_eq!(Doorbell::from_raw(u32::MAX), Doorbell::All);
        assert_eq!(Doorbell::All.to_raw(), u32::MAX);
        assert_eq!(Doorbell::Id(3).to_raw(), 3);
    }
}
