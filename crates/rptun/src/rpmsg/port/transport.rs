//! rpmsg over a byte stream: [`PortTransport`], the [`RpmsgTransport`] of
//! NuttX's `rpmsg_port_uart`, over any non-blocking [`ByteIo`].
//!
//! Buffers (DESIGN.md §9): each port buffer is `buffer_size` bytes (NuttX
//! uses 8–10 buffers of 2048 bytes) laid out as
//!
//! ```text
//! offset 0   port header  u16 crc, u16 cmd, u16 avail, u16 len
//! offset 8   rpmsg header u32 src, u32 dst, u32 reserved, u16 len, u16 flags
//! offset 24  payload
//! ```
//!
//! The buffers of each direction live in a local [`Region`] (heap or
//! caller-provided, e.g. [`Region::from_static`]); the [`TxBuf`]/[`RxBuf`]
//! tokens handed to the bus point at offset 8 of a buffer, so the bus writes
//! and reads the rpmsg header and payload in place, and the transport owns
//! the 8 bytes in front.
//!
//! Sending: [`RpmsgTransport::send`] seals the buffer (port header, optional
//! CRC-16/ARC) and queues it; the frame encoder escapes queued buffers into a
//! small local staging area that is written to the stream whenever it
//! accepts bytes. A TX buffer is free again once its last byte is staged, so
//! while the stream is busy every buffer ends up queued and `get_tx` answers
//! `None`: that is the back-pressure towards the application.
//!
//! Receiving: bytes read from the stream go through the [`Deframer`] (which
//! drops anything malformed); commands go to the connection state machine
//! ([`Link`]); a frame is copied into a free RX buffer, only while the link is
//! connected. While every RX buffer is taken by the application the
//! transport stops reading the stream, so the peer's writes block in turn
//! (as NuttX's receive thread waits for a free buffer).
//!
//! Sessions: every CONNREQ/CONNACK handshake that brings the link up starts
//! a new session ([`RpmsgTransport::link_session`] changes); when a session
//! ends (the peer rebooted, sent POWEROFF, or the stream reported
//! [`ByteIoError::Closed`]) every buffer lent out in it returns to the
//! transport and queued frames are dropped, as the state machine's
//! [`Action::DropQueued`] asks.
//!
//! Time: the transport has no clock. Call [`PortTransport::tick`] about every
//! 100 ms (the CONNREQ and wake-request retry period) and
//! [`RpmsgTransport::poll`] (through the bus's `Link::poll`) whenever the
//! stream may be readable or writable.
#![forbid(unsafe_code)]

use core::fmt;

use super::frame::{
    needs_escape, Cmd, CrcMode, Deframer, DeframerStats, Event, END, ESC, ESC_MASK, START,
};
use super::header::{crc16_arc_update, PortHeader, PORT_HEADER_LEN};
use super::link::{Action, Actions, Link, LinkState, LinkStats, Queues};
use crate::rpmsg::cpu::{LocalCpu, RemoteCpu};
use crate::rpmsg::transport::{
    BufferStats, RpmsgFeatures, RpmsgTransport, RxBuf, TransportError, TxBuf,
};
use crate::shm::Region;

/// Size of the rpmsg header that follows the port header.
const RPMSG_HEADER_LEN: usize = 16;

/// Most buffers per direction.
pub const MAX_BUFFERS: usize = 64;
/// Default number of buffers per direction (NuttX's simulator uses 8).
pub const DEFAULT_BUFFERS: usize = 8;
/// Default port buffer size in bytes, port header included (NuttX: 2048).
pub const DEFAULT_BUFFER_SIZE: usize = 2048;
/// Smallest port buffer: both headers and one payload byte.
pub const MIN_BUFFER_SIZE: usize = PORT_HEADER_LEN + RPMSG_HEADER_LEN + 1;

/// Bytes of encoded output staged before they are written to the stream.
const STAGE_LEN: usize = 4096;
/// Staging bytes kept free for command bytes (frames never use them).
const CMD_HEADROOM: usize = 32;
/// Bytes read from the stream at a time.
const READ_LEN: usize = 1024;
/// Bytes of a buffer processed at a time when encoding or computing a CRC.
const CHUNK: usize = 64;
/// Stream reads per pump (bounds the work done in one `poll`).
const READS_PER_PUMP: usize = 16;

/// Why a non-blocking byte stream operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ByteIoError {
    /// The other end went away (end of file, hang-up, connection reset).
    /// The stream may come back (a listener accepting a new connection, a
    /// reopened device): keep polling it.
    #[error(
        "the byte stream lost its peer (closed, hung up or reset); the link goes down \
         and reconnects when the peer is back"
    )]
    Closed,
    /// Any other failure, with the operating system's error code if any.
    #[error("the byte stream failed (error code {0}); check the device or connection")]
    Failed(i32),
}

/// A non-blocking byte stream: a UART, a pty, a socket.
///
/// Neither method may block. "Nothing now" is `Ok(0)`: no byte to read, or
/// no room to write. End of file is [`ByteIoError::Closed`], never `Ok(0)`.
pub trait ByteIo {
    /// Reads up to `buf.len()` bytes; `Ok(0)` when nothing is available now.
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, ByteIoError>;

    /// Writes up to `buf.len()` bytes; `Ok(0)` when the stream accepts
    /// nothing now. A stream with nobody at the other end yet may accept and
    /// discard bytes, as a UART does.
    fn write(&mut self, buf: &[u8]) -> Result<usize, ByteIoError>;

    /// Pushes out bytes a buffered stream holds back. Called after the
    /// transport wrote everything it had; the default does nothing.
    fn flush(&mut self) -> Result<(), ByteIoError> {
        Ok(())
    }
}

impl<T: ByteIo + ?Sized> ByteIo for &mut T {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, ByteIoError> {
        (**self).read(buf)
    }
    fn write(&mut self, buf: &[u8]) -> Result<usize, ByteIoError> {
        (**self).write(buf)
    }
    fn flush(&mut self) -> Result<(), ByteIoError> {
        (**self).flush()
    }
}

#[cfg(feature = "alloc")]
impl<T: ByteIo + ?Sized> ByteIo for alloc::boxed::Box<T> {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, ByteIoError> {
        (**self).read(buf)
    }
    fn write(&mut self, buf: &[u8]) -> Result<usize, ByteIoError> {
        (**self).write(buf)
    }
    fn flush(&mut self) -> Result<(), ByteIoError> {
        (**self).flush()
    }
}

