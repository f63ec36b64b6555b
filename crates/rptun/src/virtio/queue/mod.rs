//! Split virtqueues (virtio legacy layout), driver side and device side.
//!
//! A ring lives in a [`Region`](crate::shm::Region) at the offsets of a
//! [`QueueLayout`]; descriptor addresses are in the peers' shared "physical"
//! space and are translated to region offsets through a [`Window`].
//!
//! - [`DriverQueue`] posts buffers ([`DriverQueue::add`] +
//!   [`DriverQueue::publish`]) and collects completions
//!   ([`DriverQueue::pop_used`]). It keeps a local shadow of everything it
//!   wrote (free list, chain heads and lengths, writable capacity per head)
//!   and never reads its descriptors back from shared memory.
//! - [`DeviceQueue`] takes validated copies of the driver's chains
//!   ([`DeviceQueue::pop`] returns a [`Chain`]) and returns them
//!   ([`DeviceQueue::push_used`]). It needs no per-descriptor storage.
//!
//! # Hostile peers
//!
//! Everything read from the ring is copied, then validated. A protocol
//! violation by the peer (an index jump larger than the queue allows, a
//! descriptor index out of range, a looping or over-long chain, a buffer
//! outside the window, a used id that is not an outstanding head, a used
//! length larger than what was posted...) yields a typed [`QueueError`] and
//! marks the queue *broken*: every later call returns [`QueueError::Broken`]
//! until the queue is rebuilt (device reset). Mistakes of the local caller
//! (queue full, buffer outside the window, returning a chain that is not in
//! flight) return an error without breaking the queue; see
//! [`QueueError::breaks_queue`].
//!
//! # Memory ordering
//!
//! Ring indices, flags and event fields are accessed with the region's
//! atomic `load_u16` (acquire) / `store_u16` (release); descriptors, ring
//! entries and buffers move with plain copies ordered by those atomics, plus
//! a full fence between publishing an index and reading the peer's
//! suppression field (the virtio "store, full barrier, load" pattern).
//!
//! # Notification suppression
//!
//! Without `VIRTIO_RING_F_EVENT_IDX` the `avail.flags` / `used.flags` bits are
//! used; with it the `used_event` / `avail_event` fields. While notifications
//! are enabled with EVENT_IDX, each pop moves the event field to the next
//! index we expect, so a peer that simply pops on every notification keeps
//! receiving them. Disabling with EVENT_IDX writes an event index half the
//! index space away, which no legal peer can reach.
#![forbid(unsafe_code)]

mod device;
mod driver;
mod layout;

pub use device::{Chain, DeviceQueue, Seg};
pub use driver::DriverQueue;
pub use layout::QueueLayout;

use crate::shm::ShmError;

/// Descriptor flag: the chain continues at `next`.
pub const VRING_DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the buffer is device-writable (otherwise device-readable).
pub const VRING_DESC_F_WRITE: u16 = 2;
/// Descriptor flag: the buffer holds a table of indirect descriptors.
pub const VRING_DESC_F_INDIRECT: u16 = 4;
/// `avail.flags` bit: the driver asks the device not to interrupt it.
pub const VRING_AVAIL_F_NO_INTERRUPT: u16 = 1;
/// `used.flags` bit: the device asks the driver not to notify it.
pub const VRING_USED_F_NO_NOTIFY: u16 = 1;
/// Feature bit number: indirect descriptors. Not supported by
/// [`DeviceQueue`] (it rejects them): a device must not offer it.
pub const VIRTIO_RING_F_INDIRECT_DESC: u32 = 28;
/// Feature bit number: `used_event` / `avail_event` suppression (pass
/// `event_idx = true` to the queue constructors when negotiated).
pub const VIRTIO_RING_F_EVENT_IDX: u32 = 29;
/// Largest queue size the split ring allows.
pub const MAX_QUEUE_SIZE: u16 = 32768;
/// Size of one descriptor in bytes.
pub const DESC_SIZE: usize = 16;

