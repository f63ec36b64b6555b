//! The carveout allocator: vrings and buffers cut from a shared range.
//!
//! A [`Carveout`] manages the offsets `[start, start + len)` of a shared
//! region (or of any abstract offset space) and hands out offsets, never
//! pointers. Alignment is of the *physical* address the peers agree on
//! (DESIGN.md §4: vring and buffer alignment is of the absolute address), so
//! the allocator is told at creation which physical address `start` is.
//!
//! The bookkeeping lives in the allocator value itself, in local memory,
//! never in the shared region where a peer could corrupt it (DESIGN.md §8).
//! It is a sorted table of at most `N` live allocations; free space is the
//! gaps between them, so freeing coalesces by construction and alignment
//! padding stays available to later, smaller requests. Allocation is first
//! fit, `O(N)`; no `alloc` is needed.
#![forbid(unsafe_code)]

/// Errors of the carveout allocator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CarveoutError {
    /// A zero-byte allocation was requested.
    #[error("cannot allocate 0 bytes from a carveout; ask for at least one byte")]
    ZeroSize,
    /// The alignment is zero or not a power of two.
    #[error("alignment {align} is not a power of two; vring and buffer alignments must be")]
    BadAlign {
        /// The alignment requested.
        align: usize,
    },
    /// The table of live allocations is full.
    #[error(
        "carveout allocation table is full ({capacity} live allocations); free some or build \
         the allocator with a larger capacity"
    )]
    TableFull {
        /// Capacity of the table.
        capacity: usize,
    },
    /// No free range can hold the request.
    #[error(
        "carveout exhausted: no free range holds {size} bytes aligned to {align} ({free} bytes \
         free, largest free range {largest_free}); use a larger carveout or fewer/smaller buffers"
    )]
    OutOfMemory {
        /// Bytes requested.
        size: usize,
        /// Alignment requested.
        align: usize,
        /// Total free bytes.
        free: usize,
        /// Largest free range, before alignment.
        largest_free: usize,
    },
    /// `free` was called with an offset that is not the start of a live
    /// allocation.
    #[error(
        "offset {offset:#x} is not the start of a live carveout allocation (double free or a \
         wrong offset)"
    )]
    NotAllocated {
        /// The offset passed.
        offset: usize,
    },
    /// A range to reserve overlaps a live allocation.
    #[error("carveout range of {len} bytes at {offset:#x} is not free; it overlaps an allocation")]
    NotFree {
        /// Start of the range.
        offset: usize,
        /// Length of the range.
        len: usize,
    },
    /// A range lies (partly) outside the carveout, or the carveout itself
    /// would wrap around its offset or physical address space.
    #[error(
        "range of {len} bytes at {offset:#x} lies outside the carveout (or wraps around the \
         address space); check the offsets and the carveout's size"
    )]
    OutOfRange {
        /// Start of the range.
        offset: usize,
        /// Length of the range.
        len: usize,
    },
}

/// A live allocation: `len` bytes at region offset `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Block {
    /// Region offset of the first byte.
    pub offset: usize,
    /// Length in bytes, as requested.
    pub len: usize,
}

impl Block {
    fn end(&self) -> usize {
        // offset + len was checked to stay inside the carveout on insertion
        self.offset + self.len
    }
}

/// Usage totals of a carveout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CarveoutStats {
    /// Size of the managed range in bytes.
    pub total: usize,
    /// Bytes handed out.
    pub used: usize,
    /// Bytes not handed out (`total - used`).
    pub free: usize,
    /// Largest contiguous free range, before any alignment.
    pub largest_free: usize,
    /// Number of live allocations.
    pub allocations: usize,
}

/// An allocator over the offsets `[start, start + len)` with room for `N`
/// live allocations.
#[derive(Debug, Clone)]
pub struct Carveout<const N: usize> {
    start: usize,
    len: usize,
    pa_start: u64,
    used: [Block; N],
    count: usize,
}

impl<const N: usize> Carveout<N> {
    /// An allocator for the offsets `[start, start + len)`, where offset
    /// `start` is at physical address `pa_start` (the address alignment is
    /// computed on). Fails if the range wraps around the offset space or its
    /// physical image wraps around the 64-bit space.
    pub fn new(start: usize, len: usize, pa_start: u64) -> Result<Self, CarveoutError> {
        let out = CarveoutError::OutOfRange { offset: start, len };
        if start.checked_add(len).is_none() || u128::from(pa_start) + len as u128 > 1u128 << 64 {
            return Err(out);
        }
        Ok(Carveout {
            start,
            len,
            pa_start,
            used: [Block { offset: 0, len: 0 }; N],
            count: 0,
        })
    }

    /// First offset of the managed range.
    pub fn start(&self) -> usize {
        self.start
    }