/// Why a [`PortTransport`] could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PortSetupError {
    /// A buffer count outside `1..=MAX_BUFFERS`.
    #[error("{count} port buffers per direction asked for; use 1 to {max}")]
    BufferCount {
        /// Requested count.
        count: usize,
        /// Largest count.
        max: usize,
    },
    /// A buffer size outside what the frame buffer and the `len` field allow.
    #[error(
        "port buffer size {size} is outside {min}..={max}; the upper bound is the \
         transport's frame buffer (its MAX parameter)"
    )]
    BufferSize {
        /// Requested size.
        size: usize,
        /// Smallest size (both headers and one payload byte).
        min: usize,
        /// Largest size.
        max: usize,
    },
    /// A caller-provided region cannot hold the buffers.
    #[error("the {which} region has {have} bytes but the buffers need {need}; pass a larger one")]
    RegionTooSmall {
        /// `"TX"` or `"RX"`.
        which: &'static str,
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
}

/// Shape and identity of a port link.
#[derive(Debug, Clone, Copy)]
pub struct PortConfig {
    /// This side's cpu name on the link.
    pub local_cpu: LocalCpu,
    /// The cpu at the other end of the stream.
    pub remote_cpu: RemoteCpu,
    /// TX buffers (1..=[`MAX_BUFFERS`]).
    pub tx_buffers: usize,
    /// RX buffers (1..=[`MAX_BUFFERS`]).
    pub rx_buffers: usize,
    /// Bytes per port buffer, port header included (the rpmsg payload
    /// capacity is this minus 24). Frames longer than this from the peer are
    /// dropped, so both sides should agree.
    pub buffer_size: usize,
    /// Whether sent frames carry a CRC (received ones are checked whenever
    /// their CRC is non-zero).
    pub crc: CrcMode,
}

impl PortConfig {
    /// NuttX's defaults: 8 buffers of 2048 bytes each way, no CRC.
    pub fn new(local_cpu: LocalCpu, remote_cpu: RemoteCpu) -> PortConfig {
        PortConfig {
            local_cpu,
            remote_cpu,
            tx_buffers: DEFAULT_BUFFERS,
            rx_buffers: DEFAULT_BUFFERS,
            buffer_size: DEFAULT_BUFFER_SIZE,
            crc: CrcMode::Off,
        }
    }

    /// Sets both buffer counts.
    pub fn buffers(mut self, count: usize) -> PortConfig {
        self.tx_buffers = count;
        self.rx_buffers = count;
        self
    }

    /// Sets the port buffer size (port header included).
    pub fn buffer_size(mut self, size: usize) -> PortConfig {
        self.buffer_size = size;
        self
    }

    /// Sets the CRC mode of sent frames.
    pub fn crc(mut self, crc: CrcMode) -> PortConfig {
        self.crc = crc;
        self
    }

    /// Bytes the TX region must hold.
    pub fn tx_region_len(&self) -> usize {
        self.tx_buffers.saturating_mul(self.buffer_size)
    }

    /// Bytes the RX region must hold.
    pub fn rx_region_len(&self) -> usize {
        self.rx_buffers.saturating_mul(self.buffer_size)
    }

    fn validate(&self, max_frame: usize) -> Result<(), PortSetupError> {
        for count in [self.tx_buffers, self.rx_buffers] {
            if count == 0 || count > MAX_BUFFERS {
                return Err(PortSetupError::BufferCount {
                    count,
                    max: MAX_BUFFERS,
                });
            }
        }
        let max = max_frame.min(u16::MAX as usize);
        if self.buffer_size < MIN_BUFFER_SIZE || self.buffer_size > max {
            return Err(PortSetupError::BufferSize {
                size: self.buffer_size,
                min: MIN_BUFFER_SIZE,
                max,
            });
        }
        Ok(())
    }
}

/// Counters of a [`PortTransport`]. They wrap around on overflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PortStats {
    /// Data frames whose last byte went to the staging area.
    pub frames_sent: u32,
    /// Data frames stored in an RX buffer for the bus.
    pub frames_received: u32,
    /// Valid frames dropped because no session was up.
    pub frames_dropped_down: u32,
    /// Valid frames dropped because they do not fit our RX buffers.
    pub frames_dropped_too_long: u32,
    /// Queued frames dropped because their session ended.
    pub frames_dropped_queued: u32,
    /// Command bytes dropped because the staging area was full.
    pub commands_dropped: u32,
    /// Times the stream reported [`ByteIoError::Closed`].
    pub stream_closed: u32,
    /// Bytes read from the stream.
    pub bytes_read: u64,
    /// Bytes written to the stream.
    pub bytes_written: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TxSlot {
    Free,
    Lent,
    Queued,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RxSlot {
    Free,
    /// Holds a frame of this many bytes, waiting for `recv`.
    Ready(u16),
    /// Lent to the bus; the frame had this many bytes.
    Lent(u16),
}

/// A FIFO of buffer indices (at most [`MAX_BUFFERS`], each index once).
#[derive(Debug, Clone)]
struct IndexQueue {
    items: [u8; MAX_BUFFERS],
    head: usize,
    len: usize,
}

impl IndexQueue {
    const fn new() -> Self {
        IndexQueue {
            items: [0; MAX_BUFFERS],
            head: 0,
            len: 0,
        }
    }

    fn push(&mut self, index: usize) {
        // Each index is queued at most once and there are at most
        // MAX_BUFFERS of them, so the queue never overflows.
        if self.len < MAX_BUFFERS {
            self.items[(self.head + self.len) % MAX_BUFFERS] = index as u8;
            self.len += 1;
        }
    }

    fn pop(&mut self) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        let index = usize::from(self.items[self.head]);
        self.head = (self.head + 1) % MAX_BUFFERS;
        self.len -= 1;
        Some(index)
    }

    fn clear(&mut self) {
        self.head = 0;
        self.len = 0;
    }

    fn len(&self) -> usize {
        self.len
    }
}

/// The RX buffers: local bookkeeping over the RX region.
struct RxBuffers {
    region: Region,
    count: usize,
    size: usize,
    slots: [RxSlot; MAX_BUFFERS],
    ready: IndexQueue,
}

impl RxBuffers {
    fn has_free(&self) -> bool {
        self.slots[..self.count].contains(&RxSlot::Free)
    }

    /// Copies a validated frame into a free buffer and queues it.
    fn store(&mut self, frame: &[u8], stats: &mut PortStats) {
        if frame.len() > self.size {
            stats.frames_dropped_too_long = stats.frames_dropped_too_long.wrapping_add(1);
            return;
        }
        let Some(i) = self.slots[..self.count]
            .iter()
            .position(|s| *s == RxSlot::Free)
        else {
            // Callers feed the deframer only while a buffer is free.
            return;
        };
        if self.region.write_bytes(i * self.size, frame).is_err() {
            return;
        }
        // frame.len() <= size <= u16::MAX (checked at construction).
        self.slots[i] = RxSlot::Ready(frame.len() as u16);
        self.ready.push(i);
        stats.frames_received = stats.frames_received.wrapping_add(1);
    }

    fn reset(&mut self) {
        self.slots = [RxSlot::Free; MAX_BUFFERS];
        self.ready.clear();
    }
}

