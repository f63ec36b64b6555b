//! The virtio driver role of rpmsg ("virtio-rpmsg").
#![forbid(unsafe_code)]

use core::fmt;

use super::config::{self, Fields};
use super::{
    bus_features, describe_ring, queue_error, virtio_error, DownReason, FeatureNames,
    RpmsgVirtioError, RpmsgVirtioOptions, Tagger, VirtioStats, DEFAULT_BUFFER_SIZE, F_BUFADDR,
    F_BUFSZ, F_CPUNAME, F_EVENT_IDX, F_VERSION_1, MAX_BUFFER_SIZE, MIN_BUFFER_SIZE,
    VRING_DRIVER_RX, VRING_DRIVER_TX,
};
use crate::rpmsg::cpu::{LocalCpu, RemoteCpu};
use crate::rpmsg::transport::{
    BufferStats, RpmsgFeatures, RpmsgTransport, RxBuf, TransportError, TxBuf,
};
use crate::shm::Region;
use crate::virtio::queue::{Buf, DriverQueue, QueueError, Window};
use crate::virtio::{id, status, Transport, VirtioError};

/// RX buffer states.
const RX_UNUSED: u8 = 0;
const RX_POSTED: u8 = 1;
const RX_OUT: u8 = 2;
/// TX buffer states.
const TX_UNUSED: u8 = 0;
const TX_FREE: u8 = 1;
const TX_LENT: u8 = 2;
const TX_IN_FLIGHT: u8 = 3;

/// Alignment of each direction's buffer pool.
const POOL_ALIGN: usize = 16;

/// One direction's buffers: `count` buffers of `size` bytes from `offset`.
#[derive(Debug, Clone, Copy, Default)]
struct Pool {
    offset: usize,
    count: u16,
    size: u32,
    /// `(offset, len)` obtained from `alloc_shared`, to give back on stop.
    owned: Option<(usize, usize)>,
}

impl Pool {
    fn buf(&self, i: u16) -> usize {
        self.offset + usize::from(i) * self.size as usize
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Up,
    Down(DownReason),
}

/// The virtio driver side of an rpmsg link, over any virtio [`Transport`].
///
/// `N` is the largest vring size it handles (it sizes the local shadow of
/// both virtqueues and the buffer bookkeeping, about 20 bytes per entry);
/// vrings the transport offers larger than `N` are set up with `N` entries
/// (or refused if the transport placed them larger, as a remoteproc table
/// does).
///
/// Life cycle: [`new`](Self::new) (no I/O), [`start`](Self::start)
/// (negotiation, queues, buffers, `DRIVER_OK`), then use it as an
/// [`RpmsgTransport`] under an rpmsg [`Link`](crate::rpmsg::Link). The
/// owner calls the link's `poll` when the device interrupts (and may call it
/// any time). When the link goes down because the device asked for a reset
/// or broke a ring ([`down_reason`](Self::down_reason)), the owner calls
/// [`restart`](Self::restart); [`stop`](Self::stop) resets the device and
/// returns the shared memory.
pub struct RpmsgVirtioDriver<T: Transport, const N: usize = 256> {
    t: T,
    opts: RpmsgVirtioOptions,
    state: State,
    session: u32,
    features: u64,
    remote: RemoteCpu,
    rxq: Option<DriverQueue<N>>,
    txq: Option<DriverQueue<N>>,
    rx_pool: Pool,
    tx_pool: Pool,
    rx_state: [u8; N],
    /// Per vring0 head: the RX buffer posted there.
    rx_of_head: [u16; N],
    tx_state: [u8; N],
    /// Per vring1 head: the TX buffer in flight there.
    tx_of_head: [u16; N],
    tx_free: [u16; N],
    tx_nfree: usize,
    rx_tag: Tagger,
    tx_tag: Tagger,
    /// Interrupts on vring1 (TX completions) are enabled.
    tx_irq: bool,
    stats: VirtioStats,
}

impl<T: Transport, const N: usize> fmt::Debug for RpmsgVirtioDriver<T, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RpmsgVirtioDriver")
            .field("state", &self.state)
            .field("session", &self.session)
            .field("features", &self.features)
            .field("remote", &self.remote)
            .field("tx", &self.tx_pool)
            .field("rx", &self.rx_pool)
            .finish_non_exhaustive()
    }
}

