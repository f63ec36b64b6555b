//! The simulator link as `rptun bench` drives it: a server (master, virtio
//! driver) and a proxy (remote, virtio device) over the NuttX simulator's
//! shared-memory object and its two doorbell counters, with the same stack a
//! user runs — remoteproc [`Instance`] (boot handshake, table assignment and
//! adoption, vdev transport, command mailbox), rpmsg-virtio, the rpmsg
//! [`Link`] and its services.
//!
//! This is a small bench-only runtime: the simulator runtime proper
//! (`rptun sim` / `rptun proxy`) replaces it once it lands, and the bench
//! then runs on that code path. What it does per doorbell is what a
//! runtime does: wait on the peer's counter (futex, or spin in poll mode),
//! let the instance handle the doorbell (command mailbox, vdev life cycle),
//! then poll the rpmsg link.
//!
//! The rpmsg vdev's factory hands the fresh rpmsg-virtio transport to the
//! node (it is not polled from inside the instance): the node owns the
//! [`Link`] and polls it after every doorbell.
//!
//! Measurements (each runs on the server; the proxy only serves):
//! - [`Node::ping_once`]: one rpmsg-ping round trip (the `rpmsg ping`
//!   service, request with ACK, echoed in full by the proxy's ping endpoint);
//! - [`Node::stream`]: one-way pipelined messages to the proxy's
//!   [`BENCH_EPT`] endpoint, written in place into TX buffers (zero copy),
//!   read out and checked by the proxy, which answers once at the end.

use crate::baseline::{Batcher, Timed};
use crate::doorbell::Doorbell as FutexBell;
use crate::sim::{boot, layout, table};
use rptun::remoteproc::addr::{AddrEnv, AddrEnvEntry, AddressMap, PhysMap};
use rptun::remoteproc::instance::{Event, Instance};
use rptun::remoteproc::mailbox::Command;
use rptun::remoteproc::platform::{
    Doorbell, LinkMap, Notify, Platform, PlatformError, RemoteCpuName, TableLocation,
};
use rptun::remoteproc::registry::{Registry, VirtioHandler};
use rptun::remoteproc::vdev::{VdevDevice, VdevDriver};
use rptun::rpmsg::services::ping::{self, PingParams};
use rptun::rpmsg::virtio::{
    RpmsgVirtioDevice, RpmsgVirtioDriver, RpmsgVirtioError, RpmsgVirtioOptions,
};
use rptun::rpmsg::{
    Clock, EndpointConfig, EndpointHandler, EndpointId, Link, LinkCtx, LocalCpu, Received,
    RemoteCpu, RpmsgTransport, Wait, ADDR_ANY,
};
use rptun::shm::Region;
use rptun::virtio::{id, VirtioError};
use rustix::thread::futex;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Name of the proxy's one-way sink endpoint (and the server's collector).
pub const BENCH_EPT: &str = "rptun-bench";

/// Errors of the bench link.
#[derive(Debug, thiserror::Error)]
pub enum BenchLinkError {
    /// Bringing the link up failed.
    #[error("bench link set-up failed: {0}")]
    Setup(String),
    /// The link did not come up or the peer stopped answering.
    #[error("bench link: {0}; is the peer process running?")]
    Timeout(&'static str),
    /// rpmsg failed.
    #[error("bench link: rpmsg: {0}")]
    Rpmsg(#[from] rptun::rpmsg::RpmsgError),
    /// The ping service failed.
    #[error("bench link: ping: {0}")]
    Ping(#[from] ping::PingError),
    /// The sink saw corrupted or missing messages.
    #[error("bench link: the proxy received {got} of {want} messages intact")]
    Corrupt {
        /// Messages received intact.
        got: u32,
        /// Messages sent.
        want: u32,
    },
}

/// How a side waits for the peer's doorbell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Sleep in a futex until rung (idle costs nothing); every ring wakes
    /// (the simulator's [`Doorbell`](crate::doorbell::Doorbell)).
    Blocking,
    /// Spin on the peer's counter (lowest latency, one busy core).
    Poll,
    /// Experiment (not what the simulator does): spin for
    /// [`ADAPTIVE_SPIN`], then sleep after raising an "asleep" flag in the
    /// object's 4 spare bytes; a ring wakes the peer only when its flag is
    /// up. Interop-safe: a NuttX peer never raises the flag (it polls) and
    /// never wakes us (we notice within the doorbell's 10 ms sleep).
    Adaptive,
}

impl Mode {
    /// "block", "poll" or "adaptive".
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Blocking => "block",
            Mode::Poll => "poll",
            Mode::Adaptive => "adaptive",
        }
    }

