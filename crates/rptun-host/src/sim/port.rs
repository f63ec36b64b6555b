//! The simulator's second link: rpmsg over a byte stream (NuttX's
//! `rpmsg_port_uart`), beside the shared-memory link, on the same bus.
//!
//! NuttX's `sim:rpserver` / `sim:rpproxy` pair has, besides the shared-memory
//! link `proxy`, an rpmsg-port link whose remote cpu is called `proxy2`.
//! Here the server listens on a byte stream (by default a Unix socket in the
//! run directory, [`default_socket_path`]; or a pty) and the proxy connects
//! to it; each side adds the link to its node's bus with
//! [`attach`], so every service (ping, test, tty...) works on it unchanged.
//!
//! ```text
//!  server node thread                         proxy node thread
//!  bus: "proxy"  (virtio driver, shm)   ◀──▶  bus: "server" (virtio device, shm)
//!       "proxy2" (port, listening)      ◀──▶       "server" (port, connecting)
//!                 ▲                                      ▲
//!  watcher thread: poll(stream fd) ─ NodeHandle::wake ─┘ (one per side)
//! ```
//!
//! The node loop sleeps on the shared-memory doorbell, so each port link has
//! a watcher thread that sleeps on the stream's descriptors and wakes the
//! node when bytes arrive ([`NodeHandle::wake`]). The transport's 100 ms
//! timer (CONNREQ retries) runs inside [`RpmsgTransport::poll`], which the
//! node calls at least every 100 ms.
//!
//! Life cycle: when the peer process dies the stream reports end of file,
//! the link goes down and its endpoints unbind; a new peer connects (or
//! reopens the pty), CONNREQ/CONNACK run again and the link comes back. NS
//! with CREATE_ACK is always on, as rpmsg-port requires.
#![forbid(unsafe_code)]

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rptun::rpmsg::port::{PortConfig, PortSetupError, PortTransport};
use rptun::rpmsg::transport::{BufferStats, RpmsgFeatures, RxBuf, TransportError, TxBuf};
use rptun::rpmsg::{Link, LinkId, LocalCpu, RemoteCpu, RpmsgTransport};
use rptun::shm::Region;

use super::node::{NodeGone, NodeHandle, SimTransport};
use crate::stream::runner::TICK_PERIOD;
use crate::stream::{HostStream, StreamWaiter};

/// The remote cpu name of the server's port link (NuttX's seed logs call
/// it `proxy2`).
pub const PORT_LINK_CPU: &str = "proxy2";

/// The stream of a simulator port link.
pub type SimStream = Box<dyn HostStream>;

/// Where the server listens by default for the proxy's port link:
/// `$XDG_RUNTIME_DIR/rptun-sim-<shm>-proxy2.sock`, or the temporary
/// directory when there is no runtime directory.
pub fn default_socket_path(shm: &str) -> PathBuf {
    let dir = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|d| d.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    dir.join(format!("rptun-sim-{shm}-{PORT_LINK_CPU}.sock"))
}

