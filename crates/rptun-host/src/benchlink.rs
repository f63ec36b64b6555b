//! `rptun bench` over the simulator link: a thin driver over the simulator
//! runtime itself ([`crate::sim::node`]), so that the figures are those of
//! the stack `rptun sim` / `rptun proxy` run — the NuttX simulator's shm
//! layout, [`SimPlatform`](crate::sim::platform::SimPlatform), its adaptive
//! doorbell, the remoteproc instance, rpmsg-virtio and the rpmsg bus with
//! its services. Nothing here re-implements any of it; the bench adds one
//! rpmsg service ([`BenchService`], endpoint [`BENCH_EPT`]) to both nodes.
//!
//! - the proxy is a [`Node`] of role remote, run by [`NodeHandle::spawn`]
//!   (the simulator's own loop), in a child process;
//! - the server is a [`Node`] of role master, owned by the measuring thread
//!   ([`Server`]), which calls it directly:
//!   - [`Server::ping_once`]: [`Node::ping`] — `rpmsg ping proxy 1 <len> 1
//!     1` of the simulator's shell, request with ACK, echoed in full by the
//!     proxy's rpmsg-ping service;
//!   - [`Server::stream`]: one-way pipelined messages to the proxy's
//!     [`BENCH_EPT`], written in place into TX buffers (zero copy), checked
//!     by the proxy's sink, which answers once at the end.

use crate::baseline::{Batcher, Timed};
use crate::doorbell::Doorbell;
use crate::shm::ShmObject;
use crate::sim::node::{Node, NodeConfig, NodeError, NodeHooks, SimTransport};
use crate::sim::platform::SimBell;
use rptun::remoteproc::Role;
use rptun::rpmsg::services::ping::{self, PingParams, PING_EPT_NAME};
use rptun::rpmsg::{
    Clock, EndpointConfig, EndpointHandler, EndpointId, Link, LinkCtx, LinkId, Received,
    RpmsgTransport, Service, ServiceConfig, ServiceId, Wait, ADDR_ANY,
};
use std::time::{Duration, Instant};

pub use crate::sim::node::NodeHandle;

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

impl From<NodeError> for BenchLinkError {
    fn from(e: NodeError) -> Self {
        BenchLinkError::Setup(e.to_string())
    }
}

/// How a side waits for the peer's doorbell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The simulator's default: spin briefly, then sleep in a futex; a ring
    /// wakes the peer only when it sleeps (see [`crate::doorbell`]).
    Blocking,
    /// `--poll`: spin on the peer's counter (lowest latency, one busy core).
    Poll,
}

impl Mode {
    /// "block" or "poll".
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Blocking => "block",
            Mode::Poll => "poll",
        }
    }

    /// Parses [`Mode::as_str`].
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "block" => Some(Mode::Blocking),
            "poll" => Some(Mode::Poll),
            _ => None,
        }
    }
}

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

/// The rpmsg service that puts a [`BenchSink`] on every link of a node's
/// bus (both sides create [`BENCH_EPT`]; name service binds them).
#[derive(Debug, Default)]
pub struct BenchService {
    serve: bool,
    epts: Vec<(LinkId, EndpointId)>,
}

impl BenchService {
    /// The service: `serve` on the proxy (see [`BenchSink::new`]).
    pub fn new(serve: bool) -> BenchService {
        BenchService {
            serve,
            epts: Vec::new(),
        }
    }

    /// The sink's endpoint on link `lid`.
    pub fn endpoint(&self, lid: LinkId) -> Option<EndpointId> {
        self.epts.iter().find(|(l, _)| *l == lid).map(|&(_, e)| e)
    }
}

impl Service<SimTransport> for BenchService {
    fn device_created(&mut self, link: &mut Link<SimTransport>, id: LinkId) {
        match link.create_endpoint(EndpointConfig::new(BENCH_EPT), BenchSink::new(self.serve)) {
            Ok(e) => self.epts.push((id, e)),
            Err(e) => log::error!("{BENCH_EPT}: cannot create endpoint: {e}"),
        }
    }

    fn device_destroyed(&mut self, link: &mut Link<SimTransport>, id: LinkId) {
        self.epts.retain(|&(l, e)| {
            if l == id {
                let _ = link.destroy_endpoint(e);
            }
            l != id
        });
    }
}

/// The simulator's node configuration for a bench side.
pub fn config(role: Role, mode: Mode, timeout: Duration) -> NodeConfig {
    let mut cfg = NodeConfig::new(role);
    cfg.poll = mode == Mode::Poll;
    cfg.boot_timeout = timeout;
    cfg
}

