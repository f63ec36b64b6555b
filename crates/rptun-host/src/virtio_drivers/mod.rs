//! The [`virtio-drivers`](::virtio_drivers) crate's drivers over a remoteproc
//! vdev (feature `virtio-drivers`).
//!
//! A third-party virtio driver stack, unmodified, drives a device of a
//! remoteproc resource table through rptun's vdev transport:
//!
//! - [`RemoteprocTransport`] implements the crate's
//!   [`Transport`](::virtio_drivers::transport::Transport) over a
//!   [`VdevDriver`](rptun::remoteproc::vdev::VdevDriver): status byte,
//!   32-bit feature words and config space live in the vdev entry, doorbells
//!   go through the link's notifier;
//! - [`RemoteprocHal`] implements the crate's [`Hal`](::virtio_drivers::Hal)
//!   over the vdev's buffer pool (the carveout space after its vrings): the
//!   crate's rings come from the pool, and every buffer the crate shares is
//!   bounced through the pool, so the device only ever sees shared memory;
//! - [`Health`] watches the link: a peer that is gone (doorbell failure,
//!   [`Health::mark_gone`]), a device asking for a reset, or a queue that
//!   makes no progress for [`Options::stall_timeout`] makes the device
//!   FAILED and ends the crate's busy waits with an error instead of a hang.
//!
//! `docs/VIRTIO-DRIVERS.md` explains the design (who places the vrings, why
//! bounce buffers, feature words, physical address 0, the watchdog).
//!
//! `hal.rs` is the crate's second `unsafe` seam, besides `shm.rs`: the
//! crate's `Hal` is an `unsafe trait` whose `share`/`unshare` hand over raw
//! pointers. Everything else here forbids `unsafe` (this file denies it, so
//! that `hal.rs` alone can allow it).
#![deny(unsafe_code)]

mod hal;
mod pool;
mod transport;

pub use hal::RemoteprocHal;
pub use pool::{DmaDomain, DmaPool, DmaSlot, POOL_CAPACITY};
pub use transport::{Health, PlacedRing, RemoteprocTransport};

use rptun::virtio::VirtioError;
use rptun::wire::rsc::{ParseOptions, ResourceTable, RscError, ANY};
use std::time::Duration;

/// The page size virtio-drivers works with (its rings are aligned to it and
/// its legacy used ring starts on the next page).
pub const PAGE_SIZE: usize = ::virtio_drivers::PAGE_SIZE;

/// The `align` the adapter writes into a vring entry it places: the legacy
/// layout of virtio-drivers puts the used ring on the next page boundary.
pub const RING_ALIGN: u32 = PAGE_SIZE as u32;

/// Most vrings a vdev may have (as the core's table handling).
pub const MAX_VRINGS: usize = rptun::remoteproc::table::MAX_VRINGS;

