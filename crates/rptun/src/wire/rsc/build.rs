//! Byte-exact resource table builder.
#![forbid(unsafe_code)]

#[cfg(feature = "alloc")]
use alloc::vec::Vec;

use zerocopy::little_endian::U32;
use zerocopy::IntoBytes;

use super::raw::{RawCarveout, RawHeader, RawTrace, RawVdev, RawVring};
use super::{
    is_vendor_type, BuildError, Carveout, Trace, Vdev, Vring, CARVEOUT_LEN, HEADER_LEN,
    RSC_CARVEOUT, RSC_DEVMEM, RSC_TABLE_VERSION, TRACE_LEN, VDEV_LEN, VRING_LEN,
};

enum Storage<'b> {
    Slice(&'b mut [u8]),
    #[cfg(feature = "alloc")]
    Vec(Vec<u8>),
}

impl Storage<'_> {
    /// The bytes `start..start + len`, growing a `Vec` as needed.
    fn span(&mut self, start: usize, len: usize) -> Result<&mut [u8], BuildError> {
        let end = start
            .checked_add(len)
            .ok_or(BuildError::TooLarge { size: usize::MAX })?;
        match self {
            Storage::Slice(buf) => {
                let have = buf.len();
                buf.get_mut(start..end)
                    .ok_or(BuildError::BufferTooSmall { need: end, have })
            }
            #[cfg(feature = "alloc")]
            Storage::Vec(v) => {
                if v.len() < end {
                    v.resize(end, 0);
                }
                v.get_mut(start..end)
                    .ok_or(BuildError::TooLarge { size: end })
            }
        }
    }
}

/// Emits a resource table byte for byte, entries packed in the order added.
///
/// The entry count is declared up front (it fixes the size of the offset
/// array, hence where the first entry lands); each `add` method writes the
/// entry at the current position, records its offset in the offset array and
/// returns that offset. [`TableBuilder::reserve`] inserts zeroed bytes that
/// are not an entry (NuttX's simulator embeds each carveout's memory right
/// after its carveout entry this way). The header's reserved words (command
/// mailbox) are written as zero.
///
/// ```
/// use rptun::wire::rsc::{Carveout, Name, TableBuilder, RSC_CARVEOUT};
/// let mut buf = [0xAAu8; 128];
/// let mut b = TableBuilder::new(&mut buf, 1).unwrap();
/// let at = b.add_carveout(&Carveout { da: 0x1000, len: 0x100, name: Name::new("shm").unwrap(), ..Default::default() }).unwrap();
/// assert_eq!(at, 20);
/// assert_eq!(b.finish().unwrap(), 20 + 56);
/// assert_eq!(&buf[20..24], &RSC_CARVEOUT.to_le_bytes());
/// ```
pub struct TableBuilder<'b> {
    out: Storage<'b>,
    declared: u32,
    added: u32,
    pos: usize,
}

impl<'b> TableBuilder<'b> {
    /// Starts a table of `num_entries` entries in `buf`, writing the header
    /// and a zeroed offset array.
    pub fn new(buf: &'b mut [u8], num_entries: u32) -> Result<Self, BuildError> {
        Self::start(Storage::Slice(buf), num_entries)
    }

    fn start(out: Storage<'b>, num_entries: u32) -> Result<Self, BuildError> {
        let array_end = usize::try_from(num_entries)
            .ok()
            .and_then(|n| n.checked_mul(4))
            .and_then(|n| n.checked_add(HEADER_LEN))
            .ok_or(BuildError::TooLarge { size: usize::MAX })?;
        let mut builder = TableBuilder {
            out,
            declared: num_entries,
            added: 0,
            pos: 0,
        };
        let header = RawHeader {
            ver: U32::new(RSC_TABLE_VERSION),
            num: U32::new(num_entries),
            reserved: [U32::new(0); 2],
        };
        let span = builder.push(array_end)?;
        span.fill(0);
        span[..HEADER_LEN].copy_from_slice(header.as_bytes());
        Ok(builder)
    }

    /// Offset (from the table start) where the next entry or reserved gap
    /// will be written; after the last one, the table's length.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Appends a carveout (type 0) entry; returns its offset.
    pub fn add_carveout(&mut self, carveout: &Carveout) -> Result<usize, BuildError> {
        let raw = RawCarveout::from_value(RSC_CARVEOUT, carveout);
        self.add_entry(CARVEOUT_LEN, |span| span.copy_from_slice(raw.as_bytes()))
    }

    /// Appends a devmem (type 1) entry; returns its offset.
    pub fn add_devmem(&mut self, devmem: &Carveout) -> Result<usize, BuildError> {
        let raw = RawCarveout::from_value(RSC_DEVMEM, devmem);
        self.add_entry(CARVEOUT_LEN, |span| span.copy_from_slice(raw.as_bytes()))
    }

