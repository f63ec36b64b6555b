//! The driver transport's private shared-memory allocator: a bump pointer
//! plus a small coalescing free list, over a range of region offsets.
//!
//! Bookkeeping lives here, in local memory, never in the shared region
//! (DESIGN.md §8). Alignment is of the *physical* address (what the device
//! sees), not of the region offset. A general carveout allocator lives in
//! `remoteproc`; this one is deliberately small and private.
#![forbid(unsafe_code)]

use super::super::queue::Window;

/// Free-list capacity; a freed block that finds no slot (after coalescing)
/// is leaked, with a warning.
const FREE_SLOTS: usize = 32;

#[derive(Debug, Clone)]
pub(super) struct Pool {
    /// Region offset of the pool start.
    start: usize,
    /// Region offset one past the pool end.
    end: usize,
    /// Bump pointer: everything from here to `end` is free.
    next: usize,
    /// Free blocks below `next`: (offset, len), unordered, non-adjacent.
    free: [(usize, usize); FREE_SLOTS],
    nfree: usize,
    /// Translates offsets to physical addresses for alignment.
    window: Window,
}

impl Pool {
    /// A pool over region offsets `start..end`, which must lie inside
    /// `window` (checked by the caller).
    pub(super) fn new(start: usize, end: usize, window: Window) -> Pool {
        Pool {
            start,
            end,
            next: start,
            free: [(0, 0); FREE_SLOTS],
            nfree: 0,
            window,
        }
    }

    /// First offset at or after `off` whose physical address is a multiple
    /// of `align` (a power of two).
    fn align_up(&self, off: usize, align: usize) -> Option<usize> {
        let pa = super::offset_to_pa(&self.window, off)?;
        let mask = (align as u64).checked_sub(1)?;
        let aligned = pa.checked_add(mask)? & !mask;
        off.checked_add(usize::try_from(aligned - pa).ok()?)
    }

    /// Allocates `size` bytes (0 counts as 1) whose physical address is a
    /// multiple of `align` (rounded up to a power of two); returns the region
    /// offset.
    pub(super) fn alloc(&mut self, size: usize, align: usize) -> Option<usize> {
        let size = size.max(1);
        let align = align.max(1).checked_next_power_of_two()?;
        // First fit in the free list.
        for i in 0..self.nfree {
            let (s, l) = self.free[i];
            let Some(a) = self.align_up(s, align) else {
                continue;
            };
            let head = a - s;
            if head > l || l - head < size {
                continue;
            }
            let tail = l - head - size;
            // Slot `i` is released, so one remainder always fits; two need
            // one more slot.
            if head > 0 && tail > 0 && self.nfree == FREE_SLOTS {
                continue;
            }
            self.remove(i);
            if head > 0 {
                self.push(s, head);
            }
            if tail > 0 {
                self.push(a + size, tail);
            }
            return Some(a);
        }
        // Bump.
        let a = self.align_up(self.next, align)?;
        let end = a.checked_add(size)?;
        if end > self.end {
            return None;
        }
        if a > self.next {
            self.insert_free(self.next, a - self.next);
        }
        self.next = end;
        Some(a)
    }

    /// Returns a block; blocks outside the allocated range or overlapping a
    /// free block (a double free) are ignored with a warning.
    pub(super) fn free(&mut self, offset: usize, size: usize) {
        let size = size.max(1);
        let end = match offset.checked_add(size) {
            Some(e) if offset >= self.start && e <= self.next => e,
            _ => {
                log::warn!(
                    "virtio-mmio: ignoring free of {size} bytes at {offset:#x}: not allocated"
                );
                return;
            }
        };
        let overlaps = self.free[..self.nfree]
            .iter()
            .any(|&(s, l)| offset < s + l && s < end);
        if overlaps {
            log::warn!("virtio-mmio: ignoring double free of {size} bytes at {offset:#x}");
            return;
        }
        self.insert_free(offset, size);
    }

