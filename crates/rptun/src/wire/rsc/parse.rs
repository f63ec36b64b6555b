//! Validating parser over an untrusted resource table held in a byte slice.
#![forbid(unsafe_code)]

use core::fmt;
use core::mem::offset_of;
use core::ops::Deref;

use zerocopy::FromBytes;

use super::raw::{RawCarveout, RawHeader, RawTrace, RawVdev, RawVring};
use super::{
    is_vendor_type, Carveout, RscError, Trace, Vdev, Vring, CARVEOUT_LEN, HEADER_LEN, RSC_CARVEOUT,
    RSC_DEVMEM, RSC_TABLE_VERSION, RSC_TRACE, RSC_VDEV, TRACE_LEN, VDEV_LEN, VRING_LEN,
};

/// Choices the caller makes when parsing a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseOptions {
    /// Refuse a table whose header `reserved` words (the NuttX command
    /// mailbox) are not zero. On by default: DESIGN.md §4 wants both words
    /// zero while the table is parsed. Turn it off to read a table while a
    /// mailbox command may be pending.
    pub require_zero_reserved: bool,
    /// Largest entry count accepted. Bounds the parser's work on hostile
    /// input (checking that entries do not overlap is quadratic in the count).
    pub max_entries: u32,
}

impl ParseOptions {
    /// Default for [`ParseOptions::max_entries`]: far more than any real
    /// table (NuttX's largest have a handful of entries).
    pub const DEFAULT_MAX_ENTRIES: u32 = 256;
}

impl Default for ParseOptions {
    fn default() -> Self {
        ParseOptions {
            require_zero_reserved: true,
            max_entries: Self::DEFAULT_MAX_ENTRIES,
        }
    }
}

/// A validated resource table: a checked view over the caller's bytes.
///
/// Construction ([`ResourceTable::parse`]) checks every offset, count and
/// length, so every entry the accessors return lies wholly inside the bytes,
/// and every `*_offset()` points at a field inside them.
#[derive(Clone, Copy)]
pub struct ResourceTable<'a> {
    bytes: &'a [u8],
    num: usize,
    reserved: [u32; 2],
    extent: usize,
}

impl fmt::Debug for ResourceTable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the bytes: the input may be a whole shared-memory window.
        f.debug_struct("ResourceTable")
            .field("num_entries", &self.num)
            .field("reserved", &self.reserved)
            .field("extent", &self.extent)
            .field("input_len", &self.bytes.len())
            .finish()
    }
}

/// A value with the absolute byte offset (from the table start) where it was
/// found. Dereferences to the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Located<T> {
    /// Offset of the value's first byte from the table start.
    pub offset: usize,
    /// The decoded value.
    pub value: T,
}

impl<T> Deref for Located<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

/// A parsed vdev entry: the fixed fields, the vring array and config space.
/// Dereferences to its [`Vdev`] fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VdevEntry<'a> {
    /// Offset of the entry (its type word) from the table start.
    pub offset: usize,
    /// The fixed fields.
    pub value: Vdev,
    vrings: &'a [u8],
    config: &'a [u8],
}

/// A vendor-specific or unknown entry, passed through uninterpreted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawEntry<'a> {
    /// Offset of the entry (its type word) from the table start.
    pub offset: usize,
    /// The entry type.
    pub rsc_type: u32,
    /// The bytes after the type word, up to the next entry (by offset) or
    /// the end of the table.
    pub body: &'a [u8],
}

