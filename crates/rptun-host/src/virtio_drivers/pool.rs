//! The DMA pool behind [`RemoteprocHal`](super::RemoteprocHal): pages for
//! the crate's rings and bounce buffers for what it shares, cut from a
//! vdev's buffer pool with the core's carveout allocator.
//!
//! virtio-drivers' `Hal` has no `self`: it is one allocator per type. A
//! [`DmaDomain`] is such a type-level identity; its [`DmaSlot`] holds the
//! pool of the link it serves. One domain serves one vdev at a time.
#![forbid(unsafe_code)]

use super::{AdapterError, PAGE_SIZE};
use rptun::remoteproc::carveout::Carveout;
use rptun::remoteproc::table::PoolRange;
use rptun::shm::Region;
use rptun::virtio::queue::Window;
use std::sync::{Mutex, MutexGuard};

/// Most live allocations of one pool (rings, DMA pages and bounce buffers
/// together; a console holds 2 rings and 2 bounce buffers at most).
pub const POOL_CAPACITY: usize = 64;

/// Alignment of bounce buffers (a descriptor needs 16, data less).
const BOUNCE_ALIGN: usize = 16;

/// Where a local buffer lies relative to a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Place {
    /// Entirely inside the pool, at this region offset: shared already.
    InPool(usize),
    /// Entirely outside the shared region: to be bounced.
    Outside,
    /// Partly inside the shared region, or inside it but outside the pool.
    Straddles,
}

/// A live bounce buffer.
#[derive(Debug, Clone, Copy)]
struct Bounce {
    pa: u64,
    offset: usize,
    len: usize,
}

/// Pages and bounce buffers of one vdev's buffer pool.
#[derive(Debug)]
pub struct DmaPool {
    region: Region,
    window: Window,
    carveout: Carveout<POOL_CAPACITY>,
    bounces: Vec<Bounce>,
}

impl DmaPool {
    /// A pool over `range` of `region`, whose physical addresses `window`
    /// maps to region offsets.
    ///
    /// Physical address 0 is virtio-drivers' allocation-failure value, so a
    /// range starting at pa 0 loses its first page. The region must be
    /// mapped so that local and physical addresses agree modulo 4096 (page
    /// allocations are aligned on both).
    pub fn new(region: Region, window: Window, range: PoolRange) -> Result<DmaPool, AdapterError> {
        let bad = AdapterError::Virtio(rptun::virtio::VirtioError::Protocol(
            "the vdev's buffer pool lies outside the shared window",
        ));
        window.check(region.len()).map_err(|_| bad)?;
        let at = window.to_offset(range.pa, range.len).map_err(|_| bad)?;
        if at != range.offset {
            return Err(bad);
        }
        let va = region.base_addr().wrapping_add(range.offset);
        if (va as u64).wrapping_sub(range.pa) % PAGE_SIZE as u64 != 0 {
            return Err(AdapterError::PoolMisaligned { va, pa: range.pa });
        }
        let skip = if range.pa == 0 { PAGE_SIZE } else { 0 };
        let len = range.len.saturating_sub(skip);
        if len < PAGE_SIZE {
            return Err(AdapterError::PoolTooSmall { len });
        }
        let carveout = Carveout::new(range.offset + skip, len, range.pa + skip as u64)
            .map_err(|_| AdapterError::PoolTooSmall { len })?;
        Ok(DmaPool {
            region,
            window,
            carveout,
            bounces: Vec::new(),
        })
    }

    /// The shared region.
    pub fn region(&self) -> &Region {
        &self.region
    }

    /// Live allocations (pages and bounce buffers).
    pub fn live(&self) -> usize {
        self.carveout.allocations().len()
    }

    /// Region offsets `[start, end)` the pool hands out.
    pub fn range(&self) -> (usize, usize) {
        (self.carveout.start(), self.carveout.end())
    }

    /// Physical address of region offset `offset`.
    pub fn pa_of(&self, offset: usize) -> Option<u64> {
        self.window.to_pa(offset).ok()
    }

