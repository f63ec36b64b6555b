//! The shared-memory seam: the only module of the core that touches raw memory.
//!
//! A [`Region`] is a window `(base, len)` onto memory that the other core (or
//! process) may read and write at any moment. Every access goes through an
//! offset that is bounds-checked against the region, so code above this module
//! works with plain `usize` offsets and can never reach outside the region,
//! whatever values a hostile peer writes.
//!
//! Rules the accessors follow (DESIGN.md §8):
//! - no `&T`/`&mut T` to peer-written bytes is ever formed; the only
//!   references handed out are to atomics ([`Region::atomic_u16`],
//!   [`Region::atomic_u32`]), which are designed for concurrent mutation;
//! - ring indices and counters use atomic load-acquire / store-release;
//! - bulk data moves with byte copies that never overlap our own buffers;
//! - all multi-byte values in shared memory are little-endian.
//!
//! Backends: a heap-backed region for tests, Miri and threads
//! ([`Region::new_heap`], feature `alloc`), a region over memory someone else
//! mapped ([`Region::from_raw_parts`], used by the host crate's mmap backend
//! and by firmware for a fixed RAM window or a PCI BAR), and a region over a
//! `&'static mut [u8]` ([`Region::from_static`]).
#![allow(unsafe_code)]

#[cfg(feature = "alloc")]
mod heap;

use core::ptr::NonNull;
use core::sync::atomic::{fence, AtomicU16, AtomicU32, AtomicU8, Ordering};

#[cfg(feature = "alloc")]
use alloc::sync::Arc;

/// Errors of the shared-memory seam.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ShmError {
    /// An access reached outside the region.
    #[error(
        "shared-memory access of {len} bytes at offset {offset:#x} falls outside the \
         {size:#x}-byte region; the offset or length (often supplied by the peer) is invalid"
    )]
    OutOfBounds {
        /// Offset of the access from the region start.
        offset: usize,
        /// Length of the access in bytes.
        len: usize,
        /// Size of the region in bytes.
        size: usize,
    },
    /// An atomic access was not naturally aligned.
    #[error(
        "shared-memory atomic access at offset {offset:#x} is not aligned to {align} bytes; \
         ring indices and counters must sit on naturally aligned addresses"
    )]
    Misaligned {
        /// Offset of the access from the region start.
        offset: usize,
        /// Required alignment in bytes.
        align: usize,
    },
}

/// A bounds-checked window onto shared memory.
///
/// Cloning a region is cheap; clones (and sub-regions) view the same bytes.
/// With the `alloc` feature a region keeps its backing (heap buffer or
/// mapping) alive for as long as any clone exists.
pub struct Region {
    ptr: NonNull<u8>,
    len: usize,
    #[cfg(feature = "alloc")]
    owner: Option<Arc<dyn core::any::Any + Send + Sync>>,
}

impl Clone for Region {
    fn clone(&self) -> Self {
        Region {
            ptr: self.ptr,
            len: self.len,
            #[cfg(feature = "alloc")]
            owner: self.owner.clone(),
        }
    }
}

impl core::fmt::Debug for Region {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Region")
            .field("base", &self.ptr)
            .field("len", &self.len)
            .finish()
    }
}

// SAFETY: a `Region` is a pointer plus a length. All access through it is
// atomic or a byte copy whose races with the peer are part of the protocol
// (see `read_bytes`); nothing in it is tied to the creating thread, and the
// optional owner is itself `Send + Sync`.
unsafe impl Send for Region {}
// SAFETY: every method takes `&self` and performs only atomic accesses or raw
// byte copies, which are as valid from several threads as from several cores.
unsafe impl Sync for Region {}

impl Region {
    /// Creates a region over `len` bytes at `ptr`.
    ///
    /// # Safety
    /// `ptr..ptr+len` must be valid for reads and writes for as long as this
    /// region or any clone of it exists, and must not be accessed through Rust
    /// references (`&[u8]`, `&mut [u8]`) by this program while the region is in
    /// use: only through regions or by the peer.
    pub unsafe fn from_raw_parts(ptr: NonNull<u8>, len: usize) -> Region {
        Region {
            ptr,
            len,
            #[cfg(feature = "alloc")]
            owner: None,
        }
    }