fn check_size(size: u32) -> Result<u32, RpmsgVirtioError> {
    if (MIN_BUFFER_SIZE..=MAX_BUFFER_SIZE).contains(&size) {
        Ok(size)
    } else {
        Err(RpmsgVirtioError::BadBufferSize {
            size,
            min: MIN_BUFFER_SIZE,
            max: MAX_BUFFER_SIZE,
        })
    }
}

/// Largest power of two not above `v` (0 for 0).
fn floor_pow2(v: usize) -> usize {
    if v == 0 {
        0
    } else {
        1 << (usize::BITS - 1 - v.leading_zeros())
    }
}

impl<T: Transport, const N: usize> RpmsgVirtioDriver<T, N> {
    /// Wraps `transport`; nothing is read or written before
    /// [`start`](Self::start).
    pub fn new(transport: T, options: RpmsgVirtioOptions) -> Self {
        RpmsgVirtioDriver {
            t: transport,
            remote: options.remote_cpu,
            opts: options,
            state: State::Down(DownReason::Stopped),
            session: 0,
            features: 0,
            rxq: None,
            txq: None,
            rx_pool: Pool::default(),
            tx_pool: Pool::default(),
            rx_state: [RX_UNUSED; N],
            rx_of_head: [0; N],
            tx_state: [TX_UNUSED; N],
            tx_of_head: [0; N],
            tx_free: [0; N],
            tx_nfree: 0,
            rx_tag: Tagger::new(1, 0),
            tx_tag: Tagger::new(1, 0),
            tx_irq: false,
            stats: VirtioStats::default(),
        }
    }

    /// [`new`](Self::new) then [`start`](Self::start); on failure the
    /// transport is handed back with the error.
    pub fn start_new(
        transport: T,
        options: RpmsgVirtioOptions,
    ) -> Result<Self, (RpmsgVirtioError, T)> {
        let mut d = Self::new(transport, options);
        match d.start() {
            Ok(()) => Ok(d),
            Err(e) => Err((e, d.into_transport())),
        }
    }

    /// The transport (e.g. to acknowledge an MMIO interrupt).
    pub fn transport(&self) -> &T {
        &self.t
    }