    /// Local address of region offset `offset` (never dereferenced here).
    pub(super) fn local_addr(&self, offset: usize) -> usize {
        self.region.base_addr().wrapping_add(offset)
    }

    /// `pages` zeroed pages aligned to 4096: `(pa, region offset)`, or
    /// `None` when the pool has no room.
    pub fn alloc_pages(&mut self, pages: usize) -> Option<(u64, usize)> {
        let size = pages.checked_mul(PAGE_SIZE).filter(|&s| s > 0)?;
        let offset = match self.carveout.alloc(size, PAGE_SIZE) {
            Ok(o) => o,
            Err(e) => {
                log::warn!("virtio-drivers DMA allocation of {pages} pages failed: {e}");
                return None;
            }
        };
        let pa = self.pa_of(offset)?;
        if self.region.fill(offset, size, 0).is_err() {
            let _ = self.carveout.free(offset);
            return None;
        }
        Some((pa, offset))
    }

    /// Frees the `pages` pages at `pa` from [`DmaPool::alloc_pages`];
    /// refuses (and frees nothing) unless that is exactly such a block.
    pub fn free_pages(&mut self, pa: u64, pages: usize) -> Result<(), AdapterError> {
        let wrong = AdapterError::NotAllocated { pa };
        let size = pages.checked_mul(PAGE_SIZE).ok_or(wrong)?;
        let offset = self.window.to_offset(pa, size).map_err(|_| wrong)?;
        let is_block = self
            .carveout
            .allocations()
            .iter()
            .any(|b| b.offset == offset && b.len == size);
        if !is_block || self.bounces.iter().any(|b| b.offset == offset) {
            return Err(wrong);
        }
        self.carveout.free(offset).map(|_| ()).map_err(|_| wrong)
    }

    /// Where the local buffer `[addr, addr + len)` lies.
    pub(super) fn place(&self, addr: usize, len: usize) -> Place {
        let base = self.region.base_addr();
        let Some(end) = addr.checked_add(len) else {
            return Place::Straddles;
        };
        let region_end = base.saturating_add(self.region.len());
        if end <= base || addr >= region_end {
            return Place::Outside;
        }
        let (start, stop) = self.range();
        match addr.checked_sub(base) {
            Some(off) if off >= start && off + len <= stop => Place::InPool(off),
            _ => Place::Straddles,
        }
    }

    /// A bounce buffer of `len` bytes: `(pa, region offset)`.
    pub(super) fn bounce(&mut self, len: usize) -> Result<(u64, usize), AdapterError> {
        let offset = self.carveout.alloc(len.max(1), BOUNCE_ALIGN).map_err(|e| {
            log::error!("no room for a {len}-byte bounce buffer: {e}");
            AdapterError::NoRoom { len }
        })?;
        let Some(pa) = self.pa_of(offset) else {
            let _ = self.carveout.free(offset);
            return Err(AdapterError::NoRoom { len });
        };
        self.bounces.push(Bounce { pa, offset, len });
        Ok((pa, offset))
    }

    /// Ends the bounce buffer at `pa`: its `(region offset, len)`, freed
    /// (its bytes stay readable until the next allocation), or `None` if
    /// `pa` is not a bounce buffer.
    pub(super) fn unbounce(&mut self, pa: u64) -> Option<(usize, usize)> {
        let i = self.bounces.iter().position(|b| b.pa == pa)?;
        let b = self.bounces.swap_remove(i);
        if let Err(e) = self.carveout.free(b.offset) {
            log::error!("bounce buffer at pa {pa:#x}: {e}");
        }
        Some((b.offset, b.len))
    }
}

impl DmaPool {
    /// Frees every bounce buffer (the device was reset and the driver is
    /// going away: requests still posted will never be completed or
    /// unshared). Returns how many there were.
    pub fn release_bounces(&mut self) -> usize {
        let n = self.bounces.len();
        for b in self.bounces.drain(..) {
            let _ = self.carveout.free(b.offset);
        }
        n
    }
}

