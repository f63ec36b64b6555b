//! virtio-rng (entropy device, id 4), driver and device.
//!
//! One virtqueue, `requestq` (0): the driver posts device-writable buffers,
//! the device fills them with random bytes and returns them with the number
//! of bytes written (possibly fewer than the buffer holds, possibly 0). There
//! is no config space and there are no device features. NuttX's simulator
//! posts single device-writable descriptors of 1024 bytes
//! ([`NUTTX_REQUEST_SIZE`]).
//!
//! - [`RngDriver`] asks the peer for random bytes: [`RngDriver::fill`] (non
//!   blocking) and [`RngDriver::read`] (waits through a caller's closure).
//! - [`RngDevice`] serves the driver's requests from an [`EntropySource`]
//!   ([`RngDevice::poll`]). On a host, `rptun_host::entropy::GetrandomSource`
//!   is one.
#![forbid(unsafe_code)]

use super::{
    attach_queue, check_device, device_queue_failed, driver_begin, driver_fail, driver_finish,
    driver_state, queue_still_valid, setup_queue, BufferSet, DeviceError, DriverState,
    COMMON_DRIVER_FEATURES,
};
use crate::virtio::queue::{Buf, DeviceQueue, DriverQueue};
use crate::virtio::{id, DeviceTransport, Transport, VirtioError};

/// The request queue's index.
pub const REQUEST_QUEUE: u16 = 0;

/// Size of NuttX's rng requests (one device-writable descriptor each).
pub const NUTTX_REQUEST_SIZE: u32 = 1024;

/// Most buffers in one request chain the device accepts.
pub const MAX_CHAIN_SEGS: usize = 8;

/// Default cap on the bytes the device writes into one request.
pub const DEFAULT_MAX_REQUEST: u32 = 64 * 1024;

/// The entropy source failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the entropy source could not produce random bytes")]
pub struct EntropyError;

/// Where a virtio-rng device gets its random bytes.
pub trait EntropySource {
    /// Fills all of `buf` with random bytes.
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), EntropyError>;
}

impl<F: FnMut(&mut [u8]) -> Result<(), EntropyError>> EntropySource for F {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), EntropyError> {
        self(buf)
    }
}

/// How a [`RngDriver`] sets itself up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RngDriverConfig {
    /// Largest queue size to ask for (rounded down to a power of two, and
    /// limited by the device and by the driver's capacity `N`). Transports
    /// with fixed rings (remoteproc vdevs) use the ring they have.
    pub queue_size: u16,
    /// Request buffers to allocate (at most one per queue entry).
    pub buffers: u16,
    /// Bytes per request buffer.
    pub buf_size: u32,
}

impl Default for RngDriverConfig {
    /// 8 entries, 4 buffers of 1024 bytes (NuttX's request size).
    fn default() -> Self {
        RngDriverConfig {
            queue_size: 8,
            buffers: 4,
            buf_size: NUTTX_REQUEST_SIZE,
        }
    }
}

/// Marks a head without a buffer slot.
const NO_SLOT: u16 = u16::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// Ours, not posted.
    Idle,
    /// Posted; the device may write it.
    Posted,
    /// Returned with `len` random bytes, `pos` of them taken.
    Ready { len: u32, pos: u32 },
}

/// The driver of a virtio-rng device: asks the peer for random bytes.
///
/// `N` is the largest queue size it can drive (8 by default; remoteproc
/// tables fix the size, NuttX's is 8). Buffers come from the transport's
/// shared allocator when the driver attaches and are reused.
pub struct RngDriver<T: Transport, const N: usize = 8> {
    t: T,
    q: DriverQueue<N>,
    bufs: BufferSet,
    slots: [Slot; N],
    head_slot: [u16; N],
    nbufs: usize,
    buf_size: u32,
    features: u64,
}

impl<T: Transport, const N: usize> core::fmt::Debug for RngDriver<T, N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RngDriver")
            .field("queue", &self.q.indices())
            .field("buffers", &self.nbufs)
            .field("buf_size", &self.buf_size)
            .field("ready", &self.ready())
            .field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}

impl<T: Transport> RngDriver<T> {
    /// Attaches to the virtio-rng device behind `t` with the default
    /// configuration (see [`RngDriver::with_config`]).
    pub fn new(t: T) -> Result<Self, DeviceError> {
        Self::with_config(t, RngDriverConfig::default())
    }
}