    /// The transport, mutable. Do not touch the queues behind the driver's
    /// back.
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.t
    }

    /// Stops the device (see [`stop`](Self::stop)) and returns the transport.
    pub fn into_transport(mut self) -> T {
        self.stop();
        // `self` has no Drop impl, so the field can be moved out.
        self.t
    }

    /// The options in use.
    pub fn options(&self) -> &RpmsgVirtioOptions {
        &self.opts
    }

    /// Every feature bit accepted in this session (rpmsg and transport bits).
    pub fn negotiated_features(&self) -> u64 {
        self.features
    }

    /// Why the link is down, `None` while it is up.
    pub fn down_reason(&self) -> Option<DownReason> {
        match self.state {
            State::Up => None,
            State::Down(r) => Some(r),
        }
    }

    /// Counters.
    pub fn stats(&self) -> VirtioStats {
        self.stats
    }

    /// Buffer count and size of the TX (driver→device) direction.
    pub fn tx_buffers(&self) -> (u16, u32) {
        (self.tx_pool.count, self.tx_pool.size)
    }

    /// Buffer count and size of the RX (device→driver) direction.
    pub fn rx_buffers(&self) -> (u16, u32) {
        (self.rx_pool.count, self.rx_pool.size)
    }

    /// Resets the device (status 0), forgets both queues and gives the
    /// buffers back to the transport. Every token lent out is void. The link
    /// is down until [`start`](Self::start).
    pub fn stop(&mut self) {
        if self.rxq.is_some() || self.txq.is_some() || self.state == State::Up {
            if let Err(e) = self.t.set_status(0) {
                log::warn!("rpmsg-virtio driver: resetting the device failed: {e}");
            }
        }
        self.teardown();
        self.state = State::Down(DownReason::Stopped);
    }

    /// [`stop`](Self::stop), then [`start`](Self::start): a new session.
    pub fn restart(&mut self) -> Result<(), RpmsgVirtioError> {
        self.stop();
        self.start()
    }

    fn teardown(&mut self) {
        self.rxq = None;
        self.txq = None;
        for pool in [&mut self.rx_pool, &mut self.tx_pool] {
            if let Some((off, len)) = pool.owned.take() {
                self.t.free_shared(off, len);
            }
            *pool = Pool::default();
        }
        self.rx_state = [RX_UNUSED; N];
        self.tx_state = [TX_UNUSED; N];
        self.tx_nfree = 0;
        self.tx_irq = false;
    }

    /// Brings the device up: reset, ACKNOWLEDGE, DRIVER, feature
    /// negotiation (FEATURES_OK for modern devices), config space, both
    /// queues, every buffer (all RX buffers posted on vring0), then
    /// `DRIVER_OK` and a notification on vring0. A new session starts.
    ///
    /// On failure the device is marked `FAILED`, the shared memory is given
    /// back and the link stays down.
    pub fn start(&mut self) -> Result<(), RpmsgVirtioError> {
        if self.rxq.is_some() || self.txq.is_some() || self.state == State::Up {
            self.stop();
        }
        match self.start_inner() {
            Ok(()) => Ok(()),
            Err(e) => {
                log::warn!("rpmsg-virtio driver: start failed: {e}");
                let _ = self.t.set_status(status::FAILED);
                self.teardown();
                self.state = State::Down(DownReason::Broken(e));
                Err(e)
            }
        }
    }

    fn start_inner(&mut self) -> Result<(), RpmsgVirtioError> {
        let dev_id = self.t.device_id();
        if dev_id != id::RPMSG {
            return Err(RpmsgVirtioError::NotRpmsg(dev_id));
        }
        let nq = self.t.num_queues();
        if nq < 2 {
            return Err(RpmsgVirtioError::MissingQueues(nq));
        }
        let layout = self.opts.layout;
        self.t.set_status(0)?;
        let mut st = status::ACKNOWLEDGE;
        self.t.set_status(st)?;
        st |= status::DRIVER;
        self.t.set_status(st)?;

        // Features.
        let offered = self.t.device_features()?;
        let mut allowed = self.opts.allowed();
        if self.t.config_len() < layout.min_len() {
            allowed &= !(F_BUFSZ | F_CPUNAME | F_BUFADDR);
        }
        let accepted = offered & allowed;
        self.t.set_driver_features(accepted)?;
        if accepted & F_VERSION_1 != 0 {
            st |= status::FEATURES_OK;
            self.t.set_status(st)?;
        }
        self.features = accepted;

        // Config space.
        let fields = if accepted & (F_BUFSZ | F_CPUNAME | F_BUFADDR) != 0 {
            let t = &self.t;
            config::read_fields(layout, t.config_len(), |o, b| t.read_config(o, b))?
        } else {
            Fields::default()
        };
        let offs = config::offsets(layout);
        let (tx_size, rx_size) = if accepted & F_BUFSZ != 0 {
            let tx = if fields.h2r_size != 0 {
                fields.h2r_size
            } else {
                let s = check_size(self.opts.tx_buffer_size)?;
                self.t.write_config(offs.h2r_size, &s.to_le_bytes())?;
                s
            };
            let rx = if fields.r2h_size != 0 {
                fields.r2h_size
            } else {
                let s = check_size(self.opts.rx_buffer_size)?;
                self.t.write_config(offs.r2h_size, &s.to_le_bytes())?;
                s
            };
            (check_size(tx)?, check_size(rx)?)
        } else {
            (DEFAULT_BUFFER_SIZE, DEFAULT_BUFFER_SIZE)
        };
        self.remote = self.opts.remote_cpu;
        if accepted & F_CPUNAME != 0 {
            self.apply_names(&fields, offs.host_name)?;
        }

        // Queues.
        let event_idx = accepted & F_EVENT_IDX != 0;
        let rxq = self.setup_queue(VRING_DRIVER_RX, event_idx)?;
        let txq = self.setup_queue(VRING_DRIVER_TX, event_idx)?;
        let rx_count = self.opts.rx_buffers.min(rxq.num());
        let tx_count = self.opts.tx_buffers.min(txq.num());
        if rx_count == 0 || tx_count == 0 {
            return Err(RpmsgVirtioError::NoBuffers);
        }
        let window = *rxq.window();
        self.rxq = Some(rxq);
        self.txq = Some(txq);

        // Buffers.
        let bufaddr = accepted & F_BUFADDR != 0;
        self.rx_pool = self.make_pool(
            rx_count,
            rx_size,
            bufaddr.then_some((fields.r2h_addr, offs.r2h_addr)),
            &window,
            "r2h",
        )?;
        self.tx_pool = self.make_pool(
            tx_count,
            tx_size,
            bufaddr.then_some((fields.h2r_addr, offs.h2r_addr)),
            &window,
            "h2r",
        )?;

        // New session: tags, TX free list, RX buffers posted.
        self.session = self.session.wrapping_add(1).max(1);
        self.rx_tag = Tagger::new(usize::from(rx_count), self.session);
        self.tx_tag = Tagger::new(usize::from(tx_count), self.session);
        for i in 0..tx_count {
            self.tx_state[usize::from(i)] = TX_FREE;
            // Hand out low indices first.
            self.tx_free[usize::from(tx_count - 1 - i)] = i;
        }
        self.tx_nfree = usize::from(tx_count);
        let pool = self.rx_pool;
        let Some(rxq) = self.rxq.as_mut() else {
            return Err(RpmsgVirtioError::Virtio(VirtioError::NotReady(
                "vring0 vanished",
            )));
        };
        for i in 0..rx_count {
            let head = rxq.add(&[], &[Buf::new(pool.buf(i), pool.size)])?;
            self.rx_of_head[usize::from(head)] = i;
            self.rx_state[usize::from(i)] = RX_POSTED;
        }
        rxq.publish()?;
        if let Some(txq) = self.txq.as_mut() {
            // TX completions are collected lazily; interrupts are asked for
            // only when a sender runs out of buffers.
            txq.disable_interrupts()?;
        }
        self.tx_irq = false;

        st |= status::DRIVER_OK;
        self.t.set_status(st)?;
        self.state = State::Up;
        self.stats.sessions += 1;
        log::info!(
            "rpmsg-virtio driver: link to {} up (session {}), features {}, tx {}x{} B, rx {}x{} B",
            self.remote,
            self.session,
            FeatureNames(accepted),
            tx_count,
            tx_size,
            rx_count,
            rx_size
        );
        self.notify(VRING_DRIVER_RX)?;
        Ok(())
    }

    fn apply_names(&mut self, fields: &Fields, host_off: usize) -> Result<(), RpmsgVirtioError> {
        match fields.remote_name {
            Some(name) => {
                if name.as_str() != self.opts.remote_cpu.as_str() {
                    log::warn!(
                        "rpmsg-virtio driver: the platform calls the remote cpu \"{}\" but the \
                         config space says \"{}\"; using \"{}\"",
                        self.opts.remote_cpu,
                        name.as_str(),
                        name.as_str()
                    );
                }
                self.remote = RemoteCpu::from_name(name);
            }
            None => log::debug!(
                "rpmsg-virtio driver: no remote cpu name in config space; using the \
                 platform's \"{}\"",
                self.opts.remote_cpu
            ),
        }
        match fields.host_name {
            Some(name) if name.as_str() != self.opts.local_cpu.as_str() => log::warn!(
                "rpmsg-virtio driver: the config space names this cpu \"{}\" but it is \"{}\"",
                name.as_str(),
                self.opts.local_cpu
            ),
            Some(_) => {}
            None => match config::name_field(self.opts.local_cpu.as_str()) {
                Some(raw) => self.t.write_config(host_off, &raw)?,
                None => log::warn!(
                    "rpmsg-virtio driver: local cpu name \"{}\" does not fit the 7-byte config \
                     field; the peer will not learn it",
                    self.opts.local_cpu
                ),
            },
        }
        Ok(())
    }

    fn setup_queue(&mut self, q: u16, event_idx: bool) -> Result<DriverQueue<N>, RpmsgVirtioError> {
        let max = usize::from(self.t.max_queue_size(q)?);
        let size = floor_pow2(max.min(N).min(usize::from(u16::MAX)));
        let size = u16::try_from(size).unwrap_or(0);
        if size == 0 {
            return Err(RpmsgVirtioError::Virtio(VirtioError::BadQueueSize {
                size: 0,
                max: max as u16,
            }));
        }
        let mem = match self.t.setup_queue(q, size) {
            // A transport with a fixed ring size (a remoteproc vring) larger
            // than this instance can shadow.
            Err(VirtioError::BadQueueSize { .. }) if max > N => {
                return Err(RpmsgVirtioError::QueueTooLarge {
                    queue: q,
                    num: u16::try_from(max).unwrap_or(u16::MAX),
                    max: N,
                })
            }
            r => r?,
        };
        if usize::from(mem.layout.num) > N {
            return Err(RpmsgVirtioError::QueueTooLarge {
                queue: q,
                num: mem.layout.num,
                max: N,
            });
        }
        Ok(DriverQueue::new(
            mem.region, mem.layout, mem.window, event_idx,
        )?)
    }

    /// Places one direction's buffers: at the config-announced address when
    /// BUFADDR gives one, else allocated (and announced when BUFADDR is on).
    fn make_pool(
        &mut self,
        count: u16,
        size: u32,
        bufaddr: Option<(u64, Option<usize>)>,
        window: &Window,
        what: &'static str,
    ) -> Result<Pool, RpmsgVirtioError> {
        let len = usize::from(count) * size as usize;
        if let Some((addr, _)) = bufaddr.filter(|(a, _)| *a != 0) {
            let offset =
                window
                    .to_offset(addr, len)
                    .map_err(|_| RpmsgVirtioError::BadBufferAddr {
                        what,
                        addr,
                        len: len as u64,
                    })?;
            self.t.region().check(offset, len)?;
            return Ok(Pool {
                offset,
                count,
                size,
                owned: None,
            });
        }
        let offset = self.t.alloc_shared(len, POOL_ALIGN)?;
        let pool = Pool {
            offset,
            count,
            size,
            owned: Some((offset, len)),
        };
        let placed = self.check_pool(&pool, window, bufaddr.and_then(|(_, o)| o));
        if let Err(e) = placed {
            self.t.free_shared(offset, len);
            return Err(e);
        }
        Ok(pool)
    }

    fn check_pool(
        &mut self,
        pool: &Pool,
        window: &Window,
        announce_at: Option<usize>,
    ) -> Result<(), RpmsgVirtioError> {
        let len = usize::from(pool.count) * pool.size as usize;
        let pa = window.to_pa_range(pool.offset, len)?;
        if let Some(at) = announce_at {
            self.t.write_config(at, &pa.to_le_bytes())?;
        }
        Ok(())
    }

    fn notify(&mut self, q: u16) -> Result<(), VirtioError> {
        self.stats.notifies += 1;
        self.t.notify(q)
    }

    fn go_down(&mut self, reason: DownReason) {
        if self.state == State::Up {
            log::warn!(
                "rpmsg-virtio driver: link to {} down: {reason}",
                self.remote
            );
        }
        self.state = State::Down(reason);
    }

    /// Records a queue failure: errors that break the queue take the link
    /// down.
    fn queue_failed(&mut self, e: QueueError) -> TransportError {
        if e.breaks_queue() || e == QueueError::Broken {
            log::warn!("rpmsg-virtio driver: {e}");
            self.go_down(DownReason::Broken(RpmsgVirtioError::Queue(e)));
        }
        queue_error(e)
    }

    fn transport_failed(&mut self, e: VirtioError) -> TransportError {
        if e == VirtioError::Gone {
            self.go_down(DownReason::Gone);
        }
        virtio_error(e)
    }

    fn check_up(&self) -> Result<(), TransportError> {
        match self.state {
            State::Up => Ok(()),
            State::Down(_) => Err(TransportError::LinkDown),
        }
    }

    /// Checks the status byte: a reset, `DEVICE_NEEDS_RESET` or `FAILED`
    /// takes the link down.
    fn check_status(&mut self) -> Result<(), TransportError> {
        let s = match self.t.status() {
            Ok(s) => s,
            Err(e) => return Err(self.transport_failed(e)),
        };
        if s & status::DEVICE_NEEDS_RESET != 0 {
            self.go_down(DownReason::NeedsReset);
        } else if s & status::FAILED != 0 {
            self.go_down(DownReason::Failed);
        } else if s & status::DRIVER_OK == 0 {
            self.go_down(DownReason::Reset);
        }
        Ok(())
    }

    /// Collects TX buffers the device returned on vring1.
    fn reclaim(&mut self) -> Result<(), TransportError> {
        let Some(txq) = self.txq.as_mut() else {
            return Err(TransportError::LinkDown);
        };
        let mut got = 0usize;
        let mut failure = None;
        for _ in 0..txq.num() {
            match txq.pop_used() {
                Ok(Some(u)) => {
                    let idx = self.tx_of_head[usize::from(u.head)];
                    let i = usize::from(idx);
                    if self.tx_state[i] != TX_IN_FLIGHT {
                        // The queue only returns outstanding heads; this
                        // would be a bookkeeping bug, never a peer's doing.
                        failure = Some(TransportError::Peer(
                            "vring1 returned a buffer that is not in flight",
                        ));
                        break;
                    }
                    self.tx_state[i] = TX_FREE;
                    self.tx_free[self.tx_nfree] = idx;
                    self.tx_nfree += 1;
                    got += 1;
                }
                Ok(None) => break,
                Err(e) => {
                    return Err(self.queue_failed(e));
                }
            }
        }
        if let Some(f) = failure {
            self.go_down(DownReason::Broken(RpmsgVirtioError::Queue(
                QueueError::Broken,
            )));
            return Err(f);
        }
        if got > 0 && self.tx_irq {
            if let Some(txq) = self.txq.as_mut() {
                let r = txq.disable_interrupts();
                if let Err(e) = r {
                    return Err(self.queue_failed(e));
                }
            }
            self.tx_irq = false;
        }
        Ok(())
    }

    fn own_tx(&self, buf: TxBuf) -> Result<u16, TransportError> {
        let bad = TransportError::InvalidBuffer { index: buf.index };
        let idx = self.tx_tag.decode(buf.index).ok_or(bad)?;
        let ok = idx < self.tx_pool.count
            && self.tx_state[usize::from(idx)] == TX_LENT
            && buf.offset == self.tx_pool.buf(idx)
            && buf.size == self.tx_pool.size as usize;
        if ok {
            Ok(idx)
        } else {
            Err(bad)
        }
    }

    fn own_rx(&self, buf: RxBuf) -> Result<u16, TransportError> {
        let bad = TransportError::InvalidBuffer { index: buf.index };
        let idx = self.rx_tag.decode(buf.index).ok_or(bad)?;
        let ok = idx < self.rx_pool.count
            && self.rx_state[usize::from(idx)] == RX_OUT
            && buf.offset == self.rx_pool.buf(idx);
        if ok {
            Ok(idx)
        } else {
            Err(bad)
        }
    }

    /// Used entries the device published on vring1 and we have not collected
    /// (read without side effects, clamped to what is in flight).
    fn tx_pending(&self) -> usize {
        let Some(q) = self.txq.as_ref() else { return 0 };
        let i = q.indices();
        q.region()
            .load_u16(q.layout().used_idx())
            .map(|u| usize::from(u.wrapping_sub(i.last_used)))
            .unwrap_or(0)
            .min(q.in_flight())
    }
}