/// The pool of one [`DmaDomain`].
#[derive(Debug, Default)]
pub struct DmaSlot {
    pool: Mutex<Option<DmaPool>>,
}

impl DmaSlot {
    /// An empty slot (for a `static`).
    pub const fn new() -> DmaSlot {
        DmaSlot {
            pool: Mutex::new(None),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<DmaPool>> {
        // A panic while holding the lock left the pool consistent (every
        // mutation is a single allocator call), so go on.
        self.pool.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes `pool` the domain's pool. Fails while an earlier pool still
    /// has live allocations (a driver of an earlier link is alive).
    pub fn install(&self, pool: DmaPool) -> Result<(), AdapterError> {
        let mut slot = self.lock();
        if let Some(old) = slot.as_ref() {
            let live = old.live();
            if live > 0 {
                return Err(AdapterError::DomainBusy { live });
            }
        }
        *slot = Some(pool);
        Ok(())
    }

    /// Runs `f` on the pool, if one is installed.
    pub fn with<R>(&self, f: impl FnOnce(&mut DmaPool) -> R) -> Option<R> {
        self.lock().as_mut().map(f)
    }

    /// Live allocations of the installed pool (0 without one).
    pub fn live(&self) -> usize {
        self.with(|p| p.live()).unwrap_or(0)
    }
}

/// A DMA domain: the type-level identity of one pool, since
/// virtio-drivers' `Hal` is a type without state. Declare one per vdev with
/// [`dma_domain!`](crate::dma_domain).
pub trait DmaDomain: 'static {
    /// The domain's pool slot.
    fn slot() -> &'static DmaSlot;
}

/// Declares a [`DmaDomain`] type with its own pool slot:
/// `dma_domain!(pub Console0);` then use `RemoteprocHal<Console0>`.
#[macro_export]
macro_rules! dma_domain {
    ($vis:vis $name:ident) => {
        /// A DMA domain (one vdev's pool) for `RemoteprocHal`.
        $vis struct $name;
        impl $crate::virtio_drivers::DmaDomain for $name {
            fn slot() -> &'static $crate::virtio_drivers::DmaSlot {
                static SLOT: $crate::virtio_drivers::DmaSlot =
                    $crate::virtio_drivers::DmaSlot::new();
                &SLOT
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool_at(pa: u64, len: usize) -> DmaPool {
        let region = Region::new_heap(len);
        let window = Window::new(pa, 0, len);
        DmaPool::new(region, window, PoolRange { offset: 0, len, pa }).unwrap()
    }

    #[test]
    fn a_pool_at_physical_address_zero_never_hands_out_zero() {
        let mut p = pool_at(0, 8 * PAGE_SIZE);
        let mut pas = Vec::new();
        while let Some((pa, off)) = p.alloc_pages(1) {
            assert_eq!(pa % PAGE_SIZE as u64, 0);
            assert_eq!(pa, off as u64);
            pas.push(pa);
        }
        // the first page is never used: 7 of 8 pages
        assert_eq!(pas.len(), 7);
        assert!(!pas.contains(&0));
        for pa in pas {
            p.free_pages(pa, 1).unwrap();
        }
        // bounce buffers neither
        let (pa, _) = p.bounce(1).unwrap();
        assert_ne!(pa, 0);
        assert_eq!(p.range(), (PAGE_SIZE, 8 * PAGE_SIZE));
    }

    #[test]
    fn pages_are_zeroed_and_frees_must_match() {
        let mut p = pool_at(0x8000_0000, 4 * PAGE_SIZE);
        let (pa, off) = p.alloc_pages(2).unwrap();
        p.region().fill(off, 2 * PAGE_SIZE, 0xAA).unwrap();
        assert_eq!(p.free_pages(pa, 1), Err(AdapterError::NotAllocated { pa }));
        assert!(p.free_pages(pa + 16, 2).is_err());
        p.free_pages(pa, 2).unwrap();
        assert_eq!(p.free_pages(pa, 2), Err(AdapterError::NotAllocated { pa }));
        let (pa2, off2) = p.alloc_pages(2).unwrap();
        assert_eq!(pa2, pa);
        let mut b = vec![1u8; 2 * PAGE_SIZE];
        p.region().read_bytes(off2, &mut b).unwrap();
        assert!(b.iter().all(|&x| x == 0));
        assert!(p.alloc_pages(3).is_none());
        assert!(p.alloc_pages(0).is_none());
    }

    #[test]
    fn buffers_are_placed_against_the_pool() {
        let p = pool_at(0x8000_0000, 4 * PAGE_SIZE);
        let base = p.region().base_addr();
        assert_eq!(p.place(base + 100, 10), Place::InPool(100));
        assert_eq!(p.place(base + 4 * PAGE_SIZE, 10), Place::Outside);
        assert_eq!(p.place(base - 10, 10), Place::Outside);
        assert_eq!(p.place(base - 10, 11), Place::Straddles);
        assert_eq!(p.place(base + 4 * PAGE_SIZE - 1, 2), Place::Straddles);
        assert_eq!(p.place(usize::MAX, 2), Place::Straddles);
    }

    #[test]
    fn bounce_buffers_come_and_go() {
        let mut p = pool_at(0x8000_0000, 2 * PAGE_SIZE);
        let (pa, off) = p.bounce(100).unwrap();
        assert_eq!(pa % 16, 0);
        assert_eq!(p.live(), 1);
        assert_eq!(p.unbounce(pa), Some((off, 100)));
        assert_eq!(p.unbounce(pa), None);
        assert_eq!(p.live(), 0);
        p.bounce(10).unwrap();
        p.bounce(20).unwrap();
        assert_eq!(p.release_bounces(), 2);
        assert_eq!(p.live(), 0);
        assert!(p.bounce(3 * PAGE_SIZE).is_err());
    }

    #[test]
    fn misplaced_pools_are_refused() {
        let region = Region::new_heap(4 * PAGE_SIZE);
        let window = Window::new(0x8000_0000, 0, 4 * PAGE_SIZE);
        // pa not congruent with the page-aligned heap region
        let r = DmaPool::new(
            region.clone(),
            Window::new(0x8000_0100, 0, 4 * PAGE_SIZE),
            PoolRange {
                offset: 0,
                len: 4 * PAGE_SIZE,
                pa: 0x8000_0100,
            },
        );
        assert!(matches!(r, Err(AdapterError::PoolMisaligned { .. })));
        // range outside the window
        let r = DmaPool::new(
            region.clone(),
            window,
            PoolRange {
                offset: PAGE_SIZE,
                len: 4 * PAGE_SIZE,
                pa: 0x8000_1000,
            },
        );
        assert!(matches!(r, Err(AdapterError::Virtio(_))));
        // too small once page 0 is skipped
        let r = DmaPool::new(
            region,
            Window::new(0, 0, 4 * PAGE_SIZE),
            PoolRange {
                offset: 0,
                len: PAGE_SIZE + 100,
                pa: 0,
            },
        );
        assert!(matches!(r, Err(AdapterError::PoolTooSmall { .. })));
    }

    #[test]
    fn a_domain_with_live_allocations_keeps_its_pool() {
        crate::dma_domain!(Dom);
        Dom::slot()
            .install(pool_at(0x8000_0000, 4 * PAGE_SIZE))
            .unwrap();
        let (pa, _) = Dom::slot().with(|p| p.alloc_pages(1)).unwrap().unwrap();
        assert_eq!(
            Dom::slot().install(pool_at(0x9000_0000, 4 * PAGE_SIZE)),
            Err(AdapterError::DomainBusy { live: 1 })
        );
        Dom::slot().with(|p| p.free_pages(pa, 1)).unwrap().unwrap();
        Dom::slot()
            .install(pool_at(0x9000_0000, 4 * PAGE_SIZE))
            .unwrap();
        assert_eq!(Dom::slot().live(), 0);
    }
}
