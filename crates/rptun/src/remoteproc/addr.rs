//! Address translation: device addresses, the shared physical space, and
//! region offsets.
//!
//! Three address spaces meet on a remoteproc link:
//!
//! - **device addresses** (`da`): how the remote core sees memory; resource
//!   table entries and ELF program headers carry them;
//! - **physical addresses** (`pa`): the space both peers agree on for
//!   virtqueue descriptors and rpmsg buffer addresses (DESIGN.md §4). For a
//!   contiguous shared region it is `pa = base + offset`, where `base` may be
//!   any value the peers agree on (NuttX's simulator publishes its own 32-bit
//!   virtual address);
//! - **offsets** into the local [`Region`](crate::shm::Region), the only
//!   thing the rest of the stack dereferences.
//!
//! [`AddrEnv`] is the `da ↔ pa` table (NuttX's `rptun_addrenv`: rows of
//! `{pa, da, size}`); [`PhysMap`] is the `pa ↔ offset` mapping of the region;
//! [`AddressMap`] chains both. Every translation takes a length and succeeds
//! only when the whole range `[addr, addr + len)` lies inside one window;
//! anything else, including ranges that would wrap around the address space,
//! is a typed [`AddrError`]. A zero length still requires `addr` itself to be
//! inside a window.
#![forbid(unsafe_code)]

/// Errors of address translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    /// The address is in no window of the map.
    #[error(
        "address {addr:#x} (range of {len:#x} bytes) is not mapped; check the address \
         environment / shared-memory base, or the address the peer supplied is bogus"
    )]
    Unmapped {
        /// Start of the range.
        addr: u64,
        /// Length of the range.
        len: u64,
    },
    /// The range starts inside a window but runs past its end.
    #[error(
        "range of {len:#x} bytes at {addr:#x} starts inside a mapped window but runs past its \
         end; the length is too large or the window too small"
    )]
    Straddles {
        /// Start of the range.
        addr: u64,
        /// Length of the range.
        len: u64,
    },
    /// `addr + len` runs past the end of the 64-bit address space.
    #[error(
        "range of {len:#x} bytes at {addr:#x} wraps around the end of the address space; \
         the address or length is corrupt"
    )]
    Wraps {
        /// Start of the range.
        addr: u64,
        /// Length of the range.
        len: u64,
    },
    /// A region offset range is outside the region.
    #[error(
        "offset range of {len:#x} bytes at {offset:#x} is outside the {size:#x}-byte shared \
         region"
    )]
    OffsetOutOfRange {
        /// Start offset.
        offset: usize,
        /// Length of the range.
        len: u64,
        /// Size of the region.
        size: usize,
    },
    /// The address table is full.
    #[error("address environment is full ({capacity} windows); build it with a larger capacity")]
    TooManyWindows {
        /// Capacity of the table.
        capacity: usize,
    },
    /// A window has size zero.
    #[error("address window {index} has size 0; give every window a non-zero size")]
    EmptyWindow {
        /// Index of the window in the table.
        index: usize,
    },
    /// A window reaches past the end of the 64-bit address space.
    #[error(
        "address window {index} wraps around the end of the 64-bit address space; fix its \
         pa/da/size"
    )]
    WindowWraps {
        /// Index of the window in the table.
        index: usize,
    },
    /// The shared region does not fit in the peers' address width.
    #[error(
        "shared region at {base:#x} of {len:#x} bytes does not fit in {bits}-bit physical \
         addresses; choose a base the peer can address"
    )]
    ExceedsAddressWidth {
        /// Physical base of the region.
        base: u64,
        /// Length of the region.
        len: usize,
        /// Address width in bits.
        bits: u32,
    },
}

/// One window of an address environment: `size` bytes at device address
/// `da` are the same bytes as at physical address `pa`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AddrEnvEntry {
    /// Physical (shared) address of the window.
    pub pa: u64,
    /// Device address of the window, as the remote core sees it.
    pub da: u64,
    /// Size of the window in bytes (non-zero).
    pub size: u64,
}

