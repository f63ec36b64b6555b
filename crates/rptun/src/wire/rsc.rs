//! The remoteproc resource table (Linux/OpenAMP format, as NuttX uses it).
//!
//! Layout (all little-endian, packed; DESIGN.md §4):
//!
//! ```text
//! header  16 B   u32 ver (= 1), u32 num, u32 reserved[2]   (NuttX: command mailbox)
//!         4·num  u32 offset[num]                            (from the table start)
//! entry          u32 type, then a body by type:
//!   carveout (0) 56 B  da, pa, len, flags, reserved, name[32]
//!   devmem   (1) 56 B  da, pa, len, flags, reserved, name[32]
//!   trace    (2) 48 B  da, len, reserved, name[32]
//!   vdev     (3) 28 B  id, notifyid, dfeatures, gfeatures, config_len,
//!                      u8 status, u8 num_of_vrings, u8 reserved[2]
//!                      then num_of_vrings × vring (20 B: da, align, num, notifyid, reserved)
//!                      then config_len bytes of device config space
//!   vendor (128..=512) opaque, up to the next entry or the end of the table
//! ```
//!
//! Two halves:
//!
//! - [`ResourceTable::parse`] validates a table held in a byte slice (which the
//!   caller copied out of shared memory: the peer is not trusted) and gives
//!   typed [`Entry`] values. Parsing needs no allocation: the table is walked
//!   by index ([`ResourceTable::entry`]) or by iterator
//!   ([`ResourceTable::entries`]). Every parsed entry records its **absolute
//!   byte offset from the table start**, and the `*_offset()` methods give the
//!   offsets of the live fields the remoteproc transport reads and writes in
//!   shared memory later (vdev `gfeatures`/`status`, vring `da`/`notifyid`, …).
//! - [`TableBuilder`] emits byte-exact tables into a `&mut [u8]` (or a
//!   `Vec<u8>` with the `alloc` feature).
//!
//! The plain field values ([`Carveout`], [`Trace`], [`Vdev`], [`Vring`]) are
//! shared by both halves: the parser wraps them with their offset in
//! [`Located`] / [`VdevEntry`], the builder takes them as input.
#![forbid(unsafe_code)]

mod build;
mod parse;
mod raw;

pub use build::TableBuilder;
pub use parse::{Entries, Entry, Located, ParseOptions, RawEntry, ResourceTable, VdevEntry};

use core::fmt;

/// The only resource-table version there is (`ver` in the header).
pub const RSC_TABLE_VERSION: u32 = 1;

/// Entry type: a physically contiguous memory region the remote uses
/// (`da`, `pa`, `len`, `flags`, `name`).
pub const RSC_CARVEOUT: u32 = 0;
/// Entry type: a device memory (I/O) mapping the remote needs.
pub const RSC_DEVMEM: u32 = 1;
/// Entry type: a trace (log) buffer the remote writes.
pub const RSC_TRACE: u32 = 2;
/// Entry type: a virtio device with its vrings and config space.
pub const RSC_VDEV: u32 = 3;
/// First vendor-specific entry type (inclusive).
pub const RSC_VENDOR_START: u32 = 128;
/// Last vendor-specific entry type (inclusive).
pub const RSC_VENDOR_END: u32 = 512;

/// "Any" for addresses and notify ids: the master chooses the value and
/// writes it back into the table.
pub const ANY: u32 = 0xFFFF_FFFF;

/// Size of the table header (`ver`, `num`, `reserved[2]`).
pub const HEADER_LEN: usize = 16;
/// Size of a carveout entry, type word included.
pub const CARVEOUT_LEN: usize = 56;
/// Size of a devmem entry, type word included.
pub const DEVMEM_LEN: usize = 56;
/// Size of a trace entry, type word included.
pub const TRACE_LEN: usize = 48;
/// Size of a vdev entry's fixed part, type word included (vrings and config
/// space follow it).
pub const VDEV_LEN: usize = 28;
/// Size of one vring description inside a vdev entry.
pub const VRING_LEN: usize = 20;
/// Size of the NUL-padded name field of carveout, devmem and trace entries.
pub const NAME_LEN: usize = 32;