    /// Creates a region over `len` bytes at `ptr` that keeps `owner` (a
    /// mapping, a file handle...) alive until the last clone is dropped.
    ///
    /// # Safety
    /// As [`Region::from_raw_parts`], for as long as `owner` lives.
    #[cfg(feature = "alloc")]
    pub unsafe fn from_raw_parts_owned(
        ptr: NonNull<u8>,
        len: usize,
        owner: Arc<dyn core::any::Any + Send + Sync>,
    ) -> Region {
        Region {
            ptr,
            len,
            owner: Some(owner),
        }
    }

    /// Creates a region over a static buffer, e.g. a linker-placed shared RAM
    /// section on a microcontroller.
    pub fn from_static(buf: &'static mut [u8]) -> Region {
        let len = buf.len();
        // SAFETY: the `'static mut` borrow is consumed, so nothing else in
        // this program can reach the bytes except through this region, and
        // they live forever.
        unsafe { Region::from_raw_parts(NonNull::from(buf).cast(), len) }
    }

    /// Creates a zero-filled, page-aligned region on the heap (tests, Miri,
    /// two threads standing in for two cores).
    #[cfg(feature = "alloc")]
    pub fn new_heap(len: usize) -> Region {
        heap::new_heap(len)
    }

    /// Size of the region in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the region has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The local address of the region start (for logs, futexes and
    /// address-translation set-up; never dereference it outside this module).
    pub fn base_addr(&self) -> usize {
        self.ptr.as_ptr() as usize
    }

    /// A region viewing `len` bytes from `offset` of this one.
    pub fn subregion(&self, offset: usize, len: usize) -> Result<Region, ShmError> {
        self.check(offset, len)?;
        let mut r = self.clone();
        // SAFETY: `check` proved offset + len <= self.len, so the new pointer
        // stays inside (or one past the end of) the same allocation.
        r.ptr = unsafe { NonNull::new_unchecked(self.ptr.as_ptr().add(offset)) };
        r.len = len;
        Ok(r)
    }