/// The virtio `vring_need_event` test: should a peer that moved its index
/// from `old` to `new` notify, given the other side's event index `event`?
/// True when `event` lies in `[old, new)` (modulo 2^16).
#[inline]
pub fn vring_need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// Errors of the virtqueue layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// A shared-memory access failed (ring not inside the region, or an index
    /// field not naturally aligned in memory).
    #[error("virtqueue memory access failed: {0}; check the ring layout against the region")]
    Shm(#[from] ShmError),
    /// An earlier protocol violation broke the queue.
    #[error(
        "the virtqueue is broken by an earlier protocol violation of the peer; \
         reset the device and rebuild the queue"
    )]
    Broken,
    /// Not enough free descriptors for the chain.
    #[error(
        "the virtqueue has only {free} free descriptors, {needed} needed; \
         collect used buffers (pop_used) and retry"
    )]
    Full {
        /// Descriptors the chain needs.
        needed: usize,
        /// Descriptors free now.
        free: usize,
    },
    /// A chain with no buffers was requested.
    #[error("a virtqueue chain needs at least one buffer; pass a readable or a writable buffer")]
    EmptyChain,
    /// A chain with more buffers than the queue has descriptors was requested.
    #[error(
        "a chain of {count} buffers can never fit a virtqueue of {num} descriptors; \
         use fewer, larger buffers"
    )]
    TooManyBufs {
        /// Buffers requested.
        count: usize,
        /// Queue size.
        num: u16,
    },
    /// The queue size is not usable.
    #[error(
        "virtqueue size {num} is not usable: it must be a power of two from 1 to {max}; \
         fix the resource table or the queue set-up"
    )]
    BadSize {
        /// Requested size.
        num: u32,
        /// Largest size allowed here (32768, or the driver's capacity `N`).
        max: u32,
    },
    /// The ring alignment is not usable.
    #[error(
        "virtqueue alignment {align} is not usable: it must be a power of two of at least 4; \
         fix the resource table's vring align"
    )]
    BadAlign {
        /// Requested alignment.
        align: u32,
    },
    /// The ring start address is odd or the ring would pass the end of the
    /// address space.
    #[error(
        "virtqueue ring address {pa:#x} is unusable (odd, or the ring runs past the end of \
         the address space); fix the vring address"
    )]
    BadRingAddr {
        /// Physical address of the ring start.
        pa: u64,
    },
    /// The window does not fit the region or wraps the address space.
    #[error(
        "address window (pa {pa:#x}, offset {offset:#x}, {len:#x} bytes) does not fit the \
         region or wraps the address space; fix the address translation set-up"
    )]
    BadWindow {
        /// Physical start of the window.
        pa: u64,
        /// Region offset of the window start.
        offset: usize,
        /// Window length.
        len: usize,
    },
    /// The peer used a descriptor index (avail ring entry, `next` field or
    /// used id) that is not below the queue size.
    #[error(
        "the peer used descriptor index {index} in a queue of {num}; the peer is faulty, \
         reset the device"
    )]
    BadIndex {
        /// The index found.
        index: u32,
        /// Queue size.
        num: u16,
    },
    /// A descriptor chain is longer than the queue: it loops.
    #[error(
        "descriptor chain at head {head} loops (longer than the queue); the driver is \
         faulty, reset the device"
    )]
    ChainLoop {
        /// Head of the chain.
        head: u16,
    },
    /// A descriptor chain has more descriptors than the caller can take.
    #[error(
        "descriptor chain at head {head} has more than {max} descriptors; the driver posts \
         chains longer than this device accepts, reset the device"
    )]
    ChainTooLong {
        /// Head of the chain.
        head: u16,
        /// Descriptors the caller accepts.
        max: usize,
    },
    /// A descriptor points outside the shared window.
    #[error(
        "buffer at address {addr:#x} of {len} bytes lies outside the shared window; the \
         peer is faulty or the address translation is wrong"
    )]
    AddrOutOfWindow {
        /// Buffer address.
        addr: u64,
        /// Buffer length.
        len: u64,
    },
    /// A local buffer (region offset) is outside the shared window.
    #[error(
        "buffer at region offset {offset:#x} of {len} bytes lies outside the shared window; \
         allocate buffers from memory the peer can see"
    )]
    OffsetOutOfWindow {
        /// Region offset of the buffer.
        offset: usize,
        /// Buffer length.
        len: usize,
    },
    /// The peer moved its ring index by more than is possible.
    #[error(
        "the peer moved its ring index from {from} to {to}, more than the {max} entries it \
         may have; the peer is faulty, reset the device"
    )]
    IndexJump {
        /// Our last position.
        from: u16,
        /// The index the peer published.
        to: u16,
        /// Largest legal distance.
        max: u16,
    },
    /// The device returned an id that is not the head of a chain it holds.
    #[error(
        "the device returned descriptor {id}, which is not the head of a chain it holds; \
         the device is faulty, reset it"
    )]
    NotOutstanding {
        /// The id found in the used ring.
        id: u16,
    },
    /// The device claims to have written more than the chain can hold.
    #[error(
        "the device reports {len} bytes written to chain {head}, which has only {capacity} \
         writable bytes; the device is faulty, reset it"
    )]
    UsedLenTooLarge {
        /// Head of the chain.
        head: u16,
        /// Length the device reported.
        len: u32,
        /// Writable bytes posted.
        capacity: u32,
    },
    /// A device-readable descriptor follows a device-writable one.
    #[error(
        "descriptor chain at head {head} has a readable buffer after a writable one; the \
         driver is faulty, reset the device"
    )]
    ReadableAfterWritable {
        /// Head of the chain.
        head: u16,
    },
    /// The driver used an indirect descriptor, which this device does not
    /// support (and must not have offered).
    #[error(
        "descriptor chain at head {head} uses an indirect table, which was not negotiated; \
         the driver is faulty, reset the device"
    )]
    IndirectUnsupported {
        /// Head of the chain.
        head: u16,
    },
    /// The device tried to return a chain it does not hold.
    #[error(
        "chain {head} is not in flight on this device (out of range, or nothing popped); \
         return only heads obtained from pop()"
    )]
    NotInFlight {
        /// The head passed.
        head: u16,
    },
}