/// Byte offset of the command mailbox slot `cmd_master` from the table start
/// (NuttX overlays `reserved[0]` of the header).
pub const CMD_MASTER_OFFSET: usize = 8;
/// Byte offset of the command mailbox slot `cmd_slave` from the table start
/// (NuttX overlays `reserved[1]` of the header).
pub const CMD_SLAVE_OFFSET: usize = 12;

/// Virtio device id: network card.
pub const VIRTIO_ID_NET: u32 = 1;
/// Virtio device id: block device.
pub const VIRTIO_ID_BLOCK: u32 = 2;
/// Virtio device id: console.
pub const VIRTIO_ID_CONSOLE: u32 = 3;
/// Virtio device id: entropy source (virtio-rng).
pub const VIRTIO_ID_ENTROPY: u32 = 4;
/// Virtio device id: rpmsg.
pub const VIRTIO_ID_RPMSG: u32 = 7;
/// Virtio device id: GPU.
pub const VIRTIO_ID_GPU: u32 = 16;
/// Virtio device id: input device.
pub const VIRTIO_ID_INPUT: u32 = 18;
/// Virtio device id: sound card.
pub const VIRTIO_ID_SOUND: u32 = 25;

/// Virtio status bit: the guest noticed the device (ACKNOWLEDGE).
pub const VIRTIO_STATUS_ACKNOWLEDGE: u8 = 1;
/// Virtio status bit: the guest knows how to drive the device.
pub const VIRTIO_STATUS_DRIVER: u8 = 2;
/// Virtio status bit: the driver is set up and ready (the device side may
/// start using the vdev only after this).
pub const VIRTIO_STATUS_DRIVER_OK: u8 = 4;
/// Virtio status bit: feature negotiation is complete.
pub const VIRTIO_STATUS_FEATURES_OK: u8 = 8;
/// Virtio status bit: the device hit an error and needs a reset.
pub const VIRTIO_STATUS_NEEDS_RESET: u8 = 0x40;
/// Virtio status bit: the driver gave up on the device.
pub const VIRTIO_STATUS_FAILED: u8 = 0x80;

/// Why a resource table was refused by [`ResourceTable::parse`].
///
/// `index` fields are the entry's position in the offset array; `offset`
/// fields are byte offsets from the table start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RscError {
    /// Fewer bytes than the 16-byte header.
    #[error(
        "resource table is {len} bytes, shorter than its 16-byte header; \
         copy the whole table out of shared memory before parsing"
    )]
    TooShort {
        /// Bytes given to the parser.
        len: usize,
    },
    /// `ver` is not 1.
    #[error(
        "resource table version is {ver}, but only version 1 exists; the bytes are not a \
         resource table, or the master has not written it yet"
    )]
    BadVersion {
        /// The version found.
        ver: u32,
    },
    /// The header's reserved words (the NuttX command mailbox) are not zero
    /// and the caller asked for them to be.
    #[error(
        "resource table reserved words are {word0:#x} and {word1:#x}, expected zero: a \
         command is pending in the mailbox overlaid on them; retry once it is handled, or \
         parse with `require_zero_reserved: false`"
    )]
    ReservedNotZero {
        /// `reserved[0]` (`cmd_master`).
        word0: u32,
        /// `reserved[1]` (`cmd_slave`).
        word1: u32,
    },
    /// `num` exceeds [`ParseOptions::max_entries`].
    #[error(
        "resource table declares {num} entries, more than the limit of {max}; the count is \
         corrupt, or raise `ParseOptions::max_entries` for a genuinely large table"
    )]
    TooManyEntries {
        /// Entry count in the header.
        num: u32,
        /// The configured limit.
        max: u32,
    },
    /// The offset array (`num` words after the header) does not fit.
    #[error(
        "resource table declares {num} entries but their offset array does not fit in the \
         {len}-byte table; the entry count is corrupt or the table was cut short"
    )]
    OffsetArrayTruncated {
        /// Entry count in the header.
        num: u32,
        /// Bytes given to the parser.
        len: usize,
    },
    /// An entry offset points into the header or the offset array.
    #[error(
        "entry {index} has offset {offset:#x}, inside the header or offset array (entries \
         start at {min:#x} or later); the offset array is corrupt"
    )]
    OffsetInHeader {
        /// Entry index.
        index: usize,
        /// The offset found.
        offset: u32,
        /// First byte after the offset array.
        min: usize,
    },
    /// An entry offset leaves no room for the 4-byte type word.
    #[error(
        "entry {index} has offset {offset:#x}, which leaves no room for its type in the \
         {len}-byte table; the offset is corrupt or the table was cut short"
    )]
    OffsetOutOfBounds {
        /// Entry index.
        index: usize,
        /// The offset found.
        offset: u32,
        /// Bytes given to the parser.
        len: usize,
    },
    /// The fixed part of an entry runs past the end of the table.
    #[error(
        "entry {index} (type {rsc_type}) needs {need} bytes but only {avail} remain in the \
         table; the entry is truncated or its offset is wrong"
    )]
    EntryTruncated {
        /// Entry index.
        index: usize,
        /// Entry type.
        rsc_type: u32,
        /// Size of the entry's fixed part.
        need: usize,
        /// Bytes from the entry offset to the end of the table.
        avail: usize,
    },
    /// A vdev's vring array runs past the end of the table.
    #[error(
        "vdev entry {index} declares {count} vrings ({need} bytes) but only {avail} bytes \
         follow its header; num_of_vrings is corrupt or the table was cut short"
    )]
    VringsTruncated {
        /// Entry index.
        index: usize,
        /// `num_of_vrings`.
        count: u8,
        /// Bytes the vring array needs.
        need: usize,
        /// Bytes available after the vdev header.
        avail: usize,
    },
    /// A vdev's config space runs past the end of the table.
    #[error(
        "vdev entry {index} declares {config_len} bytes of config space but only {avail} \
         bytes follow its vrings; config_len is corrupt or the table was cut short"
    )]
    ConfigTruncated {
        /// Entry index.
        index: usize,
        /// `config_len`.
        config_len: u32,
        /// Bytes available after the vring array.
        avail: usize,
    },
    /// Two entries share bytes.
    #[error(
        "entries {index} and {other} overlap; each entry must occupy its own bytes, so the \
         offset array is corrupt"
    )]
    Overlap {
        /// The entry whose extent contains the other's start.
        index: usize,
        /// The other entry.
        other: usize,
    },
}

