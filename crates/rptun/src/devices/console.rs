//! virtio-console (id 3), driver and device: a byte stream each way on port
//! 0 (legacy single port, no multiport control queues).
//!
//! Queues: `receiveq` (0) carries device → driver data in buffers the
//! driver posts device-writable; `transmitq` (1) carries driver → device
//! data in device-readable buffers. The config space (12 bytes: `cols`,
//! `rows`, `max_nr_ports`, `emerg_wr`) is only meaningful with features this
//! implementation does not offer or accept (`SIZE`, `MULTIPORT`,
//! `EMERG_WRITE`).
//!
//! # Flow control
//!
//! Both directions stall instead of losing bytes:
//! - the device writes only into receive buffers the driver posted, and the
//!   driver posts a buffer again only after its bytes were read: a driver
//!   that stops reading stops the device ([`ConsoleDevice::write`] returns
//!   fewer bytes than given, 0 when nothing was posted);
//! - the driver's transmit buffers come back only when the device consumed
//!   them: a device that stops reading stops the driver
//!   ([`ConsoleDriver::write`] returns fewer bytes, 0 when every transmit
//!   buffer is with the device).
//!
//! Bytes arrive in the order they were written: the device fills receive
//! buffers in the order it takes them and returns them in that order, and
//! the driver reads returned buffers in used-ring order.
#![forbid(unsafe_code)]

use super::{
    attach_queue, check_device, device_queue_failed, driver_begin, driver_fail, driver_finish,
    driver_state, queue_still_valid, setup_queue, BufferSet, DeviceError, DriverState,
    COMMON_DRIVER_FEATURES,
};
use crate::virtio::queue::{Buf, Chain, DeviceQueue, DriverQueue, VIRTIO_RING_F_EVENT_IDX};
use crate::virtio::{id, DeviceTransport, Transport, VirtioError};

/// `receiveq` of port 0: device → driver data.
pub const RECEIVE_QUEUE: u16 = 0;
/// `transmitq` of port 0: driver → device data.
pub const TRANSMIT_QUEUE: u16 = 1;
/// Size of the console config space (`u16 cols, u16 rows, u32
/// max_nr_ports, u32 emerg_wr`).
pub const CONFIG_LEN: usize = 12;
/// Most buffers in one chain the device accepts.
pub const MAX_CHAIN_SEGS: usize = 8;

/// virtio-console feature bits (none of them is used here).
pub mod feature {
    /// `VIRTIO_CONSOLE_F_SIZE`: `cols`/`rows` are valid.
    pub const SIZE: u32 = 0;
    /// `VIRTIO_CONSOLE_F_MULTIPORT`: ports and control queues.
    pub const MULTIPORT: u32 = 1;
    /// `VIRTIO_CONSOLE_F_EMERG_WRITE`: `emerg_wr` is writable.
    pub const EMERG_WRITE: u32 = 2;
}

/// How a [`ConsoleDriver`] sets itself up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsoleDriverConfig {
    /// Largest queue size to ask for, per queue (rounded down to a power of
    /// two, limited by the device and the driver's capacity `N`).
    /// Transports with fixed rings use the rings they have.
    pub queue_size: u16,
    /// Receive buffers (at most one per `receiveq` entry).
    pub rx_buffers: u16,
    /// Transmit buffers (at most one per `transmitq` entry).
    pub tx_buffers: u16,
    /// Bytes per buffer, both directions.
    pub buf_size: u32,
}

impl Default for ConsoleDriverConfig {
    /// 8-entry queues, 8 buffers of 4 KiB each way.
    fn default() -> Self {
        ConsoleDriverConfig {
            queue_size: 8,
            rx_buffers: 8,
            tx_buffers: 8,
            buf_size: 4096,
        }
    }
}

/// What a console can do right now, as reported by `poll`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConsoleReady {
    /// Bytes that can be read without waiting (driver: exact; device: at
    /// least this many are available when non-zero, the count is of the
    /// current chain only).
    pub readable: usize,
    /// True when `write` would accept bytes now.
    pub writable: bool,
}

