//! The virtio device role of rpmsg ("vhost-rpmsg").
#![forbid(unsafe_code)]

use core::fmt;

use super::config;
use super::{
    bus_features, describe_ring, queue_error, virtio_error, DownReason, FeatureNames,
    RpmsgVirtioError, RpmsgVirtioOptions, Tagger, VirtioStats, DEFAULT_BUFFER_SIZE, F_BUFSZ,
    F_CPUNAME, F_EVENT_IDX, MAX_BUFFER_SIZE, MIN_BUFFER_SIZE, SUPPORTED_FEATURES, VRING_DRIVER_RX,
    VRING_DRIVER_TX,
};
use crate::rpmsg::cpu::{LocalCpu, RemoteCpu};
use crate::rpmsg::transport::{
    BufferStats, RpmsgFeatures, RpmsgTransport, RxBuf, TransportError, TxBuf,
};
use crate::shm::Region;
use crate::virtio::queue::{DeviceQueue, QueueError};
use crate::virtio::{id, status, DeviceTransport, VirtioError};

/// vring0 head states (the driver's RX buffers, our TX buffers).
const TX_NONE: u8 = 0;
/// Popped and not lent: handed out by the next `get_tx`.
const TX_SPARE: u8 = 1;
const TX_LENT: u8 = 2;

/// The vring the device sends on (the driver's RX ring).
const DEV_TX: u16 = VRING_DRIVER_RX;
/// The vring the device receives on (the driver's TX ring).
const DEV_RX: u16 = VRING_DRIVER_TX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Up,
    Down(DownReason),
}

/// The virtio device ("vhost") side of an rpmsg link, over any
/// [`DeviceTransport`].
///
/// It never allocates shared memory: it sends in the buffers the driver
/// posted on vring0 and receives the ones the driver posts on vring1. The
/// features it offers are set by whoever builds the device (the resource
/// table's `dfeatures`, an MMIO device's feature registers); it reads the
/// driver's accepted set and the config space once the driver set
/// `DRIVER_OK`.
///
/// `N` is the largest vring size it handles (per-descriptor bookkeeping of
/// about 14 bytes per entry and vring).
///
/// Everything the driver posts is untrusted. rpmsg buffers are single
/// descriptors: a buffer in the wrong direction (readable on vring0,
/// writable on vring1), a chain of several descriptors, a descriptor the
/// device still holds, or any ring corruption the queue detects takes the
/// link down and sets `DEVICE_NEEDS_RESET`. A vring0 buffer smaller than the
/// negotiated size is returned unused (used length 0) and counted in
/// [`VirtioStats::dropped_small`](super::VirtioStats::dropped_small).
///
/// Life cycle: [`new`](Self::new) (no I/O) and use it under an rpmsg
/// [`Link`](crate::rpmsg::Link): every [`poll`](RpmsgTransport::poll)
/// checks the status byte; the first one that sees `DRIVER_OK` attaches
/// (the link comes up), a reset by the driver takes it down and the next
/// `DRIVER_OK` brings up a new session. When the driver breaks the protocol
/// the device sets `DEVICE_NEEDS_RESET` and waits for the driver's reset.
pub struct RpmsgVirtioDevice<T: DeviceTransport, const N: usize = 256> {
    t: T,
    opts: RpmsgVirtioOptions,
    state: State,
    session: u32,
    features: u64,
    remote: RemoteCpu,
    /// vring0: we pop the driver's writable buffers and fill them.
    txq: Option<DeviceQueue>,
    /// vring1: we pop the driver's readable buffers.
    rxq: Option<DeviceQueue>,
    tx_size: u32,
    rx_size: u32,
    tx_state: [u8; N],
    tx_off: [usize; N],
    tx_len: [u32; N],
    tx_spare: [u16; N],
    tx_nspare: usize,
    rx_out: [bool; N],
    rx_off: [usize; N],
    rx_len: [u32; N],
    tx_tag: Tagger,
    rx_tag: Tagger,
    /// Kicks on vring0 (new RX buffers of the driver) are enabled.
    tx_kicks: bool,
    stats: VirtioStats,
}