/// Translates `[addr, addr+len)` from a window starting at `from` to the
/// same place in a window starting at `to`; `None` when `addr` is not in the
/// window at all, `Some(Err)` when it starts inside but does not fit.
fn window_translate(
    addr: u64,
    len: u64,
    from: u64,
    to: u64,
    size: u64,
) -> Option<Result<u64, AddrError>> {
    let rel = addr.checked_sub(from)?;
    if rel >= size {
        return None;
    }
    if len > size - rel {
        return Some(Err(AddrError::Straddles { addr, len }));
    }
    // `to + size - 1` was checked not to overflow when the window was added.
    Some(Ok(to + rel))
}

/// A range may end exactly at 2^64 (its last byte at `u64::MAX`), not
/// beyond.
fn check_range(addr: u64, len: u64) -> Result<(), AddrError> {
    if u128::from(addr) + u128::from(len) > 1u128 << 64 {
        return Err(AddrError::Wraps { addr, len });
    }
    Ok(())
}

/// A `da ↔ pa` table with room for `N` windows (NuttX's `rptun_addrenv`).
///
/// Lookups scan the windows in insertion order and the first window that
/// contains the start address decides; overlapping windows are allowed (two
/// device addresses may alias one physical range). An environment built
/// with [`AddrEnv::identity`] maps every address to itself, which is what
/// NuttX does for a platform without an address environment; an environment
/// built with [`AddrEnv::new`] or [`AddrEnv::from_entries`] maps only its
/// windows (an empty one maps nothing).
#[derive(Debug, Clone, Copy)]
pub struct AddrEnv<const N: usize> {
    entries: [AddrEnvEntry; N],
    len: usize,
    identity: bool,
}

impl<const N: usize> Default for AddrEnv<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> AddrEnv<N> {
    /// An empty table: nothing is mapped until windows are pushed.
    pub const fn new() -> Self {
        AddrEnv {
            entries: [AddrEnvEntry {
                pa: 0,
                da: 0,
                size: 0,
            }; N],
            len: 0,
            identity: false,
        }
    }

    /// The identity environment: `da == pa` for every address (no table).
    pub const fn identity() -> Self {
        let mut env = Self::new();
        env.identity = true;
        env
    }

    /// A table holding `entries`, validated as by [`AddrEnv::push`].
    pub fn from_entries(entries: &[AddrEnvEntry]) -> Result<Self, AddrError> {
        let mut env = Self::new();
        for e in entries {
            env.push(*e)?;
        }
        Ok(env)
    }

    /// Adds a window. Fails when the table is full, the window is empty or it
    /// reaches past the end of the 64-bit space on either side.
    ///
    /// Pushing a window into an identity environment turns it into a table.
    pub fn push(&mut self, entry: AddrEnvEntry) -> Result<(), AddrError> {
        let index = self.len;
        if index >= N {
            return Err(AddrError::TooManyWindows { capacity: N });
        }
        if entry.size == 0 {
            return Err(AddrError::EmptyWindow { index });
        }
        let last = entry.size - 1;
        if entry.pa.checked_add(last).is_none() || entry.da.checked_add(last).is_none() {
            return Err(AddrError::WindowWraps { index });
        }
        self.entries[index] = entry;
        self.len += 1;
        self.identity = false;
        Ok(())
    }

    /// The windows, in lookup order.
    pub fn entries(&self) -> &[AddrEnvEntry] {
        &self.entries[..self.len]
    }

    /// True for the identity environment.
    pub fn is_identity(&self) -> bool {
        self.identity
    }

    /// Translates the device-address range `[da, da+len)` to a physical
    /// address.
    pub fn da_to_pa(&self, da: u64, len: u64) -> Result<u64, AddrError> {
        check_range(da, len)?;
        if self.identity {
            return Ok(da);
        }
        self.lookup(da, len, |e| (e.da, e.pa))
    }

