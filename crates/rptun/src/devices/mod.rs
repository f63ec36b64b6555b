//! Virtio devices, both roles, over any transport.
//!
//! - [`rng`] (feature `rng`): virtio-rng (entropy, device id 4). The driver
//!   asks the peer for random bytes; the device fills the driver's buffers
//!   from an [`rng::EntropySource`].
//! - [`console`] (feature `console`): virtio-console (device id 3), legacy
//!   single port: a byte stream each way with back-pressure.
//!
//! Every driver here is written only against [`Transport`] and every device
//! only against [`DeviceTransport`]: the same code runs over a remoteproc
//! vdev or a virtio-mmio window without knowing which.
//!
//! # Memory
//!
//! Drivers take every buffer they post from [`Transport::alloc_shared`], so
//! they cannot post memory the device cannot see. Buffers are allocated once,
//! when the driver attaches, and reused. A buffer the device may still write
//! is never reused or freed: after a timeout the request stays posted, and
//! its completion is collected by a later call. `shutdown` resets the device
//! (after which it no longer touches the buffers) and frees them; dropping a
//! driver without `shutdown` leaks its shared buffers on purpose.
//!
//! # Waiting
//!
//! Nothing here blocks or knows a clock (the core is `no_std`). Each driver
//! has non-blocking calls (`poll`, `fill`, `read`, `write`, ...) and
//! "blocking-ish" ones that take a `wait` closure: it is called whenever no
//! progress was possible, should sleep a little (or wait for the doorbell),
//! and returns `false` once the caller's timeout expired, which ends the
//! call with [`DeviceError::Timeout`]. Between waits the driver checks the
//! device: a transport reporting the peer gone, a device asking for a reset,
//! or a device reset under the driver end the wait at once with
//! [`DeviceError::Gone`], [`DeviceError::NeedsReset`] or
//! [`DeviceError::Reset`]. Notifications are never disabled, so a `wait`
//! that sleeps on the transport's doorbell does not miss one.
//!
//! # Device side life cycle
//!
//! A device does not touch its queues before the driver set `DRIVER_OK`
//! (until then its calls report no progress). When the driver resets the
//! device (or marks it `FAILED`), the device drops its queues and reports
//! [`DeviceError::Reset`] once; it attaches again when the driver sets
//! `DRIVER_OK` anew. A driver that breaks the virtqueue protocol gets
//! `DEVICE_NEEDS_RESET`, and the device stays detached until the driver
//! resets it.
#![forbid(unsafe_code)]
// The shared helpers serve the device modules; a build with none of them
// keeps only the error type.
#![cfg_attr(not(any(feature = "rng", feature = "console")), allow(dead_code))]

#[cfg(feature = "console")]
pub mod console;
#[cfg(feature = "rng")]
pub mod rng;

use crate::virtio::queue::{DeviceQueue, QueueError, VIRTIO_RING_F_EVENT_IDX};
use crate::virtio::{feature, status, DeviceTransport, QueueMem, Transport, VirtioError};

/// Errors of the virtio devices and drivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// The transport failed (other than the peer being gone).
    #[error(transparent)]
    Virtio(VirtioError),
    /// A virtqueue failed; protocol violations of the peer break the queue.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The transport carries a different kind of device.
    #[error(
        "the transport carries virtio device id {found}, this needs id {expected}; attach \
         the matching driver or device"
    )]
    WrongDevice {
        /// The id this driver or device handles.
        expected: u32,
        /// The id the transport reports.
        found: u32,
    },
    /// The configuration cannot work.
    #[error("invalid device configuration: {0}")]
    BadConfig(&'static str),
    /// The caller's wait gave up before the peer answered.
    #[error(
        "timed out waiting for the virtio peer (it did not return buffers or post new ones); \
         the request stays posted, retry later or reset the device"
    )]
    Timeout,
    /// The transport reports the peer gone.
    #[error(
        "the virtio peer is gone (the transport lost it: stopped, crashed or restarting); \
         restart the link and attach again"
    )]
    Gone,
    /// The device set `DEVICE_NEEDS_RESET`.
    #[error(
        "the virtio device failed and asks for a reset (DEVICE_NEEDS_RESET); shut the \
         driver down and attach again"
    )]
    NeedsReset,
    /// The device was reset under us: on the driver side `DRIVER_OK`
    /// vanished; on the device side the driver reset the device or marked it
    /// `FAILED`. Buffers in flight are lost.
    #[error(
        "the virtio device was reset by the peer (data in flight is lost); attach again \
         once the peer is back"
    )]
    Reset,
    /// The entropy source failed.
    #[error("the entropy source failed to produce random bytes; check the host's RNG")]
    Entropy,
}

impl From<VirtioError> for DeviceError {
    fn from(e: VirtioError) -> Self {
        match e {
            VirtioError::Gone => DeviceError::Gone,
            e => DeviceError::Virtio(e),
        }
    }
}