impl<T: DeviceTransport, const N: usize> fmt::Debug for RpmsgVirtioDevice<T, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RpmsgVirtioDevice")
            .field("state", &self.state)
            .field("session", &self.session)
            .field("features", &self.features)
            .field("remote", &self.remote)
            .field("tx_size", &self.tx_size)
            .field("rx_size", &self.rx_size)
            .finish_non_exhaustive()
    }
}

/// What a chain popped from a queue turned out to be.
enum Popped {
    Nothing,
    Seg { head: u16, offset: usize, len: u32 },
}

impl<T: DeviceTransport, const N: usize> RpmsgVirtioDevice<T, N> {
    /// Wraps `transport`. Nothing is touched until a
    /// [`poll`](RpmsgTransport::poll) sees `DRIVER_OK` (DESIGN.md §3).
    pub fn new(transport: T, options: RpmsgVirtioOptions) -> Self {
        RpmsgVirtioDevice {
            t: transport,
            remote: options.remote_cpu,
            opts: options,
            state: State::Down(DownReason::WaitingForDriver),
            session: 0,
            features: 0,
            txq: None,
            rxq: None,
            tx_size: DEFAULT_BUFFER_SIZE,
            rx_size: DEFAULT_BUFFER_SIZE,
            tx_state: [TX_NONE; N],
            tx_off: [0; N],
            tx_len: [0; N],
            tx_spare: [0; N],
            tx_nspare: 0,
            rx_out: [false; N],
            rx_off: [0; N],
            rx_len: [0; N],
            tx_tag: Tagger::new(1, 0),
            rx_tag: Tagger::new(1, 0),
            tx_kicks: false,
            stats: VirtioStats::default(),
        }
    }

    /// The transport.
    pub fn transport(&self) -> &T {
        &self.t
    }