    /// Translates the physical range `[pa, pa+len)` to a device address.
    pub fn pa_to_da(&self, pa: u64, len: u64) -> Result<u64, AddrError> {
        check_range(pa, len)?;
        if self.identity {
            return Ok(pa);
        }
        self.lookup(pa, len, |e| (e.pa, e.da))
    }

    fn lookup(
        &self,
        addr: u64,
        len: u64,
        sides: impl Fn(&AddrEnvEntry) -> (u64, u64),
    ) -> Result<u64, AddrError> {
        let mut straddle = None;
        for e in self.entries() {
            let (from, to) = sides(e);
            match window_translate(addr, len, from, to, e.size) {
                Some(Ok(v)) => return Ok(v),
                Some(Err(err)) => {
                    // Another (overlapping) window may still hold the whole range.
                    straddle.get_or_insert(err);
                }
                None => {}
            }
        }
        Err(straddle.unwrap_or(AddrError::Unmapped { addr, len }))
    }
}

/// Where the shared region sits in the peers' physical space:
/// `pa = base + offset` for every offset of a region of `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhysMap {
    base: u64,
    len: usize,
}

impl PhysMap {
    /// The region of `len` bytes whose offset 0 is physical address `base`.
    /// Fails if the region would reach past the end of the 64-bit space.
    pub fn new(base: u64, len: usize) -> Result<PhysMap, AddrError> {
        Self::with_address_bits(base, len, 64)
    }

    /// As [`PhysMap::new`], but also requires every address of the region to
    /// fit in `bits` bits (32 for a peer with 32-bit addresses, such as
    /// NuttX's simulator). `bits` above 64 is treated as 64.
    pub fn with_address_bits(base: u64, len: usize, bits: u32) -> Result<PhysMap, AddrError> {
        let bits = bits.min(64);
        // One past the last address, in u128 so that 2^64 is representable.
        let end = u128::from(base) + len as u128;
        if end > 1u128 << bits {
            return Err(AddrError::ExceedsAddressWidth { base, len, bits });
        }
        Ok(PhysMap { base, len })
    }

    /// Physical address of region offset 0.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Length of the region in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the region has no bytes (nothing translates).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Translates the physical range `[pa, pa+len)` to a region offset; the
    /// whole range must lie inside the region.
    pub fn pa_to_offset(&self, pa: u64, len: u64) -> Result<usize, AddrError> {
        check_range(pa, len)?;
        let size = self.len as u64;
        match window_translate(pa, len, self.base, 0, size) {
            // rel < size = self.len, so it fits in usize.
            Some(Ok(rel)) => Ok(rel as usize),
            Some(Err(e)) => Err(e),
            None => Err(AddrError::Unmapped { addr: pa, len }),
        }
    }

    /// Translates the region range `[offset, offset+len)` to its physical
    /// address; the whole range must lie inside the region.
    pub fn offset_to_pa(&self, offset: usize, len: u64) -> Result<u64, AddrError> {
        let err = AddrError::OffsetOutOfRange {
            offset,
            len,
            size: self.len,
        };
        if offset >= self.len || len > (self.len - offset) as u64 {
            return Err(err);
        }
        // base + len <= 2^64 was checked at construction and offset < len.
        Ok(self.base + offset as u64)
    }
}

/// Anything that can turn a device-address range into a region offset (what
/// the ELF loader and resource-table handling need).
pub trait DaTranslate {
    /// The region offset of the device-address range `[da, da+len)`, which
    /// must lie wholly inside the region.
    fn da_to_offset(&self, da: u64, len: u64) -> Result<usize, AddrError>;
}

/// A region whose device addresses equal its physical addresses.
impl DaTranslate for PhysMap {
    fn da_to_offset(&self, da: u64, len: u64) -> Result<usize, AddrError> {
        self.pa_to_offset(da, len)
    }
}