impl<T: Transport, const N: usize> RngDriver<T, N> {
    /// Attaches to the virtio-rng device behind `t`: resets it, negotiates
    /// features, sets up the request queue, allocates the buffers from the
    /// transport's shared memory and sets `DRIVER_OK`. On failure the device
    /// is marked `FAILED` and the allocated memory is returned.
    pub fn with_config(mut t: T, cfg: RngDriverConfig) -> Result<Self, DeviceError> {
        if cfg.buffers == 0 || cfg.buf_size == 0 {
            return Err(DeviceError::BadConfig(
                "a virtio-rng driver needs at least one buffer of at least one byte",
            ));
        }
        match Self::start(&mut t, cfg) {
            Ok((q, bufs, features)) => Ok(RngDriver {
                t,
                q,
                nbufs: bufs.count,
                bufs,
                slots: [Slot::Idle; N],
                head_slot: [NO_SLOT; N],
                buf_size: cfg.buf_size,
                features,
            }),
            Err(e) => {
                driver_fail(&mut t);
                Err(e)
            }
        }
    }

    fn start(
        t: &mut T,
        cfg: RngDriverConfig,
    ) -> Result<(DriverQueue<N>, BufferSet, u64), DeviceError> {
        let features = driver_begin(t, id::ENTROPY, COMMON_DRIVER_FEATURES)?;
        if t.num_queues() < 1 {
            return Err(VirtioError::NoQueue(REQUEST_QUEUE).into());
        }
        let mem = setup_queue(t, REQUEST_QUEUE, cfg.queue_size, N)?;
        let event_idx = features & 1 << crate::virtio::queue::VIRTIO_RING_F_EVENT_IDX != 0;
        let q = DriverQueue::<N>::new(mem.region, mem.layout, mem.window, event_idx)?;
        let nbufs = usize::from(cfg.buffers).min(usize::from(q.num()));
        let bufs = BufferSet::alloc(t, nbufs, cfg.buf_size)?;
        if let Err(e) = driver_finish(t) {
            bufs.free(t);
            return Err(e);
        }
        Ok((q, bufs, features))
    }

    /// The features negotiated with the device.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// The transport.
    pub fn transport(&self) -> &T {
        &self.t
    }