/// Marks a head without a buffer slot.
const NO_SLOT: u16 = u16::MAX;

/// The driver of a virtio-console device: a byte stream to and from the
/// device's port 0.
///
/// `N` is the largest queue size it can drive (8 by default). Buffers come
/// from the transport's shared allocator when the driver attaches.
pub struct ConsoleDriver<T: Transport, const N: usize = 8> {
    t: T,
    rx: DriverQueue<N>,
    tx: DriverQueue<N>,
    buf_size: u32,
    features: u64,
    // Receive side: every buffer is posted, or returned and queued in
    // `rx_fifo` (in used-ring order) until read.
    rx_bufs: BufferSet,
    n_rx: usize,
    rx_head_slot: [u16; N],
    rx_len: [u32; N],
    rx_fifo: [u16; N],
    rx_fifo_start: usize,
    rx_fifo_len: usize,
    /// Bytes of the front buffer already read.
    rx_pos: u32,
    // Transmit side: every buffer is free (in `tx_free`) or with the device.
    tx_bufs: BufferSet,
    n_tx: usize,
    tx_head_slot: [u16; N],
    tx_free: [u16; N],
    tx_nfree: usize,
}

impl<T: Transport, const N: usize> core::fmt::Debug for ConsoleDriver<T, N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ConsoleDriver")
            .field("receiveq", &self.rx.indices())
            .field("transmitq", &self.tx.indices())
            .field("buf_size", &self.buf_size)
            .field("rx_buffered", &self.rx_fifo_len)
            .field("tx_free", &self.tx_nfree)
            .finish_non_exhaustive()
    }
}

impl<T: Transport> ConsoleDriver<T> {
    /// Attaches to the virtio-console device behind `t` with the default
    /// configuration (see [`ConsoleDriver::with_config`]).
    pub fn new(t: T) -> Result<Self, DeviceError> {
        Self::with_config(t, ConsoleDriverConfig::default())
    }
}

struct Started<const N: usize> {
    rx: DriverQueue<N>,
    tx: DriverQueue<N>,
    rx_bufs: BufferSet,
    tx_bufs: BufferSet,
    features: u64,
}

impl<T: Transport, const N: usize> ConsoleDriver<T, N> {
    /// Attaches to the virtio-console device behind `t`: resets it,
    /// negotiates features (only `VERSION_1` and `EVENT_IDX` are accepted:
    /// legacy single port), sets up both queues, allocates the buffers from
    /// the transport's shared memory, posts every receive buffer and sets
    /// `DRIVER_OK`. On failure the device is marked `FAILED` and the
    /// allocated memory is returned.
    pub fn with_config(mut t: T, cfg: ConsoleDriverConfig) -> Result<Self, DeviceError> {
        if cfg.rx_buffers == 0 || cfg.tx_buffers == 0 || cfg.buf_size == 0 {
            return Err(DeviceError::BadConfig(
                "a virtio-console driver needs at least one buffer each way, of at least one \
                 byte",
            ));
        }
        let s = match Self::start(&mut t, cfg) {
            Ok(s) => s,
            Err(e) => {
                driver_fail(&mut t);
                return Err(e);
            }
        };
        let mut d = ConsoleDriver {
            t,
            rx: s.rx,
            tx: s.tx,
            buf_size: cfg.buf_size,
            features: s.features,
            n_rx: s.rx_bufs.count,
            rx_bufs: s.rx_bufs,
            rx_head_slot: [NO_SLOT; N],
            rx_len: [0; N],
            rx_fifo: [0; N],
            rx_fifo_start: 0,
            rx_fifo_len: 0,
            rx_pos: 0,
            n_tx: s.tx_bufs.count,
            tx_bufs: s.tx_bufs,
            tx_head_slot: [NO_SLOT; N],
            tx_free: core::array::from_fn(|i| i as u16),
            tx_nfree: s.tx_bufs.count,
        };
        let posted = (0..d.n_rx).try_for_each(|i| d.post_rx(i));
        let r = posted
            .and_then(|()| d.rx.publish().map(|_| ()).map_err(DeviceError::from))
            .and_then(|()| driver_finish(&mut d.t))
            .and_then(|()| d.t.notify(RECEIVE_QUEUE).map_err(DeviceError::from));
        match r {
            Ok(()) => Ok(d),
            Err(e) => {
                driver_fail(&mut d.t);
                d.free_buffers();
                Err(e)
            }
        }
    }