    /// Parses [`Mode::as_str`].
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "block" => Some(Mode::Blocking),
            "poll" => Some(Mode::Poll),
            "adaptive" => Some(Mode::Adaptive),
            _ => None,
        }
    }
}

/// How long an [`Mode::Adaptive`] wait spins before it sleeps.
pub const ADAPTIVE_SPIN: Duration = Duration::from_micros(20);

/// The "asleep" flags of [`Mode::Adaptive`]: the master's and the remote's
/// `u16` in the simulator object's 4 bytes of struct padding after the
/// rpmsg carveout.
const FLAG_MASTER: usize = layout::SHM_SIZE - 4;
const FLAG_REMOTE: usize = layout::SHM_SIZE - 2;

/// The counters of [`FutexBell`] plus "asleep" flags ([`Mode::Adaptive`]).
#[derive(Debug, Clone)]
struct FlagBell {
    region: Region,
    mine: usize,
    peer: usize,
    my_flag: usize,
    peer_flag: usize,
}

impl FlagBell {
    fn ring(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        let (Ok(c), Ok(f)) = (
            self.region.atomic_u32(self.mine),
            self.region.atomic_u16(self.peer_flag),
        ) else {
            return;
        };
        c.fetch_add(1, SeqCst);
        // Dekker with `wait`: counter then flag here, flag then counter there.
        if f.load(SeqCst) != 0 {
            let _ = futex::wake(c, futex::Flags::empty(), i32::MAX as u32);
        }
    }

    fn peer_seq(&self) -> u32 {
        self.region.load_u32(self.peer).unwrap_or(0)
    }

    fn wait(&self, seen: u32, timeout: Duration) -> u32 {
        use std::sync::atomic::Ordering::{Relaxed, SeqCst};
        let start = Instant::now();
        let (Ok(c), Ok(f)) = (
            self.region.atomic_u32(self.peer),
            self.region.atomic_u16(self.my_flag),
        ) else {
            std::thread::sleep(timeout);
            return seen;
        };
        loop {
            let v = c.load(SeqCst);
            if v != seen {
                return v;
            }
            let elapsed = start.elapsed();
            if elapsed >= timeout {
                return v;
            }
            if elapsed < ADAPTIVE_SPIN {
                std::hint::spin_loop();
                continue;
            }
            f.store(1, SeqCst);
            let v = c.load(SeqCst);
            if v != seen {
                f.store(0, Relaxed);
                return v;
            }
            let nap = (timeout - elapsed).min(Duration::from_millis(10));
            let ts = futex::Timespec {
                tv_sec: nap.as_secs() as _,
                tv_nsec: nap.subsec_nanos() as _,
            };
            let _ = futex::wait(c, futex::Flags::empty(), seen, Some(&ts));
            f.store(0, Relaxed);
        }
    }
}

/// This side's doorbell pair.
#[derive(Debug, Clone)]
enum Bell {
    Futex(FutexBell),
    Flagged(FlagBell),
}

impl Bell {
    fn new(region: &Region, master: bool, mode: Mode) -> Bell {
        let (mine, peer) = if master {
            (layout::SEQM, layout::SEQS)
        } else {
            (layout::SEQS, layout::SEQM)
        };
        match mode {
            Mode::Adaptive => {
                let (my_flag, peer_flag) = if master {
                    (FLAG_MASTER, FLAG_REMOTE)
                } else {
                    (FLAG_REMOTE, FLAG_MASTER)
                };
                Bell::Flagged(FlagBell {
                    region: region.clone(),
                    mine,
                    peer,
                    my_flag,
                    peer_flag,
                })
            }
            _ => Bell::Futex(FutexBell::new(
                region.clone(),
                mine,
                peer,
                mode == Mode::Poll,
            )),
        }
    }

    fn ring(&self) {
        match self {
            Bell::Futex(b) => b.ring(),
            Bell::Flagged(b) => b.ring(),
        }
    }

    fn peer_seq(&self) -> u32 {
        match self {
            Bell::Futex(b) => b.peer_seq(),
            Bell::Flagged(b) => b.peer_seq(),
        }
    }