    /// The transport, mutably (e.g. to acknowledge an interrupt).
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.t
    }

    /// The request queue (for dumps).
    pub fn queue(&self) -> &DriverQueue<N> {
        &self.q
    }

    /// Random bytes received and not yet taken.
    pub fn ready(&self) -> usize {
        self.slots[..self.nbufs]
            .iter()
            .map(|s| match *s {
                Slot::Ready { len, pos } => (len - pos) as usize,
                _ => 0,
            })
            .sum()
    }

    /// Bytes requested from the device and not yet returned (buffer
    /// capacity of the posted requests).
    pub fn in_flight(&self) -> usize {
        self.slots[..self.nbufs]
            .iter()
            .filter(|s| **s == Slot::Posted)
            .count()
            * self.buf_size as usize
    }

    /// Checks that the device is still there: fails with
    /// [`DeviceError::Gone`], [`DeviceError::NeedsReset`] or
    /// [`DeviceError::Reset`] otherwise.
    pub fn check(&self) -> Result<(), DeviceError> {
        check_device(&self.t)
    }

    /// Posts request buffers until the bytes ready plus the bytes requested
    /// cover `want` (or every buffer is in use), and notifies the device if
    /// it asks for notifications. Returns the bytes now requested.
    pub fn request(&mut self, want: usize) -> Result<usize, DeviceError> {
        let mut covered = self.ready() + self.in_flight();
        let mut added = false;
        for i in 0..self.nbufs {
            if covered >= want {
                break;
            }
            if self.slots[i] != Slot::Idle {
                continue;
            }
            let head = self
                .q
                .add(&[], &[Buf::new(self.bufs.offset(i), self.buf_size)])?;
            // head < num <= N (the queue checked num against N).
            self.head_slot[usize::from(head)] = i as u16;
            self.slots[i] = Slot::Posted;
            covered += self.buf_size as usize;
            added = true;
        }
        if added && self.q.publish()? {
            self.t.notify(REQUEST_QUEUE)?;
        }
        Ok(self.in_flight())
    }

    /// Collects the requests the device returned. Returns the bytes ready.
    pub fn poll(&mut self) -> Result<usize, DeviceError> {
        for _ in 0..self.q.num() {
            let Some(u) = self.q.pop_used()? else { break };
            let h = usize::from(u.head);
            let slot = usize::from(self.head_slot[h]);
            self.head_slot[h] = NO_SLOT;
            // The queue only returns heads we posted, so the slot exists.
            if let Some(s) = self.slots.get_mut(slot) {
                *s = if u.len == 0 {
                    Slot::Idle
                } else {
                    // The queue checked len <= the posted buffer length.
                    Slot::Ready { len: u.len, pos: 0 }
                };
            }
        }
        Ok(self.ready())
    }

    /// Copies random bytes already received into `out`, without asking for
    /// more. Returns the bytes copied. Each byte is handed out once.
    pub fn take(&mut self, out: &mut [u8]) -> Result<usize, DeviceError> {
        let mut done = 0;
        for i in 0..self.nbufs {
            if done == out.len() {
                break;
            }
            let Slot::Ready { len, pos } = self.slots[i] else {
                continue;
            };
            let n = ((len - pos) as usize).min(out.len() - done);
            self.q
                .region()
                .read_bytes(self.bufs.offset(i) + pos as usize, &mut out[done..done + n])
                .map_err(VirtioError::from)?;
            done += n;
            // n <= len - pos, a u32.
            let pos = pos + n as u32;
            self.slots[i] = if pos == len {
                Slot::Idle
            } else {
                Slot::Ready { len, pos }
            };
        }
        Ok(done)
    }

    /// Non-blocking read: collects returned requests, copies what is there
    /// into `out`, and requests what is missing. Returns the bytes copied
    /// (call again, with the rest of `out`, once the device had time to
    /// answer).
    pub fn fill(&mut self, out: &mut [u8]) -> Result<usize, DeviceError> {
        self.poll()?;
        let done = self.take(out)?;
        if done < out.len() {
            self.request(out.len() - done)?;
        }
        Ok(done)
    }

    /// Fills all of `out` with random bytes from the device, calling `wait`
    /// whenever none are ready (see the module docs of
    /// [`devices`](super)); `wait` returns `false` to give up.
    ///
    /// Fails with [`DeviceError::Timeout`] when `wait` gave up, and at once
    /// with [`DeviceError::Gone`], [`DeviceError::NeedsReset`] or
    /// [`DeviceError::Reset`] when the device is lost. On failure `out` may
    /// be partly filled; the bytes written there are consumed.
    pub fn read(
        &mut self,
        out: &mut [u8],
        mut wait: impl FnMut() -> bool,
    ) -> Result<(), DeviceError> {
        let mut done = 0;
        loop {
            done += self.fill(&mut out[done..])?;
            if done == out.len() {
                return Ok(());
            }
            self.check()?;
            if !wait() {
                return Err(DeviceError::Timeout);
            }
        }
    }

    /// Resets the device (after which it no longer touches the buffers),
    /// returns the buffers to the shared allocator and gives the transport
    /// back.
    pub fn shutdown(mut self) -> T {
        if let Err(e) = self.t.set_status(0) {
            log::warn!("virtio-rng: reset on shutdown failed: {e}");
        }
        self.bufs.free(&mut self.t);
        self.t
    }
}

/// The device side of virtio-rng: fills the driver's request buffers from
/// an [`EntropySource`].
pub struct RngDevice<D: DeviceTransport, E: EntropySource> {
    t: D,
    src: E,
    q: Option<DeviceQueue>,
    failed: bool,
    max_request: u32,
    served: u64,
}

impl<D: DeviceTransport, E: EntropySource> core::fmt::Debug for RngDevice<D, E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RngDevice")
            .field("queue", &self.q.as_ref().map(|q| q.indices()))
            .field("failed", &self.failed)
            .field("max_request", &self.max_request)
            .field("served", &self.served)
            .finish_non_exhaustive()
    }
}

impl<D: DeviceTransport, E: EntropySource> RngDevice<D, E> {
    /// A virtio-rng device on `t` (which must carry device id 4 with at least
    /// one queue), drawing from `src`. It attaches to the queue once the
    /// driver set `DRIVER_OK` (see [`RngDevice::poll`]).
    pub fn new(t: D, src: E) -> Result<Self, DeviceError> {
        let found = t.device_id();
        if found != id::ENTROPY {
            return Err(DeviceError::WrongDevice {
                expected: id::ENTROPY,
                found,
            });
        }
        if t.num_queues() < 1 {
            return Err(VirtioError::NoQueue(REQUEST_QUEUE).into());
        }
        Ok(RngDevice {
            t,
            src,
            q: None,
            failed: false,
            max_request: DEFAULT_MAX_REQUEST,
            served: 0,
        })
    }