/// A simulator node of `role` on `shm` with the bench service on its bus
/// (the proxy's serves, the server's collects). Not started.
pub fn node(
    role: Role,
    shm: ShmObject,
    mode: Mode,
    timeout: Duration,
) -> Result<(Node, ServiceId<BenchService>), BenchLinkError> {
    let mut node = Node::new(config(role, mode, timeout), NodeHooks::default(), shm)?;
    let svc = node.bus_mut().register(
        ServiceConfig::any(BENCH_EPT),
        BenchService::new(role == Role::Remote),
    );
    Ok((node, svc))
}

/// Waits on the server's doorbell (or, with both sides in one thread, runs
/// the proxy instead).
struct BenchWait<'a, 'p> {
    bell: &'a Doorbell,
    seen: u32,
    origin: Instant,
    pump: Option<&'a mut (dyn FnMut() + 'p)>,
}

impl Clock for BenchWait<'_, '_> {
    fn now_ns(&mut self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }
}

impl Wait for BenchWait<'_, '_> {
    fn wait_until(&mut self, deadline_ns: u64) {
        match self.pump.as_mut() {
            Some(pump) => pump(),
            None => {
                let left = deadline_ns.saturating_sub(self.now_ns());
                self.seen = self.bell.wait_once(self.seen, Duration::from_nanos(left));
            }
        }
    }
}

/// The server side: a master [`Node`] driven by the measuring thread.
pub struct Server {
    node: Node,
    bench: ServiceId<BenchService>,
    bell: Doorbell,
}

impl Server {
    /// The server on `shm` (a simulator object the proxy opens too): starts
    /// the link (the boot handshake waits up to `timeout` for the proxy)
    /// and waits until the proxy's ping and bench endpoints are bound.
    pub fn start(shm: ShmObject, mode: Mode, timeout: Duration) -> Result<Server, BenchLinkError> {
        let region = shm.region().clone();
        let (node, bench) = node(Role::Master, shm, mode, timeout)?;
        let cfg = node.config();
        // The node's own doorbell configuration, for the stream's waits.
        let bell = SimBell::new(region, Role::Master, cfg.poll, cfg.max_sleep)
            .doorbell()
            .clone();
        let mut s = Server { node, bench, bell };
        s.node.start_link().map_err(BenchLinkError::Setup)?;
        if !s.node.wait_until(timeout, bound) {
            return Err(BenchLinkError::Timeout(
                "the proxy's endpoints did not bind in time",
            ));
        }
        Ok(s)
    }

    /// The node.
    pub fn node_mut(&mut self) -> &mut Node {
        &mut self.node
    }

    /// One rpmsg-ping round trip of `len` bytes (ping header included), the
    /// simulator shell's `rpmsg ping`; returns nanoseconds.
    pub fn ping_once(&mut self, len: usize, timeout: Duration) -> Result<u64, BenchLinkError> {
        let params = PingParams::new(1, len).ack(true).timeout(timeout);
        let cpu = self.node.config().remote_name().to_string();
        let report = self
            .node
            .ping(&cpu, &params)
            .map_err(BenchLinkError::Setup)?;
        Ok(report.min_ns)
    }