impl<T: Transport, const N: usize> RpmsgTransport for RpmsgVirtioDriver<T, N> {
    fn role(&self) -> &str {
        "virtio driver"
    }

    fn local_cpu(&self) -> LocalCpu {
        self.opts.local_cpu
    }

    fn remote_cpu(&self) -> RemoteCpu {
        self.remote
    }

    fn features(&self) -> RpmsgFeatures {
        bus_features(self.features)
    }

    fn link_session(&self) -> Option<u32> {
        (self.state == State::Up).then_some(self.session)
    }

    fn tx_buffer_size(&self) -> usize {
        self.tx_pool.size as usize
    }

    fn rx_buffer_size(&self) -> usize {
        self.rx_pool.size as usize
    }

    fn tx_region(&self) -> &Region {
        match &self.txq {
            Some(q) => q.region(),
            None => self.t.region(),
        }
    }

    fn rx_region(&self) -> &Region {
        match &self.rxq {
            Some(q) => q.region(),
            None => self.t.region(),
        }
    }

    fn poll(&mut self) -> Result<(), TransportError> {
        if self.state != State::Up {
            return Ok(());
        }
        self.check_status()?;
        if self.state != State::Up {
            return Ok(());
        }
        self.reclaim()
    }

    fn get_tx(&mut self) -> Result<Option<TxBuf>, TransportError> {
        self.check_up()?;
        if self.tx_nfree == 0 {
            self.reclaim()?;
        }
        if self.tx_nfree == 0 {
            // Ask for an interrupt when buffers come back, then look again:
            // some may have come back meanwhile.
            if !self.tx_irq {
                let r = match self.txq.as_mut() {
                    Some(q) => q.enable_interrupts(),
                    None => return Err(TransportError::LinkDown),
                };
                match r {
                    Ok(more) => {
                        self.tx_irq = true;
                        if more {
                            self.reclaim()?;
                        }
                    }
                    Err(e) => return Err(self.queue_failed(e)),
                }
            }
            if self.tx_nfree == 0 {
                return Ok(None);
            }
        }
        self.tx_nfree -= 1;
        let idx = self.tx_free[self.tx_nfree];
        self.tx_state[usize::from(idx)] = TX_LENT;
        Ok(Some(TxBuf {
            index: self.tx_tag.encode(idx),
            offset: self.tx_pool.buf(idx),
            size: self.tx_pool.size as usize,
        }))
    }

