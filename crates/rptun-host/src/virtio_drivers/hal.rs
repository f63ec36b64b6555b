//! [`RemoteprocHal`]: virtio-drivers' `Hal` over a [`DmaDomain`]'s pool.
//!
//! This file is the adapter's only `unsafe` code (the host crate's second
//! seam besides `shm.rs`): virtio-drivers' `Hal` is an `unsafe trait`, and
//! `share`/`unshare` receive raw pointers to the driver's buffers, which
//! are copied into and out of bounce buffers in the shared pool. Pointers
//! into the shared region itself are only computed and handed to the crate
//! (which accesses its rings through them), never dereferenced here.
#![allow(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

use super::pool::{DmaDomain, Place};
use super::AdapterError;
use ::virtio_drivers::{BufferDirection, Hal, PhysAddr};
use core::marker::PhantomData;
use core::ptr::NonNull;

/// virtio-drivers' [`Hal`] for the vdev whose pool domain `D` holds (see
/// [`RemoteprocTransport::new`](super::RemoteprocTransport::new)).
///
/// - `dma_alloc` hands out zeroed, page-aligned pages of the pool (the
///   crate's rings); physical address 0 is never handed out, it means "no
///   room" (the crate then fails with `DmaError`);
/// - `share` of a buffer already inside the pool passes its physical
///   address through; any other buffer is copied into a bounce buffer of
///   the pool (whatever its direction, so that bytes the device does not
///   write come back unchanged), and `unshare` copies device-writable
///   buffers back out and frees the bounce buffer. The device only ever
///   sees addresses inside the shared region.
///
/// `share` has no way to report failure: a buffer the pool cannot hold, or
/// one that straddles the shared region, panics with the reason. Share
/// buffers of at most a few pages (the crate's console and rng drivers use
/// at most 4 KiB, plus what the caller sends at once).
pub struct RemoteprocHal<D>(PhantomData<fn() -> D>);

impl<D> core::fmt::Debug for RemoteprocHal<D> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("RemoteprocHal")
    }
}

fn no_pool() -> ! {
    panic!(
        "RemoteprocHal: its DMA domain has no pool; create the RemoteprocTransport with \
         the same domain (RemoteprocTransport::new::<D>) before the virtio-drivers device"
    )
}

// SAFETY: the implementation requirements of `Hal`:
// - `dma_alloc` returns a pointer to `pages` pages of the shared region: the
//   pool's `Region` clone keeps that memory mapped for as long as the pool
//   is installed, and a domain refuses to replace a pool with live
//   allocations (`DmaSlot::install`), so the pages stay valid until
//   `dma_dealloc`. The carveout allocator hands out disjoint ranges, so
//   the pages alias no other allocation; this program reaches the shared
//   region otherwise only through `Region` accessors (no references). The
//   pages are aligned to 4096 on the physical address, and the pool checked
//   that local and physical addresses agree modulo 4096, so the pointer is
//   page-aligned too; the pool zeroes them.
// - `mmio_phys_to_virt` never returns (a vdev has no MMIO registers).
unsafe impl<D: DmaDomain> Hal for RemoteprocHal<D> {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let got = D::slot()
            .with(|p| {
                p.alloc_pages(pages)
                    .map(|(pa, offset)| (pa, p.local_addr(offset)))
            })
            .flatten();
        // The region's base address was exposed by `Region::base_addr`;
        // this turns the address of an offset inside it back into a pointer.
        match got.and_then(|(pa, addr)| Some((pa, NonNull::new(addr as *mut u8)?))) {
            Some(ok) => ok,
            None => (0, NonNull::dangling()),
        }
    }

    unsafe fn dma_dealloc(paddr: PhysAddr, _vaddr: NonNull<u8>, pages: usize) -> i32 {
        match D::slot().with(|p| p.free_pages(paddr, pages)) {
            Some(Ok(())) => 0,
            _ => {
                log::error!("RemoteprocHal: dealloc of {pages} pages at pa {paddr:#x} refused");
                -1
            }
        }
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, size: usize) -> NonNull<u8> {
        panic!(
            "RemoteprocHal has no MMIO registers to map ({size} bytes at pa {paddr:#x}): a \
             remoteproc vdev keeps them in the resource table; use RemoteprocTransport"
        )
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        let addr = buffer.cast::<u8>().as_ptr() as usize;
        let len = buffer.len();
        let r = D::slot().with(|p| match p.place(addr, len) {
            Place::InPool(offset) => p.pa_of(offset).ok_or(None::<AdapterError>),
            Place::Straddles => Err(None),
            Place::Outside => {
                let (pa, offset) = p.bounce(len).map_err(Some)?;
                // SAFETY: the caller guarantees that `buffer` points to a
                // valid, non-empty memory range that no other thread
                // accesses during this call, so a shared slice over it is
                // sound for the copy. It lies entirely outside the shared
                // region (`Place::Outside`): no peer writes it.
                let src: &[u8] = unsafe { buffer.as_ref() };
                p.region().write_bytes(offset, src).map_err(|e| {
                    p.unbounce(pa);
                    Some(AdapterError::Virtio(e.into()))
                })?;
                Ok(pa)
            }
        });
        match r {
            Some(Ok(pa)) => pa,
            Some(Err(None)) => panic!(
                "RemoteprocHal::share: the {len}-byte buffer at {addr:#x} lies partly in the \
                 shared region (or in it outside the pool); share local buffers or pool memory"
            ),
            Some(Err(Some(e))) => panic!("RemoteprocHal::share: {e}"),
            None => no_pool(),
        }
    }

    unsafe fn unshare(paddr: PhysAddr, mut buffer: NonNull<[u8]>, direction: BufferDirection) {
        let r = D::slot().with(|p| {
            let Some((offset, len)) = p.unbounce(paddr) else {
                // Passed through: the buffer is pool memory, nothing to copy.
                let addr = buffer.cast::<u8>().as_ptr() as usize;
                let here = match p.place(addr, buffer.len()) {
                    Place::InPool(o) => p.pa_of(o),
                    _ => None,
                };
                if here != Some(paddr) {
                    log::error!("RemoteprocHal::unshare of pa {paddr:#x}, which was not shared");
                }
                return;
            };
            if direction == BufferDirection::DriverToDevice {
                return;
            }
            // SAFETY: the caller guarantees that `buffer` points to a valid,
            // non-empty memory range that no other thread accesses during
            // this call, so an exclusive slice over it is sound for the copy.
            // It got a bounce buffer, so it lies outside the shared region.
            let dst: &mut [u8] = unsafe { buffer.as_mut() };
            let n = len.min(dst.len());
            // The pool lock is held: the freed bounce buffer's bytes are
            // still those the device wrote.
            if let Err(e) = p.region().read_bytes(offset, &mut dst[..n]) {
                log::error!("RemoteprocHal::unshare: copying back failed: {e}");
            }
        });
        if r.is_none() {
            no_pool();
        }
    }
}