    /// [`ping_once`](Self::ping_once) with both sides in one thread: the
    /// same ping on the same link, calling `pump` (which runs the proxy)
    /// instead of waiting for the doorbell.
    pub fn ping_once_pumped(
        &mut self,
        len: usize,
        timeout: Duration,
        pump: &mut dyn FnMut(),
    ) -> Result<u64, BenchLinkError> {
        let params = PingParams::new(1, len).ack(true).timeout(timeout);
        let lid = self.node.vdev_link();
        let link = self
            .node
            .bus_mut()
            .link_mut(lid)
            .ok_or(BenchLinkError::Timeout("the rpmsg link is gone"))?;
        let ept = link
            .find_endpoint(PING_EPT_NAME)
            .ok_or(BenchLinkError::Timeout("no ping endpoint"))?;
        let mut wait = BenchWait {
            bell: &self.bell,
            seen: 0,
            origin: Instant::now(),
            pump: Some(pump),
        };
        Ok(ping::ping(link, ept, &params, &mut wait)?.min_ns)
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
    /// doorbell when given (both sides in one thread).
    pub fn stream_with(
        &mut self,
        len: usize,
        msgs: u32,
        timeout: Duration,
        mut pump: Option<&mut dyn FnMut()>,
    ) -> Result<Timed, BenchLinkError> {
        let lid = self.node.vdev_link();
        let mut data = vec![0x5au8; len.max(8)];
        data[4..8].copy_from_slice(&msgs.to_le_bytes());
        let clock = {
            let (svc, link) = self
                .node
                .bus_mut()
                .service_and_link_mut(&self.bench, lid)
                .ok_or(BenchLinkError::Timeout("the rpmsg link is gone"))?;
            let ept = svc
                .endpoint(lid)
                .ok_or(BenchLinkError::Timeout("no bench endpoint"))?;
            if let Some(h) = link.handler_mut::<BenchSink>(ept) {
                h.done = None;
            }
            let mut wait = BenchWait {
                bell: &self.bell,
                seen: self.bell.peer_seq(),
                origin: Instant::now(),
                pump: pump.as_mut().map(|p| &mut **p as &mut dyn FnMut()),
            };
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
            clock
        };
        // The answer: the node's own loop body until the sink has it.
        let end = Instant::now() + timeout;
        loop {
            let seen = self.bell.peer_seq();
            self.node.step();
            let done = self
                .node
                .bus_mut()
                .service_and_link_mut(&self.bench, lid)
                .and_then(|(svc, link)| link.handler::<BenchSink>(svc.endpoint(lid)?)?.done);
            if let Some((got, errors)) = done {
                let timed = clock.finish();
                if got != msgs || errors != 0 {
                    return Err(BenchLinkError::Corrupt { got, want: msgs });
                }
                return Ok(timed);
            }
            let now = Instant::now();
            if now >= end {
                return Err(BenchLinkError::Timeout(
                    "the proxy did not answer the stream",
                ));
            }
            match pump.as_mut() {
                Some(p) => p(),
                None => {
                    self.bell.wait_once(seen, end - now);
                }
            }
        }
    }

    /// Stops the link (STOP through the command mailbox; waits briefly for
    /// the proxy's ACK).
    pub fn stop(mut self) -> Result<(), BenchLinkError> {
        self.node
            .stop_link(Duration::from_secs(2))
            .map_err(BenchLinkError::Setup)?;
        Ok(())
    }

    /// The node, for running it as the simulator does
    /// ([`NodeHandle::spawn`]).
    pub fn into_node(self) -> Node {
        self.node
    }
}

/// True when the peer's ping endpoint and bench endpoint are bound to ours.
fn bound(n: &Node) -> bool {
    let lid = n.vdev_link();
    let Some(link) = n.bus().link(lid) else {
        return false;
    };
    let is_bound = |e: Option<EndpointId>| {
        e.and_then(|e| link.endpoint(e))
            .is_some_and(|i| i.dest != ADDR_ANY)
    };
    link.is_up()
        && is_bound(link.find_endpoint(PING_EPT_NAME))
        && is_bound(link.find_endpoint(BENCH_EPT))
}

/// Runs the proxy as `rptun proxy` does (its node in the simulator's own
/// loop) until the server's shm object is removed, `stop()` says so, or
/// the node ends; `Ok` when the node ended by itself.
pub fn serve_proxy(
    shm: ShmObject,
    mode: Mode,
    timeout: Duration,
    mut stop: impl FnMut() -> bool,
) -> Result<(), BenchLinkError> {
    let (node, _) = node(Role::Remote, shm, mode, timeout)?;
    let h = NodeHandle::spawn(node)?;
    loop {
        if h.is_finished() {
            h.shutdown();
            return Ok(());
        }
        if stop() {
            h.shutdown();
            return Err(BenchLinkError::Timeout("the server went away"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(mode: Mode) {
        let name = format!(
            "rptun-benchlink-test-{}-{}",
            std::process::id(),
            mode.as_str()
        );
        let shm = ShmObject::open_or_create(&name, crate::sim::layout::SHM_SIZE).unwrap();
        let r = shm.region().clone();
        r.fill(0, r.len(), 0).unwrap();
        let theirs = ShmObject::open_existing(&name, crate::sim::layout::SHM_SIZE).unwrap();
        let proxy = std::thread::spawn(move || {
            let end = Instant::now() + Duration::from_secs(60);
            serve_proxy(theirs, mode, Duration::from_secs(20), || {
                Instant::now() > end
            })
        });
        let mut s = Server::start(shm, mode, Duration::from_secs(20)).unwrap();
        for len in [17, 496, 1520] {
            let t = s.ping_once(len, Duration::from_secs(10)).unwrap();
            assert!(t > 0);
        }
        s.stream(1520, 100, Duration::from_secs(10)).unwrap();
        s.stream(17, 1000, Duration::from_secs(10)).unwrap();
        s.stop().unwrap();
        // The proxy's node leaves when the object is removed, as `rptun
        // proxy` does when the server exits.
        crate::shm::unlink(&name).unwrap();
        proxy.join().unwrap().unwrap();
    }

    #[test]
    fn ping_and_stream_over_the_simulator_runtime_blocking() {
        pair(Mode::Blocking);
    }

    #[test]
    fn ping_and_stream_over_the_simulator_runtime_polling() {
        pair(Mode::Poll);
    }
}