/// The frame being escaped into the staging area.
#[derive(Debug, Clone, Copy)]
struct Encoding {
    slot: usize,
    len: usize,
    pos: usize,
}

/// Encoded bytes waiting for the stream.
struct Stage {
    bytes: [u8; STAGE_LEN],
    start: usize,
    end: usize,
}

impl Stage {
    fn len(&self) -> usize {
        self.end - self.start
    }

    fn free(&self) -> usize {
        STAGE_LEN - self.len()
    }

    fn compact(&mut self) {
        if self.start > 0 {
            self.bytes.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }

    fn push(&mut self, byte: u8) -> bool {
        if self.end == STAGE_LEN {
            self.compact();
        }
        match self.bytes.get_mut(self.end) {
            Some(slot) => {
                *slot = byte;
                self.end += 1;
                true
            }
            None => false,
        }
    }

    fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
    }
}

/// rpmsg over a byte stream: the [`RpmsgTransport`] of an rpmsg-port link
/// (NuttX `rpmsg_port_uart`).
///
/// `MAX` is the largest frame the receiver accepts (the deframer's buffer),
/// at least the configured buffer size; 2048 by default.
///
/// The transport starts the handshake (sends CONNREQ) as soon as it is
/// built; the link comes up when the peer answers. Name service with
/// CREATE_ACK is always on ([`RpmsgFeatures::NUTTX`]).
pub struct PortTransport<S: ByteIo, const MAX: usize = DEFAULT_BUFFER_SIZE> {
    io: S,
    cfg: PortConfig,
    link: Link,
    session: u32,
    deframer: Deframer<MAX>,
    tx_region: Region,
    tx_slots: [TxSlot; MAX_BUFFERS],
    tx_queue: IndexQueue,
    encoding: Option<Encoding>,
    stage: Stage,
    rx: RxBuffers,
    read_buf: [u8; READ_LEN],
    read_start: usize,
    read_end: usize,
    /// `recv` may read the stream (cleared when a session changes, so that
    /// the bus sees the change in `poll` before messages of the new session).
    recv_may_read: bool,
    peer_running: bool,
    last_error: Option<ByteIoError>,
    stats: PortStats,
}

impl<S: ByteIo> PortTransport<S> {
    /// A transport over `io` whose buffers live in the caller's regions
    /// (`tx_region` needs [`PortConfig::tx_region_len`] bytes, `rx_region`
    /// [`PortConfig::rx_region_len`]), accepting frames up to 2048 bytes.
    /// Sends CONNREQ right away.
    pub fn new(
        io: S,
        cfg: PortConfig,
        tx_region: Region,
        rx_region: Region,
    ) -> Result<Self, PortSetupError> {
        Self::new_sized(io, cfg, tx_region, rx_region)
    }

    /// A transport whose buffers live in two fresh heap regions, accepting
    /// frames up to 2048 bytes.
    #[cfg(feature = "alloc")]
    pub fn with_heap(io: S, cfg: PortConfig) -> Result<Self, PortSetupError> {
        Self::with_heap_sized(io, cfg)
    }
}

impl<S: ByteIo, const MAX: usize> PortTransport<S, MAX> {
    /// [`PortTransport::new`] for frames up to `MAX` bytes (buffers larger
    /// than NuttX's 2048): `PortTransport::<_, 4096>::new_sized(...)`.
    pub fn new_sized(
        io: S,
        cfg: PortConfig,
        tx_region: Region,
        rx_region: Region,
    ) -> Result<Self, PortSetupError> {
        cfg.validate(MAX)?;
        for (which, region, need) in [
            ("TX", &tx_region, cfg.tx_region_len()),
            ("RX", &rx_region, cfg.rx_region_len()),
        ] {
            if region.len() < need {
                return Err(PortSetupError::RegionTooSmall {
                    which,
                    need,
                    have: region.len(),
                });
            }
        }
        let mut t = PortTransport {
            io,
            cfg,
            link: Link::new(),
            session: 0,
            deframer: Deframer::new(),
            tx_region,
            tx_slots: [TxSlot::Free; MAX_BUFFERS],
            tx_queue: IndexQueue::new(),
            encoding: None,
            stage: Stage {
                bytes: [0; STAGE_LEN],
                start: 0,
                end: 0,
            },
            rx: RxBuffers {
                region: rx_region,
                count: cfg.rx_buffers,
                size: cfg.buffer_size,
                slots: [RxSlot::Free; MAX_BUFFERS],
                ready: IndexQueue::new(),
            },
            read_buf: [0; READ_LEN],
            read_start: 0,
            read_end: 0,
            recv_may_read: true,
            peer_running: true,
            last_error: None,
            stats: PortStats::default(),
        };
        let actions = t.link.start();
        t.apply(actions);
        Ok(t)
    }

    /// [`PortTransport::with_heap`] for frames up to `MAX` bytes.
    #[cfg(feature = "alloc")]
    pub fn with_heap_sized(io: S, cfg: PortConfig) -> Result<Self, PortSetupError> {
        cfg.validate(MAX)?;
        let tx = Region::new_heap(cfg.tx_region_len());
        let rx = Region::new_heap(cfg.rx_region_len());
        Self::new_sized(io, cfg, tx, rx)
    }

    /// The configuration.
    pub fn config(&self) -> &PortConfig {
        &self.cfg
    }

    /// The stream.
    pub fn io(&self) -> &S {
        &self.io
    }

    /// The stream, mutable (e.g. to wait on it). Reading or writing it
    /// behind the transport's back corrupts the framing.
    pub fn io_mut(&mut self) -> &mut S {
        &mut self.io
    }

    /// Where the connection stands.
    pub fn state(&self) -> LinkState {
        self.link.state()
    }

    /// Whether a session is up.
    pub fn is_connected(&self) -> bool {
        self.link.is_connected()
    }

    /// The peer's RUNNING signal (false between its SUSPEND and RESUME).
    pub fn peer_running(&self) -> bool {
        self.peer_running
    }

    /// Transport counters.
    pub fn stats(&self) -> &PortStats {
        &self.stats
    }

    /// Counters of the connection state machine.
    pub fn link_stats(&self) -> &LinkStats {
        self.link.stats()
    }

    /// What the deframer delivered and dropped.
    pub fn deframer_stats(&self) -> &DeframerStats {
        self.deframer.stats()
    }

    /// The last error the stream reported, if any.
    pub fn last_error(&self) -> Option<ByteIoError> {
        self.last_error
    }

    /// Whether bytes are waiting to be written (the caller should wait for
    /// the stream to be writable, not only readable).
    pub fn wants_write(&self) -> bool {
        self.stage.len() > 0 || self.encoding.is_some() || self.tx_queue.len() > 0
    }