impl DeviceError {
    /// True when the peer is gone or reset the device: the link has to be
    /// set up again, retrying the call cannot help.
    pub fn is_peer_lost(&self) -> bool {
        matches!(
            self,
            DeviceError::Gone | DeviceError::Reset | DeviceError::NeedsReset
        )
    }
}

/// Features every driver here accepts when offered: `VERSION_1` (the ring
/// layout and the device formats used here do not change with it) and
/// `EVENT_IDX` notification suppression.
pub const COMMON_DRIVER_FEATURES: u64 = 1 << feature::VERSION_1 | 1 << VIRTIO_RING_F_EVENT_IDX;

/// Driver start-up up to queue set-up: checks the id, resets the device,
/// sets ACKNOWLEDGE and DRIVER, accepts `offered & supported`, and sets
/// FEATURES_OK when `VERSION_1` was negotiated (legacy devices, as every
/// remoteproc vdev, have no FEATURES_OK step). Returns the accepted
/// features.
pub(crate) fn driver_begin<T: Transport>(
    t: &mut T,
    id: u32,
    supported: u64,
) -> Result<u64, DeviceError> {
    let found = t.device_id();
    if found != id {
        return Err(DeviceError::WrongDevice {
            expected: id,
            found,
        });
    }
    t.set_status(0)?;
    t.set_status(status::ACKNOWLEDGE)?;
    t.set_status(status::ACKNOWLEDGE | status::DRIVER)?;
    let accepted = t.device_features()? & supported;
    t.set_driver_features(accepted)?;
    if accepted & 1 << feature::VERSION_1 != 0 {
        t.set_status(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK)?;
    }
    Ok(accepted)
}

/// Sets DRIVER_OK on top of the status set by [`driver_begin`].
pub(crate) fn driver_finish<T: Transport>(t: &mut T) -> Result<(), DeviceError> {
    let s = t.status()?;
    t.set_status(s | status::DRIVER_OK)?;
    Ok(())
}

/// Marks the device FAILED after a failed start-up (best effort).
pub(crate) fn driver_fail<T: Transport>(t: &mut T) {
    if let Ok(s) = t.status() {
        let _ = t.set_status(s | status::FAILED);
    }
}

/// The largest power of two that is at most `limit` and at most `max`
/// (0 if either is 0).
pub(crate) fn queue_size(max: u16, limit: usize) -> u16 {
    let cap = usize::from(max).min(limit).min(usize::from(u16::MAX));
    if cap == 0 {
        return 0;
    }
    // cap >= 1, so the shift is below 16.
    1u16 << (usize::BITS - 1 - cap.leading_zeros())
}

/// Driver side: sets up queue `q` with the largest power of two within
/// `want`, the device's maximum and `cap` (the driver's capacity). A
/// transport with fixed rings (a remoteproc vdev, whose table sets `num`)
/// refuses any other size with [`VirtioError::BadQueueSize`]; its own size is
/// then used if it fits `cap`.
pub(crate) fn setup_queue<T: Transport>(
    t: &mut T,
    q: u16,
    want: u16,
    cap: usize,
) -> Result<QueueMem, DeviceError> {
    let max = t.max_queue_size(q)?;
    let size = queue_size(max.min(want), cap);
    if size == 0 {
        return Err(DeviceError::BadConfig(
            "a queue would have no entries (queue_size or the device's maximum is 0)",
        ));
    }
    match t.setup_queue(q, size) {
        Err(VirtioError::BadQueueSize { max: fixed, .. })
            if fixed != size && fixed.is_power_of_two() && usize::from(fixed) <= cap =>
        {
            Ok(t.setup_queue(q, fixed)?)
        }
        r => Ok(r?),
    }
}

/// Driver side: a set of `count` equal buffers of `size` bytes, allocated as
/// one block from the transport's shared memory (transports track few
/// allocations: remoteproc vdev pools hold 32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BufferSet {
    /// Region offset of the block.
    pub base: usize,
    /// Distance between buffers (`size` rounded up to 8).
    pub stride: usize,
    /// Number of buffers.
    pub count: usize,
}

impl BufferSet {
    pub(crate) fn alloc<T: Transport>(
        t: &mut T,
        count: usize,
        size: u32,
    ) -> Result<BufferSet, DeviceError> {
        let too_big = DeviceError::BadConfig("the buffers do not fit the address space");
        let stride = (size as usize).checked_add(7).ok_or(too_big)? & !7;
        let total = stride.checked_mul(count).ok_or(too_big)?;
        let base = t.alloc_shared(total, 8)?;
        Ok(BufferSet {
            base,
            stride,
            count,
        })
    }

    /// Region offset of buffer `i`.
    pub(crate) fn offset(&self, i: usize) -> usize {
        self.base + i * self.stride
    }

