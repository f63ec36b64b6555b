//! The rpmsg virtio device config space (NuttX/OpenAMP-fork extension).
//!
//! 64 bytes at the end of an rpmsg vdev entry, little-endian (DESIGN.md §4).
//! "h2r" is driver→device, "host" is the driver side. Two layouts exist and
//! the caller picks one explicitly ([`ConfigLayout`]):
//!
//! ```text
//! Current (NuttX from March 2026)      Legacy (NuttX before March 2026)
//! @0   u32 h2r_buf_size                @0   u32 h2r_buf_size
//! @4   u32 r2h_buf_size                @4   u32 r2h_buf_size
//! @8   u64 h2r_buf_addr                @8   u8  host_cpuname[8]
//! @16  u64 r2h_buf_addr                @16  u8  remote_cpuname[8]
//! @24  u8  host_cpuname[8]             @24  reserved (zero) up to 64
//! @32  u8  remote_cpuname[8]
//! @40  u32 reserved[6]
//! ```
//!
//! Which fields are meaningful depends on the negotiated features
//! ([`VIRTIO_RPMSG_F_BUFSZ`] for the sizes, [`VIRTIO_RPMSG_F_CPUNAME`] for
//! the names, [`VIRTIO_RPMSG_F_BUFADDR`] for the addresses); this module only
//! converts bytes.
#![forbid(unsafe_code)]

use core::fmt;

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// rpmsg feature bit number: name service (the standard rpmsg feature).
pub const VIRTIO_RPMSG_F_NS: u32 = 0;
/// rpmsg feature bit number: name-service CREATE_ACK (NuttX extension).
pub const VIRTIO_RPMSG_F_ACK: u32 = 1;
/// rpmsg feature bit number: buffer sizes in config space (NuttX extension;
/// without it buffers are 512 bytes each way).
pub const VIRTIO_RPMSG_F_BUFSZ: u32 = 2;
/// rpmsg feature bit number: cpu names in config space (NuttX extension).
pub const VIRTIO_RPMSG_F_CPUNAME: u32 = 3;
/// rpmsg feature bit number: buffer addresses in config space (NuttX
/// extension, current layout only).
pub const VIRTIO_RPMSG_F_BUFADDR: u32 = 4;

/// Size of the rpmsg config space.
pub const CONFIG_LEN: usize = 64;
/// Size of a cpu-name field: at most 7 bytes of name plus a NUL.
pub const CPUNAME_LEN: usize = 8;

/// Which NuttX layout the config space uses (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConfigLayout {
    /// NuttX from March 2026: sizes, buffer addresses, then cpu names.
    #[default]
    Current,
    /// NuttX before March 2026: sizes then cpu names, no buffer addresses.
    Legacy,
}

impl ConfigLayout {
    /// Bytes of config space the layout's fields cover (40 for current, 24
    /// for legacy); the rest up to [`CONFIG_LEN`] is reserved.
    pub const fn min_len(self) -> usize {
        match self {
            ConfigLayout::Current => 40,
            ConfigLayout::Legacy => 24,
        }
    }
}

/// Why a config space could not be parsed or emitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The config space is shorter than the layout's fields.
    #[error(
        "rpmsg config space is {len} bytes but the {layout:?} layout needs {need}; the vdev's \
         config_len is too small or the wrong layout was chosen"
    )]
    TooShort {
        /// Bytes given.
        len: usize,
        /// Bytes the layout needs.
        need: usize,
        /// The layout asked for.
        layout: ConfigLayout,
    },
    /// A cpu-name field has no NUL in its 8 bytes.
    #[error(
        "rpmsg config {field} has no NUL terminator in its 8 bytes; names are at most 7 bytes \
         (check that the peer uses the same config layout)"
    )]
    CpuNameUnterminated {
        /// `"host_cpuname"` or `"remote_cpuname"`.
        field: &'static str,
    },
    /// A cpu-name field is not valid UTF-8.
    #[error(
        "rpmsg config {field} is not valid UTF-8 (check that the peer uses the same config \
         layout)"
    )]
    CpuNameNotUtf8 {
        /// `"host_cpuname"` or `"remote_cpuname"`.
        field: &'static str,
    },
    /// A cpu name given to [`CpuName::new`] is longer than 7 bytes.
    #[error("cpu name is {len} bytes, but at most 7 fit (plus NUL); shorten it")]
    CpuNameTooLong {
        /// Length in bytes.
        len: usize,
    },
    /// A cpu name given to [`CpuName::new`] contains a NUL.
    #[error("cpu name contains a NUL byte; peers would read it cut short")]
    CpuNameHasNul,
    /// Buffer addresses cannot be expressed in the legacy layout.
    #[error(
        "the legacy rpmsg config layout has no buffer addresses, but an address is set; use the \
         current layout or leave the addresses zero"
    )]
    AddressesNeedCurrentLayout,
}