    /// Whether bytes already read from the stream wait to be processed
    /// (every RX buffer was taken): poll again after releasing buffers,
    /// without waiting for the stream.
    pub fn has_buffered_input(&self) -> bool {
        self.read_start < self.read_end
    }

    /// The periodic timer (about every 100 ms): repeats CONNREQ while not
    /// connected and a pending wake request, then writes what it can.
    pub fn tick(&mut self) -> Result<(), TransportError> {
        let actions = self.link.tick();
        self.apply(actions);
        self.pump_tx()
    }

    /// Restarts this side: ends any session (dropping queued frames) and
    /// sends CONNREQ, as a reboot would.
    pub fn restart(&mut self) -> Result<(), TransportError> {
        let actions = self.link.start();
        self.apply(actions);
        self.pump_tx()
    }

    /// Powers this side off: tells a connected peer (POWEROFF), ends the
    /// session and goes silent until [`PortTransport::restart`].
    pub fn poweroff(&mut self) -> Result<(), TransportError> {
        let actions = self.link.poweroff();
        self.apply(actions);
        self.pump_tx()
    }

    /// Carries out the state machine's actions, in order.
    fn apply(&mut self, actions: Actions) {
        for action in actions {
            match action {
                Action::Send(cmd) => self.push_command(cmd.byte()),
                Action::LinkUp => {
                    self.session = self.session.wrapping_add(1);
                    self.peer_running = true;
                    self.recv_may_read = false;
                    log::info!(
                        "rpmsg-port: link to {} up (session {})",
                        self.cfg.remote_cpu,
                        self.session
                    );
                }
                Action::LinkDown => {
                    // Every token of the session is void now.
                    self.drop_tx(true);
                    self.rx.reset();
                    self.recv_may_read = false;
                    log::info!("rpmsg-port: link to {} down", self.cfg.remote_cpu);
                }
                Action::DropQueued(Queues::Tx) => self.drop_tx(false),
                Action::DropQueued(Queues::All) => {
                    self.drop_tx(true);
                    self.rx.reset();
                }
                Action::PeerSuspended => self.peer_running = false,
                Action::PeerResumed => self.peer_running = true,
                // Nothing on a host sleeps: the wake handshake is answered
                // by the state machine and needs nothing more here.
                Action::PeerAwake | Action::StayAwake | Action::MaySleep => {}
            }
        }
    }

    /// Drops queued frames (and with `lent`, voids lent TX buffers too).
    fn drop_tx(&mut self, lent: bool) {
        if let Some(e) = self.encoding.take() {
            // Its partial bytes may already be staged: the peer drops the
            // truncated frame when the next START or CONNREQ/CONNACK comes.
            self.tx_slots[e.slot] = TxSlot::Free;
            self.stats.frames_dropped_queued = self.stats.frames_dropped_queued.wrapping_add(1);
        }
        while let Some(i) = self.tx_queue.pop() {
            self.tx_slots[i] = TxSlot::Free;
            self.stats.frames_dropped_queued = self.stats.frames_dropped_queued.wrapping_add(1);
        }
        if lent {
            for s in &mut self.tx_slots {
                *s = TxSlot::Free;
            }
        }
    }

    fn push_command(&mut self, byte: u8) {
        if !self.stage.push(byte) {
            self.stats.commands_dropped = self.stats.commands_dropped.wrapping_add(1);
        }
    }

    /// The stream lost its peer: the session ends as if it had sent
    /// POWEROFF, and nothing of the old connection is kept.
    fn on_closed(&mut self) {
        self.stats.stream_closed = self.stats.stream_closed.wrapping_add(1);
        self.last_error = Some(ByteIoError::Closed);
        self.stage.clear();
        self.read_start = 0;
        self.read_end = 0;
        self.deframer.reset();
        let actions = self.link.on_command(Cmd::PowerOff);
        self.apply(actions);
        // Commands the state machine produced for the dead connection.
        self.stage.clear();
    }

    fn fail(&mut self, e: ByteIoError) -> TransportError {
        self.last_error = Some(e);
        TransportError::Backend("the byte stream failed; see the port's last error")
    }

    /// Escapes queued frames into the staging area while it has room.
    fn encode(&mut self) {
        let mut chunk = [0u8; CHUNK];
        // Each round stages at least one byte or stops, so this is bounded
        // by the staging size plus the queued frames.
        loop {
            let Some(mut e) = self.encoding else {
                if self.stage.free() <= CMD_HEADROOM {
                    return;
                }
                let Some(slot) = self.tx_queue.pop() else {
                    return;
                };
                let base = slot * self.cfg.buffer_size;
                let mut hb = [0u8; PORT_HEADER_LEN];
                let len = match self.tx_region.read_bytes(base, &mut hb) {
                    Ok(()) => usize::from(PortHeader::from_bytes(hb).len),
                    Err(_) => 0,
                };
                if len < PORT_HEADER_LEN || len > self.cfg.buffer_size {
                    // `send` sealed it, so this cannot happen; drop it.
                    self.tx_slots[slot] = TxSlot::Free;
                    continue;
                }
                self.stage.push(START);
                self.encoding = Some(Encoding { slot, len, pos: 0 });
                continue;
            };
            let room = self.stage.free().saturating_sub(CMD_HEADROOM);
            if e.pos == e.len {
                if room == 0 {
                    return;
                }
                self.stage.push(END);
                self.tx_slots[e.slot] = TxSlot::Free;
                self.encoding = None;
                self.stats.frames_sent = self.stats.frames_sent.wrapping_add(1);
                continue;
            }
            let n = (room / 2).min(CHUNK).min(e.len - e.pos);
            if n == 0 {
                return;
            }
            let base = e.slot * self.cfg.buffer_size;
            if self
                .tx_region
                .read_bytes(base + e.pos, &mut chunk[..n])
                .is_err()
            {
                // Cannot happen (checked at construction); drop the frame.
                self.tx_slots[e.slot] = TxSlot::Free;
                self.encoding = None;
                continue;
            }
            for &b in &chunk[..n] {
                if needs_escape(b) {
                    self.stage.push(ESC);
                    self.stage.push(b ^ ESC_MASK);
                } else {
                    self.stage.push(b);
                }
            }
            e.pos += n;
            self.encoding = Some(e);
        }
    }

    /// Writes staged bytes until the stream stops accepting them.
    fn flush(&mut self) -> Result<(), TransportError> {
        let mut wrote = false;
        while self.stage.len() > 0 {
            match self
                .io
                .write(&self.stage.bytes[self.stage.start..self.stage.end])
            {
                Ok(0) => break,
                Ok(n) => {
                    let n = n.min(self.stage.len());
                    self.stage.start += n;
                    self.stats.bytes_written = self.stats.bytes_written.wrapping_add(n as u64);
                    wrote = true;
                }
                Err(ByteIoError::Closed) => {
                    self.on_closed();
                    return Ok(());
                }
                Err(e) => return Err(self.fail(e)),
            }
        }
        if self.stage.len() == 0 {
            self.stage.clear();
            if wrote {
                match self.io.flush() {
                    Ok(()) => {}
                    Err(ByteIoError::Closed) => self.on_closed(),
                    Err(e) => return Err(self.fail(e)),
                }
            }
        }
        Ok(())
    }