/// Errors of the virtio-drivers adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AdapterError {
    /// A transport call of the vdev failed.
    #[error("the vdev transport failed: {0}")]
    Virtio(#[from] VirtioError),
    /// The firmware's resource table could not be parsed.
    #[error("the firmware resource table is invalid: {0}")]
    Table(#[from] RscError),
    /// The table has no vdev with that ordinal.
    #[error("the resource table has no vdev {vdev}; count vdevs from 0 in table order")]
    NoVdev {
        /// The ordinal asked for.
        vdev: usize,
    },
    /// virtio-drivers has no driver type for this device id.
    #[error(
        "virtio device id {id} is unknown to virtio-drivers; use one of its device types \
         (console 3, entropy 4, ...)"
    )]
    UnknownDevice {
        /// The vdev's device id.
        id: u32,
    },
    /// This side drives the vdev but is the link's remote.
    #[error(
        "this side drives the vdev as the link's REMOTE (reserved[0] = 1): only the master \
         places vrings, and virtio-drivers allocates its own; drive the vdev from the master \
         (reserved[0] = 0) or use rptun's own drivers"
    )]
    RemoteDrives,
    /// The address map does not describe the link's region.
    #[error(
        "the address map puts the region at pa {map_pa:#x} but the vdev link uses {link_pa:#x}; \
         pass the LinkMap the link was built with"
    )]
    MapMismatch {
        /// Physical base of the map.
        map_pa: u64,
        /// Physical base of the link's window.
        link_pa: u64,
    },
    /// The vdev has no buffer pool.
    #[error(
        "the vdev has no buffer pool (no carveout space after its vrings); give the vdev a \
         carveout large enough for virtio-drivers' rings (2 pages per queue) and buffers"
    )]
    NoPool,
    /// The pool cannot serve page-aligned allocations.
    #[error(
        "the pool's physical and local addresses are not congruent modulo 4096 (local base \
         {va:#x}, physical {pa:#x}); map the region page-aligned at a page-aligned pa"
    )]
    PoolMisaligned {
        /// Local address of the pool start.
        va: usize,
        /// Physical address of the pool start.
        pa: u64,
    },
    /// The pool is too small to be used.
    #[error("the vdev's buffer pool ({len} bytes) is too small; enlarge the carveout")]
    PoolTooSmall {
        /// Usable bytes.
        len: usize,
    },
    /// A buffer does not fit the pool.
    #[error(
        "no room in the vdev's buffer pool for a {len}-byte buffer; share smaller buffers \
         (send in chunks) or enlarge the carveout"
    )]
    NoRoom {
        /// Bytes asked for.
        len: usize,
    },
    /// A DMA free named no block that was allocated.
    #[error("no DMA block of that size was allocated at pa {pa:#x} (double free or wrong size)")]
    NotAllocated {
        /// The physical address freed.
        pa: u64,
    },
    /// A DMA domain still has allocations from an earlier pool.
    #[error(
        "DMA domain still holds {live} live allocations from an earlier link; drop the \
         earlier virtio-drivers device first, or use another domain"
    )]
    DomainBusy {
        /// Live allocations.
        live: usize,
    },
    /// The vring's address was fixed by the firmware.
    #[error(
        "vring {queue} has a fixed address in the firmware's table; virtio-drivers allocates \
         its own rings, so only vrings given as ANY/0 can be used (see RingPlacement)"
    )]
    FixedRing {
        /// Queue index.
        queue: u16,
    },
    /// The queue does not exist.
    #[error("vring {queue} does not exist on this vdev")]
    NoQueue {
        /// Queue index.
        queue: u16,
    },
    /// The table's vring is smaller than what the driver asked for.
    #[error(
        "queue {queue}: the driver asked for {size} entries, the table's vring has {max}; \
         raise the vring's num in the firmware's table"
    )]
    QueueTooLarge {
        /// Queue index.
        queue: u16,
        /// Entries asked for.
        size: u32,
        /// The table's `num`.
        max: u32,
    },
    /// The driver's ring is not where the shared memory is.
    #[error(
        "queue {queue}: the driver's ring at pa {pa:#x} is outside the shared memory the \
         remote can see; use RemoteprocHal of the transport's DMA domain"
    )]
    RingOutsideWindow {
        /// Queue index.
        queue: u16,
        /// Physical address of the descriptor table.
        pa: u64,
    },
    /// The driver's ring parts are not where the legacy layout puts them.
    #[error(
        "queue {queue}: the driver's rings are not in the legacy layout aligned to 4096 \
         (descriptors, avail ring, used ring on the next page) that a remoteproc vring \
         entry describes"
    )]
    LayoutMismatch {
        /// Queue index.
        queue: u16,
    },
    /// The driver set a page size other than 4096.
    #[error("the driver uses a {size}-byte page; the adapter's ring layout needs 4096")]
    PageSize {
        /// The page size set.
        size: u32,
    },
    /// The driver accepted feature bits a vdev cannot carry.
    #[error(
        "the driver accepted features {features:#x}, beyond the 32 bits of a remoteproc \
         vdev (VERSION_1 is bit 32: a vdev is a legacy device and never offers it)"
    )]
    FeaturesBeyond32 {
        /// The feature word written.
        features: u64,
    },
    /// The peer went away.
    #[error(
        "the virtio peer is gone (doorbell failed or the platform reported it); the device \
         was marked FAILED: drop the driver, restart the link and attach again"
    )]
    Gone,
    /// The device asked for a reset.
    #[error(
        "the device set DEVICE_NEEDS_RESET; the device was marked FAILED: drop the driver and \
         attach again"
    )]
    NeedsReset,
    /// A queue made no progress for the stall timeout.
    #[error(
        "queue {queue} made no progress for the stall timeout (the peer stopped serving it); \
         the device was marked FAILED: drop the driver, restart the link, or raise \
         Options::stall_timeout if the peer is only slow"
    )]
    Stalled {
        /// Queue index.
        queue: u16,
    },
}