impl QueueError {
    /// True for the errors that mark the queue broken: protocol violations of
    /// the peer (and failing shared-memory accesses). The others are mistakes
    /// or back-pressure of the local caller and leave the queue usable.
    pub fn breaks_queue(&self) -> bool {
        !matches!(
            self,
            QueueError::Full { .. }
                | QueueError::EmptyChain
                | QueueError::TooManyBufs { .. }
                | QueueError::BadSize { .. }
                | QueueError::BadAlign { .. }
                | QueueError::BadRingAddr { .. }
                | QueueError::BadWindow { .. }
                | QueueError::OffsetOutOfWindow { .. }
                | QueueError::NotInFlight { .. }
                | QueueError::Broken
        )
    }
}

/// Maps the peers' shared "physical" addresses to region offsets: the
/// address range `[pa, pa + len)` is the region range `[offset, offset + len)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Physical address of the window start.
    pub pa: u64,
    /// Region offset of the window start.
    pub offset: usize,
    /// Window length in bytes.
    pub len: usize,
}

impl Window {
    /// A window mapping `[pa, pa + len)` to region offsets `[offset, offset + len)`.
    pub const fn new(pa: u64, offset: usize, len: usize) -> Window {
        Window { pa, offset, len }
    }

    /// The region offset of the buffer `[pa, pa + len)`, which must lie
    /// entirely inside the window (an empty buffer may sit at its end).
    pub fn to_offset(&self, pa: u64, len: usize) -> Result<usize, QueueError> {
        let err = QueueError::AddrOutOfWindow {
            addr: pa,
            len: len as u64,
        };
        let rel = pa.checked_sub(self.pa).ok_or(err)?;
        let end = rel.checked_add(len as u64).ok_or(err)?;
        if end > self.len as u64 {
            return Err(err);
        }
        // rel <= self.len, which is a usize, so the cast is lossless.
        self.offset.checked_add(rel as usize).ok_or(err)
    }