    /// Stages queued frames and writes as much as the stream takes.
    fn pump_tx(&mut self) -> Result<(), TransportError> {
        // Two rounds: the first write makes room for more encoding.
        for _ in 0..2 {
            self.flush()?;
            self.encode();
        }
        self.flush()
    }

    /// Whether the deframer may be fed another event: a frame can be kept
    /// (or would be dropped anyway because no session is up).
    fn can_accept(&self) -> bool {
        !self.link.is_connected() || self.rx.has_free()
    }

    /// Reads and processes stream bytes while RX buffers are free. With
    /// `stop_on_session`, stops right after a session starts or ends.
    fn pump_rx(&mut self, stop_on_session: bool) -> Result<(), TransportError> {
        let mut reads = 0;
        loop {
            if self.read_start == self.read_end {
                if reads == READS_PER_PUMP || !self.can_accept() {
                    return Ok(());
                }
                reads += 1;
                match self.io.read(&mut self.read_buf) {
                    Ok(0) => return Ok(()),
                    Ok(n) => {
                        self.read_start = 0;
                        self.read_end = n.min(READ_LEN);
                        self.stats.bytes_read = self.stats.bytes_read.wrapping_add(n as u64);
                    }
                    Err(ByteIoError::Closed) => {
                        self.on_closed();
                        return Ok(());
                    }
                    Err(e) => return Err(self.fail(e)),
                }
            }
            let sessions = (self.link.stats().link_ups, self.link.stats().link_downs);
            if !self.feed() {
                return Ok(());
            }
            let now = (self.link.stats().link_ups, self.link.stats().link_downs);
            if stop_on_session && now != sessions {
                return Ok(());
            }
        }
    }

    /// Feeds buffered bytes up to the next event and handles it. Returns
    /// false when it cannot go on (no RX buffer free).
    fn feed(&mut self) -> bool {
        if !self.can_accept() {
            return false;
        }
        let mut input = &self.read_buf[self.read_start..self.read_end];
        let before = input.len();
        let connected = self.link.is_connected();
        let mut command = None;
        match self.deframer.next_event(&mut input) {
            Some(Event::Command(c)) => command = Some(c),
            Some(Event::Frame(f)) => {
                if connected {
                    self.rx.store(f, &mut self.stats);
                } else {
                    self.stats.frames_dropped_down = self.stats.frames_dropped_down.wrapping_add(1);
                }
            }
            None => {}
        }
        self.read_start += before - input.len();
        if let Some(c) = command {
            let actions = self.link.on_command(c);
            self.apply(actions);
        }
        true
    }

    /// Everything `poll` does: write, read, write again.
    fn pump(&mut self, stop_on_session: bool) -> Result<(), TransportError> {
        self.pump_tx()?;
        self.pump_rx(stop_on_session)?;
        self.pump_tx()
    }

    fn slot_of_tx(&self, buf: &TxBuf) -> Result<usize, TransportError> {
        let i = usize::from(buf.index);
        let ok = i < self.cfg.tx_buffers
            && self.tx_slots[i] == TxSlot::Lent
            && buf.offset == i * self.cfg.buffer_size + PORT_HEADER_LEN
            && buf.size == self.cfg.buffer_size - PORT_HEADER_LEN;
        if ok {
            Ok(i)
        } else {
            Err(TransportError::InvalidBuffer { index: buf.index })
        }
    }

    /// Writes the port header (and CRC) of TX buffer `slot` for a frame of
    /// `frame_len` bytes.
    fn seal(&mut self, slot: usize, frame_len: usize) -> Result<(), TransportError> {
        let base = slot * self.cfg.buffer_size;
        // frame_len <= buffer_size <= u16::MAX (checked at construction).
        let mut hdr = PortHeader::data(frame_len as u16);
        if self.cfg.crc == CrcMode::On {
            let mut crc = crc16_arc_update(0, &hdr.to_bytes()[2..]);
            let mut chunk = [0u8; CHUNK];
            let mut pos = PORT_HEADER_LEN;
            while pos < frame_len {
                let n = CHUNK.min(frame_len - pos);
                self.tx_region.read_bytes(base + pos, &mut chunk[..n])?;
                crc = crc16_arc_update(crc, &chunk[..n]);
                pos += n;
            }
            hdr.crc = crc;
        }
        self.tx_region.write_bytes(base, &hdr.to_bytes())?;
        Ok(())
    }
}

impl<S: ByteIo, const MAX: usize> RpmsgTransport for PortTransport<S, MAX> {
    fn role(&self) -> &str {
        "port"
    }

    fn local_cpu(&self) -> LocalCpu {
        self.cfg.local_cpu
    }

    fn remote_cpu(&self) -> RemoteCpu {
        self.cfg.remote_cpu
    }

    fn features(&self) -> RpmsgFeatures {
        RpmsgFeatures::NUTTX
    }

    fn link_session(&self) -> Option<u32> {
        self.link.is_connected().then_some(self.session)
    }

    fn tx_buffer_size(&self) -> usize {
        self.cfg.buffer_size - PORT_HEADER_LEN
    }

    fn rx_buffer_size(&self) -> usize {
        self.cfg.buffer_size - PORT_HEADER_LEN
    }

    fn tx_region(&self) -> &Region {
        &self.tx_region
    }

    fn rx_region(&self) -> &Region {
        &self.rx.region
    }

    fn poll(&mut self) -> Result<(), TransportError> {
        let r = self.pump(false);
        // The bus looks at the session right after this: from now on
        // `recv` may read the stream again.
        self.recv_may_read = true;
        r
    }

    fn get_tx(&mut self) -> Result<Option<TxBuf>, TransportError> {
        if !self.link.is_connected() {
            return Err(TransportError::LinkDown);
        }
        let n = self.cfg.tx_buffers;
        if !self.tx_slots[..n].contains(&TxSlot::Free) {
            self.pump_tx()?;
            if !self.link.is_connected() {
                return Err(TransportError::LinkDown);
            }
        }
        let Some(i) = self.tx_slots[..n].iter().position(|s| *s == TxSlot::Free) else {
            return Ok(None);
        };
        self.tx_slots[i] = TxSlot::Lent;
        Ok(Some(TxBuf {
            // i < MAX_BUFFERS <= u16::MAX.
            index: i as u16,
            offset: i * self.cfg.buffer_size + PORT_HEADER_LEN,
            size: self.cfg.buffer_size - PORT_HEADER_LEN,
        }))
    }