    fn start(t: &mut T, cfg: ConsoleDriverConfig) -> Result<Started<N>, DeviceError> {
        let features = driver_begin(t, id::CONSOLE, COMMON_DRIVER_FEATURES)?;
        if t.num_queues() < 2 {
            return Err(VirtioError::NoQueue(TRANSMIT_QUEUE).into());
        }
        let event_idx = features & 1 << VIRTIO_RING_F_EVENT_IDX != 0;
        let mut queue = |q: u16| -> Result<DriverQueue<N>, DeviceError> {
            let mem = setup_queue(t, q, cfg.queue_size, N)?;
            Ok(DriverQueue::new(
                mem.region, mem.layout, mem.window, event_idx,
            )?)
        };
        let rx = queue(RECEIVE_QUEUE)?;
        let tx = queue(TRANSMIT_QUEUE)?;
        let n_rx = usize::from(cfg.rx_buffers).min(usize::from(rx.num()));
        let n_tx = usize::from(cfg.tx_buffers).min(usize::from(tx.num()));
        let rx_bufs = BufferSet::alloc(t, n_rx, cfg.buf_size)?;
        let tx_bufs = match BufferSet::alloc(t, n_tx, cfg.buf_size) {
            Ok(b) => b,
            Err(e) => {
                rx_bufs.free(t);
                return Err(e);
            }
        };
        Ok(Started {
            rx,
            tx,
            rx_bufs,
            tx_bufs,
            features,
        })
    }

    fn free_buffers(&mut self) {
        self.rx_bufs.free(&mut self.t);
        self.tx_bufs.free(&mut self.t);
    }