    fn wait(&self, seen: u32, timeout: Duration) -> u32 {
        match self {
            Bell::Futex(b) => b.wait(seen, timeout),
            Bell::Flagged(b) => b.wait(seen, timeout),
        }
    }
}

/// Rings the peer: increments this side's counter (and wakes a sleeper).
#[derive(Debug, Clone)]
pub struct BellNotifier(Bell);

impl Notify for BellNotifier {
    fn notify(&self, _target: Doorbell) -> Result<(), PlatformError> {
        // One counter per direction: the peer services every vring.
        self.0.ring();
        Ok(())
    }
}

/// The simulator platform of one side (NuttX `sim_rptun.c`).
struct SimPlatform {
    master: bool,
    region: Region,
    notifier: BellNotifier,
    table: Vec<u8>,
    timeout: Duration,
}

impl Platform for SimPlatform {
    type Notifier = BellNotifier;

    fn remote_cpu(&self) -> RemoteCpuName {
        RemoteCpuName::new(if self.master { "proxy" } else { "server" })
            .unwrap_or_else(|_| unreachable_name())
    }

    fn is_master(&self) -> bool {
        self.master
    }

    fn region(&self) -> Region {
        self.region.clone()
    }

    fn resource_table(&mut self) -> Result<TableLocation, PlatformError> {
        let r = &self.region;
        if self.master {
            boot::master_publish(r, &self.table, layout::DEFAULT_BASE)
                .map_err(|_| PlatformError::Failed("publish the resource table"))?;
        } else {
            boot::remote_boot(r, self.timeout, || true)
                .map_err(|_| PlatformError::Timeout("master boot"))?;
        }
        Ok(TableLocation {
            offset: layout::RSC,
            max_len: layout::SHM_SIZE - layout::RSC,
        })
    }

    fn address_map(&self) -> Result<LinkMap, PlatformError> {
        let base = self
            .region
            .read_u64(layout::BASE)
            .map_err(|_| PlatformError::Failed("read the base"))?;
        let len = layout::SHM_SIZE;
        let env = AddrEnv::from_entries(&[AddrEnvEntry {
            pa: base,
            da: 0,
            size: len as u64,
        }])
        .map_err(|_| PlatformError::Failed("build the address environment"))?;
        let phys =
            PhysMap::new(base, len).map_err(|_| PlatformError::Failed("place the region"))?;
        Ok(AddressMap::new(env, phys))
    }

    fn start(&mut self) -> Result<(), PlatformError> {
        if self.master {
            boot::master_wait_remote(&self.region, self.timeout, || true)
                .map_err(|_| PlatformError::Timeout("remote boot"))?;
        }
        Ok(())
    }

    fn stop(&mut self) -> Result<(), PlatformError> {
        if self.master {
            // The proxy is another process: ask it through the mailbox.
            Err(PlatformError::Unsupported("stop"))
        } else {
            Ok(())
        }
    }

    fn notifier(&self) -> BellNotifier {
        self.notifier.clone()
    }
}

fn unreachable_name() -> RemoteCpuName {
    // "proxy" and "server" are valid names; keep the path total anyway.
    RemoteCpuName::new("peer").expect("a valid constant name")
}

/// Where the rpmsg vdev's factory leaves a fresh transport for the node.
enum Handoff<T> {
    Empty,
    Up(T),
    Down,
}

type Slot<T> = Arc<Mutex<Handoff<T>>>;

/// Set when the peer sent STOP through the command mailbox.
type StopFlag = Arc<Mutex<bool>>;

/// The vdev handler: the transport went to the node; removal tells it.
struct Handed<T> {
    slot: Slot<T>,
}

impl<T: Send> VirtioHandler for Handed<T> {
    fn notify(&mut self, _queue: u16) {}

    fn remove(&mut self) {
        if let Ok(mut s) = self.slot.lock() {
            *s = Handoff::Down;
        }
    }
}

fn rpmsg_error(e: RpmsgVirtioError) -> VirtioError {
    match e {
        RpmsgVirtioError::Virtio(v) => v,
        _ => VirtioError::Protocol("rpmsg-virtio set-up failed (see the log)"),
    }
}

/// The server's rpmsg transport.
pub type ServerTransport = RpmsgVirtioDriver<VdevDriver<BellNotifier>>;
/// The proxy's rpmsg transport.
pub type ProxyTransport = RpmsgVirtioDevice<VdevDevice<BellNotifier>>;