    /// Appends a trace (type 2) entry; returns its offset.
    pub fn add_trace(&mut self, trace: &Trace) -> Result<usize, BuildError> {
        let raw = RawTrace::from_value(trace);
        self.add_entry(TRACE_LEN, |span| span.copy_from_slice(raw.as_bytes()))
    }

    /// Appends a vdev (type 3) entry followed by its vrings and config
    /// space; `num_of_vrings` and `config_len` come from the slices' lengths.
    /// Returns the entry's offset.
    pub fn add_vdev(
        &mut self,
        vdev: &Vdev,
        vrings: &[Vring],
        config: &[u8],
    ) -> Result<usize, BuildError> {
        let count = u8::try_from(vrings.len()).map_err(|_| BuildError::TooManyVrings {
            count: vrings.len(),
        })?;
        let config_len =
            u32::try_from(config.len()).map_err(|_| BuildError::TooLarge { size: config.len() })?;
        let raw = RawVdev::from_value(vdev, count, config_len);
        let vrings_len = vrings.len() * VRING_LEN;
        let size = (VDEV_LEN + vrings_len)
            .checked_add(config.len())
            .ok_or(BuildError::TooLarge { size: usize::MAX })?;
        self.add_entry(size, |span| {
            let (head, rest) = span.split_at_mut(VDEV_LEN);
            head.copy_from_slice(raw.as_bytes());
            let (rings, cfg) = rest.split_at_mut(vrings_len);
            for (dst, vring) in rings.chunks_exact_mut(VRING_LEN).zip(vrings) {
                dst.copy_from_slice(RawVring::from_value(vring).as_bytes());
            }
            cfg.copy_from_slice(config);
        })
    }

    /// Appends a vendor entry: the type word (128..=512) then `body`
    /// verbatim. Returns the entry's offset.
    pub fn add_vendor(&mut self, rsc_type: u32, body: &[u8]) -> Result<usize, BuildError> {
        if !is_vendor_type(rsc_type) {
            return Err(BuildError::NotVendorType { rsc_type });
        }
        let size = body
            .len()
            .checked_add(4)
            .ok_or(BuildError::TooLarge { size: usize::MAX })?;
        self.add_entry(size, |span| {
            let (ty, rest) = span.split_at_mut(4);
            ty.copy_from_slice(&rsc_type.to_le_bytes());
            rest.copy_from_slice(body);
        })
    }

    /// Appends `len` zero bytes that belong to no entry (padding, or memory
    /// embedded in the table); returns their offset.
    pub fn reserve(&mut self, len: usize) -> Result<usize, BuildError> {
        let start = self.pos;
        self.push(len)?.fill(0);
        Ok(start)
    }

    /// Checks that every declared entry was added; returns the table's
    /// length in bytes.
    pub fn finish(self) -> Result<usize, BuildError> {
        self.check_complete()?;
        Ok(self.pos)
    }

    fn check_complete(&self) -> Result<(), BuildError> {
        if self.added != self.declared {
            return Err(BuildError::MissingEntries {
                declared: self.declared,
                added: self.added,
            });
        }
        Ok(())
    }

    /// Advances the position by `len` and returns the bytes skipped over.
    fn push(&mut self, len: usize) -> Result<&mut [u8], BuildError> {
        let start = self.pos;
        let end = start
            .checked_add(len)
            .ok_or(BuildError::TooLarge { size: usize::MAX })?;
        // Offsets and lengths in the table are 32-bit.
        if u32::try_from(end).is_err() {
            return Err(BuildError::TooLarge { size: end });
        }
        let span = self.out.span(start, len)?;
        self.pos = end;
        Ok(span)
    }

    fn add_entry(
        &mut self,
        size: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<usize, BuildError> {
        if self.added >= self.declared {
            return Err(BuildError::TooManyEntries {
                declared: self.declared,
            });
        }
        let start = self.pos;
        let offset = u32::try_from(start).map_err(|_| BuildError::TooLarge { size: start })?;
        fill(self.push(size)?);
        let slot = HEADER_LEN + 4 * self.added as usize;
        self.out
            .span(slot, 4)?
            .copy_from_slice(&offset.to_le_bytes());
        self.added += 1;
        Ok(start)
    }
}

#[cfg(feature = "alloc")]
impl TableBuilder<'static> {
    /// Starts a table of `num_entries` entries in a growable `Vec`.
    pub fn new_vec(num_entries: u32) -> Result<Self, BuildError> {
        Self::start(Storage::Vec(Vec::new()), num_entries)
    }
}

#[cfg(feature = "alloc")]
impl TableBuilder<'_> {
    /// Like [`TableBuilder::finish`], returning the table bytes (a copy of
    /// the used part of the buffer when building into a slice).
    pub fn finish_vec(self) -> Result<Vec<u8>, BuildError> {
        self.check_complete()?;
        let len = self.pos;
        Ok(match self.out {
            Storage::Slice(buf) => buf.get(..len).unwrap_or(&[]).to_vec(),
            Storage::Vec(mut v) => {
                v.truncate(len);
                v
            }
        })
    }
}