/// The full translation chain of a link: `da ↔ pa` through an address
/// environment, `pa ↔ offset` through the region's physical placement.
#[derive(Debug, Clone, Copy)]
pub struct AddressMap<const N: usize> {
    /// The `da ↔ pa` windows.
    pub env: AddrEnv<N>,
    /// Where the region sits in the physical space.
    pub phys: PhysMap,
}

impl<const N: usize> AddressMap<N> {
    /// Chains `env` and `phys`.
    pub fn new(env: AddrEnv<N>, phys: PhysMap) -> Self {
        AddressMap { env, phys }
    }

    /// Device-address range → physical address.
    pub fn da_to_pa(&self, da: u64, len: u64) -> Result<u64, AddrError> {
        self.env.da_to_pa(da, len)
    }

    /// Physical range → device address.
    pub fn pa_to_da(&self, pa: u64, len: u64) -> Result<u64, AddrError> {
        self.env.pa_to_da(pa, len)
    }

    /// Physical range → region offset.
    pub fn pa_to_offset(&self, pa: u64, len: u64) -> Result<usize, AddrError> {
        self.phys.pa_to_offset(pa, len)
    }

    /// Region range → physical address.
    pub fn offset_to_pa(&self, offset: usize, len: u64) -> Result<u64, AddrError> {
        self.phys.offset_to_pa(offset, len)
    }

    /// Region range → device address.
    pub fn offset_to_da(&self, offset: usize, len: u64) -> Result<u64, AddrError> {
        let pa = self.phys.offset_to_pa(offset, len)?;
        self.env.pa_to_da(pa, len)
    }
}

