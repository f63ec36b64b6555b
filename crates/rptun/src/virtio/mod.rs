//! virtio: status and feature negotiation, split virtqueues, transports.
//!
//! Devices are written once against two small traits, as in
//! `virtio-drivers`: [`Transport`] is the *driver's* view of a device (what a
//! guest OS sees of a virtio-mmio window or of a remoteproc `vdev` entry),
//! [`DeviceTransport`] is the *device's* view (what a hypervisor or the
//! remote core sees). The remoteproc vdev transport and the virtio-mmio
//! transport implement both, so every device and driver here runs over
//! either without knowing which.
//!
//! Remoteproc virtio devices are legacy virtio (32-bit feature words, no
//! `VERSION_1`), and so is the split-ring layout used here.
#![forbid(unsafe_code)]

use crate::shm::{Region, ShmError};

/// Device status bits (virtio 1.x §2.1; the remoteproc `vdev.status` byte).
pub mod status {
    /// The guest OS has noticed the device.
    pub const ACKNOWLEDGE: u8 = 1;
    /// The guest OS knows how to drive the device.
    pub const DRIVER: u8 = 2;
    /// The driver is set up and ready to drive the device.
    pub const DRIVER_OK: u8 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u8 = 8;
    /// The device hit an error it cannot recover from without a reset.
    pub const DEVICE_NEEDS_RESET: u8 = 0x40;
    /// The driver gave up on the device.
    pub const FAILED: u8 = 0x80;
}

/// virtio device ids (the remoteproc `vdev.id` field).
pub mod id {
    /// Network card.
    pub const NET: u32 = 1;
    /// Block device.
    pub const BLOCK: u32 = 2;
    /// Console.
    pub const CONSOLE: u32 = 3;
    /// Entropy source.
    pub const ENTROPY: u32 = 4;
    /// rpmsg.
    pub const RPMSG: u32 = 7;
    /// GPU.
    pub const GPU: u32 = 16;
    /// Input device.
    pub const INPUT: u32 = 18;
    /// Sound card.
    pub const SOUND: u32 = 25;
}

/// Transport-independent feature bits.
pub mod feature {
    /// Indirect descriptors (`VIRTIO_RING_F_INDIRECT_DESC`).
    pub const RING_INDIRECT_DESC: u32 = 28;
    /// `used_event` / `avail_event` notification suppression
    /// (`VIRTIO_RING_F_EVENT_IDX`).
    pub const RING_EVENT_IDX: u32 = 29;
    /// Modern (non-legacy) device (`VIRTIO_F_VERSION_1`); never offered over
    /// remoteproc.
    pub const VERSION_1: u32 = 32;
}

/// Which end of a virtio device this side is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The virtio driver: allocates vrings and buffers, posts requests.
    Driver,
    /// The virtio device ("vhost"): serves the driver's requests.
    Device,
}

impl Role {
    /// "driver" or "device", as printed by dumps.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Driver => "driver",
            Role::Device => "device",
        }
    }
}