    /// Size of the managed range in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the managed range has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// One past the last offset of the managed range.
    pub fn end(&self) -> usize {
        self.start + self.len
    }

    /// The physical address of `offset` (which must be inside the range, or
    /// its end).
    pub fn pa_of(&self, offset: usize) -> Result<u64, CarveoutError> {
        if offset < self.start || offset > self.end() {
            return Err(CarveoutError::OutOfRange { offset, len: 0 });
        }
        // pa_start + len <= 2^64 checked at creation; the end itself may be
        // 2^64, which does not fit.
        self.pa_start
            .checked_add((offset - self.start) as u64)
            .ok_or(CarveoutError::OutOfRange { offset, len: 0 })
    }

    /// The live allocations, sorted by offset.
    pub fn allocations(&self) -> &[Block] {
        &self.used[..self.count]
    }

    /// Frees everything.
    pub fn reset(&mut self) {
        self.count = 0;
    }

    /// The free gaps, in offset order, as `(start, end)` pairs.
    fn gaps(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        let end = self.end();
        (0..=self.count).map(move |i| {
            let g0 = if i == 0 {
                self.start
            } else {
                self.used[i - 1].end()
            };
            let g1 = if i == self.count {
                end
            } else {
                self.used[i].offset
            };
            (g0, g1)
        })
    }

    /// Usage totals.
    pub fn stats(&self) -> CarveoutStats {
        let used: usize = self.allocations().iter().map(|b| b.len).sum();
        let largest_free = self.gaps().map(|(a, b)| b - a).max().unwrap_or(0);
        CarveoutStats {
            total: self.len,
            used,
            free: self.len - used,
            largest_free,
            allocations: self.count,
        }
    }

    /// The first offset in `[g0, g1)` whose physical address is a multiple
    /// of `align` (a power of two) and that has room for `size` bytes.
    fn fit(&self, g0: usize, g1: usize, size: usize, align: usize) -> Option<usize> {
        let pa0 = self.pa_start.checked_add((g0 - self.start) as u64)?;
        let mask = align as u64 - 1;
        let aligned = pa0.checked_add(mask)? & !mask;
        // pad < align, which is a usize
        let pad = (aligned - pa0) as usize;
        let off = g0.checked_add(pad)?;
        let end = off.checked_add(size)?;
        (end <= g1).then_some(off)
    }

    fn insert(&mut self, index: usize, block: Block) {
        self.used.copy_within(index..self.count, index + 1);
        self.used[index] = block;
        self.count += 1;
    }

    /// Allocates `size` bytes whose physical address is a multiple of
    /// `align` (a power of two) and returns the region offset.
    pub fn alloc(&mut self, size: usize, align: usize) -> Result<usize, CarveoutError> {
        if size == 0 {
            return Err(CarveoutError::ZeroSize);
        }
        if !align.is_power_of_two() {
            return Err(CarveoutError::BadAlign { align });
        }
        if self.count >= N {
            return Err(CarveoutError::TableFull { capacity: N });
        }
        let found = self
            .gaps()
            .enumerate()
            .find_map(|(i, (g0, g1))| self.fit(g0, g1, size, align).map(|off| (i, off)));
        match found {
            Some((index, offset)) => {
                self.insert(index, Block { offset, len: size });
                Ok(offset)
            }
            None => {
                let s = self.stats();
                Err(CarveoutError::OutOfMemory {
                    size,
                    align,
                    free: s.free,
                    largest_free: s.largest_free,
                })
            }
        }
    }

    /// Marks `[offset, offset + len)` as used, e.g. a vring whose address
    /// the resource table fixes. Free it like any allocation.
    pub fn reserve(&mut self, offset: usize, len: usize) -> Result<(), CarveoutError> {
        if len == 0 {
            return Err(CarveoutError::ZeroSize);
        }
        let end = match offset.checked_add(len) {
            Some(end) if offset >= self.start && end <= self.end() => end,
            _ => return Err(CarveoutError::OutOfRange { offset, len }),
        };
        let index = self.allocations().partition_point(|b| b.offset < offset);
        let after_prev = index == 0 || self.used[index - 1].end() <= offset;
        let before_next = index == self.count || end <= self.used[index].offset;
        if !(after_prev && before_next) {
            return Err(CarveoutError::NotFree { offset, len });
        }
        if self.count >= N {
            return Err(CarveoutError::TableFull { capacity: N });
        }
        self.insert(index, Block { offset, len });
        Ok(())
    }

