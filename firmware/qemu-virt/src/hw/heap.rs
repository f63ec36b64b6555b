//! The heap: a first-fit allocator (`linked_list_allocator`) over a static
//! array in `.bss`, behind a [`SpinLock`]. The rpmsg bus and the remoteproc
//! instance need `alloc`; the largest single allocation is the instance's
//! copy of the resource table while it is parsed (`TABLE_MAX`, 256 KiB).
//!
//! The array is mapped like the rest of `.bss` (Normal, RW, XN). Running out
//! of memory panics (the default alloc error handler), which the panic
//! handler reports before powering off.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::{addr_of_mut, NonNull};

use linked_list_allocator::Heap;

use super::sync::SpinLock;

/// Bytes of heap.
pub const HEAP_SIZE: usize = 1 << 20;

#[repr(C, align(4096))]
struct Arena([u8; HEAP_SIZE]);

static mut ARENA: Arena = Arena([0; HEAP_SIZE]);

struct Allocator(SpinLock<Heap>);

#[global_allocator]
static ALLOCATOR: Allocator = Allocator(SpinLock::new(Heap::empty()));

// SAFETY: every call goes through the lock; `Heap` returns blocks that lie in
// the arena, are aligned as `layout` asks and do not overlap live blocks.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.0
            .lock()
            .allocate_first_fit(layout)
            .map_or(core::ptr::null_mut(), NonNull::as_ptr)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if let Some(p) = NonNull::new(ptr) {
            // SAFETY: the caller passes a block this allocator returned with
            // the same layout (the `GlobalAlloc` contract).
            unsafe { self.0.lock().deallocate(p, layout) }
        }
    }
}

/// Hands the arena to the allocator. Called once by `boot` before `main`.
pub fn init() {
    let mut heap = ALLOCATOR.0.lock();
    if heap.size() == 0 {
        // SAFETY: the arena is a static that nothing else references (it is
        // private to this module and only its address is taken here), it
        // lives for the whole program, and it is given to the heap once
        // (size 0 means not yet initialised).
        unsafe { heap.init(addr_of_mut!(ARENA).cast::<u8>(), HEAP_SIZE) }
    }
}

/// Bytes in use and bytes free.
pub fn usage() -> (usize, usize) {
    let heap = ALLOCATOR.0.lock();
    (heap.used(), heap.free())
}