/// A validated cpu name: at most 7 bytes of UTF-8 without NUL.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CpuName([u8; CPUNAME_LEN]);

impl CpuName {
    /// Builds a cpu name; at most 7 bytes, no NUL.
    pub fn new(name: &str) -> Result<Self, ConfigError> {
        let bytes = name.as_bytes();
        if bytes.len() >= CPUNAME_LEN {
            return Err(ConfigError::CpuNameTooLong { len: bytes.len() });
        }
        if bytes.contains(&0) {
            return Err(ConfigError::CpuNameHasNul);
        }
        let mut raw = [0u8; CPUNAME_LEN];
        raw[..bytes.len()].copy_from_slice(bytes);
        Ok(CpuName(raw))
    }

    /// Validates a raw field: NUL within the 8 bytes, UTF-8 before it.
    /// Bytes after the NUL are ignored (and emitted as zero).
    fn from_field(raw: [u8; CPUNAME_LEN], field: &'static str) -> Result<Self, ConfigError> {
        let end = raw
            .iter()
            .position(|&b| b == 0)
            .ok_or(ConfigError::CpuNameUnterminated { field })?;
        let name = raw.get(..end).unwrap_or(&[]);
        let name = core::str::from_utf8(name).map_err(|_| ConfigError::CpuNameNotUtf8 { field })?;
        CpuName::new(name)
    }

    /// The name (empty if the field was all zero).
    pub fn as_str(&self) -> &str {
        let end = self.0.iter().position(|&b| b == 0).unwrap_or(CPUNAME_LEN);
        core::str::from_utf8(self.0.get(..end).unwrap_or(&[])).unwrap_or("")
    }

    /// The 8-byte field: the name, NUL-padded.
    pub const fn raw(&self) -> &[u8; CPUNAME_LEN] {
        &self.0
    }
}

impl fmt::Debug for CpuName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CpuName").field(&self.as_str()).finish()
    }
}