    /// Posts receive buffer `slot` (not published).
    fn post_rx(&mut self, slot: usize) -> Result<(), DeviceError> {
        let head = self
            .rx
            .add(&[], &[Buf::new(self.rx_bufs.offset(slot), self.buf_size)])?;
        // head < num <= N, slot < n_rx <= N <= u16::MAX in any usable queue.
        self.rx_head_slot[usize::from(head)] = slot as u16;
        Ok(())
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

    /// The receive queue (for dumps).
    pub fn receive_queue(&self) -> &DriverQueue<N> {
        &self.rx
    }

    /// The transmit queue (for dumps).
    pub fn transmit_queue(&self) -> &DriverQueue<N> {
        &self.tx
    }

    /// Checks that the device is still there: fails with
    /// [`DeviceError::Gone`], [`DeviceError::NeedsReset`] or
    /// [`DeviceError::Reset`] otherwise.
    pub fn check(&self) -> Result<(), DeviceError> {
        check_device(&self.t)
    }

    fn poll_rx(&mut self) -> Result<(), DeviceError> {
        let mut reposted = false;
        for _ in 0..self.rx.num() {
            let Some(u) = self.rx.pop_used()? else { break };
            let h = usize::from(u.head);
            let slot = usize::from(self.rx_head_slot[h]);
            self.rx_head_slot[h] = NO_SLOT;
            if slot >= self.n_rx {
                // Cannot happen: the queue only returns heads we posted.
                continue;
            }
            if u.len == 0 {
                self.post_rx(slot)?;
                reposted = true;
                continue;
            }
            // The queue checked len <= buf_size. The FIFO holds at most n_rx
            // entries, one per buffer, since a buffer is either posted or in it.
            self.rx_len[slot] = u.len;
            let at = (self.rx_fifo_start + self.rx_fifo_len) % N;
            self.rx_fifo[at] = slot as u16;
            self.rx_fifo_len += 1;
        }
        if reposted {
            self.publish_rx()?;
        }
        Ok(())
    }

    fn publish_rx(&mut self) -> Result<(), DeviceError> {
        if self.rx.publish()? {
            self.t.notify(RECEIVE_QUEUE)?;
        }
        Ok(())
    }

    fn poll_tx(&mut self) -> Result<(), DeviceError> {
        for _ in 0..self.tx.num() {
            let Some(u) = self.tx.pop_used()? else { break };
            let h = usize::from(u.head);
            let slot = self.tx_head_slot[h];
            self.tx_head_slot[h] = NO_SLOT;
            if usize::from(slot) < self.n_tx && self.tx_nfree < self.n_tx {
                self.tx_free[self.tx_nfree] = slot;
                self.tx_nfree += 1;
            }
        }
        Ok(())
    }

    /// Bytes received and not yet read.
    pub fn readable(&self) -> usize {
        (0..self.rx_fifo_len)
            .map(|i| self.rx_len[usize::from(self.rx_fifo[(self.rx_fifo_start + i) % N])] as usize)
            .sum::<usize>()
            - self.rx_pos as usize
    }

    /// Bytes [`write`](Self::write) accepts now (free transmit buffers).
    pub fn writable(&self) -> usize {
        self.tx_nfree * self.buf_size as usize
    }

    /// Transmit buffers still with the device.
    pub fn tx_pending(&self) -> usize {
        self.n_tx - self.tx_nfree
    }

    /// Processes the device's returns on both queues (the work of an
    /// interrupt) and says what can be done now.
    pub fn poll(&mut self) -> Result<ConsoleReady, DeviceError> {
        self.poll_rx()?;
        self.poll_tx()?;
        Ok(ConsoleReady {
            readable: self.readable(),
            writable: self.tx_nfree > 0,
        })
    }

    /// Reads received bytes into `out`; returns how many (0: nothing
    /// received, or `out` is empty). Buffers read completely go back to the
    /// device. When nothing was received the device is checked, so a loop
    /// of `read`s sees a lost device as an error.
    pub fn read(&mut self, out: &mut [u8]) -> Result<usize, DeviceError> {
        self.poll_rx()?;
        let mut done = 0;
        let mut reposted = false;
        while done < out.len() && self.rx_fifo_len > 0 {
            let slot = usize::from(self.rx_fifo[self.rx_fifo_start]);
            let len = self.rx_len[slot];
            let n = ((len - self.rx_pos) as usize).min(out.len() - done);
            self.rx
                .region()
                .read_bytes(
                    self.rx_bufs.offset(slot) + self.rx_pos as usize,
                    &mut out[done..done + n],
                )
                .map_err(VirtioError::from)?;
            done += n;
            // n <= len - rx_pos, a u32.
            self.rx_pos += n as u32;
            if self.rx_pos == len {
                self.rx_pos = 0;
                self.rx_fifo_start = (self.rx_fifo_start + 1) % N;
                self.rx_fifo_len -= 1;
                self.post_rx(slot)?;
                reposted = true;
            }
        }
        if reposted {
            self.publish_rx()?;
        }
        if done == 0 && !out.is_empty() {
            self.check()?;
        }
        Ok(done)
    }

    /// Queues bytes of `data` for the device in free transmit buffers;
    /// returns how many were taken (fewer than `data.len()`, down to 0, when
    /// the device holds every transmit buffer: the stream is stalled until
    /// it reads). When nothing could be taken the device is checked.
    pub fn write(&mut self, data: &[u8]) -> Result<usize, DeviceError> {
        self.poll_tx()?;
        let mut done = 0;
        while done < data.len() && self.tx_nfree > 0 {
            let slot = self.tx_free[self.tx_nfree - 1];
            let off = self.tx_bufs.offset(usize::from(slot));
            let n = (data.len() - done).min(self.buf_size as usize);
            self.tx
                .region()
                .write_bytes(off, &data[done..done + n])
                .map_err(VirtioError::from)?;
            // n <= buf_size, a u32.
            let head = self.tx.add(&[Buf::new(off, n as u32)], &[])?;
            self.tx_head_slot[usize::from(head)] = slot;
            self.tx_nfree -= 1;
            done += n;
        }
        if done > 0 {
            if self.tx.publish()? {
                self.t.notify(TRANSMIT_QUEUE)?;
            }
        } else if !data.is_empty() {
            self.check()?;
        }
        Ok(done)
    }

    /// Writes all of `data`, calling `wait` whenever the device holds every
    /// transmit buffer; `wait` returns `false` to give up
    /// ([`DeviceError::Timeout`]). A lost device fails at once. Returns when
    /// everything is queued (see [`flush`](Self::flush)).
    pub fn write_all(
        &mut self,
        data: &[u8],
        mut wait: impl FnMut() -> bool,
    ) -> Result<(), DeviceError> {
        let mut done = 0;
        while done < data.len() {
            let n = self.write(&data[done..])?;
            done += n;
            if n == 0 && !wait() {
                return Err(DeviceError::Timeout);
            }
        }
        Ok(())
    }

    /// Fills all of `out`, calling `wait` whenever nothing was received;
    /// `wait` returns `false` to give up ([`DeviceError::Timeout`]; the
    /// bytes read so far are in `out` and consumed). A lost device fails at
    /// once.
    pub fn read_exact(
        &mut self,
        out: &mut [u8],
        mut wait: impl FnMut() -> bool,
    ) -> Result<(), DeviceError> {
        let mut done = 0;
        while done < out.len() {
            let n = self.read(&mut out[done..])?;
            done += n;
            if n == 0 && !wait() {
                return Err(DeviceError::Timeout);
            }
        }
        Ok(())
    }

    /// Waits until the device took every transmit buffer back.
    pub fn flush(&mut self, mut wait: impl FnMut() -> bool) -> Result<(), DeviceError> {
        loop {
            self.poll_tx()?;
            if self.tx_nfree == self.n_tx {
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
    /// back. Bytes not yet read or not yet taken by the device are lost.
    pub fn shutdown(mut self) -> T {
        if let Err(e) = self.t.set_status(0) {
            log::warn!("virtio-console: reset on shutdown failed: {e}");
        }
        self.free_buffers();
        self.t
    }
}

/// The device side of a virtio-console: port 0's byte stream to and from
/// the driver.
///
/// `M` is the most buffers per chain it accepts (chains with more break the
/// queue); Linux and NuttX post one buffer per chain.
pub struct ConsoleDevice<D: DeviceTransport, const M: usize = MAX_CHAIN_SEGS> {
    t: D,
    /// `receiveq`: the device writes into it.
    rx: Option<DeviceQueue>,
    /// `transmitq`: the device reads from it.
    tx: Option<DeviceQueue>,
    /// The transmit chain being read, and how far.
    cur: Option<(Chain<M>, u64)>,
    failed: bool,
}

impl<D: DeviceTransport, const M: usize> core::fmt::Debug for ConsoleDevice<D, M> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ConsoleDevice")
            .field("receiveq", &self.rx.as_ref().map(|q| q.indices()))
            .field("transmitq", &self.tx.as_ref().map(|q| q.indices()))
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl<D: DeviceTransport> ConsoleDevice<D> {
    /// A console device on `t` (device id 3, at least two queues). It
    /// attaches to the queues once the driver set `DRIVER_OK`.
    pub fn new(t: D) -> Result<Self, DeviceError> {
        Self::with_capacity(t)
    }
}

impl<D: DeviceTransport, const M: usize> ConsoleDevice<D, M> {
    /// As [`ConsoleDevice::new`], accepting chains of up to `M` buffers.
    pub fn with_capacity(t: D) -> Result<Self, DeviceError> {
        let found = t.device_id();
        if found != id::CONSOLE {
            return Err(DeviceError::WrongDevice {
                expected: id::CONSOLE,
                found,
            });
        }
        if t.num_queues() < 2 {
            return Err(VirtioError::NoQueue(TRANSMIT_QUEUE).into());
        }
        Ok(ConsoleDevice {
            t,
            rx: None,
            tx: None,
            cur: None,
            failed: false,
        })
    }

    /// The transport.
    pub fn transport(&self) -> &D {
        &self.t
    }

    /// Gives the transport back.
    pub fn into_transport(self) -> D {
        self.t
    }

    /// True while attached to the driver's queues.
    pub fn is_attached(&self) -> bool {
        self.rx.is_some() && self.tx.is_some()
    }

    /// Follows the driver: attaches after `DRIVER_OK`, detaches (reporting
    /// [`DeviceError::Reset`] once) when the driver reset the device.
    /// Returns whether the queues are usable.
    fn sync(&mut self) -> Result<bool, DeviceError> {
        match driver_state(&self.t)? {
            DriverState::NotReady => {
                self.failed = false;
                let was = self.rx.take().is_some() | self.tx.take().is_some();
                self.cur = None;
                return if was {
                    Err(DeviceError::Reset)
                } else {
                    Ok(false)
                };
            }
            DriverState::NeedsReset if self.failed => return Ok(false),
            // The driver reset the device since it failed.
            _ => self.failed = false,
        }
        if let (Some(rx), Some(tx)) = (&self.rx, &self.tx) {
            if queue_still_valid(&self.t, RECEIVE_QUEUE, rx)
                && queue_still_valid(&self.t, TRANSMIT_QUEUE, tx)
            {
                return Ok(true);
            }
            // The driver re-initialised the device behind our back.
            self.rx = None;
            self.tx = None;
            self.cur = None;
            return Err(DeviceError::Reset);
        }
        let r = attach_queue(&self.t, RECEIVE_QUEUE)
            .and_then(|rx| attach_queue(&self.t, TRANSMIT_QUEUE).map(|tx| (rx, tx)));
        match r {
            Ok((rx, tx)) => {
                self.rx = Some(rx);
                self.tx = Some(tx);
                Ok(true)
            }
            Err(DeviceError::Virtio(VirtioError::NotReady(_))) => Ok(false),
            Err(e) => {
                self.failed = device_queue_failed(&mut self.t, &e);
                Err(e)
            }
        }
    }

    /// Turns a queue error into the device's reaction (see the module docs
    /// of [`devices`](super)).
    fn track<V>(&mut self, r: Result<V, DeviceError>) -> Result<V, DeviceError> {
        if let Err(e) = &r {
            if device_queue_failed(&mut self.t, e) {
                self.rx = None;
                self.tx = None;
                self.cur = None;
                self.failed = true;
            }
        }
        r
    }

    /// Says what can be done now (attaching to the queues once the driver
    /// is ready).
    pub fn poll(&mut self) -> Result<ConsoleReady, DeviceError> {
        if !self.sync()? {
            return Ok(ConsoleReady::default());
        }
        let r = self.poll_inner();
        self.track(r)
    }

    fn poll_inner(&mut self) -> Result<ConsoleReady, DeviceError> {
        let (Some(rx), Some(tx)) = (self.rx.as_mut(), self.tx.as_mut()) else {
            return Ok(ConsoleReady::default());
        };
        let writable = rx.has_avail()?;
        let readable = match &self.cur {
            Some((c, pos)) => (c.readable_len() - pos) as usize,
            None => usize::from(tx.has_avail()?),
        };
        Ok(ConsoleReady { readable, writable })
    }

    /// Writes bytes of `data` into receive buffers the driver posted and
    /// returns them; returns how many bytes were written (fewer than
    /// `data.len()`, down to 0, when the driver has no buffer posted: it is
    /// not reading). 0 before the driver set `DRIVER_OK`.
    pub fn write(&mut self, data: &[u8]) -> Result<usize, DeviceError> {
        if data.is_empty() || !self.sync()? {
            return Ok(0);
        }
        let r = self.write_inner(data);
        self.track(r)
    }

    fn write_inner(&mut self, data: &[u8]) -> Result<usize, DeviceError> {
        let Some(q) = self.rx.as_mut() else {
            return Ok(0);
        };
        let mut done = 0;
        for _ in 0..q.num() {
            if done == data.len() {
                break;
            }
            let Some(chain) = q.pop::<M>()? else { break };
            let n = chain.write_at(q.region(), 0, &data[done..])?;
            // n <= the chain's writable length, checked against the window
            // by the queue; a chain's writable bytes fit the used length
            // field only if the driver is sane, so clamp.
            q.push_used(chain.head(), u32::try_from(n).unwrap_or(u32::MAX))?;
            done += n;
        }
        if q.should_notify()? {
            self.t.notify(RECEIVE_QUEUE)?;
        }
        Ok(done)
    }

    /// Reads bytes the driver transmitted into `out`; returns how many (0:
    /// nothing transmitted, or before `DRIVER_OK`). Transmit buffers read
    /// completely go back to the driver.
    pub fn read(&mut self, out: &mut [u8]) -> Result<usize, DeviceError> {
        if out.is_empty() || !self.sync()? {
            return Ok(0);
        }
        let r = self.read_inner(out);
        self.track(r)
    }

    fn read_inner(&mut self, out: &mut [u8]) -> Result<usize, DeviceError> {
        let Some(q) = self.tx.as_mut() else {
            return Ok(0);
        };
        let mut done = 0;
        let mut returned = false;
        // Bounded: at most `num` chains taken per call.
        let mut pops = 0;
        while done < out.len() {
            let (chain, pos) = match self.cur.take() {
                Some(c) => c,
                None => {
                    if pops == q.num() {
                        break;
                    }
                    pops += 1;
                    match q.pop::<M>()? {
                        Some(c) => (c, 0),
                        None => break,
                    }
                }
            };
            let n = chain.read_at(q.region(), pos, &mut out[done..])?;
            done += n;
            let pos = pos + n as u64;
            if pos >= chain.readable_len() {
                q.push_used(chain.head(), 0)?;
                returned = true;
            } else {
                self.cur = Some((chain, pos));
            }
        }
        if returned && q.should_notify()? {
            self.t.notify(TRANSMIT_QUEUE)?;
        }
        Ok(done)
    }

    /// Writes all of `data`, calling `wait` whenever the driver has no
    /// receive buffer posted (or is not ready yet); `wait` returns `false` to
    /// give up ([`DeviceError::Timeout`]). A driver reset or a lost peer
    /// fails at once.
    pub fn write_all(
        &mut self,
        data: &[u8],
        mut wait: impl FnMut() -> bool,
    ) -> Result<(), DeviceError> {
        let mut done = 0;
        while done < data.len() {
            let n = self.write(&data[done..])?;
            done += n;
            if n == 0 && !wait() {
                return Err(DeviceError::Timeout);
            }
        }
        Ok(())
    }

    /// Fills all of `out` with transmitted bytes, calling `wait` whenever
    /// there are none; `wait` returns `false` to give up
    /// ([`DeviceError::Timeout`]). A driver reset or a lost peer fails at
    /// once.
    pub fn read_exact(
        &mut self,
        out: &mut [u8],
        mut wait: impl FnMut() -> bool,
    ) -> Result<(), DeviceError> {
        let mut done = 0;
        while done < out.len() {
            let n = self.read(&mut out[done..])?;
            done += n;
            if n == 0 && !wait() {
                return Err(DeviceError::Timeout);
            }
        }
        Ok(())
    }
}