/// One entry of a resource table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry<'a> {
    /// A carveout (type 0).
    Carveout(Located<Carveout>),
    /// A devmem mapping (type 1).
    Devmem(Located<Carveout>),
    /// A trace buffer (type 2).
    Trace(Located<Trace>),
    /// A virtio device (type 3).
    Vdev(VdevEntry<'a>),
    /// A vendor-specific entry (types 128..=512).
    Vendor(RawEntry<'a>),
    /// An entry of a type this crate does not know (4..=127, above 512).
    /// Reported rather than dropped, so a caller can decide whether to
    /// refuse the table.
    Unknown(RawEntry<'a>),
}

/// Iterator over the entries of a [`ResourceTable`], in offset-array order.
#[derive(Debug, Clone)]
pub struct Entries<'a> {
    table: ResourceTable<'a>,
    next: usize,
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let end = at.checked_add(4)?;
    let word = bytes.get(at..end)?;
    Some(u32::from_le_bytes(word.try_into().ok()?))
}

impl<'a> ResourceTable<'a> {
    /// Parses and validates the table at the start of `bytes`.
    ///
    /// `bytes` may extend past the table (e.g. the rest of a shared-memory
    /// window): entries only have to fit inside it. Vendor and unknown
    /// entries extend to the next entry or the end of `bytes`.
    ///
    /// Checks: header present, `ver` = 1, reserved words zero (if
    /// [`ParseOptions::require_zero_reserved`]), `num` within
    /// [`ParseOptions::max_entries`] and its offset array inside `bytes`,
    /// every offset past the offset array with each entry's fixed part, vring
    /// array and config space inside `bytes`, and no two entries overlapping.
    pub fn parse(bytes: &'a [u8], options: &ParseOptions) -> Result<Self, RscError> {
        let (header, _) = RawHeader::read_from_prefix(bytes)
            .map_err(|_| RscError::TooShort { len: bytes.len() })?;
        let ver = header.ver.get();
        if ver != RSC_TABLE_VERSION {
            return Err(RscError::BadVersion { ver });
        }
        let reserved = [header.reserved[0].get(), header.reserved[1].get()];
        if options.require_zero_reserved && reserved != [0, 0] {
            return Err(RscError::ReservedNotZero {
                word0: reserved[0],
                word1: reserved[1],
            });
        }
        let num_u32 = header.num.get();
        if num_u32 > options.max_entries {
            return Err(RscError::TooManyEntries {
                num: num_u32,
                max: options.max_entries,
            });
        }
        let truncated = RscError::OffsetArrayTruncated {
            num: num_u32,
            len: bytes.len(),
        };
        let num = usize::try_from(num_u32).map_err(|_| truncated)?;
        let array_end = num
            .checked_mul(4)
            .and_then(|n| n.checked_add(HEADER_LEN))
            .ok_or(truncated)?;
        if array_end > bytes.len() {
            return Err(truncated);
        }
        let mut table = ResourceTable {
            bytes,
            num,
            reserved,
            extent: array_end,
        };

        // Pass 1: every entry on its own.
        let mut extent = array_end;
        for index in 0..num {
            let entry = table.decode(index)?;
            extent = extent.max(entry.offset().saturating_add(entry.size()));
        }
        // Pass 2: no entry starts inside (or at the start of) another one.
        // Vendor entries end at the next start, so only fixed-size entries
        // can contain another start; equal starts are caught for all.
        for index in 0..num {
            let entry = table.decode(index)?;
            let start = entry.offset();
            let end = start.saturating_add(entry.size());
            for other in (0..num).filter(|&o| o != index) {
                let other_start = table.entry_offset(other).unwrap_or(usize::MAX);
                if other_start == start || (start < other_start && other_start < end) {
                    return Err(RscError::Overlap { index, other });
                }
            }
        }
        table.extent = extent;
        Ok(table)
    }

    /// Number of entries (`num`).
    pub fn num_entries(&self) -> usize {
        self.num
    }

    /// The header's reserved words (the NuttX command mailbox: `cmd_master`,
    /// `cmd_slave`) as they were when parsed.
    pub fn reserved(&self) -> [u32; 2] {
        self.reserved
    }

    /// One past the last byte covered by the header, the offset array and
    /// the entries (a trailing vendor entry extends to the end of the
    /// input). Bytes from here on are not part of the table.
    pub fn extent(&self) -> usize {
        self.extent
    }

    /// The bytes the table was parsed from.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The entry at `index` in the offset array, or `None` past the end.
    pub fn entry(&self, index: usize) -> Option<Entry<'a>> {
        if index >= self.num {
            return None;
        }
        self.decode(index).ok()
    }

    /// All entries in offset-array order.
    pub fn entries(&self) -> Entries<'a> {
        Entries {
            table: *self,
            next: 0,
        }
    }

    /// The vdev entries in order (NuttX pairs the i-th vdev with the i-th
    /// carveout).
    pub fn vdevs(&self) -> impl Iterator<Item = VdevEntry<'a>> + 'a {
        self.entries().filter_map(|e| match e {
            Entry::Vdev(v) => Some(v),
            _ => None,
        })
    }

    /// The carveout entries (type 0 only, not devmem) in order.
    pub fn carveouts(&self) -> impl Iterator<Item = Located<Carveout>> + 'a {
        self.entries().filter_map(|e| match e {
            Entry::Carveout(c) => Some(c),
            _ => None,
        })
    }

    fn array_end(&self) -> usize {
        HEADER_LEN + 4 * self.num
    }

    fn entry_offset(&self, index: usize) -> Option<usize> {
        let word = read_u32(self.bytes, HEADER_LEN.checked_add(index.checked_mul(4)?)?)?;
        usize::try_from(word).ok()
    }

    /// Start of the nearest entry after `offset`, or the end of the input.
    fn next_start(&self, offset: usize) -> usize {
        (0..self.num)
            .filter_map(|i| self.entry_offset(i))
            .filter(|&o| o > offset)
            .fold(self.bytes.len(), usize::min)
    }

    fn decode(&self, index: usize) -> Result<Entry<'a>, RscError> {
        let len = self.bytes.len();
        let word =
            read_u32(self.bytes, HEADER_LEN + 4 * index).ok_or(RscError::OffsetArrayTruncated {
                num: u32::try_from(self.num).unwrap_or(u32::MAX),
                len,
            })?;
        let out_of_bounds = RscError::OffsetOutOfBounds {
            index,
            offset: word,
            len,
        };
        let offset = usize::try_from(word).map_err(|_| out_of_bounds)?;
        let min = self.array_end();
        if offset < min {
            return Err(RscError::OffsetInHeader {
                index,
                offset: word,
                min,
            });
        }
        let rest = self
            .bytes
            .get(offset..)
            .filter(|r| r.len() >= 4)
            .ok_or(out_of_bounds)?;
        let rsc_type = read_u32(rest, 0).ok_or(out_of_bounds)?;
        let truncated = |need: usize| RscError::EntryTruncated {
            index,
            rsc_type,
            need,
            avail: rest.len(),
        };
        let entry = match rsc_type {
            RSC_CARVEOUT | RSC_DEVMEM => {
                let (raw, _) =
                    RawCarveout::ref_from_prefix(rest).map_err(|_| truncated(CARVEOUT_LEN))?;
                let located = Located {
                    offset,
                    value: raw.to_value(),
                };
                if rsc_type == RSC_CARVEOUT {
                    Entry::Carveout(located)
                } else {
                    Entry::Devmem(located)
                }
            }
            RSC_TRACE => {
                let (raw, _) = RawTrace::ref_from_prefix(rest).map_err(|_| truncated(TRACE_LEN))?;
                Entry::Trace(Located {
                    offset,
                    value: raw.to_value(),
                })
            }
            RSC_VDEV => {
                let (raw, after) =
                    RawVdev::ref_from_prefix(rest).map_err(|_| truncated(VDEV_LEN))?;
                let count = raw.num_of_vrings;
                let need = usize::from(count) * VRING_LEN;
                let vrings = after.get(..need).ok_or(RscError::VringsTruncated {
                    index,
                    count,
                    need,
                    avail: after.len(),
                })?;
                let after = after.get(need..).unwrap_or(&[]);
                let config_len = raw.config_len.get();
                let config_truncated = RscError::ConfigTruncated {
                    index,
                    config_len,
                    avail: after.len(),
                };
                let cfg = usize::try_from(config_len).map_err(|_| config_truncated)?;
                let config = after.get(..cfg).ok_or(config_truncated)?;
                Entry::Vdev(VdevEntry {
                    offset,
                    value: raw.to_value(),
                    vrings,
                    config,
                })
            }
            _ => {
                let end = self.next_start(offset).min(len);
                let body = self.bytes.get(offset + 4..end).unwrap_or(&[]);
                let raw = RawEntry {
                    offset,
                    rsc_type,
                    body,
                };
                if is_vendor_type(rsc_type) {
                    Entry::Vendor(raw)
                } else {
                    Entry::Unknown(raw)
                }
            }
        };
        Ok(entry)
    }
}