    /// Checks that `offset..offset+len` lies inside the region.
    #[inline]
    pub fn check(&self, offset: usize, len: usize) -> Result<(), ShmError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(ShmError::OutOfBounds {
                offset,
                len,
                size: self.len,
            }),
        }
    }

    #[inline]
    fn checked_ptr(&self, offset: usize, len: usize, align: usize) -> Result<*mut u8, ShmError> {
        self.check(offset, len)?;
        // SAFETY: in bounds, as just checked.
        let p = unsafe { self.ptr.as_ptr().add(offset) };
        if (p as usize) % align != 0 {
            return Err(ShmError::Misaligned { offset, align });
        }
        Ok(p)
    }

    /// The atomic `u8` at `offset` (a byte is always aligned).
    ///
    /// Use [`Region::load_u8`] and [`Region::store_u8`] for single-byte
    /// fields that one side polls while the other writes them (the vdev
    /// status byte).
    #[inline]
    pub fn atomic_u8(&self, offset: usize) -> Result<&AtomicU8, ShmError> {
        let p = self.checked_ptr(offset, 1, 1)?;
        // SAFETY: as in `atomic_u16`, with 1-byte size and alignment (every
        // address is aligned for `AtomicU8`).
        Ok(unsafe { AtomicU8::from_ptr(p) })
    }

    /// Atomically loads the byte at `offset` with `Acquire`.
    #[inline]
    pub fn load_u8(&self, offset: usize) -> Result<u8, ShmError> {
        Ok(self.atomic_u8(offset)?.load(Ordering::Acquire))
    }

    /// Atomically stores the byte `v` at `offset` with `Release`.
    #[inline]
    pub fn store_u8(&self, offset: usize, v: u8) -> Result<(), ShmError> {
        self.atomic_u8(offset)?.store(v, Ordering::Release);
        Ok(())
    }

    /// The atomic `u16` at `offset` (must be 2-aligned in memory).
    ///
    /// The value is stored little-endian; use [`Region::load_u16`] and
    /// [`Region::store_u16`] unless you need the atomic itself.
    #[inline]
    pub fn atomic_u16(&self, offset: usize) -> Result<&AtomicU16, ShmError> {
        let p = self.checked_ptr(offset, 2, 2)?;
        // SAFETY: `p` is in bounds, 2-aligned and valid for the region's life
        // (constructor contract), which outlives `&self`. Atomics may be
        // mutated concurrently by the peer: that is what they are for, so a
        // shared reference to one is sound.
        Ok(unsafe { AtomicU16::from_ptr(p.cast()) })
    }

    /// The atomic `u32` at `offset` (must be 4-aligned in memory).
    #[inline]
    pub fn atomic_u32(&self, offset: usize) -> Result<&AtomicU32, ShmError> {
        let p = self.checked_ptr(offset, 4, 4)?;
        // SAFETY: as in `atomic_u16`, with 4-byte size and alignment.
        Ok(unsafe { AtomicU32::from_ptr(p.cast()) })
    }

    /// Atomically loads the little-endian `u16` at `offset` with `Acquire`.
    #[inline]
    pub fn load_u16(&self, offset: usize) -> Result<u16, ShmError> {
        Ok(u16::from_le(
            self.atomic_u16(offset)?.load(Ordering::Acquire),
        ))
    }

    /// Atomically stores `v` little-endian at `offset` with `Release`.
    #[inline]
    pub fn store_u16(&self, offset: usize, v: u16) -> Result<(), ShmError> {
        self.atomic_u16(offset)?.store(v.to_le(), Ordering::Release);
        Ok(())
    }

    /// Atomically loads the little-endian `u32` at `offset` with `Acquire`.
    #[inline]
    pub fn load_u32(&self, offset: usize) -> Result<u32, ShmError> {
        Ok(u32::from_le(
            self.atomic_u32(offset)?.load(Ordering::Acquire),
        ))
    }

    /// Atomically stores `v` little-endian at `offset` with `Release`.
    #[inline]
    pub fn store_u32(&self, offset: usize, v: u32) -> Result<(), ShmError> {
        self.atomic_u32(offset)?.store(v.to_le(), Ordering::Release);
        Ok(())
    }

    /// Atomically adds `v` to the little-endian `u32` counter at `offset`
    /// (wrapping, `AcqRel`) and returns the previous value.
    #[inline]
    pub fn fetch_add_u32(&self, offset: usize, v: u32) -> Result<u32, ShmError> {
        let a = self.atomic_u32(offset)?;
        if cfg!(target_endian = "little") {
            Ok(a.fetch_add(v, Ordering::AcqRel))
        } else {
            let mut cur = a.load(Ordering::Relaxed);
            loop {
                let new = u32::from_le(cur).wrapping_add(v).to_le();
                match a.compare_exchange_weak(cur, new, Ordering::AcqRel, Ordering::Relaxed) {
                    Ok(prev) => return Ok(u32::from_le(prev)),
                    Err(now) => cur = now,
                }
            }
        }
    }

    /// Copies `dst.len()` bytes from `offset` of the region into `dst`.
    ///
    /// The bytes are a snapshot: validate them after the copy, never before.
    #[inline]
    pub fn read_bytes(&self, offset: usize, dst: &mut [u8]) -> Result<(), ShmError> {
        let p = self.checked_ptr(offset, dst.len(), 1)?;
        // SAFETY: `p..p+dst.len()` is inside the region (checked) and `dst`
        // is local memory, so they cannot overlap. The peer may write these
        // bytes concurrently only if it breaks the ownership hand-over that
        // the rings' acquire/release indices provide; then we copy garbage,
        // which callers validate, exactly as any IPC stack over shared RAM.
        unsafe { core::ptr::copy_nonoverlapping(p, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    /// Copies `src` into the region at `offset`.
    #[inline]
    pub fn write_bytes(&self, offset: usize, src: &[u8]) -> Result<(), ShmError> {
        let p = self.checked_ptr(offset, src.len(), 1)?;
        // SAFETY: in bounds (checked); `src` is local memory, so no overlap.
        unsafe { core::ptr::copy_nonoverlapping(src.as_ptr(), p, src.len()) };
        Ok(())
    }

    /// Copies `len` bytes inside the region from `src` to `dst` (the ranges may
    /// overlap).
    pub fn copy_within(&self, src: usize, dst: usize, len: usize) -> Result<(), ShmError> {
        let s = self.checked_ptr(src, len, 1)?;
        let d = self.checked_ptr(dst, len, 1)?;
        // SAFETY: both ranges are inside the region; `copy` allows overlap.
        unsafe { core::ptr::copy(s, d, len) };
        Ok(())
    }

    /// Sets `len` bytes from `offset` to `byte`.
    pub fn fill(&self, offset: usize, len: usize, byte: u8) -> Result<(), ShmError> {
        let p = self.checked_ptr(offset, len, 1)?;
        // SAFETY: in bounds (checked).
        unsafe { core::ptr::write_bytes(p, byte, len) };
        Ok(())
    }

    /// Reads a little-endian `u8` (plain byte copy).
    #[inline]
    pub fn read_u8(&self, offset: usize) -> Result<u8, ShmError> {
        let mut b = [0u8; 1];
        self.read_bytes(offset, &mut b)?;
        Ok(b[0])
    }

    /// Writes a `u8` (plain byte copy).
    #[inline]
    pub fn write_u8(&self, offset: usize, v: u8) -> Result<(), ShmError> {
        self.write_bytes(offset, &[v])
    }

    /// Reads a little-endian `u16` with a plain copy (no ordering; any
    /// alignment). Use [`Region::load_u16`] for indices the peer publishes.
    #[inline]
    pub fn read_u16(&self, offset: usize) -> Result<u16, ShmError> {
        let mut b = [0u8; 2];
        self.read_bytes(offset, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    /// Writes a little-endian `u16` with a plain copy.
    #[inline]
    pub fn write_u16(&self, offset: usize, v: u16) -> Result<(), ShmError> {
        self.write_bytes(offset, &v.to_le_bytes())
    }

    /// Reads a little-endian `u32` with a plain copy.
    #[inline]
    pub fn read_u32(&self, offset: usize) -> Result<u32, ShmError> {
        let mut b = [0u8; 4];
        self.read_bytes(offset, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// Writes a little-endian `u32` with a plain copy.
    #[inline]
    pub fn write_u32(&self, offset: usize, v: u32) -> Result<(), ShmError> {
        self.write_bytes(offset, &v.to_le_bytes())
    }

    /// Reads a little-endian `u64` with a plain copy.
    #[inline]
    pub fn read_u64(&self, offset: usize) -> Result<u64, ShmError> {
        let mut b = [0u8; 8];
        self.read_bytes(offset, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Writes a little-endian `u64` with a plain copy.
    #[inline]
    pub fn write_u64(&self, offset: usize, v: u64) -> Result<(), ShmError> {
        self.write_bytes(offset, &v.to_le_bytes())
    }
}

/// An acquire fence: later reads see what the peer wrote before its release.
#[inline]
pub fn fence_acquire() {
    fence(Ordering::Acquire);
}

/// A release fence: earlier writes are visible before later stores.
#[inline]
pub fn fence_release() {
    fence(Ordering::Release);
}

/// A full fence, needed between publishing an index and reading the peer's
/// event/flags field (the virtio "store, full barrier, load" pattern).
#[inline]
pub fn fence_full() {
    fence(Ordering::SeqCst);
}

#[cfg(all(test, feature = "alloc"))]
mod tests {
    use super::*;

    #[test]
    fn accessors_round_trip_little_endian() {
        let r = Region::new_heap(64);
        r.store_u16(2, 0xBEEF).unwrap();
        r.store_u32(4, 0x1234_5678).unwrap();
        r.write_u64(8, 0x0102_0304_0506_0708).unwrap();
        let mut b = [0u8; 16];
        r.read_bytes(0, &mut b).unwrap();
        assert_eq!(
            b,
            [0, 0, 0xEF, 0xBE, 0x78, 0x56, 0x34, 0x12, 8, 7, 6, 5, 4, 3, 2, 1]
        );
        assert_eq!(r.load_u16(2).unwrap(), 0xBEEF);
        assert_eq!(r.read_u32(4).unwrap(), 0x1234_5678);
        assert_eq!(r.fetch_add_u32(4, 1).unwrap(), 0x1234_5678);
        assert_eq!(r.load_u32(4).unwrap(), 0x1234_5679);
    }

    #[test]
    fn out_of_bounds_and_overflow_are_errors() {
        let r = Region::new_heap(16);
        assert!(matches!(
            r.read_u32(13),
            Err(ShmError::OutOfBounds { offset: 13, .. })
        ));
        assert!(r.write_bytes(usize::MAX, &[1]).is_err());
        assert!(r.load_u32(16).is_err());
        assert!(r.fill(8, 9, 0).is_err());
        assert!(r.subregion(8, 9).is_err());
        let mut big = [0u8; 17];
        assert!(r.read_bytes(0, &mut big).is_err());
        assert!(r.copy_within(0, 8, 9).is_err());
    }

    #[test]
    fn byte_atomics_hand_over_a_status_byte_between_threads() {
        // The vdev status byte is polled by one side while the other writes
        // it: with plain byte copies Miri reported a data race (found by
        // scripts/miri.sh on tests/remoteproc.rs).
        let r = Region::new_heap(64);
        assert!(r.load_u8(64).is_err());
        r.store_u8(63, 0xA5).unwrap();
        assert_eq!(r.read_u8(63).unwrap(), 0xA5);
        let r2 = r.clone();
        let t = std::thread::spawn(move || {
            r2.write_u32(8, 0xFEED_F00D).unwrap();
            r2.store_u8(3, 4).unwrap(); // DRIVER_OK, with release
        });
        while r.load_u8(3).unwrap() != 4 {
            std::hint::spin_loop();
        }
        // acquire: the data written before the status is visible, race-free
        assert_eq!(r.read_u32(8).unwrap(), 0xFEED_F00D);
        t.join().unwrap();
    }

    #[test]
    fn misaligned_atomics_are_errors() {
        let r = Region::new_heap(16);
        assert_eq!(
            r.load_u16(1),
            Err(ShmError::Misaligned {
                offset: 1,
                align: 2
            })
        );
        assert!(r.store_u32(2, 0).is_err());
        // plain copies accept any alignment
        r.write_u32(3, 7).unwrap();
        assert_eq!(r.read_u32(3).unwrap(), 7);
    }

    #[test]
    fn subregions_view_the_same_bytes_and_are_bounded() {
        let r = Region::new_heap(32);
        let s = r.subregion(8, 8).unwrap();
        s.write_u32(4, 0xAABB_CCDD).unwrap();
        assert_eq!(r.read_u32(12).unwrap(), 0xAABB_CCDD);
        assert!(s.read_u32(5).is_err());
        drop(r);
        // the clone keeps the heap buffer alive
        assert_eq!(s.read_u32(4).unwrap(), 0xAABB_CCDD);
    }

    #[test]
    fn two_threads_see_release_acquire_hand_over() {
        let r = Region::new_heap(4096);
        let r2 = r.clone();
        let n = if cfg!(miri) { 20 } else { 2000 };
        let t = std::thread::spawn(move || {
            for i in 1..=n {
                r2.write_u32(64, i * 3).unwrap();
                r2.store_u32(0, i).unwrap();
                while r2.load_u32(4).unwrap() != i {
                    std::hint::spin_loop();
                }
            }
        });
        for i in 1..=n {
            while r.load_u32(0).unwrap() != i {
                std::hint::spin_loop();
            }
            assert_eq!(r.read_u32(64).unwrap(), i * 3);
            r.store_u32(4, i).unwrap();
        }
        t.join().unwrap();
    }
}