impl<const N: usize> DaTranslate for AddressMap<N> {
    fn da_to_offset(&self, da: u64, len: u64) -> Result<usize, AddrError> {
        let pa = self.env.da_to_pa(da, len)?;
        self.phys.pa_to_offset(pa, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env2() -> AddrEnv<4> {
        AddrEnv::from_entries(&[
            AddrEnvEntry {
                pa: 0x8000_0000,
                da: 0x1000,
                size: 0x1000,
            },
            AddrEnvEntry {
                pa: 0x9000_0000,
                da: 0x2000_0000,
                size: 0x10_0000,
            },
        ])
        .unwrap()
    }

    #[test]
    fn da_and_pa_translate_through_windows_both_ways() {
        let env = env2();
        assert_eq!(env.da_to_pa(0x1000, 4), Ok(0x8000_0000));
        assert_eq!(env.da_to_pa(0x1ffc, 4), Ok(0x8000_0ffc));
        assert_eq!(env.da_to_pa(0x2000_0010, 0x100), Ok(0x9000_0010));
        assert_eq!(env.pa_to_da(0x8000_0ffc, 4), Ok(0x1ffc));
        assert_eq!(env.pa_to_da(0x900f_ffff, 1), Ok(0x200f_ffff));
    }

    #[test]
    fn ranges_outside_or_across_windows_are_errors() {
        let env = env2();
        assert_eq!(
            env.da_to_pa(0x0fff, 1),
            Err(AddrError::Unmapped {
                addr: 0x0fff,
                len: 1
            })
        );
        assert_eq!(
            env.da_to_pa(0x2000, 0),
            Err(AddrError::Unmapped {
                addr: 0x2000,
                len: 0
            })
        );
        assert_eq!(
            env.da_to_pa(0x1ffd, 4),
            Err(AddrError::Straddles {
                addr: 0x1ffd,
                len: 4
            })
        );
        assert!(env.pa_to_da(0x7fff_ffff, 2).is_err());
        // an empty table maps nothing, the identity table everything
        let empty = AddrEnv::<2>::new();
        assert!(empty.da_to_pa(0, 1).is_err());
        let id = AddrEnv::<0>::identity();
        assert_eq!(id.da_to_pa(0x1234, 8), Ok(0x1234));
        assert_eq!(id.pa_to_da(0x1234, 8), Ok(0x1234));
    }

    #[test]
    fn overlapping_windows_first_containing_one_wins() {
        let env = AddrEnv::<2>::from_entries(&[
            AddrEnvEntry {
                pa: 0x100,
                da: 0x0,
                size: 0x10,
            },
            AddrEnvEntry {
                pa: 0x500,
                da: 0x0,
                size: 0x100,
            },
        ])
        .unwrap();
        assert_eq!(env.da_to_pa(0x8, 8), Ok(0x108));
        // does not fit the first window, fits the second
        assert_eq!(env.da_to_pa(0x8, 0x20), Ok(0x508));
        assert_eq!(
            env.da_to_pa(0x8, 0x200),
            Err(AddrError::Straddles {
                addr: 0x8,
                len: 0x200
            })
        );
    }

    #[test]
    fn table_validation() {
        let mut env = AddrEnv::<1>::new();
        assert_eq!(
            env.push(AddrEnvEntry {
                pa: 0,
                da: 0,
                size: 0
            }),
            Err(AddrError::EmptyWindow { index: 0 })
        );
        assert_eq!(
            env.push(AddrEnvEntry {
                pa: u64::MAX,
                da: 0,
                size: 2
            }),
            Err(AddrError::WindowWraps { index: 0 })
        );
        assert_eq!(
            env.push(AddrEnvEntry {
                pa: 0,
                da: u64::MAX - 1,
                size: 3
            }),
            Err(AddrError::WindowWraps { index: 0 })
        );
        env.push(AddrEnvEntry {
            pa: 0,
            da: 0,
            size: 1,
        })
        .unwrap();
        assert_eq!(
            env.push(AddrEnvEntry {
                pa: 0,
                da: 0,
                size: 1
            }),
            Err(AddrError::TooManyWindows { capacity: 1 })
        );
    }

    #[test]
    fn windows_at_the_top_of_the_space_and_wrapping_ranges() {
        let env = AddrEnv::<1>::from_entries(&[AddrEnvEntry {
            pa: u64::MAX - 0xfff,
            da: 0,
            size: 0x1000,
        }])
        .unwrap();
        assert_eq!(env.da_to_pa(0xfff, 1), Ok(u64::MAX));
        assert_eq!(env.pa_to_da(u64::MAX, 1), Ok(0xfff));
        assert_eq!(env.pa_to_da(u64::MAX, 0), Ok(0xfff));
        assert_eq!(
            env.pa_to_da(u64::MAX, 2),
            Err(AddrError::Wraps {
                addr: u64::MAX,
                len: 2
            })
        );
        assert_eq!(
            env.da_to_pa(0x10, u64::MAX),
            Err(AddrError::Wraps {
                addr: 0x10,
                len: u64::MAX
            })
        );
        assert_eq!(
            env.pa_to_da(u64::MAX - 0xfff, 0x1001),
            Err(AddrError::Wraps {
                addr: u64::MAX - 0xfff,
                len: 0x1001
            })
        );
        assert_eq!(env.pa_to_da(u64::MAX - 0xfff, 0x1000), Ok(0));
        assert_eq!(
            env.da_to_pa(0x800, 0x801),
            Err(AddrError::Straddles {
                addr: 0x800,
                len: 0x801
            })
        );
        let id = AddrEnv::<0>::identity();
        assert!(matches!(
            id.da_to_pa(u64::MAX, 2),
            Err(AddrError::Wraps { .. })
        ));
    }

    #[test]
    fn phys_map_offsets() {
        let m = PhysMap::new(0x5655_0000, 0x1000).unwrap();
        assert_eq!(m.pa_to_offset(0x5655_0000, 0x1000), Ok(0));
        assert_eq!(m.pa_to_offset(0x5655_0ff0, 0x10), Ok(0xff0));
        assert_eq!(
            m.pa_to_offset(0x5655_0ff0, 0x11),
            Err(AddrError::Straddles {
                addr: 0x5655_0ff0,
                len: 0x11
            })
        );
        assert!(matches!(
            m.pa_to_offset(0x5654_ffff, 1),
            Err(AddrError::Unmapped { .. })
        ));
        assert!(matches!(
            m.pa_to_offset(0x5655_1000, 0),
            Err(AddrError::Unmapped { .. })
        ));
        assert_eq!(m.offset_to_pa(0xff0, 0x10), Ok(0x5655_0ff0));
        assert_eq!(
            m.offset_to_pa(0xff0, 0x11),
            Err(AddrError::OffsetOutOfRange {
                offset: 0xff0,
                len: 0x11,
                size: 0x1000
            })
        );
        assert!(m.offset_to_pa(usize::MAX, 1).is_err());
        assert!(m.offset_to_pa(0x1000, 0).is_err());
    }

    #[test]
    fn phys_map_overflow_and_address_width() {
        // a region ending exactly at the top of the 64-bit space is fine
        let top = PhysMap::new(u64::MAX - 0xff, 0x100).unwrap();
        assert_eq!(top.pa_to_offset(u64::MAX, 1), Ok(0xff));
        assert_eq!(top.offset_to_pa(0xff, 1), Ok(u64::MAX));
        assert!(matches!(
            top.pa_to_offset(u64::MAX, 2),
            Err(AddrError::Wraps { .. })
        ));
        assert!(matches!(
            top.pa_to_offset(u64::MAX - 0x10, u64::MAX),
            Err(AddrError::Wraps { .. })
        ));
        assert!(matches!(
            PhysMap::new(u64::MAX - 0xff, 0x101),
            Err(AddrError::ExceedsAddressWidth { bits: 64, .. })
        ));
        // a 32-bit peer cannot address a region crossing 4 GiB
        assert!(PhysMap::with_address_bits(0xffff_f000, 0x1000, 32).is_ok());
        assert_eq!(
            PhysMap::with_address_bits(0xffff_f000, 0x1001, 32),
            Err(AddrError::ExceedsAddressWidth {
                base: 0xffff_f000,
                len: 0x1001,
                bits: 32
            })
        );
    }

    #[test]
    fn address_map_chains_env_and_region() {
        // NuttX simulator style: da = byte offset in the object, pa = base + offset
        let base = 0x5655_0000;
        let env = AddrEnv::<1>::from_entries(&[AddrEnvEntry {
            pa: base,
            da: 0,
            size: 0x3_0000,
        }])
        .unwrap();
        let map = AddressMap::new(env, PhysMap::new(base, 0x3_0000).unwrap());
        assert_eq!(map.da_to_offset(0x1_0000, 0x100), Ok(0x1_0000));
        assert_eq!(map.da_to_pa(0x1_0000, 0x100), Ok(base + 0x1_0000));
        assert_eq!(map.offset_to_da(0x2_0000, 0x10), Ok(0x2_0000));
        assert_eq!(map.pa_to_da(base + 8, 8), Ok(8));
        assert_eq!(map.pa_to_offset(base + 8, 8), Ok(8));
        assert_eq!(map.offset_to_pa(8, 8), Ok(base + 8));
        assert!(map.da_to_offset(0x2_ff00, 0x200).is_err());
        // the env maps more than the region holds: still refused
        let wide = AddressMap::new(
            AddrEnv::<1>::from_entries(&[AddrEnvEntry {
                pa: base,
                da: 0,
                size: 0x10_0000,
            }])
            .unwrap(),
            PhysMap::new(base, 0x1000).unwrap(),
        );
        assert!(matches!(
            wide.da_to_offset(0x800, 0x1000),
            Err(AddrError::Straddles { .. })
        ));
        assert!(matches!(
            wide.da_to_offset(0x2000, 1),
            Err(AddrError::Unmapped { .. })
        ));
    }
}