    fn send(&mut self, buf: TxBuf, len: usize) -> Result<(), TransportError> {
        if !self.link.is_connected() {
            return Err(TransportError::LinkDown);
        }
        let i = self.slot_of_tx(&buf)?;
        if len > buf.size {
            return Err(TransportError::TooLong {
                index: buf.index,
                len,
                size: buf.size,
            });
        }
        if len < RPMSG_HEADER_LEN {
            return Err(TransportError::Backend(
                "a port frame must carry at least the 16-byte rpmsg header",
            ));
        }
        self.seal(i, len + PORT_HEADER_LEN)?;
        self.tx_slots[i] = TxSlot::Queued;
        self.tx_queue.push(i);
        self.pump_tx()
    }

    fn release_tx(&mut self, buf: TxBuf) -> Result<(), TransportError> {
        let i = self.slot_of_tx(&buf)?;
        self.tx_slots[i] = TxSlot::Free;
        Ok(())
    }

    fn recv(&mut self) -> Result<Option<RxBuf>, TransportError> {
        if !self.link.is_connected() {
            return Err(TransportError::LinkDown);
        }
        if self.rx.ready.len() == 0 && self.recv_may_read {
            self.pump(true)?;
        }
        let Some(i) = self.rx.ready.pop() else {
            return Ok(None);
        };
        let RxSlot::Ready(len) = self.rx.slots[i] else {
            return Ok(None);
        };
        self.rx.slots[i] = RxSlot::Lent(len);
        Ok(Some(RxBuf {
            index: i as u16,
            offset: i * self.cfg.buffer_size + PORT_HEADER_LEN,
            capacity: self.cfg.buffer_size - PORT_HEADER_LEN,
            len: usize::from(len).saturating_sub(PORT_HEADER_LEN),
        }))
    }

    fn release_rx(&mut self, buf: RxBuf) -> Result<(), TransportError> {
        let i = usize::from(buf.index);
        let ok = i < self.cfg.rx_buffers
            && matches!(self.rx.slots[i], RxSlot::Lent(_))
            && buf.offset == i * self.cfg.buffer_size + PORT_HEADER_LEN;
        if !ok {
            return Err(TransportError::InvalidBuffer { index: buf.index });
        }
        self.rx.slots[i] = RxSlot::Free;
        Ok(())
    }

    fn buffer_stats(&self) -> BufferStats {
        BufferStats {
            tx_total: self.cfg.tx_buffers,
            tx_free: self.tx_slots[..self.cfg.tx_buffers]
                .iter()
                .filter(|s| **s == TxSlot::Free)
                .count(),
            rx_total: self.cfg.rx_buffers,
        }
    }

    fn describe(&self, out: &mut dyn fmt::Write) -> fmt::Result {
        let count = |slots: &[TxSlot], want: TxSlot| slots.iter().filter(|s| **s == want).count();
        let tx = &self.tx_slots[..self.cfg.tx_buffers];
        let rx = &self.rx.slots[..self.rx.count];
        let st = &self.stats;
        let d = self.deframer.stats();
        writeln!(
            out,
            "port: {:?}, session {}, crc {}, {} x {} bytes each way{}",
            self.link.state(),
            self.session,
            if self.cfg.crc == CrcMode::On {
                "on"
            } else {
                "off"
            },
            self.cfg.tx_buffers,
            self.cfg.buffer_size,
            if self.peer_running {
                ""
            } else {
                ", peer suspended"
            }
        )?;
        writeln!(
            out,
            "  tx: free {} lent {} queued {}, staged bytes {}, frames sent {}, dropped {}",
            count(tx, TxSlot::Free),
            count(tx, TxSlot::Lent),
            count(tx, TxSlot::Queued) + usize::from(self.encoding.is_some()),
            self.stage.len(),
            st.frames_sent,
            st.frames_dropped_queued
        )?;
        writeln!(
            out,
            "  rx: free {} ready {} held {}, frames received {}, dropped while down {}, \
             too long {}",
            rx.iter().filter(|s| **s == RxSlot::Free).count(),
            self.rx.ready.len(),
            rx.iter().filter(|s| matches!(s, RxSlot::Lent(_))).count(),
            st.frames_received,
            st.frames_dropped_down,
            st.frames_dropped_too_long
        )?;
        writeln!(
            out,
            "  wire: {} bytes in, {} out, {} commands, {} garbage bytes, frames dropped \
             {} (crc {}, len {}, escape {}, truncated {}, oversized {}), stream closed {}",
            st.bytes_read,
            st.bytes_written,
            d.commands,
            d.garbage_bytes,
            d.frames_dropped(),
            d.bad_crc,
            d.bad_len,
            d.bad_escape,
            d.truncated,
            d.oversized,
            st.stream_closed
        )
    }
}