    fn send(&mut self, buf: TxBuf, len: usize) -> Result<(), TransportError> {
        self.check_up()?;
        let idx = self.own_tx(buf)?;
        let size = self.tx_pool.size;
        if len > size as usize {
            return Err(TransportError::TooLong {
                index: buf.index,
                len,
                size: size as usize,
            });
        }
        let desc_len = if self.opts.linux_compat {
            size
        } else {
            len as u32
        };
        let offset = self.tx_pool.buf(idx);
        let Some(txq) = self.txq.as_mut() else {
            return Err(TransportError::LinkDown);
        };
        let r = txq
            .add(&[Buf::new(offset, desc_len)], &[])
            .and_then(|head| txq.publish().map(|kick| (head, kick)));
        let (head, kick) = match r {
            Ok(v) => v,
            Err(e) => return Err(self.queue_failed(e)),
        };
        self.tx_of_head[usize::from(head)] = idx;
        self.tx_state[usize::from(idx)] = TX_IN_FLIGHT;
        self.stats.tx += 1;
        if kick {
            if let Err(e) = self.notify(VRING_DRIVER_TX) {
                // The buffer is with the device now; only the doorbell failed.
                return Err(self.transport_failed(e));
            }
        }
        Ok(())
    }

    fn release_tx(&mut self, buf: TxBuf) -> Result<(), TransportError> {
        let idx = self.own_tx(buf)?;
        self.tx_state[usize::from(idx)] = TX_FREE;
        self.tx_free[self.tx_nfree] = idx;
        self.tx_nfree += 1;
        Ok(())
    }