impl<'a> Iterator for Entries<'a> {
    type Item = Entry<'a>;

    fn next(&mut self) -> Option<Entry<'a>> {
        let entry = self.table.entry(self.next)?;
        self.next += 1;
        Some(entry)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.table.num.saturating_sub(self.next);
        (left, Some(left))
    }
}

impl<'a> Entry<'a> {
    /// Offset of the entry (its type word) from the table start.
    pub fn offset(&self) -> usize {
        match self {
            Entry::Carveout(c) | Entry::Devmem(c) => c.offset,
            Entry::Trace(t) => t.offset,
            Entry::Vdev(v) => v.offset,
            Entry::Vendor(r) | Entry::Unknown(r) => r.offset,
        }
    }

    /// Size of the entry in bytes, type word included (for a vdev: with its
    /// vrings and config space).
    pub fn size(&self) -> usize {
        match self {
            Entry::Carveout(_) | Entry::Devmem(_) => CARVEOUT_LEN,
            Entry::Trace(_) => TRACE_LEN,
            Entry::Vdev(v) => v.size(),
            Entry::Vendor(r) | Entry::Unknown(r) => 4 + r.body.len(),
        }
    }

    /// The entry's type word.
    pub fn rsc_type(&self) -> u32 {
        match self {
            Entry::Carveout(_) => RSC_CARVEOUT,
            Entry::Devmem(_) => RSC_DEVMEM,
            Entry::Trace(_) => RSC_TRACE,
            Entry::Vdev(_) => RSC_VDEV,
            Entry::Vendor(r) | Entry::Unknown(r) => r.rsc_type,
        }
    }
}