    /// Bytes never handed out or returned (free list plus the bump tail).
    #[cfg(test)]
    pub(super) fn available(&self) -> usize {
        self.end - self.next + self.free[..self.nfree].iter().map(|b| b.1).sum::<usize>()
    }

    fn insert_free(&mut self, mut s: usize, mut l: usize) {
        // Coalesce with neighbours; each merge removes a block, so this ends
        // after at most `nfree` rounds.
        let mut i = 0;
        while i < self.nfree {
            let (bs, bl) = self.free[i];
            if bs + bl == s {
                s = bs;
                l += bl;
                self.remove(i);
                i = 0;
            } else if s + l == bs {
                l += bl;
                self.remove(i);
                i = 0;
            } else {
                i += 1;
            }
        }
        if s + l == self.next {
            self.next = s;
        } else if self.nfree < FREE_SLOTS {
            self.push(s, l);
        } else {
            log::warn!("virtio-mmio: shared-memory free list full; leaking {l} bytes at {s:#x}");
        }
    }

    fn push(&mut self, s: usize, l: usize) {
        self.free[self.nfree] = (s, l);
        self.nfree += 1;
    }

    fn remove(&mut self, i: usize) {
        self.nfree -= 1;
        self.free[i] = self.free[self.nfree];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(pa: u64) -> Window {
        Window {
            pa,
            offset: 0x100,
            len: 0x1000,
        }
    }

    #[test]
    fn alignment_is_of_the_physical_address() {
        // pa 0x8000_0008 at offset 0x100: offset 0x1f8 is pa 0x8000_0100.
        let mut p = Pool::new(0x100, 0x1100, window(0x8000_0008));
        let a = p.alloc(16, 0x100).unwrap();
        assert_eq!(a, 0x1f8);
        // the skipped head is reusable
        let b = p.alloc(8, 8).unwrap();
        assert_eq!(b, 0x100);
    }

    #[test]
    fn freed_blocks_are_reused_and_coalesce_back() {
        let mut p = Pool::new(0x100, 0x1100, window(0x4000_0000));
        let total = p.available();
        let a = p.alloc(0x100, 16).unwrap();
        let b = p.alloc(0x100, 16).unwrap();
        let c = p.alloc(0x100, 16).unwrap();
        p.free(b, 0x100);
        assert_eq!(p.alloc(0x80, 16).unwrap(), b);
        p.free(b, 0x80);
        p.free(a, 0x100);
        p.free(c, 0x100);
        assert_eq!(p.available(), total);
        // everything coalesced back into the bump tail: one block fits
        assert_eq!(p.alloc(0x1000, 1).unwrap(), 0x100);
    }

    #[test]
    fn exhaustion_and_bad_frees() {
        let mut p = Pool::new(0x100, 0x1100, window(0x4000_0000));
        assert_eq!(p.alloc(0x1001, 1), None);
        let a = p.alloc(0x800, 1).unwrap();
        assert_eq!(p.alloc(0x801, 1), None);
        let before = p.available();
        p.free(0x1000, 0x10); // never allocated
        p.free(a + 0x10, usize::MAX); // overflowing
        assert_eq!(p.available(), before);
        p.free(a, 0x10);
        p.free(a, 0x10); // double free
        assert_eq!(p.available(), before + 0x10);
    }

    #[test]
    fn a_full_free_list_leaks_instead_of_failing() {
        let mut p = Pool::new(0x100, 0x1100, window(0x4000_0000));
        let blocks: [usize; 2 * FREE_SLOTS + 2] = core::array::from_fn(|_| p.alloc(8, 1).unwrap());
        // free every other block: no two are adjacent, so none coalesce
        for b in blocks.iter().step_by(2) {
            p.free(*b, 8);
        }
        assert_eq!(p.nfree, FREE_SLOTS);
        // the allocator still works
        assert!(p.alloc(8, 1).is_some());
    }
}