    fn recv(&mut self) -> Result<Option<RxBuf>, TransportError> {
        self.check_up()?;
        let Some(rxq) = self.rxq.as_mut() else {
            return Err(TransportError::LinkDown);
        };
        let used = match rxq.pop_used() {
            Ok(Some(u)) => u,
            Ok(None) => return Ok(None),
            Err(e) => return Err(self.queue_failed(e)),
        };
        let idx = self.rx_of_head[usize::from(used.head)];
        if self.rx_state[usize::from(idx)] != RX_POSTED {
            self.go_down(DownReason::Broken(RpmsgVirtioError::Queue(
                QueueError::Broken,
            )));
            return Err(TransportError::Peer(
                "vring0 returned a buffer that was not posted",
            ));
        }
        self.rx_state[usize::from(idx)] = RX_OUT;
        self.stats.rx += 1;
        Ok(Some(RxBuf {
            index: self.rx_tag.encode(idx),
            offset: self.rx_pool.buf(idx),
            capacity: self.rx_pool.size as usize,
            // Validated by the queue against the posted size; the rpmsg
            // header's own length is what the bus trusts.
            len: used.len as usize,
        }))
    }

    fn release_rx(&mut self, buf: RxBuf) -> Result<(), TransportError> {
        let idx = self.own_rx(buf)?;
        self.check_up()?;
        let pool = self.rx_pool;
        let Some(rxq) = self.rxq.as_mut() else {
            return Err(TransportError::LinkDown);
        };
        let r = rxq
            .add(&[], &[Buf::new(pool.buf(idx), pool.size)])
            .and_then(|head| rxq.publish().map(|kick| (head, kick)));
        let (head, kick) = match r {
            Ok(v) => v,
            Err(e) => return Err(self.queue_failed(e)),
        };
        self.rx_of_head[usize::from(head)] = idx;
        self.rx_state[usize::from(idx)] = RX_POSTED;
        if kick {
            if let Err(e) = self.notify(VRING_DRIVER_RX) {
                return Err(self.transport_failed(e));
            }
        }
        Ok(())
    }

    fn buffer_stats(&self) -> BufferStats {
        BufferStats {
            tx_total: usize::from(self.tx_pool.count),
            tx_free: self.tx_nfree + self.tx_pending(),
            rx_total: usize::from(self.rx_pool.count),
        }
    }

    fn describe(&self, out: &mut dyn fmt::Write) -> fmt::Result {
        match self.state {
            State::Up => write!(out, "rpmsg-virtio driver: up, session {}", self.session)?,
            State::Down(r) => write!(out, "rpmsg-virtio driver: down ({r})")?,
        }
        writeln!(
            out,
            ", features {}, tx {} x {} B, rx {} x {} B",
            FeatureNames(self.features),
            self.tx_pool.count,
            self.tx_pool.size,
            self.rx_pool.count,
            self.rx_pool.size
        )?;
        if let Some(q) = &self.rxq {
            describe_ring(out, "vring0", "rx", &q.indices(), ("free", q.num_free()))?;
        }
        if let Some(q) = &self.txq {
            describe_ring(out, "vring1", "tx", &q.indices(), ("free", q.num_free()))?;
        }
        Ok(())
    }
}