impl fmt::Display for CpuName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The rpmsg config space, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RpmsgConfig {
    /// Size of each driver→device (host→remote) buffer in bytes.
    pub h2r_buf_size: u32,
    /// Size of each device→driver (remote→host) buffer in bytes.
    pub r2h_buf_size: u32,
    /// Address of the driver→device buffer pool (current layout only; 0 in
    /// the legacy layout).
    pub h2r_buf_addr: u64,
    /// Address of the device→driver buffer pool (current layout only; 0 in
    /// the legacy layout).
    pub r2h_buf_addr: u64,
    /// Name of the driver-side (host) cpu.
    pub host_cpuname: CpuName,
    /// Name of the device-side (remote) cpu.
    pub remote_cpuname: CpuName,
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct RawCurrent {
    h2r_buf_size: U32,
    r2h_buf_size: U32,
    h2r_buf_addr: U64,
    r2h_buf_addr: U64,
    host_cpuname: [u8; CPUNAME_LEN],
    remote_cpuname: [u8; CPUNAME_LEN],
    // u32 reserved[6] follows (zero).
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct RawLegacy {
    h2r_buf_size: U32,
    r2h_buf_size: U32,
    host_cpuname: [u8; CPUNAME_LEN],
    remote_cpuname: [u8; CPUNAME_LEN],
    // reserved (zero) up to 64 bytes follows.
}

const _: () = assert!(core::mem::size_of::<RawCurrent>() == ConfigLayout::Current.min_len());
const _: () = assert!(core::mem::size_of::<RawLegacy>() == ConfigLayout::Legacy.min_len());

const HOST: &str = "host_cpuname";
const REMOTE: &str = "remote_cpuname";

impl RpmsgConfig {
    /// Decodes a config space in `layout`.
    ///
    /// `bytes` must cover the layout's fields ([`ConfigLayout::min_len`]);
    /// anything after them is reserved and ignored. Both cpu names must be
    /// NUL-terminated within their 8 bytes and valid UTF-8.
    pub fn parse(bytes: &[u8], layout: ConfigLayout) -> Result<Self, ConfigError> {
        let too_short = ConfigError::TooShort {
            len: bytes.len(),
            need: layout.min_len(),
            layout,
        };
        match layout {
            ConfigLayout::Current => {
                let (raw, _) = RawCurrent::ref_from_prefix(bytes).map_err(|_| too_short)?;
                Ok(RpmsgConfig {
                    h2r_buf_size: raw.h2r_buf_size.get(),
                    r2h_buf_size: raw.r2h_buf_size.get(),
                    h2r_buf_addr: raw.h2r_buf_addr.get(),
                    r2h_buf_addr: raw.r2h_buf_addr.get(),
                    host_cpuname: CpuName::from_field(raw.host_cpuname, HOST)?,
                    remote_cpuname: CpuName::from_field(raw.remote_cpuname, REMOTE)?,
                })
            }
            ConfigLayout::Legacy => {
                let (raw, _) = RawLegacy::ref_from_prefix(bytes).map_err(|_| too_short)?;
                Ok(RpmsgConfig {
                    h2r_buf_size: raw.h2r_buf_size.get(),
                    r2h_buf_size: raw.r2h_buf_size.get(),
                    h2r_buf_addr: 0,
                    r2h_buf_addr: 0,
                    host_cpuname: CpuName::from_field(raw.host_cpuname, HOST)?,
                    remote_cpuname: CpuName::from_field(raw.remote_cpuname, REMOTE)?,
                })
            }
        }
    }

    /// Encodes the config space in `layout` as 64 bytes (reserved words
    /// zero).
    ///
    /// The legacy layout has no buffer addresses: non-zero addresses are an
    /// error rather than silently dropped.
    pub fn to_bytes(&self, layout: ConfigLayout) -> Result<[u8; CONFIG_LEN], ConfigError> {
        let mut out = [0u8; CONFIG_LEN];
        match layout {
            ConfigLayout::Current => {
                let raw = RawCurrent {
                    h2r_buf_size: U32::new(self.h2r_buf_size),
                    r2h_buf_size: U32::new(self.r2h_buf_size),
                    h2r_buf_addr: U64::new(self.h2r_buf_addr),
                    r2h_buf_addr: U64::new(self.r2h_buf_addr),
                    host_cpuname: *self.host_cpuname.raw(),
                    remote_cpuname: *self.remote_cpuname.raw(),
                };
                out[..raw.as_bytes().len()].copy_from_slice(raw.as_bytes());
            }
            ConfigLayout::Legacy => {
                if self.h2r_buf_addr != 0 || self.r2h_buf_addr != 0 {
                    return Err(ConfigError::AddressesNeedCurrentLayout);
                }
                let raw = RawLegacy {
                    h2r_buf_size: U32::new(self.h2r_buf_size),
                    r2h_buf_size: U32::new(self.r2h_buf_size),
                    host_cpuname: *self.host_cpuname.raw(),
                    remote_cpuname: *self.remote_cpuname.raw(),
                };
                out[..raw.as_bytes().len()].copy_from_slice(raw.as_bytes());
            }
        }
        Ok(out)
    }

    /// Encodes into `buf` (a vdev's config space), which must cover the
    /// layout's fields; bytes of `buf` up to [`CONFIG_LEN`] past the fields
    /// are zeroed, bytes beyond that are left alone. Returns the number of
    /// bytes written.
    pub fn write(&self, layout: ConfigLayout, buf: &mut [u8]) -> Result<usize, ConfigError> {
        let need = layout.min_len();
        if buf.len() < need {
            return Err(ConfigError::TooShort {
                len: buf.len(),
                need,
                layout,
            });
        }
        let image = self.to_bytes(layout)?;
        let n = buf.len().min(CONFIG_LEN);
        buf[..n].copy_from_slice(&image[..n]);
        Ok(n)
    }
}