/// Errors of virtio transports and devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VirtioError {
    /// Shared-memory access failed (usually a peer-supplied offset).
    #[error(transparent)]
    Shm(#[from] ShmError),
    /// The queue index does not exist on this device.
    #[error("virtqueue {0} does not exist on this device; check the device's queue count")]
    NoQueue(u16),
    /// The requested queue size is not usable.
    #[error(
        "virtqueue size {size} is not usable (maximum {max}, must be a power of two); \
         pick a smaller power of two"
    )]
    BadQueueSize {
        /// Requested size.
        size: u16,
        /// Maximum the transport allows.
        max: u16,
    },
    /// A feature word outside what the transport can carry was used.
    #[error(
        "feature bits {0:#x} cannot be carried by this transport (remoteproc vdevs have \
         32-bit feature words); do not offer or accept them"
    )]
    UnsupportedFeatures(u64),
    /// A config-space access is out of range.
    #[error(
        "config-space access of {len} bytes at offset {offset} exceeds the {size}-byte config \
         space; check the device's config layout"
    )]
    ConfigOutOfRange {
        /// Offset of the access.
        offset: usize,
        /// Length of the access.
        len: usize,
        /// Size of the config space.
        size: usize,
    },
    /// The shared allocator has no room for the request.
    #[error(
        "the transport's shared memory has no room for {size} bytes (aligned to {align}); \
         enlarge the carveout or use fewer/smaller buffers"
    )]
    NoSharedMemory {
        /// Requested size.
        size: usize,
        /// Requested alignment.
        align: usize,
    },
    /// The device is not (or no longer) in a state that allows the call.
    #[error("the virtio device is not ready ({0}); wait for DRIVER_OK or reset the link")]
    NotReady(&'static str),
    /// The peer set a status or value that violates the protocol.
    #[error("the peer broke the virtio protocol: {0}; the device must be reset")]
    Protocol(&'static str),
    /// The device or the link to it is gone (peer stopped, crashed or reset).
    #[error("the virtio device is gone (peer stopped, crashed or reset); restart the link")]
    Gone,
    /// A virtqueue failed; see the queue error.
    #[error("virtqueue error: {0}")]
    Queue(&'static str),
}

/// Where a virtqueue lives: the region that holds it, its layout in that
/// region, and the window that maps descriptor addresses to region offsets.
#[derive(Debug, Clone)]
pub struct QueueMem {
    /// Region holding the ring (and the buffers its descriptors point to).
    pub region: Region,
    /// Offsets of the descriptor table, avail ring and used ring.
    pub layout: queue::QueueLayout,
    /// Maps descriptor addresses (the peers' "physical" space) to offsets.
    pub window: queue::Window,
}

/// The virtio driver's view of a device.
///
/// Implemented by the remoteproc vdev transport (driver role) and the
/// virtio-mmio driver transport. Feature words are 64-bit here; transports
/// that carry fewer bits refuse the others with
/// [`VirtioError::UnsupportedFeatures`].
pub trait Transport {
    /// The virtio device id (see [`id`]).
    fn device_id(&self) -> u32;
    /// Features the device offers.
    fn device_features(&self) -> Result<u64, VirtioError>;
    /// Tells the device which features the driver accepted.
    fn set_driver_features(&mut self, features: u64) -> Result<(), VirtioError>;
    /// The device status byte.
    fn status(&self) -> Result<u8, VirtioError>;
    /// Writes the device status byte (0 resets the device).
    fn set_status(&mut self, status: u8) -> Result<(), VirtioError>;
    /// Size of the device-specific config space in bytes.
    fn config_len(&self) -> usize;
    /// Reads `buf.len()` bytes of config space at `offset`.
    fn read_config(&self, offset: usize, buf: &mut [u8]) -> Result<(), VirtioError>;
    /// Writes config space at `offset`.
    fn write_config(&mut self, offset: usize, buf: &[u8]) -> Result<(), VirtioError>;
    /// Number of virtqueues the device has.
    fn num_queues(&self) -> u16;
    /// Largest size queue `queue` may have.
    fn max_queue_size(&self, queue: u16) -> Result<u16, VirtioError>;
    /// Sets up queue `queue` with `size` entries and says where it lives.
    /// A remoteproc vdev returns the ring the resource table placed; an MMIO
    /// transport allocates the ring from shared memory and programs the
    /// device's registers.
    fn setup_queue(&mut self, queue: u16, size: u16) -> Result<QueueMem, VirtioError>;
    /// Tells the device that queue `queue` has new available buffers.
    fn notify(&mut self, queue: u16) -> Result<(), VirtioError>;
    /// Allocates `size` bytes aligned to `align` from memory the device can
    /// see, returning a region offset. Every buffer a driver posts must come
    /// from here.
    fn alloc_shared(&mut self, size: usize, align: usize) -> Result<usize, VirtioError>;
    /// Returns a block obtained from [`Transport::alloc_shared`].
    fn free_shared(&mut self, offset: usize, size: usize);
    /// The shared region buffers and rings live in.
    fn region(&self) -> &Region;
    /// The window mapping descriptor addresses to region offsets.
    fn window(&self) -> queue::Window;
}

/// The virtio device's ("vhost") view of a device.
///
/// Implemented by the remoteproc vdev transport (device role) and the
/// device-side emulation of a virtio-mmio register window.
pub trait DeviceTransport {
    /// The virtio device id (see [`id`]).
    fn device_id(&self) -> u32;
    /// Features this device offers to the driver.
    fn device_features(&self) -> Result<u64, VirtioError>;
    /// Features the driver accepted (valid once `FEATURES_OK` or
    /// `DRIVER_OK` is set, depending on the transport).
    fn driver_features(&self) -> Result<u64, VirtioError>;
    /// The device status byte as the driver last wrote it.
    fn status(&self) -> Result<u8, VirtioError>;
    /// Sets `DEVICE_NEEDS_RESET` to tell the driver the device failed.
    fn set_needs_reset(&mut self) -> Result<(), VirtioError>;
    /// Size of the device-specific config space in bytes.
    fn config_len(&self) -> usize;
    /// Reads config space (the driver may have written parts of it).
    fn read_config(&self, offset: usize, buf: &mut [u8]) -> Result<(), VirtioError>;
    /// Writes config space (device-provided values).
    fn write_config(&mut self, offset: usize, buf: &[u8]) -> Result<(), VirtioError>;
    /// Number of virtqueues the device has.
    fn num_queues(&self) -> u16;
    /// Where the driver placed queue `queue`; fails with
    /// [`VirtioError::NotReady`] before the driver set `DRIVER_OK`.
    fn queue(&self, queue: u16) -> Result<QueueMem, VirtioError>;
    /// Interrupts the driver: queue `queue` has new used buffers.
    fn notify(&mut self, queue: u16) -> Result<(), VirtioError>;
    /// The shared region the driver's buffers live in.
    fn region(&self) -> &Region;
}

pub mod mmio;
pub mod queue;

/// Waits until the driver set `DRIVER_OK`, calling `wait` between reads;
/// `wait` returns `false` to give up. A device must not touch a vdev before
/// that (DESIGN.md §3).
pub fn wait_driver_ok<T: DeviceTransport + ?Sized>(
    t: &T,
    mut wait: impl FnMut() -> bool,
) -> Result<u8, VirtioError> {
    loop {
        let s = t.status()?;
        if s & status::FAILED != 0 {
            return Err(VirtioError::NotReady("the driver marked the device FAILED"));
        }
        if s & status::DRIVER_OK != 0 {
            return Ok(s);
        }
        if !wait() {
            return Err(VirtioError::NotReady("timed out waiting for DRIVER_OK"));
        }
    }
}