    /// The physical address of region offset `offset`, which must lie inside
    /// the window (`offset < self.offset + self.len`).
    pub fn to_pa(&self, offset: usize) -> Result<u64, QueueError> {
        let err = QueueError::OffsetOutOfWindow { offset, len: 1 };
        let rel = offset.checked_sub(self.offset).ok_or(err)?;
        if rel >= self.len {
            return Err(err);
        }
        self.pa.checked_add(rel as u64).ok_or(err)
    }

    /// The physical address of the region range `[offset, offset + len)`,
    /// which must lie entirely inside the window (an empty range may sit at
    /// its end).
    pub fn to_pa_range(&self, offset: usize, len: usize) -> Result<u64, QueueError> {
        let err = QueueError::OffsetOutOfWindow { offset, len };
        let rel = offset.checked_sub(self.offset).ok_or(err)?;
        if rel.checked_add(len).ok_or(err)? > self.len {
            return Err(err);
        }
        self.pa.checked_add(rel as u64).ok_or(err)
    }

    /// Checks that the window lies inside a region of `region_len` bytes and
    /// that its physical range does not wrap.
    pub fn check(&self, region_len: usize) -> Result<(), QueueError> {
        let fits = self
            .offset
            .checked_add(self.len)
            .is_some_and(|end| end <= region_len);
        if !fits || self.pa.checked_add(self.len as u64).is_none() {
            return Err(QueueError::BadWindow {
                pa: self.pa,
                offset: self.offset,
                len: self.len,
            });
        }
        Ok(())
    }
}

/// A buffer inside the region, by region offset (driver side).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Buf {
    /// Region offset of the first byte.
    pub offset: usize,
    /// Length in bytes.
    pub len: u32,
}

impl Buf {
    /// A buffer of `len` bytes at region offset `offset`.
    pub const fn new(offset: usize, len: u32) -> Buf {
        Buf { offset, len }
    }
}

/// A chain the device returned (driver side).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Used {
    /// Head descriptor index, as returned by [`DriverQueue::add`].
    pub head: u16,
    /// Bytes the device wrote into the chain's writable buffers (validated
    /// against the writable capacity; 0 for chains without writable
    /// buffers, whatever the device reported).
    pub len: u32,
}

/// A snapshot of a queue's indices, for dumps and debugging.
///
/// Only local state: building it reads no shared memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueIndices {
    /// Queue size.
    pub num: u16,
    /// `avail.idx`: on the driver, the value we published; on the device,
    /// the value we last read.
    pub avail_idx: u16,
    /// `used.idx`: on the driver, the value we last read; on the device, the
    /// value we published.
    pub used_idx: u16,
    /// On the driver, the avail index the next [`DriverQueue::add`] fills
    /// (ahead of `avail_idx` by the chains not yet published); on the
    /// device, the next avail entry [`DeviceQueue::pop`] consumes.
    pub last_avail: u16,
    /// On the driver, the next used entry [`DriverQueue::pop_used`]
    /// consumes; on the device, equal to `used_idx`.
    pub last_used: u16,
    /// On the driver, chains added and not yet returned; on the device,
    /// chains popped and not yet pushed back.
    pub in_flight: u16,
    /// True once the peer broke the protocol.
    pub broken: bool,
}

impl core::fmt::Display for QueueIndices {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "num {} avail.idx {} used.idx {} last_avail {} last_used {} in_flight {}{}",
            self.num,
            self.avail_idx,
            self.used_idx,
            self.last_avail,
            self.last_used,
            self.in_flight,
            if self.broken { " BROKEN" } else { "" }
        )
    }
}