    /// Frees the allocation starting at `offset` and returns its length.
    pub fn free(&mut self, offset: usize) -> Result<usize, CarveoutError> {
        let index = self
            .allocations()
            .binary_search_by_key(&offset, |b| b.offset)
            .map_err(|_| CarveoutError::NotAllocated { offset })?;
        let len = self.used[index].len;
        self.used.copy_within(index + 1..self.count, index);
        self.count -= 1;
        Ok(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn allocations_are_aligned_on_the_physical_address() {
        // offset 0x10 of the region is at pa 0x1004: a 16-aligned pa is at
        // offset 0x1c
        let mut c = Carveout::<4>::new(0x10, 0x100, 0x1004).unwrap();
        let a = c.alloc(8, 16).unwrap();
        assert_eq!(a, 0x1c);
        assert_eq!(c.pa_of(a).unwrap() % 16, 0);
        // the 12 bytes of padding in front are still free for small requests
        let b = c.alloc(4, 4).unwrap();
        assert_eq!(b, 0x10);
        let s = c.stats();
        assert_eq!(s.used, 12);
        assert_eq!(s.free, 0x100 - 12);
        assert_eq!(s.allocations, 2);
    }

    #[test]
    fn freeing_coalesces_and_returns_to_the_initial_state() {
        let mut c = Carveout::<8>::new(0, 0x40, 0).unwrap();
        let a = c.alloc(0x10, 1).unwrap();
        let b = c.alloc(0x10, 1).unwrap();
        let d = c.alloc(0x10, 1).unwrap();
        assert_eq!((a, b, d), (0, 0x10, 0x20));
        assert_eq!(c.free(b), Ok(0x10));
        assert_eq!(c.stats().largest_free, 0x10);
        // the freed middle and the tail are separate until `d` goes
        assert!(c.alloc(0x20, 1).is_err());
        c.free(d).unwrap();
        assert_eq!(c.stats().largest_free, 0x30);
        assert_eq!(c.alloc(0x30, 1), Ok(0x10));
        c.free(0x10).unwrap();
        c.free(a).unwrap();
        let s = c.stats();
        assert_eq!((s.free, s.largest_free, s.allocations), (0x40, 0x40, 0));
    }

    #[test]
    fn errors_are_specific() {
        let mut c = Carveout::<2>::new(0, 0x100, 0).unwrap();
        assert_eq!(c.alloc(0, 1), Err(CarveoutError::ZeroSize));
        assert_eq!(c.alloc(8, 3), Err(CarveoutError::BadAlign { align: 3 }));
        assert_eq!(c.alloc(8, 0), Err(CarveoutError::BadAlign { align: 0 }));
        assert_eq!(
            c.alloc(0x101, 1),
            Err(CarveoutError::OutOfMemory {
                size: 0x101,
                align: 1,
                free: 0x100,
                largest_free: 0x100
            })
        );
        c.alloc(8, 1).unwrap();
        c.alloc(8, 1).unwrap();
        assert_eq!(c.alloc(8, 1), Err(CarveoutError::TableFull { capacity: 2 }));
        assert_eq!(c.free(4), Err(CarveoutError::NotAllocated { offset: 4 }));
        c.free(0).unwrap();
        assert_eq!(c.free(0), Err(CarveoutError::NotAllocated { offset: 0 }));
    }

    #[test]
    fn alignment_larger_than_the_carveout_fails_cleanly() {
        let mut c = Carveout::<2>::new(0, 0x100, 0x10).unwrap();
        assert!(matches!(
            c.alloc(1, 0x1000),
            Err(CarveoutError::OutOfMemory { .. })
        ));
        // near the top of the physical space the aligned address would wrap
        // (pa_start = 2^64 - 0xf0, which is 0x10 past a 0x80 boundary)
        let mut top = Carveout::<2>::new(0, 0xf0, u64::MAX - 0xef).unwrap();
        assert!(matches!(
            top.alloc(1, 1 << 20),
            Err(CarveoutError::OutOfMemory { .. })
        ));
        assert_eq!(top.alloc(1, 0x80), Ok(0x70));
        assert_eq!(top.pa_of(0x70), Ok(u64::MAX - 0x7f));
        assert_eq!(top.pa_of(0xef), Ok(u64::MAX));
        assert!(top.pa_of(0xf0).is_err());
    }

    #[test]
    fn creation_rejects_wrapping_ranges() {
        assert!(Carveout::<1>::new(usize::MAX, 2, 0).is_err());
        assert!(Carveout::<1>::new(0, 0x101, u64::MAX - 0xff).is_err());
        assert!(Carveout::<1>::new(0, 0x100, u64::MAX - 0xff).is_ok());
    }

    #[test]
    fn reserve_fixed_ranges() {
        let mut c = Carveout::<4>::new(0x100, 0x100, 0x100).unwrap();
        c.reserve(0x100, 0x20).unwrap();
        assert_eq!(
            c.reserve(0x110, 0x20),
            Err(CarveoutError::NotFree {
                offset: 0x110,
                len: 0x20
            })
        );
        assert_eq!(
            c.reserve(0x1f0, 0x20),
            Err(CarveoutError::OutOfRange {
                offset: 0x1f0,
                len: 0x20
            })
        );
        assert!(c.reserve(0xf0, 0x10).is_err());
        assert!(c.reserve(usize::MAX, 2).is_err());
        c.reserve(0x1e0, 0x20).unwrap();
        assert_eq!(c.alloc(0x10, 1), Ok(0x120));
        assert_eq!(c.alloc(0xb0, 1), Ok(0x130));
        assert!(c.alloc(1, 1).is_err());
        assert_eq!(
            c.allocations(),
            &[
                Block {
                    offset: 0x100,
                    len: 0x20
                },
                Block {
                    offset: 0x120,
                    len: 0x10
                },
                Block {
                    offset: 0x130,
                    len: 0xb0
                },
                Block {
                    offset: 0x1e0,
                    len: 0x20
                }
            ]
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Alloc { size: usize, align_log: u32 },
        Free { pick: usize },
        FreeBogus { offset: usize },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (1usize..64, 0u32..7).prop_map(|(size, align_log)| Op::Alloc { size, align_log }),
            2 => any::<usize>().prop_map(|pick| Op::Free { pick }),
            1 => (0usize..700).prop_map(|offset| Op::FreeBogus { offset }),
        ]
    }

    const CAP: usize = 12;

    proptest! {
        /// Random alloc/free sequences checked against a byte-bitmap model.
        #[test]
        #[cfg_attr(miri, ignore = "the bitmap model costs minutes under Miri; safe code only, \
            and the carveout fuzz target checks the same properties")]
        fn matches_a_bitmap_model(
            start in 0usize..64,
            len in 0usize..512,
            pa_pick in prop_oneof![any::<u64>(), Just(u64::MAX - 511), 0u64..4096],
            ops in proptest::collection::vec(op(), 1..80),
        ) {
            // keep the physical image inside the 64-bit space
            let pa_start = pa_pick.min(u64::MAX - len as u64);
            let mut c = Carveout::<CAP>::new(start, len, pa_start).unwrap();
            let initial = c.stats();
            let mut used = vec![false; len];
            let mut live: Vec<(usize, usize)> = Vec::new();

            for op in ops {
                match op {
                    Op::Alloc { size, align_log } => {
                        let align = 1usize << align_log;
                        let fits = |off: usize| {
                            let rel = off - start;
                            rel + size <= len
                                && (pa_start + rel as u64) % align as u64 == 0
                                && used[rel..rel + size].iter().all(|u| !u)
                        };
                        match c.alloc(size, align) {
                            Ok(off) => {
                                prop_assert!(off >= start && off + size <= start + len);
                                prop_assert_eq!((pa_start + (off - start) as u64) % align as u64, 0);
                                prop_assert!(fits(off), "allocation overlaps a live one");
                                prop_assert!(live.len() < CAP);
                                used[off - start..off - start + size].iter_mut().for_each(|u| *u = true);
                                live.push((off, size));
                            }
                            Err(CarveoutError::TableFull { capacity }) => {
                                prop_assert_eq!(capacity, CAP);
                                prop_assert_eq!(live.len(), CAP);
                            }
                            Err(CarveoutError::OutOfMemory { .. }) => {
                                prop_assert!(live.len() < CAP);
                                prop_assert!(
                                    !(start..start + len).any(fits),
                                    "allocator missed a free aligned range"
                                );
                            }
                            Err(e) => prop_assert!(false, "unexpected error {e:?}"),
                        }
                    }
                    Op::Free { pick } => {
                        if live.is_empty() {
                            continue;
                        }
                        let (off, size) = live.swap_remove(pick % live.len());
                        prop_assert_eq!(c.free(off), Ok(size));
                        used[off - start..off - start + size].iter_mut().for_each(|u| *u = false);
                    }
                    Op::FreeBogus { offset } => {
                        if live.iter().any(|&(o, _)| o == offset) {
                            continue;
                        }
                        prop_assert_eq!(c.free(offset), Err(CarveoutError::NotAllocated { offset }));
                    }
                }
                let s = c.stats();
                prop_assert_eq!(s.used, used.iter().filter(|u| **u).count());
                prop_assert_eq!(s.free, len - s.used);
                prop_assert_eq!(s.allocations, live.len());
                let largest = used
                    .split(|u| *u)
                    .map(|run| run.len())
                    .max()
                    .unwrap_or(0);
                prop_assert_eq!(s.largest_free, largest);
            }

            for (off, size) in live.drain(..) {
                prop_assert_eq!(c.free(off), Ok(size));
            }
            prop_assert_eq!(c.stats(), initial);
            prop_assert!(c.allocations().is_empty());
        }
    }
}