/// The `rptun-bench` endpoint: on the proxy it checks the stream and answers
/// `{count, errors}` after the last message; on the server it records that
/// answer.
#[derive(Debug, Default)]
pub struct BenchSink {
    count: u32,
    errors: u32,
    buf: Vec<u8>,
    /// The proxy's answer, on the server.
    pub done: Option<(u32, u32)>,
    serve: bool,
}

impl BenchSink {
    /// A sink: `serve` on the receiving side (checks and answers), not on
    /// the sending side (records the answer).
    pub fn new(serve: bool) -> BenchSink {
        BenchSink {
            buf: vec![0; 2048],
            serve,
            ..BenchSink::default()
        }
    }
}

impl<T: RpmsgTransport + 'static> EndpointHandler<T> for BenchSink {
    fn on_message(&mut self, ctx: &mut LinkCtx<'_, T>, msg: Received<'_>) {
        let len = msg.len().min(self.buf.len());
        if len < 8 || msg.read(0, &mut self.buf[..len]).is_err() {
            self.errors += 1;
            return;
        }
        let w0 = u32::from_le_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
        let w1 = u32::from_le_bytes([self.buf[4], self.buf[5], self.buf[6], self.buf[7]]);
        if !self.serve {
            self.done = Some((w0, w1));
            return;
        }
        // A stream message: w0 = sequence number, w1 = total.
        if w0 == self.count {
            self.count += 1;
        } else {
            self.errors += 1;
        }
        if w0.wrapping_add(1) == w1 {
            let mut answer = [0u8; 8];
            answer[..4].copy_from_slice(&self.count.to_le_bytes());
            answer[4..].copy_from_slice(&self.errors.to_le_bytes());
            if let Err(e) = ctx.reply(&msg, &answer) {
                log::warn!("bench sink: could not answer: {e}");
            }
            self.count = 0;
            self.errors = 0;
        }
    }
}

/// Longest stretch a poll-mode wait spins before it yields the cpu once.
const POLL_SLICE: Duration = Duration::from_micros(50);

/// Waits for the peer's counter to differ from `seen` (at most `timeout`).
/// In poll mode the wait spins, but yields the cpu every [`POLL_SLICE`]:
/// on a machine with more runnable threads than cores, a pure spin would
/// keep the peer from running for a whole scheduler slice.
fn wait_bell(bell: &Bell, poll: bool, seen: u32, timeout: Duration) -> u32 {
    if !poll {
        return bell.wait(seen, timeout);
    }
    let end = Instant::now() + timeout;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        let v = bell.wait(seen, left.min(POLL_SLICE));
        if v != seen || left <= POLL_SLICE {
            return v;
        }
        std::thread::yield_now();
    }
}

/// A [`Wait`] on the peer's doorbell counter that also lets the instance
/// handle each doorbell (mailbox, vdev life cycle), as a runtime does.
struct BellWait<'a, 'p> {
    bell: &'a Bell,
    poll: bool,
    pump: Option<&'a mut (dyn FnMut() + 'p)>,
    seen: &'a mut u32,
    instance: &'a mut Instance<SimPlatform>,
    origin: Instant,
}

impl Clock for BellWait<'_, '_> {
    fn now_ns(&mut self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }
}

impl Wait for BellWait<'_, '_> {
    fn wait_until(&mut self, deadline_ns: u64) {
        let now = match self.pump.as_mut() {
            // Both sides in one thread: let the peer run, then look.
            Some(pump) => {
                pump();
                self.bell.peer_seq()
            }
            None => {
                let left = deadline_ns.saturating_sub(self.now_ns());
                wait_bell(self.bell, self.poll, *self.seen, Duration::from_nanos(left))
            }
        };
        if now != *self.seen {
            *self.seen = now;
            self.instance.handle_doorbell(Doorbell::All);
        }
    }
}

/// One side of the simulator link.
pub struct Node<T: RpmsgTransport + Send + 'static> {
    instance: Instance<SimPlatform>,
    slot: Slot<T>,
    link: Option<Link<T>>,
    bell: Bell,
    poll: bool,
    seen: u32,
    origin: Instant,
    ping_ept: Option<EndpointId>,
    bench_ept: Option<EndpointId>,
    stop_asked: StopFlag,
}

fn opts(local: &str, remote: &str) -> Result<RpmsgVirtioOptions, BenchLinkError> {
    let bad = |e: rptun::rpmsg::NameError| BenchLinkError::Setup(e.to_string());
    Ok(RpmsgVirtioOptions::new(
        LocalCpu::new(local).map_err(bad)?,
        RemoteCpu::new(remote).map_err(bad)?,
    ))
}