    pub(crate) fn free<T: Transport>(&self, t: &mut T) {
        t.free_shared(self.base, self.stride * self.count);
    }
}

/// Driver side: is the device still there and running?
pub(crate) fn check_device<T: Transport>(t: &T) -> Result<(), DeviceError> {
    let s = t.status()?;
    if s & status::DEVICE_NEEDS_RESET != 0 {
        return Err(DeviceError::NeedsReset);
    }
    if s & status::DRIVER_OK == 0 || s & status::FAILED != 0 {
        return Err(DeviceError::Reset);
    }
    Ok(())
}

/// Device side: how far the driver got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DriverState {
    /// Not (or no longer) DRIVER_OK, or FAILED.
    NotReady,
    /// DRIVER_OK, and the device has not asked for a reset.
    Ready,
    /// DRIVER_OK, but `DEVICE_NEEDS_RESET` is still set: the driver has not
    /// reset the device since it was asked to. (A reset clears the bit, so a
    /// failed device notices a driver re-initialising it even when it never
    /// saw the status without `DRIVER_OK`.)
    NeedsReset,
}

/// Device side: reads the driver's progress; a transport that lost the
/// peer yields [`DeviceError::Gone`].
pub(crate) fn driver_state<D: DeviceTransport>(t: &D) -> Result<DriverState, DeviceError> {
    let s = t.status()?;
    Ok(if s & status::DRIVER_OK == 0 || s & status::FAILED != 0 {
        DriverState::NotReady
    } else if s & status::DEVICE_NEEDS_RESET != 0 {
        DriverState::NeedsReset
    } else {
        DriverState::Ready
    })
}

/// Device side: attaches to queue `q` as its device, with EVENT_IDX if the
/// driver accepted it.
pub(crate) fn attach_queue<D: DeviceTransport>(t: &D, q: u16) -> Result<DeviceQueue, DeviceError> {
    let event_idx = t
        .driver_features()
        .map(|f| f & 1 << VIRTIO_RING_F_EVENT_IDX != 0)?;
    let mem = t.queue(q)?;
    Ok(DeviceQueue::new(
        mem.region, mem.layout, mem.window, event_idx,
    )?)
}

/// Device side: true while the driver still runs the ring `dq` attached to.
///
/// A driver can reset and re-initialise the device between two calls of
/// the device, so the device never sees the status without `DRIVER_OK`.
/// Two things reveal it: the transport places the queue elsewhere (an MMIO
/// driver allocates new rings), or `used.idx` no longer holds what this
/// device published (only the device writes it; a re-initialising driver
/// zeroes it). The one case left unseen, a re-initialised ring at the same
/// place while our `used.idx` was still 0, is a ring in the state a fresh
/// attach would find.
pub(crate) fn queue_still_valid<D: DeviceTransport>(t: &D, q: u16, dq: &DeviceQueue) -> bool {
    let Ok(mem) = t.queue(q) else {
        return false;
    };
    if mem.layout != *dq.layout() || mem.window != *dq.window() {
        return false;
    }
    matches!(dq.region().load_u16(dq.layout().used_idx()), Ok(v) if v == dq.indices().used_idx)
}

/// Device side: what a device does with an error of its own queue
/// handling. Protocol violations of the driver break the queue: the device
/// asks for a reset and stays detached (`failed`) until the driver resets.
pub(crate) fn device_queue_failed<D: DeviceTransport>(t: &mut D, e: &DeviceError) -> bool {
    let fatal = match e {
        DeviceError::Queue(q) => q.breaks_queue() || *q == QueueError::Broken,
        DeviceError::Virtio(VirtioError::Protocol(_)) => true,
        _ => false,
    };
    if fatal {
        log::warn!("virtio device: {e}; asking the driver for a reset");
        let _ = t.set_needs_reset();
    }
    fatal
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_size_is_the_largest_power_of_two_within_both_limits() {
        assert_eq!(queue_size(8, 16), 8);
        assert_eq!(queue_size(256, 16), 16);
        assert_eq!(queue_size(12, 64), 8);
        assert_eq!(queue_size(8, 6), 4);
        assert_eq!(queue_size(1, 1), 1);
        assert_eq!(queue_size(0, 8), 0);
        assert_eq!(queue_size(8, 0), 0);
        assert_eq!(queue_size(32768, usize::MAX), 32768);
    }

    #[test]
    fn a_transport_losing_the_peer_maps_to_gone() {
        assert_eq!(DeviceError::from(VirtioError::Gone), DeviceError::Gone);
        assert!(DeviceError::from(VirtioError::Gone).is_peer_lost());
        assert_eq!(
            DeviceError::from(VirtioError::NoQueue(3)),
            DeviceError::Virtio(VirtioError::NoQueue(3))
        );
        assert!(!DeviceError::Timeout.is_peer_lost());
    }
}