    /// Caps the bytes written into one request (default
    /// [`DEFAULT_MAX_REQUEST`]); the driver sees a shorter used length.
    pub fn set_max_request(&mut self, bytes: u32) {
        self.max_request = bytes;
    }

    /// The transport.
    pub fn transport(&self) -> &D {
        &self.t
    }

    /// The entropy source.
    pub fn source_mut(&mut self) -> &mut E {
        &mut self.src
    }

    /// True while attached to the driver's queue.
    pub fn is_attached(&self) -> bool {
        self.q.is_some()
    }

    /// Requests served since creation.
    pub fn served(&self) -> u64 {
        self.served
    }

    /// Gives the transport and the source back.
    pub fn into_parts(self) -> (D, E) {
        (self.t, self.src)
    }

    /// Serves every pending request and notifies the driver if it asks for
    /// it. Returns the number of requests served (0 before the driver set
    /// `DRIVER_OK`).
    ///
    /// Fails with [`DeviceError::Reset`] once when the driver reset the
    /// device (the device attaches again on its next `DRIVER_OK`), with
    /// [`DeviceError::Gone`] when the transport lost the peer, and with the
    /// queue error when the driver broke the protocol (the device then sets
    /// `DEVICE_NEEDS_RESET` and waits for the driver's reset). A failing
    /// source fails with [`DeviceError::Entropy`]; the request is returned
    /// with what was written before.
    pub fn poll(&mut self) -> Result<usize, DeviceError> {
        match driver_state(&self.t)? {
            DriverState::NotReady => {
                self.failed = false;
                if self.q.take().is_some() {
                    return Err(DeviceError::Reset);
                }
                return Ok(0);
            }
            DriverState::NeedsReset if self.failed => return Ok(0),
            // The driver reset the device since it failed.
            _ => self.failed = false,
        }
        if let Some(q) = &self.q {
            if !queue_still_valid(&self.t, REQUEST_QUEUE, q) {
                // The driver re-initialised the device behind our back.
                self.q = None;
                return Err(DeviceError::Reset);
            }
        }
        if self.q.is_none() {
            match attach_queue(&self.t, REQUEST_QUEUE) {
                Ok(q) => self.q = Some(q),
                Err(DeviceError::Virtio(VirtioError::NotReady(_))) => return Ok(0),
                Err(e) => {
                    self.failed = device_queue_failed(&mut self.t, &e);
                    return Err(e);
                }
            }
        }
        let r = self.serve();
        if let Err(e) = &r {
            if device_queue_failed(&mut self.t, e) {
                self.q = None;
                self.failed = true;
            }
        }
        r
    }

    fn serve(&mut self) -> Result<usize, DeviceError> {
        let Some(q) = self.q.as_mut() else {
            return Ok(0);
        };
        let mut served = 0;
        let mut result = Ok(());
        // Two rounds: drain, re-enable notifications, drain what raced in.
        'rounds: for _ in 0..2 {
            for _ in 0..q.num() {
                let Some(chain) = q.pop::<MAX_CHAIN_SEGS>()? else {
                    break;
                };
                let cap = chain.writable_len().min(u64::from(self.max_request));
                let mut scratch = [0u8; 256];
                let mut pos: u64 = 0;
                while pos < cap {
                    let k = (cap - pos).min(scratch.len() as u64) as usize;
                    if self.src.fill(&mut scratch[..k]).is_err() {
                        result = Err(DeviceError::Entropy);
                        break;
                    }
                    let w = chain.write_at(q.region(), pos, &scratch[..k])?;
                    pos += w as u64;
                    if w < k {
                        break;
                    }
                }
                scratch.fill(0);
                // pos <= max_request, a u32.
                q.push_used(chain.head(), pos as u32)?;
                served += 1;
                if result.is_err() {
                    break 'rounds;
                }
            }
            if !q.enable_notifications()? {
                break;
            }
        }
        if q.should_notify()? {
            self.t.notify(REQUEST_QUEUE)?;
        }
        self.served += served as u64;
        result.map(|()| served)
    }
}