/// Why [`TableBuilder`] (or [`Name::new`]) could not emit a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// The output buffer is too small.
    #[error("resource table needs {need} bytes but the buffer holds {have}; pass a larger buffer")]
    BufferTooSmall {
        /// Bytes needed so far.
        need: usize,
        /// Size of the buffer.
        have: usize,
    },
    /// The table would not be addressable with 32-bit offsets.
    #[error(
        "resource table would grow past 4 GiB (at least {size} bytes); offsets and lengths are \
         32-bit: make the table smaller"
    )]
    TooLarge {
        /// The size reached.
        size: usize,
    },
    /// More entries were added than declared in [`TableBuilder::new`].
    #[error(
        "resource table was declared with {declared} entries and one more was added; declare \
         the right count up front"
    )]
    TooManyEntries {
        /// The declared count.
        declared: u32,
    },
    /// Fewer entries were added than declared.
    #[error(
        "resource table was declared with {declared} entries but only {added} were added; add \
         the missing entries or declare fewer"
    )]
    MissingEntries {
        /// The declared count.
        declared: u32,
        /// Entries added.
        added: u32,
    },
    /// A vdev has more than 255 vrings (`num_of_vrings` is a byte).
    #[error("a vdev can have at most 255 vrings, {count} were given")]
    TooManyVrings {
        /// Vrings given.
        count: usize,
    },
    /// A vendor entry type outside 128..=512.
    #[error(
        "resource type {rsc_type} is not a vendor type (128..=512); use the dedicated method \
         for standard entries"
    )]
    NotVendorType {
        /// The type given.
        rsc_type: u32,
    },
    /// A name longer than 32 bytes.
    #[error("resource name is {len} bytes, but the field holds at most 32; shorten it")]
    NameTooLong {
        /// Length in bytes.
        len: usize,
    },
    /// A name containing a NUL byte (which would cut it short on the peer).
    #[error("resource name contains a NUL byte; peers would read it cut short")]
    NameHasNul,
}