fn instance(
    master: bool,
    region: &Region,
    mode: Mode,
    registry: Registry<BellNotifier>,
    timeout: Duration,
) -> Result<(Instance<SimPlatform>, Bell, StopFlag), BenchLinkError> {
    let bell = Bell::new(region, master, mode);
    let table = if master {
        table::build(&table::SimTableConfig::default())
            .map_err(|e| BenchLinkError::Setup(e.to_string()))?
    } else {
        Vec::new()
    };
    let platform = SimPlatform {
        master,
        region: region.clone(),
        notifier: BellNotifier(bell.clone()),
        table,
        timeout,
    };
    let mut inst = Instance::new(platform, registry);
    let stop = Arc::new(Mutex::new(false));
    let flag = stop.clone();
    inst.set_event_handler(move |e| {
        if let Event::Command(Command::Stop) = e {
            if let Ok(mut f) = flag.lock() {
                *f = true;
            }
        }
    });
    Ok((inst, bell, stop))
}

impl Node<ServerTransport> {
    /// The server (master) over `region` (a simulator shm object, e.g. a
    /// [`ShmObject`](crate::shm::ShmObject)'s): publishes the table, waits
    /// for the proxy's boot, starts the rpmsg driver, creates the ping and
    /// bench endpoints and waits until both are bound.
    pub fn server(
        region: &Region,
        mode: Mode,
        timeout: Duration,
    ) -> Result<Node<ServerTransport>, BenchLinkError> {
        let slot: Slot<ServerTransport> = Arc::new(Mutex::new(Handoff::Empty));
        let o = opts("server", "proxy")?;
        let s = slot.clone();
        let mut reg = Registry::new();
        reg.register_driver(id::RPMSG, move |t| {
            let drv = RpmsgVirtioDriver::start_new(t, o).map_err(|(e, _)| rpmsg_error(e))?;
            if let Ok(mut h) = s.lock() {
                *h = Handoff::Up(drv);
            }
            Ok(Box::new(Handed { slot: s.clone() }) as Box<dyn VirtioHandler>)
        });
        let (mut inst, bell, stop) = instance(true, region, mode, reg, timeout)?;
        let seen = bell.peer_seq();
        inst.start()
            .map_err(|e| BenchLinkError::Setup(e.to_string()))?;
        let mut node = Node {
            instance: inst,
            slot,
            link: None,
            bell,
            poll: mode == Mode::Poll,
            seen,
            origin: Instant::now(),
            ping_ept: None,
            bench_ept: None,
            stop_asked: stop,
        };
        node.take_link();
        node.add_endpoints(false)?;
        node.wait_bound(timeout)?;
        Ok(node)
    }

    /// One rpmsg-ping round trip of `len` bytes (ping header included);
    /// returns nanoseconds.
    pub fn ping_once(&mut self, len: usize, timeout: Duration) -> Result<u64, BenchLinkError> {
        self.ping_once_with(len, timeout, None)
    }

    /// [`ping_once`](Self::ping_once), calling `pump` instead of waiting
    /// for the doorbell (both sides in one thread: `pump` services the
    /// proxy; see [`Node::service`]).
    pub fn ping_once_with(
        &mut self,
        len: usize,
        timeout: Duration,
        pump: Option<&mut dyn FnMut()>,
    ) -> Result<u64, BenchLinkError> {
        let ept = self
            .ping_ept
            .ok_or(BenchLinkError::Timeout("no ping endpoint"))?;
        let params = PingParams::new(1, len).ack(true).timeout(timeout);
        let (link, mut wait) = self.parts(pump)?;
        let report = ping::ping(link, ept, &params, &mut wait)?;
        Ok(report.min_ns)
    }

    /// Sends `msgs` one-way messages of `len` payload bytes to the proxy's
    /// sink, filling TX buffers in place, and waits for its answer; returns
    /// the timing from the first send to the answer (batches are timed on
    /// the sends).
    pub fn stream(
        &mut self,
        len: usize,
        msgs: u32,
        timeout: Duration,
    ) -> Result<Timed, BenchLinkError> {
        self.stream_with(len, msgs, timeout, None)
    }