/// Errors attaching a port link.
#[derive(Debug, thiserror::Error)]
pub enum SimPortError {
    /// A cpu name does not fit.
    #[error("bad cpu name `{0}` for the port link: use 1 to 7 ASCII characters without NUL")]
    BadName(String),
    /// The buffers do not fit the configuration.
    #[error("cannot set up the port link: {0}")]
    Setup(#[from] PortSetupError),
    /// The node has stopped.
    #[error(transparent)]
    Gone(#[from] NodeGone),
    /// The watcher thread could not be started.
    #[error("cannot start the port link's watcher thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// Shared between the transport (in the node thread) and its watcher.
#[derive(Default)]
struct Watch {
    /// A fresh waiter for the watcher (the stream's descriptors changed).
    next: Mutex<Option<StreamWaiter>>,
    /// Transport polls so far: the watcher waits for the node to look.
    polls: AtomicU64,
    /// The transport is gone: the watcher ends.
    stop: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A [`PortTransport`] on the node's bus: runs the port's timer from
/// [`RpmsgTransport::poll`] and keeps its watcher's view of the stream
/// current.
pub struct SimPortTransport {
    inner: PortTransport<SimStream>,
    next_tick: Instant,
    watch: Arc<Watch>,
    /// What the watcher watches (the stream's description when the waiter
    /// was made).
    watching: String,
}

impl SimPortTransport {
    /// A transport over `stream` (sends CONNREQ at once).
    pub fn new(stream: SimStream, cfg: PortConfig) -> Result<SimPortTransport, PortSetupError> {
        let inner = PortTransport::with_heap(stream, cfg)?;
        let mut t = SimPortTransport {
            inner,
            next_tick: Instant::now() + TICK_PERIOD,
            watch: Arc::new(Watch::default()),
            watching: String::new(),
        };
        t.refresh_waiter();
        Ok(t)
    }

    /// The port transport.
    pub fn port(&self) -> &PortTransport<SimStream> {
        &self.inner
    }

    /// Hands the watcher new descriptors when the stream changed (a peer
    /// connected, left, or was replaced).
    fn refresh_waiter(&mut self) {
        let now = self.inner.io().describe();
        if now == self.watching {
            return;
        }
        match self.inner.io().waiter() {
            Ok(w) => {
                *lock(&self.watch.next) = Some(w);
                self.watching = now;
            }
            Err(e) => log::debug!("rpmsg-port: cannot watch the stream: {e}"),
        }
    }
}

impl Drop for SimPortTransport {
    fn drop(&mut self) {
        self.watch.stop.store(true, Ordering::Release);
    }
}

impl fmt::Debug for SimPortTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimPortTransport")
            .field("port", &self.inner)
            .finish_non_exhaustive()
    }
}

impl RpmsgTransport for SimPortTransport {
    fn role(&self) -> &str {
        self.inner.role()
    }
    fn local_cpu(&self) -> LocalCpu {
        self.inner.local_cpu()
    }
    fn remote_cpu(&self) -> RemoteCpu {
        self.inner.remote_cpu()
    }
    fn features(&self) -> RpmsgFeatures {
        self.inner.features()
    }
    fn link_session(&self) -> Option<u32> {
        self.inner.link_session()
    }
    fn tx_buffer_size(&self) -> usize {
        self.inner.tx_buffer_size()
    }
    fn rx_buffer_size(&self) -> usize {
        self.inner.rx_buffer_size()
    }
    fn tx_region(&self) -> &Region {
        self.inner.tx_region()
    }
    fn rx_region(&self) -> &Region {
        self.inner.rx_region()
    }
    fn poll(&mut self) -> Result<(), TransportError> {
        self.watch.polls.fetch_add(1, Ordering::AcqRel);
        let now = Instant::now();
        let mut r = Ok(());
        if now >= self.next_tick {
            self.next_tick = now + TICK_PERIOD;
            r = self.inner.tick();
        }
        let p = self.inner.poll();
        self.refresh_waiter();
        r.and(p)
    }
    fn get_tx(&mut self) -> Result<Option<TxBuf>, TransportError> {
        self.inner.get_tx()
    }
    fn send(&mut self, buf: TxBuf, len: usize) -> Result<(), TransportError> {
        self.inner.send(buf, len)
    }
    fn release_tx(&mut self, buf: TxBuf) -> Result<(), TransportError> {
        self.inner.release_tx(buf)
    }
    fn recv(&mut self) -> Result<Option<RxBuf>, TransportError> {
        self.inner.recv()
    }
    fn release_rx(&mut self, buf: RxBuf) -> Result<(), TransportError> {
        self.inner.release_rx(buf)
    }
    fn buffer_stats(&self) -> BufferStats {
        self.inner.buffer_stats()
    }
    fn describe(&self, out: &mut dyn fmt::Write) -> fmt::Result {
        writeln!(out, "stream: {}", self.inner.io().describe())?;
        self.inner.describe(out)
    }
}

/// How long the watcher sleeps on the stream at a time (it then looks for
/// new descriptors and whether the node still runs).
const WATCH_SLICE: Duration = Duration::from_millis(100);
/// How long the watcher waits for the node to take the input it announced.
const TAKE_WAIT: Duration = Duration::from_millis(20);
/// Shortest time between two wake-ups (input the node cannot take yet,
/// such as a newcomer on the listener, must not make both threads spin).
const MIN_WAKE_GAP: Duration = Duration::from_micros(250);

fn watcher(watch: Arc<Watch>, node: NodeHandle) {
    let mut waiter: Option<StreamWaiter> = None;
    let mut last_wake = Instant::now();
    loop {
        if watch.stop.load(Ordering::Acquire) || node.is_finished() {
            return;
        }
        if let Some(w) = lock(&watch.next).take() {
            waiter = Some(w);
        }
        let Some(w) = waiter.as_mut() else {
            std::thread::sleep(WATCH_SLICE / 2);
            continue;
        };
        let start = Instant::now();
        w.wait_for(WATCH_SLICE);
        if start.elapsed() >= WATCH_SLICE {
            continue;
        }
        // Input (or a hang-up): let the node look, and wait (bounded) until
        // it did before watching again.
        let gap = last_wake.elapsed();
        if gap < MIN_WAKE_GAP {
            std::thread::sleep(MIN_WAKE_GAP - gap);
        }
        last_wake = Instant::now();
        let before = watch.polls.load(Ordering::Acquire);
        node.wake();
        let end = Instant::now() + TAKE_WAIT;
        while watch.polls.load(Ordering::Acquire) == before && Instant::now() < end {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}

/// A port link attached to a running node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortLink {
    /// The link on the node's bus.
    pub id: LinkId,
    /// The buffer size in bytes (port header included) of each direction.
    pub buffer_size: usize,
}

/// Adds an rpmsg-port link over `stream` to the running `node`'s bus, with
/// the cpu names `local` (this side) and `remote`, `buffers` buffers of
/// `buffer_size` bytes each way, and starts its watcher thread. The
/// handshake starts at once and repeats every 100 ms until the peer
/// answers.
pub fn attach(
    node: &NodeHandle,
    stream: SimStream,
    local: &str,
    remote: &str,
    buffers: usize,
    buffer_size: usize,
) -> Result<PortLink, SimPortError> {
    let l = LocalCpu::new(local).map_err(|_| SimPortError::BadName(local.into()))?;
    let r = RemoteCpu::new(remote).map_err(|_| SimPortError::BadName(remote.into()))?;
    let cfg = PortConfig::new(l, r)
        .buffers(buffers)
        .buffer_size(buffer_size);
    let t = SimPortTransport::new(stream, cfg)?;
    let watch = t.watch.clone();
    let id = node.call(move |n| n.add_link(Link::new(Box::new(t) as SimTransport)))?;
    let n2 = node.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("rptun-{remote}-watch"))
        .spawn(move || watcher(watch.clone(), n2));
    if let Err(e) = spawned {
        let _ = node.call(move |n| n.bus_mut().remove_link(id).map(drop));
        return Err(e.into());
    }
    node.wake();
    Ok(PortLink { id, buffer_size })
}