/// A 32-byte NUL-padded name (carveout, devmem and trace entries).
///
/// The name is the bytes before the first NUL; a name without NUL uses all 32
/// bytes. Peers may leave garbage after the NUL: it is kept in the raw bytes
/// but ignored by [`Name::as_bytes`] and [`Name::as_str`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Name([u8; NAME_LEN]);

impl Name {
    /// Builds a name from a string of at most 32 bytes without NUL.
    pub fn new(name: &str) -> Result<Self, BuildError> {
        let bytes = name.as_bytes();
        if bytes.len() > NAME_LEN {
            return Err(BuildError::NameTooLong { len: bytes.len() });
        }
        if bytes.contains(&0) {
            return Err(BuildError::NameHasNul);
        }
        let mut raw = [0u8; NAME_LEN];
        raw[..bytes.len()].copy_from_slice(bytes);
        Ok(Name(raw))
    }

    /// Wraps the raw 32 bytes of a name field as found in a table.
    pub const fn from_raw(raw: [u8; NAME_LEN]) -> Self {
        Name(raw)
    }

    /// The raw 32 bytes, including the padding (and any garbage after the NUL).
    pub const fn raw(&self) -> &[u8; NAME_LEN] {
        &self.0
    }

    /// The name's bytes: everything before the first NUL, or all 32 bytes.
    pub fn as_bytes(&self) -> &[u8] {
        let end = self.0.iter().position(|&b| b == 0).unwrap_or(NAME_LEN);
        self.0.get(..end).unwrap_or(&[])
    }

    /// The name as text, or `None` if its bytes are not valid UTF-8 (then use
    /// [`Name::as_bytes`]).
    pub fn as_str(&self) -> Option<&str> {
        core::str::from_utf8(self.as_bytes()).ok()
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.as_str() {
            Some(s) => f.debug_tuple("Name").field(&s).finish(),
            None => f.debug_tuple("Name").field(&self.as_bytes()).finish(),
        }
    }
}

/// Field values of a carveout (type 0) or devmem (type 1) entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Carveout {
    /// Device address (as the remote sees it), or [`ANY`].
    pub da: u32,
    /// Physical address, or [`ANY`].
    pub pa: u32,
    /// Length in bytes.
    pub len: u32,
    /// Memory flags (IOMMU protection bits for devmem).
    pub flags: u32,
    /// Reserved word (zero in well-formed tables; kept as found).
    pub reserved: u32,
    /// Region name.
    pub name: Name,
}

/// Field values of a trace (type 2) entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Trace {
    /// Device address of the trace buffer.
    pub da: u32,
    /// Length of the trace buffer in bytes.
    pub len: u32,
    /// Reserved word (kept as found).
    pub reserved: u32,
    /// Trace buffer name.
    pub name: Name,
}

/// Field values of a vdev (type 3) entry's fixed part.
///
/// `num_of_vrings` and `config_len` are not stored here: they are the
/// lengths of the vring array and config space that go with the entry
/// ([`VdevEntry::num_vrings`], [`VdevEntry::config`]; the builder takes them
/// as slices).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Vdev {
    /// Virtio device id (`VIRTIO_ID_*`).
    pub id: u32,
    /// Notify id of the config space, or [`ANY`].
    pub notifyid: u32,
    /// Features the device offers (32 bits: legacy virtio).
    pub dfeatures: u32,
    /// Features the driver accepted.
    pub gfeatures: u32,
    /// Virtio status byte (`VIRTIO_STATUS_*` bits).
    pub status: u8,
    /// Reserved bytes, kept as found. NuttX stores the master's role in
    /// `reserved[0]` (0 = master is the virtio driver, 1 = device).
    pub reserved: [u8; 2],
}

/// Field values of one vring description inside a vdev entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Vring {
    /// Device address of the ring, or 0 / [`ANY`] for "master allocates".
    pub da: u32,
    /// Alignment of the used ring, in bytes.
    pub align: u32,
    /// Number of descriptors.
    pub num: u32,
    /// Notify id of this ring, or [`ANY`].
    pub notifyid: u32,
    /// Reserved word (kept as found; the physical address in some OpenAMP
    /// versions).
    pub reserved: u32,
}

/// True for the vendor-specific entry types 128..=512.
pub const fn is_vendor_type(rsc_type: u32) -> bool {
    rsc_type >= RSC_VENDOR_START && rsc_type <= RSC_VENDOR_END
}