impl<S: ByteIo, const MAX: usize> fmt::Debug for PortTransport<S, MAX> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PortTransport")
            .field("remote_cpu", &self.cfg.remote_cpu)
            .field("state", &self.link.state())
            .field("session", &self.session)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::vec::Vec;

    /// A stream in memory: the test plays the peer.
    #[derive(Default)]
    struct MemIo {
        input: VecDeque<u8>,
        output: Vec<u8>,
        /// Bytes `write` accepts from now on (None: unlimited).
        write_room: Option<usize>,
        /// The next read reports a closed stream.
        close: bool,
    }

    impl ByteIo for MemIo {
        fn read(&mut self, buf: &mut [u8]) -> Result<usize, ByteIoError> {
            if core::mem::take(&mut self.close) {
                return Err(ByteIoError::Closed);
            }
            let n = buf.len().min(self.input.len());
            for (d, s) in buf.iter_mut().zip(self.input.drain(..n)) {
                *d = s;
            }
            Ok(n)
        }
        fn write(&mut self, buf: &[u8]) -> Result<usize, ByteIoError> {
            let n = match &mut self.write_room {
                None => buf.len(),
                Some(room) => {
                    let n = buf.len().min(*room);
                    *room -= n;
                    n
                }
            };
            self.output.extend_from_slice(&buf[..n]);
            Ok(n)
        }
    }

    type Port = PortTransport<MemIo>;

    fn cfg() -> PortConfig {
        PortConfig::new(
            LocalCpu::new("server").unwrap(),
            RemoteCpu::new("proxy").unwrap(),
        )
    }

    fn port(cfg: PortConfig) -> Port {
        PortTransport::with_heap(MemIo::default(), cfg).unwrap()
    }

    /// A port whose peer has sent CONNREQ and got the CONNACK.
    fn connected(cfg: PortConfig) -> Port {
        let mut p = port(cfg);
        p.poll().unwrap();
        assert_eq!(p.io().output, [0x7e], "CONNREQ at start");
        p.io_mut().input.push_back(0x7e);
        p.poll().unwrap();
        assert_eq!(p.io().output, [0x7e, 0x7d], "CONNACK to the peer's CONNREQ");
        assert_eq!(p.link_session(), Some(1));
        p.io_mut().output.clear();
        p
    }

    /// rpmsg header src 0x400, dst 0x401, len 3, then payload 01 7f 70.
    const MSG: [u8; 19] = [
        0x00, 0x04, 0x00, 0x00, 0x01, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00,
        0x00, 0x01, 0x7f, 0x70,
    ];

    /// MSG on the wire without CRC: START, port header (len 27 = 0x1b),
    /// rpmsg header, payload with 0x7f and 0x70 escaped, END.
    const WIRE: [u8; 31] = [
        0x7f, // START
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1b, 0x00, // crc, cmd, avail, len
        0x00, 0x04, 0x00, 0x00, 0x01, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00,
        0x00, // rpmsg header
        0x01, 0x7c, 0x5f, 0x7c, 0x50, // payload, escaped
        0x70, // END
    ];

    fn send_msg(p: &mut Port, msg: &[u8]) -> TxBuf {
        let tx = p.get_tx().unwrap().unwrap();
        p.tx_region().write_bytes(tx.offset, msg).unwrap();
        p.send(tx, msg.len()).unwrap();
        tx
    }

    #[test]
    fn sent_frame_matches_hand_derived_bytes() {
        let mut p = connected(cfg());
        let tx = p.get_tx().unwrap().unwrap();
        assert_eq!((tx.index, tx.offset, tx.size), (0, 8, 2040));
        assert_eq!(p.tx_buffer_size(), 2040);
        p.tx_region().write_bytes(tx.offset, &MSG).unwrap();
        p.send(tx, MSG.len()).unwrap();
        assert_eq!(p.io().output, WIRE);
        assert_eq!(p.stats().frames_sent, 1);
        assert_eq!(
            p.send(tx, MSG.len()),
            Err(TransportError::InvalidBuffer { index: 0 })
        );
    }

    #[test]
    fn crc_covers_cmd_to_end() {
        let mut p = connected(cfg().crc(CrcMode::On));
        send_msg(&mut p, &MSG);
        // CRC-16/ARC over cmd, avail, len and the 19 bytes that follow.
        let arc = crc::Crc::<u16>::new(&crc::CRC_16_ARC);
        let mut covered = std::vec![0, 0, 0, 0, 0x1b, 0];
        covered.extend_from_slice(&MSG);
        let c = arc.checksum(&covered).to_le_bytes();
        let mut want = WIRE.to_vec();
        // The CRC bytes are escaped too if they fall in 0x70..=0x7f.
        let mut crc_wire = Vec::new();
        for b in c {
            if (0x70..=0x7f).contains(&b) {
                crc_wire.extend_from_slice(&[0x7c, b ^ 0x20]);
            } else {
                crc_wire.push(b);
            }
        }
        want.splice(1..3, crc_wire);
        assert_eq!(p.io().output, want);
    }

    #[test]
    fn received_frame_is_lent_at_the_rpmsg_header() {
        let mut p = connected(cfg());
        p.io_mut().input.extend(WIRE);
        p.poll().unwrap();
        let rx = p.recv().unwrap().unwrap();
        assert_eq!(
            rx,
            RxBuf {
                index: 0,
                offset: 8,
                capacity: 2040,
                len: 19
            }
        );
        let mut got = [0u8; 19];
        p.rx_region().read_bytes(rx.offset, &mut got).unwrap();
        assert_eq!(got, MSG);
        assert_eq!(p.recv().unwrap(), None);
        p.release_rx(rx).unwrap();
        assert_eq!(
            p.release_rx(rx),
            Err(TransportError::InvalidBuffer { index: 0 })
        );
    }

    #[test]
    fn frames_before_the_handshake_are_dropped() {
        let mut p = port(cfg());
        p.io_mut().input.extend(WIRE);
        p.poll().unwrap();
        assert_eq!(p.recv(), Err(TransportError::LinkDown));
        assert_eq!(p.get_tx(), Err(TransportError::LinkDown));
        assert_eq!(p.stats().frames_dropped_down, 1);
        // The CONNACK to our CONNREQ connects us: only later frames count.
        p.io_mut().input.push_back(0x7d);
        p.io_mut().input.extend(WIRE);
        p.poll().unwrap();
        assert_eq!(p.link_session(), Some(1));
        assert_eq!(p.recv().unwrap().unwrap().len, 19);
    }

    #[test]
    fn stuck_stream_makes_get_tx_say_no_buffer() {
        let mut p = connected(cfg().buffers(2).buffer_size(64));
        p.io_mut().write_room = Some(0);
        send_msg(&mut p, &MSG);
        send_msg(&mut p, &MSG);
        // Both frames are staged (the staging area holds them): the
        // buffers are free again though nothing reached the stream.
        assert!(p.io().output.is_empty());
        assert!(p.wants_write());
        assert_eq!(p.buffer_stats().tx_free, 2);
        // Fill the staging area until every buffer waits in the queue.
        let mut sent = 2;
        while let Some(tx) = p.get_tx().unwrap() {
            p.tx_region().write_bytes(tx.offset, &MSG).unwrap();
            p.send(tx, MSG.len()).unwrap();
            sent += 1;
            assert!(sent < 1000, "back-pressure never came");
        }
        assert_eq!(p.buffer_stats().tx_free, 0);
        // The stream drains: buffers come back and every frame goes out
        // whole and in order.
        p.io_mut().write_room = None;
        p.poll().unwrap();
        assert_eq!(p.buffer_stats().tx_free, 2);
        assert!(!p.wants_write());
        let mut want = Vec::new();
        for _ in 0..sent {
            want.extend_from_slice(&WIRE);
        }
        assert_eq!(p.io().output, want);
    }

    #[test]
    fn held_rx_buffers_stop_reading_without_losing_frames() {
        let mut p = connected(cfg().buffers(2));
        for i in 0..5u8 {
            let mut w = WIRE;
            w[25] = i; // first payload byte
            p.io_mut().input.extend(w);
        }
        p.poll().unwrap();
        let a = p.recv().unwrap().unwrap();
        let b = p.recv().unwrap().unwrap();
        assert_eq!(p.recv().unwrap(), None, "both buffers held");
        let first = |p: &Port, rx: RxBuf| p.rx_region().read_u8(rx.offset + 16).unwrap();
        assert_eq!((first(&p, a), first(&p, b)), (0, 1));
        p.release_rx(a).unwrap();
        let c = p.recv().unwrap().unwrap();
        assert_eq!(first(&p, c), 2);
        p.release_rx(b).unwrap();
        p.release_rx(c).unwrap();
        let d = p.recv().unwrap().unwrap();
        let e = p.recv().unwrap().unwrap();
        assert_eq!((first(&p, d), first(&p, e)), (3, 4));
        assert_eq!(p.stats().frames_received, 5);
    }

    #[test]
    fn peer_restart_starts_a_new_session_and_voids_tokens() {
        let mut p = connected(cfg());
        p.io_mut().input.extend(WIRE);
        p.poll().unwrap();
        let rx = p.recv().unwrap().unwrap();
        let tx = p.get_tx().unwrap().unwrap();
        // The peer reboots: CONNREQ again.
        p.io_mut().input.push_back(0x7e);
        p.poll().unwrap();
        assert_eq!(p.io().output, [0x7d]);
        assert_eq!(p.link_session(), Some(2));
        assert_eq!(p.link_stats().link_downs, 1);
        assert!(p.release_rx(rx).is_err(), "token of the old session");
        assert!(p.send(tx, 16).is_err());
        assert_eq!(p.buffer_stats().tx_free, 8);
    }

    #[test]
    fn poweroff_and_closed_stream_take_the_link_down() {
        let mut p = connected(cfg());
        p.io_mut().input.push_back(0x76);
        p.poll().unwrap();
        assert_eq!(p.link_session(), None);
        assert_eq!(p.state(), LinkState::Connecting);
        p.tick().unwrap();
        assert_eq!(p.io().output, [0x7e], "asks for a new session");
        p.io_mut().input.push_back(0x7d);
        p.poll().unwrap();
        assert_eq!(p.link_session(), Some(2));

        // Half a frame, then the stream closes: the next connection starts
        // clean.
        p.io_mut().input.extend(&WIRE[..10]);
        p.poll().unwrap();
        p.io_mut().close = true;
        p.poll().unwrap();
        assert_eq!(p.link_session(), None);
        assert_eq!(p.stats().stream_closed, 1);
        assert_eq!(p.last_error(), Some(ByteIoError::Closed));
        p.io_mut().input.push_back(0x7e);
        p.io_mut().input.extend(WIRE);
        p.poll().unwrap();
        assert_eq!(p.link_session(), Some(3));
        assert_eq!(p.recv().unwrap().unwrap().len, 19);
        assert_eq!(
            p.deframer_stats().truncated,
            0,
            "the stale half frame was forgotten"
        );
    }

    #[test]
    fn local_poweroff_and_restart() {
        let mut p = connected(cfg());
        p.poweroff().unwrap();
        assert_eq!(p.io().output, [0x76]);
        assert_eq!(p.state(), LinkState::Off);
        p.io_mut().input.push_back(0x7e);
        p.poll().unwrap();
        assert_eq!(p.link_session(), None, "off: the peer is ignored");
        p.restart().unwrap();
        assert_eq!(p.io().output, [0x76, 0x7e]);
    }

    #[test]
    fn frames_longer_than_our_buffers_are_dropped() {
        let mut p = connected(cfg().buffer_size(30));
        // A 31-byte frame (7 payload bytes) from a peer with bigger buffers.
        let mut f = std::vec![0u8; 31];
        PortHeader::data(31).write_to(&mut f).unwrap();
        let mut w = Vec::new();
        super::super::frame::encode(&f, &mut |b| w.push(b));
        p.io_mut().input.extend(w);
        p.io_mut().input.extend(WIRE); // 27 bytes: fits
        p.poll().unwrap();
        assert_eq!(p.stats().frames_dropped_too_long, 1);
        assert_eq!(p.recv().unwrap().unwrap().len, 19);
    }

    #[test]
    fn suspend_and_resume_are_reported() {
        let mut p = connected(cfg());
        p.io_mut().input.push_back(0x7b);
        p.poll().unwrap();
        assert!(!p.peer_running());
        // A STAYWAKE is acknowledged even while suspended.
        p.io_mut().input.extend([0x7a, 0x79]);
        p.poll().unwrap();
        assert!(p.peer_running());
        assert_eq!(p.io().output, [0x78]);
    }

    #[test]
    fn bad_configurations_are_refused() {
        let io = || MemIo::default();
        assert_eq!(
            PortTransport::<MemIo>::with_heap(io(), cfg().buffers(0)).unwrap_err(),
            PortSetupError::BufferCount { count: 0, max: 64 }
        );
        assert!(PortTransport::<MemIo>::with_heap(io(), cfg().buffers(65)).is_err());
        assert_eq!(
            PortTransport::<MemIo>::with_heap(io(), cfg().buffer_size(4096)).unwrap_err(),
            PortSetupError::BufferSize {
                size: 4096,
                min: 25,
                max: 2048
            }
        );
        assert!(PortTransport::<MemIo>::with_heap(io(), cfg().buffer_size(24)).is_err());
        assert!(
            PortTransport::<MemIo, 4096>::with_heap_sized(io(), cfg().buffer_size(4096)).is_ok()
        );
        let small = Region::new_heap(100);
        assert_eq!(
            PortTransport::<MemIo>::new(io(), cfg(), small.clone(), small).unwrap_err(),
            PortSetupError::RegionTooSmall {
                which: "TX",
                need: 16384,
                have: 100
            }
        );
    }

    use proptest::prelude::*;

    proptest! {
        /// Whatever the peer sends, in whatever pieces: no panic, every
        /// buffer lent lies inside the RX region with a length it holds,
        /// and releasing them all gives every buffer back.
        #[test]
        fn hostile_bytes_never_break_the_buffers(
            chunks in proptest::collection::vec(
                proptest::collection::vec(prop_oneof![0x70u8..=0x7f, any::<u8>()], 0..200),
                0..20),
            hold in any::<bool>(),
        ) {
            let mut p = connected(cfg().buffers(3).buffer_size(64));
            let mut held = Vec::new();
            for c in &chunks {
                p.io_mut().input.extend(c);
                // A valid frame now and then, so delivery paths run too.
                p.io_mut().input.extend(WIRE);
                let _ = p.tick();
                let _ = p.poll();
                while let Ok(Some(rx)) = p.recv() {
                    prop_assert!(rx.offset + rx.capacity <= p.rx_region().len());
                    prop_assert!(rx.len <= rx.capacity);
                    if hold && held.len() < 2 {
                        held.push(rx);
                    } else {
                        p.release_rx(rx).unwrap();
                    }
                }
            }
            for rx in held {
                // Void if a CONNREQ or POWEROFF ended the session meanwhile.
                let _ = p.release_rx(rx);
            }
            if p.link_session().is_some() {
                prop_assert_eq!(p.buffer_stats().tx_free, 3);
                prop_assert!(p.recv().is_ok());
            }
        }
    }

    #[test]
    fn describe_names_state_and_counters() {
        let p = connected(cfg());
        let mut s = std::string::String::new();
        p.describe(&mut s).unwrap();
        assert!(
            s.starts_with("port: Connected, session 1, crc off, 8 x 2048 bytes"),
            "{s}"
        );
        assert!(s.contains("tx: free 8"), "{s}");
    }
}