    /// The transport, mutable. Do not touch the queues behind the device's
    /// back.
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.t
    }

    /// Returns the transport.
    pub fn into_transport(self) -> T {
        self.t
    }

    /// The options in use.
    pub fn options(&self) -> &RpmsgVirtioOptions {
        &self.opts
    }

    /// The feature bits the driver accepted (restricted to the offered and
    /// supported ones), valid while the link is up.
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

    /// Detaches from the queues; the link is down and stays down (polls do
    /// nothing) until [`start`](Self::start).
    pub fn stop(&mut self) {
        self.detach();
        self.state = State::Down(DownReason::Stopped);
    }

    /// Lets the next [`poll`](RpmsgTransport::poll) attach again when the
    /// driver has set `DRIVER_OK` (after [`stop`](Self::stop), or to
    /// re-attach after the owner learnt of a driver reset the status byte
    /// did not show, e.g. from an MMIO status hook). A running session ends.
    pub fn start(&mut self) {
        self.detach();
        self.state = State::Down(DownReason::WaitingForDriver);
    }

    fn detach(&mut self) {
        self.txq = None;
        self.rxq = None;
        self.tx_state = [TX_NONE; N];
        self.rx_out = [false; N];
        self.tx_nspare = 0;
        self.tx_kicks = false;
    }

    fn go_down(&mut self, reason: DownReason) {
        if self.state == State::Up {
            log::warn!(
                "rpmsg-virtio device: link to {} down: {reason}",
                self.remote
            );
        }
        self.detach();
        self.state = State::Down(reason);
    }

    /// The driver broke the protocol: down, and ask the driver for a reset.
    fn broken(&mut self, e: RpmsgVirtioError) {
        log::warn!("rpmsg-virtio device: the driver broke the protocol: {e}");
        if let Err(x) = self.t.set_needs_reset() {
            log::warn!("rpmsg-virtio device: could not set DEVICE_NEEDS_RESET: {x}");
        }
        self.go_down(DownReason::Broken(e));
    }

    fn queue_failed(&mut self, e: QueueError) -> TransportError {
        if e.breaks_queue() || e == QueueError::Broken {
            self.broken(RpmsgVirtioError::Queue(e));
        }
        queue_error(e)
    }

    fn transport_failed(&mut self, e: VirtioError) -> TransportError {
        if e == VirtioError::Gone {
            self.go_down(DownReason::Gone);
        }
        virtio_error(e)
    }

    fn protocol(&mut self, what: &'static str) -> TransportError {
        self.broken(RpmsgVirtioError::Virtio(VirtioError::Protocol(what)));
        TransportError::Peer(what)
    }

    fn check_up(&self) -> Result<(), TransportError> {
        match self.state {
            State::Up => Ok(()),
            State::Down(_) => Err(TransportError::LinkDown),
        }
    }

    /// Attaches when the driver is ready; `Ok(false)` while it is not.
    fn attach(&mut self) -> Result<bool, RpmsgVirtioError> {
        let dev_id = self.t.device_id();
        if dev_id != id::RPMSG {
            return Err(RpmsgVirtioError::NotRpmsg(dev_id));
        }
        let nq = self.t.num_queues();
        if nq < 2 {
            return Err(RpmsgVirtioError::MissingQueues(nq));
        }
        let offered = self.t.device_features()?;
        let accepted = self.t.driver_features()?;
        if accepted & !offered != 0 {
            log::warn!(
                "rpmsg-virtio device: the driver accepted unoffered features {:#x}; ignoring them",
                accepted & !offered
            );
        }
        let features = accepted & offered & SUPPORTED_FEATURES;
        let layout = self.opts.layout;
        let config_ok = self.t.config_len() >= layout.min_len();
        let fields = if features & (F_BUFSZ | F_CPUNAME) != 0 && config_ok {
            let t = &self.t;
            Some(config::read_fields(layout, t.config_len(), |o, b| {
                t.read_config(o, b)
            })?)
        } else {
            None
        };
        let (tx_size, rx_size) = match fields {
            Some(f) if features & F_BUFSZ != 0 => (f.r2h_size, f.h2r_size),
            _ => (DEFAULT_BUFFER_SIZE, DEFAULT_BUFFER_SIZE),
        };
        for size in [tx_size, rx_size] {
            if !(MIN_BUFFER_SIZE..=MAX_BUFFER_SIZE).contains(&size) {
                return Err(RpmsgVirtioError::BadBufferSize {
                    size,
                    min: MIN_BUFFER_SIZE,
                    max: MAX_BUFFER_SIZE,
                });
            }
        }
        let mut remote = self.opts.remote_cpu;
        if let Some(f) = fields.filter(|_| features & F_CPUNAME != 0) {
            if let Some(name) = f.host_name {
                if name.as_str() != remote.as_str() {
                    log::warn!(
                        "rpmsg-virtio device: the platform calls the remote cpu \"{}\" but the \
                         config space says \"{}\"; using \"{}\"",
                        remote,
                        name.as_str(),
                        name.as_str()
                    );
                }
                remote = RemoteCpu::from_name(name);
            }
            if let Some(name) = f.remote_name {
                if name.as_str() != self.opts.local_cpu.as_str() {
                    log::warn!(
                        "rpmsg-virtio device: the config space names this cpu \"{}\" but it is \
                         \"{}\"",
                        name.as_str(),
                        self.opts.local_cpu
                    );
                }
            }
        }

        let event_idx = features & F_EVENT_IDX != 0;
        let Some(mut txq) = self.queue(DEV_TX, event_idx)? else {
            return Ok(false);
        };
        let Some(mut rxq) = self.queue(DEV_RX, event_idx)? else {
            return Ok(false);
        };
        // We look at vring0 when we need a buffer; ask for kicks only when
        // we run out. New messages on vring1 are always worth a kick.
        txq.disable_notifications()?;
        rxq.enable_notifications()?;

        self.detach();
        self.session = self.session.wrapping_add(1).max(1);
        self.tx_tag = Tagger::new(usize::from(txq.num()), self.session);
        self.rx_tag = Tagger::new(usize::from(rxq.num()), self.session);
        self.txq = Some(txq);
        self.rxq = Some(rxq);
        self.features = features;
        self.remote = remote;
        self.tx_size = tx_size;
        self.rx_size = rx_size;
        self.state = State::Up;
        self.stats.sessions += 1;
        log::info!(
            "rpmsg-virtio device: link to {} up (session {}), features {}, tx {} B, rx {} B",
            self.remote,
            self.session,
            FeatureNames(features),
            tx_size,
            rx_size
        );
        Ok(true)
    }

    fn queue(&self, q: u16, event_idx: bool) -> Result<Option<DeviceQueue>, RpmsgVirtioError> {
        let mem = match self.t.queue(q) {
            Ok(m) => m,
            Err(VirtioError::NotReady(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if usize::from(mem.layout.num) > N {
            return Err(RpmsgVirtioError::QueueTooLarge {
                queue: q,
                num: mem.layout.num,
                max: N,
            });
        }
        Ok(Some(DeviceQueue::new(
            mem.region, mem.layout, mem.window, event_idx,
        )?))
    }

    /// Pops one chain of `q` and checks it is one segment in the expected
    /// direction.
    fn pop_one(&mut self, q: u16) -> Result<Popped, TransportError> {
        let want_writable = q == DEV_TX;
        let queue = if q == DEV_TX {
            self.txq.as_mut()
        } else {
            self.rxq.as_mut()
        };
        let Some(queue) = queue else {
            return Err(TransportError::LinkDown);
        };
        let chain = match queue.pop::<1>() {
            Ok(Some(c)) => c,
            Ok(None) => return Ok(Popped::Nothing),
            Err(e) => return Err(self.queue_failed(e)),
        };
        let Some(seg) = chain.segs().first().copied() else {
            return Err(self.protocol("the driver posted an empty descriptor chain"));
        };
        if seg.writable != want_writable {
            return Err(self.protocol(if want_writable {
                "the driver posted a device-readable buffer on vring0 (its RX ring)"
            } else {
                "the driver posted a device-writable buffer on vring1 (its TX ring)"
            }));
        }
        let head = chain.head();
        let busy = if want_writable {
            self.tx_state[usize::from(head)] != TX_NONE
        } else {
            self.rx_out[usize::from(head)]
        };
        if busy {
            return Err(self.protocol("the driver posted a descriptor the device still holds"));
        }
        Ok(Popped::Seg {
            head,
            offset: seg.offset,
            len: seg.len,
        })
    }

    /// Returns `head` on `q` with `written` bytes and interrupts the driver
    /// if it wants it.
    fn give_back(&mut self, q: u16, head: u16, written: u32) -> Result<(), TransportError> {
        let queue = if q == DEV_TX {
            self.txq.as_mut()
        } else {
            self.rxq.as_mut()
        };
        let Some(queue) = queue else {
            return Err(TransportError::LinkDown);
        };
        let r = queue
            .push_used(head, written)
            .and_then(|()| queue.should_notify());
        let kick = match r {
            Ok(k) => k,
            Err(e) => return Err(self.queue_failed(e)),
        };
        if kick {
            self.stats.notifies += 1;
            if let Err(e) = self.t.notify(q) {
                return Err(self.transport_failed(e));
            }
        }
        Ok(())
    }

    /// Takes the next usable buffer of vring0, dropping (returning unused)
    /// those smaller than the negotiated size. Bounded by the ring size.
    fn pop_tx(&mut self) -> Result<Option<u16>, TransportError> {
        let num = self.txq.as_ref().map_or(0, |q| q.num());
        for _ in 0..=num {
            match self.pop_one(DEV_TX)? {
                Popped::Nothing => return Ok(None),
                Popped::Seg { head, offset, len } => {
                    if len < self.tx_size {
                        self.stats.dropped_small += 1;
                        log::warn!(
                            "rpmsg-virtio device: the driver posted a {len}-byte RX buffer, \
                             smaller than the negotiated {}; returned unused",
                            self.tx_size
                        );
                        self.give_back(DEV_TX, head, 0)?;
                        continue;
                    }
                    let h = usize::from(head);
                    self.tx_state[h] = TX_SPARE;
                    self.tx_off[h] = offset;
                    self.tx_len[h] = len;
                    return Ok(Some(head));
                }
            }
        }
        Ok(None)
    }

    fn own_tx(&self, buf: TxBuf) -> Result<u16, TransportError> {
        let bad = TransportError::InvalidBuffer { index: buf.index };
        let head = self.tx_tag.decode(buf.index).ok_or(bad)?;
        let h = usize::from(head);
        let num = self.txq.as_ref().map_or(0, |q| q.num());
        let ok = head < num
            && self.tx_state[h] == TX_LENT
            && self.tx_off[h] == buf.offset
            && buf.size == self.tx_size as usize;
        if ok {
            Ok(head)
        } else {
            Err(bad)
        }
    }

    fn own_rx(&self, buf: RxBuf) -> Result<u16, TransportError> {
        let bad = TransportError::InvalidBuffer { index: buf.index };
        let head = self.rx_tag.decode(buf.index).ok_or(bad)?;
        let h = usize::from(head);
        let num = self.rxq.as_ref().map_or(0, |q| q.num());
        if head < num && self.rx_out[h] && self.rx_off[h] == buf.offset {
            Ok(head)
        } else {
            Err(bad)
        }
    }

    /// True when a used index in shared memory is not the one we published:
    /// only the device writes it during a session, so the driver has
    /// re-initialised the ring (a reset and restart we did not see).
    fn rings_rewritten(&self) -> bool {
        [&self.txq, &self.rxq]
            .into_iter()
            .flatten()
            .any(|q| q.region().load_u16(q.layout().used_idx()) != Ok(q.indices().used_idx))
    }

    fn avail_pending(q: &DeviceQueue) -> usize {
        let i = q.indices();
        q.region()
            .load_u16(q.layout().avail_idx())
            .map(|a| usize::from(a.wrapping_sub(i.last_avail)))
            .unwrap_or(0)
            .min(usize::from(q.num()))
    }
}

impl<T: DeviceTransport, const N: usize> RpmsgTransport for RpmsgVirtioDevice<T, N> {
    fn role(&self) -> &str {
        "virtio device"
    }

    fn local_cpu(&self) -> LocalCpu {
        self.opts.local_cpu
    }

    fn remote_cpu(&self) -> RemoteCpu {
        self.remote
    }

    fn features(&self) -> RpmsgFeatures {
        bus_features(self.features & self.opts.allowed())
    }

    fn link_session(&self) -> Option<u32> {
        (self.state == State::Up).then_some(self.session)
    }

    fn tx_buffer_size(&self) -> usize {
        self.tx_size as usize
    }

    fn rx_buffer_size(&self) -> usize {
        self.rx_size as usize
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
        if self.state == State::Down(DownReason::Stopped) {
            return Ok(());
        }
        let s = match self.t.status() {
            Ok(s) => s,
            Err(e) => return Err(self.transport_failed(e)),
        };
        let live =
            s & status::DRIVER_OK != 0 && s & (status::FAILED | status::DEVICE_NEEDS_RESET) == 0;
        if self.state == State::Up {
            if s & status::DEVICE_NEEDS_RESET != 0 {
                self.go_down(DownReason::NeedsReset);
            } else if s & status::FAILED != 0 {
                self.go_down(DownReason::Failed);
            } else if s & status::DRIVER_OK == 0 {
                self.go_down(DownReason::Reset);
            } else if self.rings_rewritten() {
                // The driver reset and restarted between two polls: start a
                // new session on its new rings.
                self.go_down(DownReason::Reset);
            } else {
                return Ok(());
            }
        }
        if !live {
            return Ok(());
        }
        match self.attach() {
            Ok(_) => Ok(()),
            Err(e) => {
                self.broken(e);
                Err(e.as_peer())
            }
        }
    }

    fn get_tx(&mut self) -> Result<Option<TxBuf>, TransportError> {
        self.check_up()?;
        let head = if self.tx_nspare > 0 {
            self.tx_nspare -= 1;
            Some(self.tx_spare[self.tx_nspare])
        } else {
            let mut got = self.pop_tx()?;
            if got.is_none() && !self.tx_kicks {
                // Ask the driver to kick when it posts buffers, then look
                // again: some may have arrived meanwhile.
                let r = match self.txq.as_mut() {
                    Some(q) => q.enable_notifications(),
                    None => return Err(TransportError::LinkDown),
                };
                match r {
                    Ok(more) => {
                        self.tx_kicks = true;
                        if more {
                            got = self.pop_tx()?;
                        }
                    }
                    Err(e) => return Err(self.queue_failed(e)),
                }
            } else if got.is_some() && self.tx_kicks {
                if let Some(q) = self.txq.as_mut() {
                    if let Err(e) = q.disable_notifications() {
                        return Err(self.queue_failed(e));
                    }
                }
                self.tx_kicks = false;
            }
            got
        };
        let Some(head) = head else {
            return Ok(None);
        };
        let h = usize::from(head);
        self.tx_state[h] = TX_LENT;
        Ok(Some(TxBuf {
            index: self.tx_tag.encode(head),
            offset: self.tx_off[h],
            size: self.tx_size as usize,
        }))
    }

    fn send(&mut self, buf: TxBuf, len: usize) -> Result<(), TransportError> {
        self.check_up()?;
        let head = self.own_tx(buf)?;
        let h = usize::from(head);
        if len > self.tx_size as usize {
            return Err(TransportError::TooLong {
                index: buf.index,
                len,
                size: self.tx_size as usize,
            });
        }
        let written = if self.opts.linux_compat {
            self.tx_len[h]
        } else {
            len as u32
        };
        self.give_back(DEV_TX, head, written)?;
        self.tx_state[h] = TX_NONE;
        self.stats.tx += 1;
        Ok(())
    }

    fn release_tx(&mut self, buf: TxBuf) -> Result<(), TransportError> {
        let head = self.own_tx(buf)?;
        self.tx_state[usize::from(head)] = TX_SPARE;
        self.tx_spare[self.tx_nspare] = head;
        self.tx_nspare += 1;
        Ok(())
    }

    fn recv(&mut self) -> Result<Option<RxBuf>, TransportError> {
        self.check_up()?;
        let (head, offset, len) = match self.pop_one(DEV_RX)? {
            Popped::Nothing => return Ok(None),
            Popped::Seg { head, offset, len } => (head, offset, len),
        };
        let h = usize::from(head);
        self.rx_out[h] = true;
        self.rx_off[h] = offset;
        self.rx_len[h] = len;
        self.stats.rx += 1;
        Ok(Some(RxBuf {
            index: self.rx_tag.encode(head),
            offset,
            // The segment was checked against the window; a driver that
            // posts more than the negotiated size gets it clamped.
            capacity: len.min(self.rx_size) as usize,
            len: len as usize,
        }))
    }

    fn release_rx(&mut self, buf: RxBuf) -> Result<(), TransportError> {
        let head = self.own_rx(buf)?;
        self.check_up()?;
        let h = usize::from(head);
        let written = if self.opts.linux_compat {
            self.rx_len[h]
        } else {
            0
        };
        self.give_back(DEV_RX, head, written)?;
        self.rx_out[h] = false;
        Ok(())
    }

    fn buffer_stats(&self) -> BufferStats {
        let (tx_total, tx_free) = match &self.txq {
            Some(q) => (
                usize::from(q.num()),
                self.tx_nspare + Self::avail_pending(q),
            ),
            None => (0, 0),
        };
        BufferStats {
            tx_total,
            tx_free,
            rx_total: self.rxq.as_ref().map_or(0, |q| usize::from(q.num())),
        }
    }

    fn describe(&self, out: &mut dyn fmt::Write) -> fmt::Result {
        match self.state {
            State::Up => write!(out, "rpmsg-virtio device: up, session {}", self.session)?,
            State::Down(r) => write!(out, "rpmsg-virtio device: down ({r})")?,
        }
        writeln!(
            out,
            ", features {}, tx {} B, rx {} B, dropped small {}",
            FeatureNames(self.features),
            self.tx_size,
            self.rx_size,
            self.stats.dropped_small
        )?;
        if let Some(q) = &self.txq {
            describe_ring(
                out,
                "vring0",
                "tx",
                &q.indices(),
                ("pending", Self::avail_pending(q)),
            )?;
        }
        if let Some(q) = &self.rxq {
            describe_ring(
                out,
                "vring1",
                "rx",
                &q.indices(),
                ("pending", Self::avail_pending(q)),
            )?;
        }
        Ok(())
    }
}