    /// [`stream`](Self::stream), calling `pump` instead of waiting for the
    /// doorbell (both sides in one thread).
    pub fn stream_with(
        &mut self,
        len: usize,
        msgs: u32,
        timeout: Duration,
        pump: Option<&mut dyn FnMut()>,
    ) -> Result<Timed, BenchLinkError> {
        let ept = self
            .bench_ept
            .ok_or(BenchLinkError::Timeout("no bench endpoint"))?;
        let mut data = vec![0x5au8; len.max(8)];
        data[4..8].copy_from_slice(&msgs.to_le_bytes());
        let (link, mut wait) = self.parts(pump)?;
        if let Some(h) = link.handler_mut::<BenchSink>(ept) {
            h.done = None;
        }
        let mut clock = Batcher::start();
        for i in 0..msgs {
            let tx = link.get_tx(ept, &mut wait, timeout)?;
            data[..4].copy_from_slice(&i.to_le_bytes());
            if let Err(e) = tx.write(0, &data[..len]) {
                link.release_tx(tx)?;
                return Err(rptun::rpmsg::RpmsgError::from(e).into());
            }
            link.send_nocopy(tx, len)?;
            clock.tick();
        }
        let end = wait.now_ns() + timeout.as_nanos() as u64;
        loop {
            link.poll()?;
            if let Some((got, errors)) = link.handler::<BenchSink>(ept).and_then(|h| h.done) {
                let timed = clock.finish();
                if got != msgs || errors != 0 {
                    return Err(BenchLinkError::Corrupt { got, want: msgs });
                }
                return Ok(timed);
            }
            if wait.now_ns() >= end {
                return Err(BenchLinkError::Timeout(
                    "the proxy did not answer the stream",
                ));
            }
            wait.wait_until(end);
        }
    }

    /// Stops the link; the proxy is told through the command mailbox.
    pub fn stop(mut self) -> Result<(), BenchLinkError> {
        self.link = None;
        self.instance
            .stop()
            .map_err(|e| BenchLinkError::Setup(e.to_string()))?;
        // Wait (briefly) for the proxy's ACK so it sees STOP before we go.
        let end = Instant::now() + Duration::from_secs(2);
        let bell = self.bell.clone();
        let _ = self.instance.wait_command_ack(|| {
            bell.wait(bell.peer_seq(), Duration::from_millis(1));
            Instant::now() < end
        });
        Ok(())
    }
}

impl Node<ProxyTransport> {
    /// The proxy (remote): boots against the server, adopts its table,
    /// attaches the rpmsg device once the driver is ready, and offers the
    /// ping and bench endpoints.
    pub fn proxy(
        region: &Region,
        mode: Mode,
        timeout: Duration,
    ) -> Result<Node<ProxyTransport>, BenchLinkError> {
        let slot: Slot<ProxyTransport> = Arc::new(Mutex::new(Handoff::Empty));
        let o = opts("proxy", "server")?;
        let s = slot.clone();
        let mut reg = Registry::new();
        reg.register_device(id::RPMSG, move |t| {
            let dev = RpmsgVirtioDevice::new(t, o);
            if let Ok(mut h) = s.lock() {
                *h = Handoff::Up(dev);
            }
            Ok(Box::new(Handed { slot: s.clone() }) as Box<dyn VirtioHandler>)
        });
        let (mut inst, bell, stop) = instance(false, region, mode, reg, timeout)?;
        let seen = bell.peer_seq();
        inst.start()
            .map_err(|e| BenchLinkError::Setup(e.to_string()))?;
        let mut node = Node {
            instance: inst,
            slot,
            link: None,
            bell,
            poll: mode == Mode::Poll,
            seen,
            origin: Instant::now(),
            ping_ept: None,
            bench_ept: None,
            stop_asked: stop,
        };
        // The driver may be ready already.
        node.service()?;
        Ok(node)
    }
}