impl Located<Carveout> {
    /// Offset of the carveout's `da` field from the table start.
    pub fn da_offset(&self) -> usize {
        self.offset + offset_of!(RawCarveout, da)
    }
    /// Offset of the carveout's `pa` field from the table start.
    pub fn pa_offset(&self) -> usize {
        self.offset + offset_of!(RawCarveout, pa)
    }
    /// Offset of the carveout's `len` field from the table start.
    pub fn len_offset(&self) -> usize {
        self.offset + offset_of!(RawCarveout, len)
    }
}

impl Located<Trace> {
    /// Offset of the trace buffer's `da` field from the table start.
    pub fn da_offset(&self) -> usize {
        self.offset + offset_of!(RawTrace, da)
    }
}

impl Located<Vring> {
    /// Offset of the vring's `da` field from the table start.
    pub fn da_offset(&self) -> usize {
        self.offset + offset_of!(RawVring, da)
    }
    /// Offset of the vring's `align` field from the table start.
    pub fn align_offset(&self) -> usize {
        self.offset + offset_of!(RawVring, align)
    }
    /// Offset of the vring's `num` field from the table start.
    pub fn num_offset(&self) -> usize {
        self.offset + offset_of!(RawVring, num)
    }
    /// Offset of the vring's `notifyid` field from the table start.
    pub fn notifyid_offset(&self) -> usize {
        self.offset + offset_of!(RawVring, notifyid)
    }
}

impl<'a> VdevEntry<'a> {
    /// Offset of `notifyid` from the table start.
    pub fn notifyid_offset(&self) -> usize {
        self.offset + offset_of!(RawVdev, notifyid)
    }
    /// Offset of `dfeatures` (device features) from the table start.
    pub fn dfeatures_offset(&self) -> usize {
        self.offset + offset_of!(RawVdev, dfeatures)
    }
    /// Offset of `gfeatures` (driver-accepted features) from the table start.
    pub fn gfeatures_offset(&self) -> usize {
        self.offset + offset_of!(RawVdev, gfeatures)
    }
    /// Offset of the `status` byte from the table start.
    pub fn status_offset(&self) -> usize {
        self.offset + offset_of!(RawVdev, status)
    }
    /// Offset of the `reserved[2]` bytes (NuttX: the master's role) from
    /// the table start.
    pub fn reserved_offset(&self) -> usize {
        self.offset + offset_of!(RawVdev, reserved)
    }
    /// Offset of the first byte of config space from the table start (its
    /// length is `config().len()`).
    pub fn config_offset(&self) -> usize {
        self.offset + VDEV_LEN + self.vrings.len()
    }
    /// The config space bytes as they were when parsed.
    pub fn config(&self) -> &'a [u8] {
        self.config
    }
    /// Number of vrings (`num_of_vrings`).
    pub fn num_vrings(&self) -> usize {
        self.vrings.len() / VRING_LEN
    }
    /// The vring at `index`, with its offset from the table start.
    pub fn vring(&self, index: usize) -> Option<Located<Vring>> {
        let start = index.checked_mul(VRING_LEN)?;
        let raw = self.vrings.get(start..start.checked_add(VRING_LEN)?)?;
        let raw = RawVring::ref_from_bytes(raw).ok()?;
        Some(Located {
            offset: self.offset + VDEV_LEN + start,
            value: raw.to_value(),
        })
    }
    /// All vrings in order.
    pub fn vrings(&self) -> impl Iterator<Item = Located<Vring>> + 'a {
        let this = *self;
        (0..this.num_vrings()).filter_map(move |i| this.vring(i))
    }
    /// Size of the whole entry: fixed part, vrings and config space.
    pub fn size(&self) -> usize {
        VDEV_LEN + self.vrings.len() + self.config.len()
    }
}

impl Deref for VdevEntry<'_> {
    type Target = Vdev;
    fn deref(&self) -> &Vdev {
        &self.value
    }
}