/// Which vrings of a vdev the driver (virtio-drivers) may place.
///
/// virtio-drivers allocates its own rings; on a remoteproc link the master
/// chooses vring addresses, and it may only move a vring the firmware left
/// to it (`da` given as ANY or 0 in the firmware's table). After
/// [`assign`](rptun::remoteproc::table::assign) the live table no longer
/// says which ones those were, so the caller passes them here, best with
/// [`RingPlacement::from_firmware_table`] on the table as the firmware
/// shipped it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RingPlacement(u8);

impl RingPlacement {
    /// No vring may be placed by the driver.
    pub const NONE: RingPlacement = RingPlacement(0);

    /// The vrings whose bits are set in `mask` (bit `q` = queue `q`).
    pub const fn queues(mask: u8) -> RingPlacement {
        RingPlacement(mask)
    }

    /// The vrings of vdev `vdev` (ordinal in table order) whose `da` is ANY
    /// or 0 in `table`, the resource table as the firmware shipped it
    /// (before the master's assignment).
    pub fn from_firmware_table(table: &[u8], vdev: usize) -> Result<RingPlacement, AdapterError> {
        let t = ResourceTable::parse(table, &ParseOptions::default())?;
        let v = t.vdevs().nth(vdev).ok_or(AdapterError::NoVdev { vdev })?;
        let mut mask = 0u8;
        for (q, r) in v.vrings().enumerate().take(MAX_VRINGS) {
            if r.da == ANY || r.da == 0 {
                mask |= 1 << q;
            }
        }
        Ok(RingPlacement(mask))
    }

    /// True when the driver may place queue `q`.
    pub fn contains(&self, q: u16) -> bool {
        q < 8 && self.0 & (1 << q) != 0
    }
}

/// How a [`RemoteprocTransport`] watches its link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// How often the watchdog thread looks at the link (`None`: no thread;
    /// then only a doorbell failure or [`Health::mark_gone`] ends a wait).
    pub tick: Option<Duration>,
    /// A queue with buffers outstanding whose used index does not move for
    /// this long is taken as a dead peer (`None`: never). A peer that is
    /// only slow, stalling a queue longer than this, is taken as dead too.
    pub stall_timeout: Option<Duration>,
    /// Queues exempt from the stall timeout (bit `q` = queue `q`): queues
    /// whose buffers wait for the device's own events, such as a console's
    /// receive queues, are outstanding for as long as nothing arrives.
    pub idle_queues: u8,
}

impl Options {
    /// The defaults for device id `id`: a 5 ms watchdog tick, a 10 s stall
    /// timeout, and the receive-side queues of consoles (even queues), net
    /// devices (even queues), input devices (queue 0) and sockets (queues 0
    /// and 2) exempt from it.
    pub fn for_device(id: u32) -> Options {
        let idle_queues = match id {
            // console: receiveq / control receiveq; net: receiveqs
            1 | 3 => 0b0101_0101,
            // input: eventq
            18 => 0b01,
            // vsock: rx, event
            19 => 0b101,
            _ => 0,
        };
        Options {
            tick: Some(Duration::from_millis(5)),
            stall_timeout: Some(Duration::from_secs(10)),
            idle_queues,
        }
    }
}