impl<T: RpmsgTransport + Send + 'static> Node<T> {
    /// Picks up a transport the vdev factory handed over (or drops the link
    /// the instance removed), and creates this side's endpoints on a new one.
    fn take_link(&mut self) -> bool {
        let taken = match self.slot.lock() {
            // Moving the (large) transport out only when there is one: this
            // runs on every doorbell.
            Ok(s) if matches!(*s, Handoff::Empty) => return false,
            Ok(mut s) => std::mem::replace(&mut *s, Handoff::Empty),
            Err(_) => return false,
        };
        match taken {
            Handoff::Up(t) => {
                self.link = Some(Link::new(t));
                true
            }
            Handoff::Down => {
                self.link = None;
                self.ping_ept = None;
                self.bench_ept = None;
                false
            }
            Handoff::Empty => false,
        }
    }

    fn add_endpoints(&mut self, serve: bool) -> Result<(), BenchLinkError> {
        let Some(link) = self.link.as_mut() else {
            return Ok(());
        };
        self.ping_ept = Some(ping::create_endpoint(link)?);
        self.bench_ept =
            Some(link.create_endpoint(EndpointConfig::new(BENCH_EPT), BenchSink::new(serve))?);
        Ok(())
    }

    /// Handles a doorbell: the instance first (mailbox, vdev life cycle),
    /// then the rpmsg link until it has nothing more.
    pub fn service(&mut self) -> Result<(), BenchLinkError> {
        self.instance.handle_doorbell(Doorbell::All);
        if self.take_link() {
            self.add_endpoints(true)?;
        }
        if let Some(link) = self.link.as_mut() {
            for _ in 0..64 {
                if !link.poll()?.more {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Waits up to `timeout` for a doorbell and services it; true if one
    /// rang.
    pub fn run_once(&mut self, timeout: Duration) -> Result<bool, BenchLinkError> {
        let now = wait_bell(&self.bell, self.poll, self.seen, timeout);
        if now == self.seen {
            return Ok(false);
        }
        self.seen = now;
        self.service()?;
        Ok(true)
    }

    /// True once the peer sent STOP through the command mailbox.
    pub fn stop_requested(&self) -> bool {
        self.stop_asked.lock().map(|f| *f).unwrap_or(true)
    }

    /// True while the rpmsg link is up.
    pub fn is_up(&self) -> bool {
        self.link.as_ref().is_some_and(|l| l.is_up())
    }

    fn wait_bound(&mut self, timeout: Duration) -> Result<(), BenchLinkError> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(link) = self.link.as_mut() {
                link.poll()?;
            }
            let bound = |e: Option<EndpointId>| {
                e.and_then(|e| self.link.as_ref()?.endpoint(e))
                    .is_some_and(|i| i.dest != ADDR_ANY)
            };
            if bound(self.ping_ept) && bound(self.bench_ept) {
                return Ok(());
            }
            if Instant::now() >= end {
                return Err(BenchLinkError::Timeout(
                    "the proxy's endpoints did not bind in time",
                ));
            }
            self.run_once(Duration::from_millis(5))?;
        }
    }

    fn parts<'a, 'p>(
        &'a mut self,
        pump: Option<&'a mut (dyn FnMut() + 'p)>,
    ) -> Result<(&'a mut Link<T>, BellWait<'a, 'p>), BenchLinkError> {
        let link = self
            .link
            .as_mut()
            .ok_or(BenchLinkError::Timeout("the rpmsg link is down"))?;
        Ok((
            link,
            BellWait {
                bell: &self.bell,
                poll: self.poll,
                pump,
                seen: &mut self.seen,
                instance: &mut self.instance,
                origin: self.origin,
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(mode: Mode) {
        let region = Region::new_heap(layout::SHM_SIZE);
        let r2 = region.clone();
        let proxy = std::thread::spawn(move || {
            let mut p = Node::proxy(&r2, mode, Duration::from_secs(20)).unwrap();
            let end = Instant::now() + Duration::from_secs(60);
            while !p.stop_requested() && Instant::now() < end {
                p.run_once(Duration::from_millis(10)).unwrap();
            }
            assert!(p.stop_requested(), "the proxy never saw STOP");
        });
        let mut s = Node::server(&region, mode, Duration::from_secs(20)).unwrap();
        assert!(s.is_up());
        for len in [17, 496, 1520] {
            let t = s.ping_once(len, Duration::from_secs(10)).unwrap();
            assert!(t > 0);
        }
        s.stream(1520, 100, Duration::from_secs(10)).unwrap();
        s.stream(17, 1000, Duration::from_secs(10)).unwrap();
        s.stop().unwrap();
        proxy.join().unwrap();
    }

    #[test]
    fn ping_and_stream_over_the_simulator_layout_blocking() {
        pair(Mode::Blocking);
    }

    #[test]
    fn ping_and_stream_over_the_simulator_layout_polling() {
        pair(Mode::Poll);
    }

    #[test]
    fn ping_and_stream_over_the_simulator_layout_adaptive() {
        pair(Mode::Adaptive);
    }
}
