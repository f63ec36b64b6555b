//! Heap-backed regions: tests, Miri, and threads standing in for cores.

use super::Region;
use alloc::alloc::{alloc_zeroed, dealloc, handle_alloc_error, Layout};
use alloc::sync::Arc;
use core::ptr::NonNull;

/// Page alignment, so that vring alignment rules hold for offsets too.
const ALIGN: usize = 4096;

/// Owns one zeroed heap allocation and frees it on drop.
struct HeapBuf {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: `HeapBuf` is only an owner token: it frees the allocation on drop
// and is never dereferenced, so moving or sharing it between threads is fine.
unsafe impl Send for HeapBuf {}
// SAFETY: see `Send`; it has no `&self` methods that touch memory.
unsafe impl Sync for HeapBuf {}

impl Drop for HeapBuf {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from `alloc_zeroed(self.layout)` and is freed once.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

pub(super) fn new_heap(len: usize) -> Region {
    // A zero-sized allocation is not allowed; keep at least one byte behind
    // the pointer while the region reports the requested length.
    let layout = match Layout::from_size_align(len.max(1), ALIGN) {
        Ok(l) => l,
        Err(_) => panic!("heap region of {len} bytes is larger than the address space allows"),
    };
    // SAFETY: `layout` has a non-zero size.
    let raw = unsafe { alloc_zeroed(layout) };
    let ptr = match NonNull::new(raw) {
        Some(p) => p,
        None => handle_alloc_error(layout),
    };
    let owner = Arc::new(HeapBuf { ptr, layout });
    // SAFETY: the allocation is `len` (or more) bytes, zeroed, valid until
    // `owner` drops, and `owner` is kept by the region and all its clones.
    // Nothing else has a reference to it.
    unsafe { Region::from_raw_parts_owned(ptr, len, owner) }
}
