//! One running side of the simulator: the shm object, the remoteproc
//! [`Instance`] over [`SimPlatform`], the doorbell loop, and the rpmsg
//! [`Bus`] with its services — in one thread of its own.
//!
//! ```text
//!  shell / CLI thread ──NodeHandle::call(|node| ..)──▶ ┌──────────── node thread ─────────────┐
//!                                                     │ loop:                                 │
//!  peer process ── increments seqs/seqm, FUTEX_WAKE ─▶│   run queued calls                    │
//!                                                     │   boot words (NEED_RESET, BOOT)       │
//!                                                     │   instance.handle_doorbell(All)       │
//!                                                     │     rng / rpmsg vdev handlers         │
//!                                                     │   bus.poll_all() (ping, test, tty,    │
//!                                                     │     syslog services)                  │
//!                                                     │   sleep on the peer's counter (futex, │
//!                                                     │     at most max_sleep)                │
//!                                                     └───────────────────────────────────────┘
//! ```
//!
//! # Why the loop sleeps on a futex with a bounded timeout
//!
//! The doorbell of NuttX's simulator is a counter in the shared object that
//! the ringing side increments. Our peers also `FUTEX_WAKE` the counter, so
//! an idle node sleeps in `FUTEX_WAIT` and costs no CPU; a NuttX peer only
//! increments (it polls every tick), so every sleep is bounded by
//! [`NodeConfig::max_sleep`] (10 ms, NuttX's tick): such a peer is noticed
//! within that time. `--poll` ([`NodeConfig::poll`]) spins instead: lowest
//! latency, one busy core.
//!
//! # Roles (DESIGN.md §3)
//!
//! The server (master) is the virtio **driver** of all three vdevs of the
//! table (`reserved[0] = 0`): `/dev/random` (rng0) and `/dev/random1` (rng1)
//! read entropy from the proxy, and rpmsg0 is the virtio-rpmsg driver. The
//! proxy (remote) is the **device** side: it serves entropy from the OS and
//! is the vhost-rpmsg side.
//!
//! # Life cycle
//!
//! The master starts the link when a remote announced itself (`boots &
//! BOOT`), re-runs the boot when a restarted remote sets `NEED_RESET` in
//! `bootm`, and marks the link crashed when told the remote process died
//! ([`Node::peer_gone`]). The remote boots at once (waiting for a master as
//! long as it takes), follows `NEED_RESET` in `boots`, obeys the master's
//! mailbox commands (STOP and PANIC stop it, RESET reboots it), and leaves
//! when its shm object is unlinked (the server exited).
//!
//! # Adding a link
//!
//! The bus holds `Box<dyn RpmsgTransport + Send>` links: another transport
//! (rpmsg over a byte stream, say) joins with [`Node::add_link`] (through
//! [`NodeHandle::call`]) and is polled by the same loop with the same
//! services. The loop sleeps on the shared-memory doorbell, so such a
//! transport calls [`NodeHandle::wake`] when its data arrives (otherwise an
//! idle node looks at it every 100 ms).
#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rptun::devices::rng::{RngDevice, RngDriver};
use rptun::devices::DeviceError;
use rptun::remoteproc::instance::{Event, Instance, InstanceError, State, VdevState};
use rptun::remoteproc::mailbox::Command;
use rptun::remoteproc::platform::{Doorbell as Target, PlatformError, RemoteCpuName};
use rptun::remoteproc::registry::{Registry, VirtioHandler};
use rptun::remoteproc::vdev::{VdevDevice, VdevDriver};
use rptun::remoteproc::Role;
use rptun::rpmsg::services::ping::{ping, PingError, PingParams, PingReport, PingService};
use rptun::rpmsg::services::test::{send_hold_rx, TestService};
use rptun::rpmsg::virtio::{RpmsgVirtioError, RpmsgVirtioOptions};
use rptun::rpmsg::wait::{Clock, Wait};
use rptun::rpmsg::{
    Bus, Link, LinkId, LocalCpu, RemoteCpu, RpmsgError, RpmsgTransport, ServiceConfig, ServiceId,
    ADDR_ANY,
};
use rptun::shm::Region;
use rptun::virtio::{id, VirtioError};

use super::boot::take_need_reset;
use super::layout::{BASE, BOOT, BOOTM, BOOTS, NEED_RESET, OK, SEQM, SEQS};
use super::platform::{KeepGoing, RemoteRunner, SimBell, SimPlatform};
use super::rpmsg_slot::{Seated, SimRpmsgDevice, SimRpmsgDriver, SlotHandle, SlotTransport};
use super::syslog::{SyslogClient, SyslogQueue, SyslogServer, SyslogSink};
use super::table::{self, SimTableConfig};
use super::tty::{self, TtyService, TtySink};
use crate::doorbell::Doorbell;
use crate::entropy::GetrandomSource;
use crate::shm::ShmObject;

/// A link's transport on the node's bus.
pub type SimTransport = Box<dyn RpmsgTransport + Send>;
/// The node's bus.
pub type SimBus = Bus<SimTransport>;
/// The server's virtio-rng driver over a remoteproc vdev.
pub type SimRngDriver = RngDriver<VdevDriver<SimBell>, 8>;

/// How a node runs.
#[derive(Clone)]
pub struct NodeConfig {
    /// Master (the server) or remote (the proxy).
    pub role: Role,
    /// Cpu names and rpmsg config-space layout.
    pub names: SimTableConfig,
    /// Spin on the doorbell instead of sleeping.
    pub poll: bool,
    /// Longest sleep on the doorbell (bounds how late an increment-only peer
    /// is noticed).
    pub max_sleep: Duration,
    /// How long the master waits for a remote's BOOT once it starts the link
    /// (the remote waits for a master as long as it runs).
    pub boot_timeout: Duration,
    /// Set from outside (Ctrl-C): blocking work gives up at once.
    pub interrupt: Arc<AtomicBool>,
}

impl std::fmt::Debug for NodeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeConfig")
            .field("role", &self.role)
            .field("names", &self.names)
            .field("poll", &self.poll)
            .finish_non_exhaustive()
    }
}

impl NodeConfig {
    /// Defaults for `role`: cpus "server" and "proxy", current config
    /// layout, 10 ms sleeps, 5 s boot timeout.
    pub fn new(role: Role) -> NodeConfig {
        NodeConfig {
            role,
            names: SimTableConfig::default(),
            poll: false,
            max_sleep: Duration::from_millis(10),
            boot_timeout: Duration::from_secs(5),
            interrupt: Arc::new(AtomicBool::new(false)),
        }
    }

    /// This side's cpu name.
    pub fn local_name(&self) -> &str {
        match self.role {
            Role::Master => &self.names.host,
            Role::Remote => &self.names.remote,
        }
    }

    /// The other side's cpu name.
    pub fn remote_name(&self) -> &str {
        match self.role {
            Role::Master => &self.names.remote,
            Role::Remote => &self.names.host,
        }
    }
}

/// Where a node's services deliver what they receive.
#[derive(Default, Clone)]
pub struct NodeHooks {
    /// Bytes arriving on the rpmsg tty (`/dev/tty<proxy>`).
    pub tty_sink: Option<TtySink>,
    /// Server: lines of the remote's syslog.
    pub syslog_sink: Option<SyslogSink>,
    /// Proxy: lines to send to the server's syslog.
    pub syslog_queue: Option<Arc<SyslogQueue>>,
}

/// Errors setting a node up.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A cpu name does not fit.
    #[error("bad cpu name `{0}`: use 1 to 7 ASCII characters without NUL")]
    BadName(String),
    /// The table could not be built.
    #[error(transparent)]
    Table(#[from] table::SimTableError),
    /// The shm object is smaller than the simulator's layout.
    #[error(
        "the shm object is {0} bytes; the simulator needs {size} (open it with \
         ShmObject::open_or_create(name, SHM_SIZE))",
        size = super::layout::SHM_SIZE
    )]
    ShmSize(usize),
    /// The node thread could not be started.
    #[error("cannot start the node thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// One link of a node's bus, for listings (`rpmsg ping all`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    /// The link.
    pub id: LinkId,
    /// Its remote cpu.
    pub cpu: String,
    /// Its transport's role (`virtio driver`, `virtio device`, `port`).
    pub role: String,
    /// Whether the link is up.
    pub up: bool,
    /// Up, and the peer's rpmsg-ping endpoint bound to ours.
    pub ready: bool,
}

/// Why `rpmsg test` does not run over an rpmsg-port link.
pub const PORT_TEST_NOTE: &str = "the hold-rx test needs the sender's TX buffers bounded by the \
     peer's RX buffers; an rpmsg-port link frees a TX buffer once it is written to the stream, \
     so the test would overrun the peer's RX buffers and stall the link";

/// Per vdev index, the server's rng driver (shared with its vdev handler).
type RngSeats = Arc<Mutex<Vec<Option<SimRngDriver>>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn device_error(e: DeviceError) -> VirtioError {
    match e {
        DeviceError::Virtio(v) => v,
        DeviceError::Gone => VirtioError::Gone,
        _ => VirtioError::Protocol("virtio device set-up failed (see the log)"),
    }
}

fn rpmsg_error(e: RpmsgVirtioError) -> VirtioError {
    match e {
        RpmsgVirtioError::Virtio(v) => v,
        _ => VirtioError::Protocol("rpmsg-virtio set-up failed (see the log)"),
    }
}

/// The vdev handler of an rng driver: the driver itself sits in the node's
/// seats, where `hexdump /dev/random` reaches it.
struct RngVdev {
    seats: RngSeats,
    index: usize,
}

impl VirtioHandler for RngVdev {
    fn notify(&mut self, _queue: u16) {}
    fn remove(&mut self) {
        if let Some(d) = lock(&self.seats).get_mut(self.index).and_then(Option::take) {
            d.shutdown();
        }
    }
}

/// The vdev handler of an rng device: serves requests when the driver
/// published new ones (the instance calls `notify` when the avail index
/// moved; also right after activation). Not on every doorbell: the
/// simulator's doorbell rings "all vrings", and looking at this queue on
/// each one was a tenth of an rpmsg round trip.
struct RngServe {
    dev: RngDevice<VdevDevice<SimBell>, GetrandomSource>,
    index: usize,
}

impl RngServe {
    fn serve(&mut self) {
        match self.dev.poll() {
            Ok(_) | Err(DeviceError::Reset) => {}
            Err(e) => log::warn!("virtio-rng device (vdev {}): {e}", self.index),
        }
    }
}

impl VirtioHandler for RngServe {
    fn notify(&mut self, _queue: u16) {
        self.serve();
    }
}

/// The vdev handler of rpmsg-virtio: the instance sits in the bus link's
/// seat, polled by the node loop.
struct RpmsgVdev {
    slot: SlotHandle,
}

impl VirtioHandler for RpmsgVdev {
    fn notify(&mut self, _queue: u16) {}
    fn remove(&mut self) {
        self.slot.remove();
    }
}

/// Waits on the doorbell for blocking rpmsg calls (ping, send), on a real
/// clock; an interrupt makes every deadline pass at once.
struct NodeWait {
    bell: Doorbell,
    start: Instant,
    seen: u32,
    interrupt: Arc<AtomicBool>,
}

impl Clock for NodeWait {
    fn now_ns(&mut self) -> u64 {
        let t = self
            .start
            .elapsed()
            .as_nanos()
            .min(u128::from(u64::MAX >> 2)) as u64;
        if self.interrupt.load(Ordering::Relaxed) {
            t.saturating_add(1 << 62)
        } else {
            t
        }
    }
}

impl Wait for NodeWait {
    fn wait_until(&mut self, deadline_ns: u64) {
        let now = self.now_ns();
        if now >= deadline_ns {
            return;
        }
        self.seen = self
            .bell
            .wait_once(self.seen, Duration::from_nanos(deadline_ns - now));
    }
}

/// One running side of the simulator (see the module docs). Reached from
/// other threads through a [`NodeHandle`].
pub struct Node {
    cfg: NodeConfig,
    shm: ShmObject,
    region: Region,
    bell: SimBell,
    instance: Instance<SimPlatform>,
    events: Receiver<Event>,
    bus: SimBus,
    link: LinkId,
    rngs: RngSeats,
    ping: ServiceId<PingService>,
    test: ServiceId<TestService>,
    tty: ServiceId<TtyService>,
    cancel: Arc<AtomicBool>,
    exit: Option<String>,
    next_auto_start: Instant,
    last_linked_check: Instant,
    /// The links that were ready (up, ping endpoint bound) last we looked.
    ready_links: Vec<LinkId>,
    /// The bus's link ids, refreshed on every step (kept: no allocation).
    link_ids: Vec<LinkId>,
    /// When the loop body verifies the resource table next (see
    /// [`TABLE_CHECK_PERIOD`]).
    next_table_check: Instant,
}

/// How often the loop body verifies the resource table against the digest
/// taken when it was validated (a peer that rewrites it takes the link down
/// within about this long). Between these the instance verifies it on every
/// [`TABLE_CHECK_DOORBELLS`]-th doorbell and after every link event
/// ([`Instance::set_table_check_every`]); verifying it on every doorbell
/// cost about a tenth of a round trip.
pub const TABLE_CHECK_PERIOD: Duration = Duration::from_millis(2);

/// See [`TABLE_CHECK_PERIOD`].
pub const TABLE_CHECK_DOORBELLS: u32 = 256;

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("cfg", &self.cfg)
            .field("shm", &self.shm.name())
            .field("state", &self.instance.state())
            .finish_non_exhaustive()
    }
}

impl Node {
    /// A node of `cfg.role` on `shm` (which must be
    /// [`SHM_SIZE`](super::layout::SHM_SIZE) bytes). Nothing runs before
    /// [`NodeHandle::spawn`].
    pub fn new(cfg: NodeConfig, hooks: NodeHooks, shm: ShmObject) -> Result<Node, NodeError> {
        let role = cfg.role;
        let region = shm.region().clone();
        if region.len() < super::layout::SHM_SIZE {
            return Err(NodeError::ShmSize(region.len()));
        }
        let bell = SimBell::new(region.clone(), role, cfg.poll, cfg.max_sleep);
        let bad = |n: &str| NodeError::BadName(n.to_string());
        let local = LocalCpu::new(cfg.local_name()).map_err(|_| bad(cfg.local_name()))?;
        let remote = RemoteCpu::new(cfg.remote_name()).map_err(|_| bad(cfg.remote_name()))?;
        let remote_rp =
            RemoteCpuName::new(cfg.remote_name()).map_err(|_| bad(cfg.remote_name()))?;
        let cancel = Arc::new(AtomicBool::new(false));
        let keep_going: KeepGoing = {
            let cancel = cancel.clone();
            let interrupt = cfg.interrupt.clone();
            let identity = shm.identity();
            let checked = Mutex::new(Instant::now());
            Arc::new(move || {
                if cancel.load(Ordering::Acquire) || interrupt.load(Ordering::Acquire) {
                    return false;
                }
                // A remote waiting for its master gives up when the object
                // it waits in was removed (the server exited).
                let mut last = lock(&checked);
                if role == Role::Remote && last.elapsed() > Duration::from_millis(200) {
                    *last = Instant::now();
                    return identity.still_linked();
                }
                true
            })
        };
        let platform = match role {
            Role::Master => SimPlatform::master(
                region.clone(),
                table::build(&cfg.names)?,
                remote_rp,
                bell.clone(),
                cfg.boot_timeout,
                keep_going,
            ),
            Role::Remote => SimPlatform::remote(
                region.clone(),
                remote_rp,
                bell.clone(),
                Duration::from_secs(1),
                keep_going,
            ),
        };
        let options = RpmsgVirtioOptions::new(local, remote).layout(cfg.names.layout);
        let (slot_t, slot) = SlotTransport::new(
            match role {
                Role::Master => "virtio driver",
                Role::Remote => "virtio device",
            },
            local,
            remote,
            region.clone(),
        );
        let rngs: RngSeats = Arc::new(Mutex::new(Vec::new()));
        let mut reg: Registry<SimBell> = Registry::new();
        match role {
            Role::Master => {
                let seats = rngs.clone();
                reg.register_driver(id::ENTROPY, move |t| {
                    let index = t.info().index;
                    let d = SimRngDriver::new(t).map_err(|e| {
                        log::warn!("virtio-rng driver (vdev {index}) failed to start: {e}");
                        device_error(e)
                    })?;
                    let mut s = lock(&seats);
                    if s.len() <= index {
                        s.resize_with(index + 1, || None);
                    }
                    s[index] = Some(d);
                    Ok(Box::new(RngVdev {
                        seats: seats.clone(),
                        index,
                    }) as Box<dyn VirtioHandler>)
                });
                let slot = slot.clone();
                reg.register_driver(id::RPMSG, move |t| {
                    match SimRpmsgDriver::start_new(t, options) {
                        Ok(d) => {
                            slot.install(Seated::Driver(Box::new(d)));
                            Ok(Box::new(RpmsgVdev { slot: slot.clone() })
                                as Box<dyn VirtioHandler>)
                        }
                        Err((e, _t)) => {
                            log::warn!("rpmsg-virtio driver failed to start: {e}");
                            Err(rpmsg_error(e))
                        }
                    }
                });
            }
            Role::Remote => {
                reg.register_device(id::ENTROPY, |t| {
                    let index = t.info().index;
                    let dev = RngDevice::new(t, GetrandomSource::new()).map_err(device_error)?;
                    Ok(Box::new(RngServe { dev, index }) as Box<dyn VirtioHandler>)
                });
                let slot = slot.clone();
                reg.register_device(id::RPMSG, move |t| {
                    slot.install(Seated::Device(Box::new(SimRpmsgDevice::new(t, options))));
                    Ok(Box::new(RpmsgVdev { slot: slot.clone() }) as Box<dyn VirtioHandler>)
                });
            }
        }
        let mut instance = Instance::new(platform, reg);
        // Verified on the clock in `step` (and every so many doorbells).
        instance.set_table_check_every(TABLE_CHECK_DOORBELLS);
        let (ev_tx, events) = channel();
        instance.set_event_handler(move |e| {
            let _ = ev_tx.send(*e);
        });

        let mut bus: SimBus = Bus::new();
        let link = bus.add_link(Link::new(Box::new(slot_t) as SimTransport));
        let ping = bus.register(ServiceConfig::any("rpmsg-ping"), PingService::new());
        let test = bus.register(ServiceConfig::any("rpmsg-test"), TestService::new());
        let tty_sink: TtySink = hooks.tty_sink.unwrap_or_else(|| Arc::new(|_: &[u8]| {}));
        // NuttX names the tty after the proxy on both sides: rpmsg-ttyproxy.
        let tty = bus.register(
            ServiceConfig::any("rpmsg-tty"),
            TtyService::new(&cfg.names.remote, tty_sink),
        );
        match role {
            Role::Master => {
                let sink = hooks.syslog_sink.unwrap_or_else(|| {
                    Arc::new(|cpu: &str, line: &str| log::info!("[{cpu}] {line}"))
                });
                bus.register(
                    ServiceConfig::any("rpmsg-syslog server"),
                    SyslogServer::new(sink),
                );
            }
            Role::Remote => {
                if let Some(q) = hooks.syslog_queue {
                    bus.register(
                        ServiceConfig::any("rpmsg-syslog client"),
                        // Over the shared-memory link only: one way per line.
                        SyslogClient::new(q).only_on(link),
                    );
                }
            }
        }
        Ok(Node {
            cfg,
            shm,
            region,
            bell,
            instance,
            events,
            bus,
            link,
            rngs,
            ping,
            test,
            tty,
            cancel,
            exit: None,
            next_auto_start: Instant::now(),
            last_linked_check: Instant::now(),
            link_ids: Vec::new(),
            next_table_check: Instant::now(),
            ready_links: Vec::new(),
        })
    }

    /// Master: the remote is run by `runner` (QEMU booting the rptun
    /// firmware, see [`crate::ivshmem`]): [`start_link`](Node::start_link)
    /// starts it, [`stop_link`](Node::stop_link) stops it, and the node
    /// marks the link crashed when it exits.
    pub fn set_runner(&mut self, runner: Box<dyn RemoteRunner>) {
        self.instance.platform_mut().set_runner(runner);
    }

    // ------------------------------------------------------------- accessors

    /// The configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.cfg
    }

    /// Master or remote.
    pub fn role(&self) -> Role {
        self.cfg.role
    }

    /// The shm object.
    pub fn shm(&self) -> &ShmObject {
        &self.shm
    }

    /// The remoteproc instance.
    pub fn instance(&self) -> &Instance<SimPlatform> {
        &self.instance
    }

    /// The remoteproc instance, mutably (after changing its state, the next
    /// loop iteration polls the bus).
    pub fn instance_mut(&mut self) -> &mut Instance<SimPlatform> {
        &mut self.instance
    }

    /// The rpmsg bus.
    pub fn bus(&self) -> &SimBus {
        &self.bus
    }

    /// The rpmsg bus, mutably.
    pub fn bus_mut(&mut self) -> &mut SimBus {
        &mut self.bus
    }

    /// The bus link carried by the remoteproc rpmsg vdev.
    pub fn vdev_link(&self) -> LinkId {
        self.link
    }

    /// Adds another link (e.g. rpmsg over a byte stream) to the bus; the
    /// node loop polls it with the others and the services attach to it.
    pub fn add_link(&mut self, link: Link<SimTransport>) -> LinkId {
        self.bus.add_link(link)
    }

    /// The remote cpu names of every link on the bus.
    pub fn cpus(&self) -> Vec<String> {
        self.bus
            .link_ids()
            .into_iter()
            .filter_map(|l| self.bus.link(l).map(|l| l.remote_cpu().to_string()))
            .collect()
    }

    /// The remoteproc life-cycle state.
    pub fn state(&self) -> State {
        self.instance.state()
    }

    /// True when the rpmsg link to the remote is up and the peer answered
    /// the name service (its rpmsg-ping endpoint is bound to ours).
    pub fn peer_ready(&self) -> bool {
        self.link_ready(self.link)
    }

    /// True when link `lid` is up and the peer's rpmsg-ping endpoint is
    /// bound to ours.
    pub fn link_ready(&self, lid: LinkId) -> bool {
        let Some(link) = self.bus.link(lid) else {
            return false;
        };
        let Some(svc) = self.bus_service_endpoint(lid) else {
            return false;
        };
        link.is_up() && link.endpoint(svc).is_some_and(|e| e.dest != ADDR_ANY)
    }

    /// Every link on the bus, in the order they were added (the
    /// shared-memory link first).
    pub fn links(&self) -> Vec<LinkInfo> {
        self.bus
            .link_ids()
            .into_iter()
            .filter_map(|id| {
                let l = self.bus.link(id)?;
                Some(LinkInfo {
                    id,
                    cpu: l.remote_cpu().to_string(),
                    role: l.transport().role().to_string(),
                    up: l.is_up(),
                    ready: self.link_ready(id),
                })
            })
            .collect()
    }

    fn bus_service_endpoint(&self, lid: LinkId) -> Option<rptun::rpmsg::EndpointId> {
        let link = self.bus.link(lid)?;
        link.find_endpoint(rptun::rpmsg::services::ping::PING_EPT_NAME)
    }

    fn wait(&self) -> NodeWait {
        NodeWait {
            bell: self.bell.doorbell().clone(),
            start: Instant::now(),
            seen: self.bell.doorbell().peer_seq(),
            interrupt: self.cfg.interrupt.clone(),
        }
    }

    /// Waits (servicing the link) until `done` or `timeout`; true if done.
    pub fn wait_until(&mut self, timeout: Duration, mut done: impl FnMut(&Node) -> bool) -> bool {
        let end = Instant::now() + timeout;
        loop {
            let seen = self.bell.doorbell().peer_seq();
            self.step();
            if done(self) {
                return true;
            }
            let now = Instant::now();
            if now >= end || self.cfg.interrupt.load(Ordering::Relaxed) {
                return false;
            }
            self.bell.doorbell().wait_once(seen, end - now);
        }
    }

    // --------------------------------------------------------- the loop body

    /// One round of the loop: boot words, doorbells, rpmsg. Called by the
    /// node thread after every wake-up; also usable while a command waits.
    pub fn step(&mut self) {
        self.step_at(Some(Instant::now()));
    }

    /// [`Node::step`] with the clock already read (`now`), or without the
    /// timed checks (`None`: the loop body reads the clock only every
    /// [`CLOCK_EVERY_STEPS`]-th busy round and on every idle one).
    fn step_at(&mut self, now: Option<Instant>) {
        self.check_boot_words_at(now);
        if let Some(now) = now {
            self.timed_checks(now);
        }
        self.instance.handle_doorbell(Target::All);
        self.after_instance();
        self.poll_bus();
    }

    fn poll_bus(&mut self) {
        let mut ids = std::mem::take(&mut self.link_ids);
        self.bus.link_ids_into(&mut ids);
        for &lid in &ids {
            if let Err(e) = self.bus.poll(lid) {
                log::debug!("rpmsg poll: {e}");
            }
        }
        // Polling may add or remove links (services do).
        self.bus.link_ids_into(&mut ids);
        for &lid in &ids {
            let ready = self.link_ready(lid);
            let was = self.ready_links.contains(&lid);
            if ready == was {
                continue;
            }
            if ready {
                self.ready_links.push(lid);
            } else {
                self.ready_links.retain(|&l| l != lid);
            }
            let what = if lid == self.link {
                self.cfg.remote_name().to_string()
            } else {
                self.bus
                    .link(lid)
                    .map(|l| format!("{} ({})", l.remote_cpu(), l.transport().role()))
                    .unwrap_or_default()
            };
            let state = if ready { "up" } else { "down" };
            log::info!("link to {what} is {state}");
        }
        // Links removed from the bus are not ready any more.
        self.ready_links.retain(|l| ids.contains(l));
        self.link_ids = ids;
    }

    /// What runs on the clock: the resource table's verification (every
    /// [`TABLE_CHECK_PERIOD`]).
    fn timed_checks(&mut self, now: Instant) {
        if now >= self.next_table_check {
            self.next_table_check = now + TABLE_CHECK_PERIOD;
            self.instance.verify_table();
        }
    }

    /// [`Node::check_boot_words_at`] and [`Node::timed_checks`] at `now`:
    /// an idle round of the loop.
    fn idle_checks(&mut self, now: Instant) {
        self.check_boot_words_at(Some(now));
        self.timed_checks(now);
    }

    /// The boot words; the checks that run on the clock (the runner, the
    /// shm object still linked) only with `now`.
    fn check_boot_words_at(&mut self, now: Option<Instant>) {
        let r = &self.region;
        match self.cfg.role {
            Role::Master => {
                if take_need_reset(r, true).unwrap_or(false) {
                    log::info!(
                        "{} restarted (NEED_RESET): booting the link again",
                        self.cfg.remote_name()
                    );
                    // The remote restarted its link by itself: a runner's
                    // remote (QEMU) keeps running, only the handshake runs.
                    self.instance.platform_mut().set_keep_remote(true);
                    self.start_quiet();
                    self.instance.platform_mut().set_keep_remote(false);
                } else if self.instance.state() == State::Running
                    && self.instance.platform().has_runner()
                    && now.is_some_and(|now| {
                        now.saturating_duration_since(self.last_linked_check)
                            > Duration::from_millis(200)
                    })
                {
                    self.last_linked_check = Instant::now();
                    if let Some(why) = self.instance.platform_mut().runner_exited() {
                        log::warn!(
                            "{} {why}; the link is down (`rptun start {}` boots it again)",
                            self.cfg.remote_name(),
                            self.cfg.remote_name()
                        );
                        self.peer_gone();
                        // Its boot words died with it: no auto-start on them.
                        self.forget_remote();
                    }
                } else if self.instance.state() != State::Running
                    && now.unwrap_or_else(Instant::now) >= self.next_auto_start
                    && r.load_u32(BOOTS).unwrap_or(0) & BOOT != 0
                {
                    log::info!("{} is booting: starting the link", self.cfg.remote_name());
                    self.start_quiet();
                }
            }
            Role::Remote => {
                if take_need_reset(r, false).unwrap_or(false) {
                    log::info!(
                        "{} restarted the link (NEED_RESET): booting again",
                        self.cfg.remote_name()
                    );
                    self.start_quiet();
                }
                if let Some(now) = now.filter(|&now| {
                    now.saturating_duration_since(self.last_linked_check)
                        > Duration::from_millis(500)
                }) {
                    self.last_linked_check = now;
                    if !self.shm.still_linked() {
                        self.exit = Some(format!(
                            "/dev/shm/{} was removed: the {} exited",
                            self.shm.name(),
                            self.cfg.remote_name()
                        ));
                    }
                }
            }
        }
    }

    fn start_quiet(&mut self) {
        if let Err(e) = self.start_link() {
            if !self.cancel.load(Ordering::Acquire) {
                log::warn!("starting the link to {}: {e}", self.cfg.remote_name());
            }
            self.next_auto_start = Instant::now() + Duration::from_secs(1);
        }
    }

    fn after_instance(&mut self) {
        // Bounded: acting on a command can produce more events, not forever.
        for _ in 0..4 {
            let events: Vec<Event> = self.events.try_iter().collect();
            if events.is_empty() {
                return;
            }
            let mut commands = Vec::new();
            for e in events {
                match e {
                    Event::Command(c) => match self.cfg.role {
                        Role::Master => log::info!(
                            "{} sent {c:?} through the command mailbox",
                            self.cfg.remote_name()
                        ),
                        Role::Remote => commands.push(c),
                    },
                    Event::CommandAcked(c) => {
                        log::debug!("{} acknowledged {c:?}", self.cfg.remote_name())
                    }
                    Event::VdevFailed { index, id, error } => {
                        log::warn!("vdev {index} ({}) failed: {error}", vdev_name(id))
                    }
                    Event::VdevSkipped { index, id, role } => log::info!(
                        "vdev {index} ({}): no virtio {} here; skipped",
                        vdev_name(id),
                        role.as_str()
                    ),
                    Event::VdevUp { index, id, role } => {
                        log::debug!("vdev {index} ({}) up as {}", vdev_name(id), role.as_str())
                    }
                    Event::VdevDown { index, id } => {
                        log::debug!("vdev {index} ({}) down", vdev_name(id))
                    }
                }
            }
            for c in commands {
                self.obey(c);
            }
        }
    }

    /// The remote's application: what it does with the master's commands.
    fn obey(&mut self, c: Command) {
        let master = self.cfg.remote_name().to_string();
        match c {
            Command::Stop => {
                log::warn!("stopped by {master} (STOP); waiting for it to start the link again");
                if self.instance.state() == State::Running {
                    let _ = self.instance.stop();
                }
            }
            Command::Panic => {
                log::error!(
                    "panic requested by {master}: halted (`rptun start {}` on {master} restarts \
                     the link)",
                    self.cfg.local_name()
                );
                if self.instance.state() == State::Running {
                    let _ = self.instance.stop();
                }
            }
            Command::Reset(v) => {
                log::warn!("reset requested by {master} (value {v}): rebooting");
                self.start_quiet();
            }
            other => log::info!("{master} sent {other:?}; ignored"),
        }
    }

    // ------------------------------------------------------------ life cycle

    /// Starts (or restarts) the link: table, handshake, vdevs. On the
    /// master this waits up to the boot timeout for a remote.
    pub fn start_link(&mut self) -> Result<(), String> {
        let r = self.instance.start();
        self.after_instance();
        self.poll_bus();
        match r {
            Ok(()) => Ok(()),
            Err(InstanceError::Platform(PlatformError::Timeout(_))) => Err(self
                .instance
                .platform()
                .last_start_error()
                .unwrap_or_else(|| "the boot handshake timed out".into())),
            Err(InstanceError::Platform(PlatformError::Failed(_)))
                if self.instance.platform().last_start_error().is_some() =>
            {
                Err(self
                    .instance
                    .platform()
                    .last_start_error()
                    .unwrap_or_default())
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Starts the link unless it is running already.
    pub fn ensure_started(&mut self) -> Result<(), String> {
        if self.instance.state() == State::Running {
            return Ok(());
        }
        self.start_link()
    }

    /// The session of the rpmsg link over the vdev (`None` while down); it
    /// changes every time the link comes up again.
    pub fn session(&self) -> Option<u32> {
        self.bus.link(self.link).and_then(|l| l.session())
    }

    /// Stops the link: vdevs removed, STOP through the mailbox; waits up to
    /// `ack_timeout` for the remote's ACK. `Ok(false)` when it did not ACK.
    pub fn stop_link(&mut self, ack_timeout: Duration) -> Result<bool, String> {
        let state = self.instance.state();
        if !matches!(state, State::Running | State::Crashed) {
            return Err(format!(
                "{} is not running (it is {state}); `rptun start {}` starts it",
                self.cfg.remote_name(),
                self.cfg.remote_name()
            ));
        }
        let r = self.instance.stop();
        self.after_instance();
        self.poll_bus();
        r.map_err(|e| e.to_string())?;
        if self.instance.pending_command().is_none() {
            return Ok(true);
        }
        let acked = self.wait_ack(ack_timeout);
        self.after_instance();
        Ok(acked)
    }

    fn wait_ack(&mut self, timeout: Duration) -> bool {
        let bell = self.bell.doorbell().clone();
        let interrupt = self.cfg.interrupt.clone();
        let end = Instant::now() + timeout;
        let mut seen = bell.peer_seq();
        let r = self.instance.wait_command_ack(|| {
            let now = Instant::now();
            if now >= end || interrupt.load(Ordering::Relaxed) {
                return false;
            }
            seen = bell.wait_once(seen, end - now);
            true
        });
        r.is_ok()
    }

    /// Makes the remote panic (PANIC through the mailbox); the link is
    /// crashed until started again.
    pub fn panic_link(&mut self) -> Result<(), String> {
        let r = self.instance.panic_remote();
        self.after_instance();
        self.poll_bus();
        r.map_err(|e| e.to_string())
    }

    /// Resets the remote with `value` (RESET through the mailbox); waits up
    /// to `ack_timeout` for its ACK.
    pub fn reset_link(&mut self, value: u16, ack_timeout: Duration) -> Result<bool, String> {
        let r = self.instance.reset_remote(value);
        self.after_instance();
        r.map_err(|e| e.to_string())?;
        Ok(self.wait_ack(ack_timeout))
    }

    /// The remote process is gone (its process ended): the link is marked
    /// crashed (vdevs removed, the rpmsg link goes down, endpoints unbind).
    /// True if it was running.
    pub fn peer_gone(&mut self) -> bool {
        if self.instance.state() != State::Running {
            return false;
        }
        let _ = self.instance.mark_crashed();
        // Our OK belonged to the dead remote's session: a new remote must
        // wait for a fresh table, not boot on this one.
        let _ = self.region.store_u32(BOOTM, 0);
        self.after_instance();
        self.poll_bus();
        true
    }

    /// Before a fresh remote process is started: forget the dead one's boot
    /// word (so the handshake does not mistake it for a running remote) and
    /// ours (so the new one waits for a fresh table).
    pub fn forget_remote(&mut self) {
        let _ = self.region.store_u32(BOOTS, 0);
        let _ = self.region.store_u32(BOOTM, 0);
    }

    /// Master, at start-up: clears the master's own boot word (a stale OK
    /// from a crashed server must not let a remote boot on an old table);
    /// with `fresh_remote` also the remote's.
    pub fn reset_boot_words(&mut self, fresh_remote: bool) {
        let _ = self.region.store_u32(BOOTM, 0);
        if fresh_remote {
            let _ = self.region.store_u32(BOOTS, 0);
        }
    }

    /// The master's start-up: starts the link at once when a remote looks
    /// alive (`boots` has BOOT or OK), else waits for one to announce itself.
    /// The remote's start-up: boots (waiting for a master).
    pub fn startup(&mut self) {
        match self.cfg.role {
            Role::Master => {
                if self.region.load_u32(BOOTS).unwrap_or(0) & (BOOT | OK) != 0 {
                    self.start_quiet();
                }
            }
            Role::Remote => self.start_quiet(),
        }
    }

    // -------------------------------------------------------------- commands

    fn link_to(&self, cpu: &str) -> Result<LinkId, String> {
        // The list of known cpus only for the error (this runs per ping).
        let c = RemoteCpu::new(cpu).map_err(|_| no_link(cpu, &self.cpus()))?;
        self.bus
            .link_by_cpu(&c)
            .ok_or_else(|| no_link(cpu, &self.cpus()))
    }

    fn down_hint(&self, lid: LinkId, cpu: &str) -> String {
        if lid != self.link {
            let how = self
                .bus
                .link(lid)
                .map(|l| {
                    let mut s = String::new();
                    let _ = l.transport().describe(&mut s);
                    s.lines().next().unwrap_or_default().to_string()
                })
                .unwrap_or_default();
            let peer = match self.cfg.role {
                Role::Master => "the proxy",
                Role::Remote => "the server",
            };
            return format!(
                "the rpmsg-port link to {cpu} is down ({how}); it comes up by itself when \
                 {peer} is running (`rpmsg dump {cpu}` shows the stream)"
            );
        }
        match self.cfg.role {
            Role::Master => format!(
                "the link to {cpu} is down ({}); bring it up with `rptun start {cpu}`",
                self.instance.state()
            ),
            Role::Remote => format!("the link to {cpu} is down; wait for {cpu} to start it"),
        }
    }

    /// `rpmsg ping <cpu> ...`: NuttX's ping over the link to `cpu`.
    pub fn ping(&mut self, cpu: &str, params: &PingParams) -> Result<PingReport, String> {
        let lid = self.link_to(cpu)?;
        self.ping_link(lid, params)
    }

    /// NuttX's ping over link `lid` (one of [`Node::links`]).
    pub fn ping_link(&mut self, lid: LinkId, params: &PingParams) -> Result<PingReport, String> {
        let cpu = self
            .bus
            .link(lid)
            .map(|l| l.remote_cpu().to_string())
            .ok_or("the link vanished")?;
        if !self.bus.link(lid).is_some_and(|l| l.is_up()) {
            return Err(self.down_hint(lid, &cpu));
        }
        let mut wait = self.wait();
        let ping_svc = self.ping;
        let r = match self.bus.service_and_link_mut(&ping_svc, lid) {
            Some((s, link)) => match s.endpoint(lid) {
                Some(ept) => ping(link, ept, params, &mut wait),
                None => Err(PingError::NoLink),
            },
            None => Err(PingError::NoLink),
        };
        let interrupted = self.cfg.interrupt.load(Ordering::Relaxed);
        r.map_err(|e| match e {
            _ if interrupted => "interrupted".to_string(),
            PingError::Rpmsg(RpmsgError::NotBound) | PingError::NoLink => format!(
                "{cpu} has no rpmsg-ping endpoint bound to ours yet; wait a moment or check \
                 `rpmsg dump {cpu}`"
            ),
            PingError::Rpmsg(RpmsgError::LinkDown) => self.down_hint(lid, &cpu),
            PingError::Rpmsg(RpmsgError::Timeout) => format!(
                "no TX buffer came back from {cpu} within the timeout: it is not consuming \
                 messages"
            ),
            e => e.to_string(),
        })
    }

    /// `rpmsg dump <cpu>` (`None`: every link and service).
    pub fn dump(&self, cpu: Option<&str>) -> Result<String, String> {
        match cpu {
            None => Ok(self.bus.dump().to_string()),
            Some(c) => {
                let lid = self.link_to(c)?;
                Ok(self
                    .bus
                    .link(lid)
                    .map(|l| l.dump().to_string())
                    .unwrap_or_default())
            }
        }
    }

    /// `rptun dump`: the remoteproc side (state, boot words, vdevs).
    pub fn rptun_dump(&self) -> String {
        let r = &self.region;
        let word = |off| r.load_u32(off).unwrap_or(0);
        let bits = |v: u32| {
            let mut s = Vec::new();
            for (b, n) in [(BOOT, "BOOT"), (OK, "OK"), (NEED_RESET, "NEED_RESET")] {
                if v & b != 0 {
                    s.push(n);
                }
            }
            if s.is_empty() {
                "0".to_string()
            } else {
                s.join("|")
            }
        };
        let mut out = String::new();
        let _ = writeln!(
            out,
            "rptun {}: this side is the {}, state {}",
            self.cfg.remote_name(),
            if self.cfg.role.is_master() {
                "master"
            } else {
                "remote"
            },
            self.instance.state()
        );
        let _ = writeln!(
            out,
            "  shm /dev/shm/{} ({} bytes), base {:#x}, seqs {} seqm {}, boots {} bootm {}",
            self.shm.name(),
            r.len(),
            r.read_u64(BASE).unwrap_or(0),
            word(SEQS),
            word(SEQM),
            bits(word(BOOTS)),
            bits(word(BOOTM))
        );
        for v in self.instance.vdevs() {
            let _ = writeln!(
                out,
                "  vdev {}: {} ({}), {}, notifyid {}, {}",
                v.index,
                vdev_name(v.id),
                v.id,
                v.role.map(|r| r.as_str()).unwrap_or("?"),
                v.notifyid
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| "?".into()),
                match v.state {
                    VdevState::Active => "active".to_string(),
                    VdevState::WaitingForDriver => "waiting for the driver".to_string(),
                    VdevState::Skipped => "skipped".to_string(),
                    VdevState::Failed(e) => format!("failed: {e}"),
                }
            );
        }
        out
    }

    /// `rpmsg test <cpu>`: sends every TX buffer to the peer's rpmsg-test
    /// endpoint, which holds them all and releases them later; waits until
    /// every buffer is back. Returns the report line.
    pub fn test(&mut self, cpu: &str) -> Result<String, String> {
        let lid = self.link_to(cpu)?;
        self.test_link(lid)
    }

    /// [`Node::test`] over link `lid` (one of [`Node::links`]).
    pub fn test_link(&mut self, lid: LinkId) -> Result<String, String> {
        let cpu = self
            .bus
            .link(lid)
            .map(|l| l.remote_cpu().to_string())
            .ok_or("the link vanished")?;
        let cpu = cpu.as_str();
        if self
            .bus
            .link(lid)
            .is_some_and(|l| l.transport().role() == "port")
        {
            return Err(format!("not over {cpu}: {PORT_TEST_NOTE}"));
        }
        if !self.bus.link(lid).is_some_and(|l| l.is_up()) {
            return Err(self.down_hint(lid, cpu));
        }
        let ept = self
            .bus
            .service_mut(&self.test)
            .and_then(|s| s.endpoint(lid))
            .ok_or_else(|| format!("no rpmsg-test endpoint on the link to {cpu}"))?;
        let link = self.bus.link_mut(lid).ok_or("the link vanished")?;
        let bound = link.endpoint(ept).is_some_and(|e| e.dest != ADDR_ANY);
        if !bound {
            return Err(format!(
                "{cpu} has no rpmsg-test endpoint bound to ours yet; check `rpmsg dump {cpu}`"
            ));
        }
        let sent = send_hold_rx(link, ept).map_err(|e| e.to_string())?;
        let all_back = |n: &Node| {
            n.bus.link(lid).is_some_and(|l| {
                let b = l.transport().buffer_stats();
                b.tx_free == b.tx_total
            })
        };
        if self.wait_until(Duration::from_secs(3), all_back) {
            Ok(format!(
                "rpmsg test {cpu}: sent {sent} buffers; {cpu} held every one and released them \
                 all: PASS"
            ))
        } else {
            Err(format!(
                "rpmsg test {cpu}: sent {sent} buffers but {cpu} did not release them all \
                 within 3 s: FAIL"
            ))
        }
    }

    /// Master: `n` random bytes from the proxy's virtio-rng device on vdev
    /// `index` (0 = `/dev/random`, 1 = `/dev/random1`).
    pub fn read_random(&mut self, index: usize, n: usize) -> Result<Vec<u8>, String> {
        let mut out = vec![0u8; n];
        let remote = self.cfg.remote_name().to_string();
        let mut wait = self.wait();
        let end = Instant::now() + Duration::from_secs(2);
        let mut seats = lock(&self.rngs);
        let Some(d) = seats.get_mut(index).and_then(Option::as_mut) else {
            return Err(format!(
                "the virtio-rng vdev {index} is not running: the link to {remote} is {} \
                 (`rptun start {remote}`)",
                self.instance.state()
            ));
        };
        let interrupt = self.cfg.interrupt.clone();
        let r = d.read(&mut out, || {
            let now = Instant::now();
            if now >= end || interrupt.load(Ordering::Relaxed) {
                return false;
            }
            wait.seen = wait.bell.wait_once(wait.seen, end - now);
            true
        });
        drop(seats);
        match r {
            Ok(()) => Ok(out),
            Err(DeviceError::Timeout) => Err(format!(
                "{remote} did not answer the virtio-rng request within 2 s; is it running? \
                 (`rptun dump`)"
            )),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Devices for `ls /dev`.
    pub fn devices(&self) -> Vec<String> {
        let remote = self.cfg.remote_name();
        let mut v = vec!["console".to_string(), "null".into(), "zero".into()];
        match self.cfg.role {
            Role::Master => {
                let seats = lock(&self.rngs);
                for (i, s) in seats.iter().enumerate() {
                    if s.is_some() {
                        v.push(if i == 0 {
                            "random".into()
                        } else {
                            format!("random{i}")
                        });
                    }
                }
            }
            Role::Remote => v.push("random".into()),
        }
        for cpu in self.cpus() {
            v.push(format!("rpmsg/{cpu}"));
        }
        v.push(format!("rptun/{remote}"));
        if self.tty_bound() {
            v.push(format!("tty{}", self.cfg.names.remote));
        }
        v.sort();
        v.dedup();
        v
    }

    fn tty_endpoint(&mut self) -> Option<rptun::rpmsg::EndpointId> {
        let lid = self.link;
        self.bus.service_mut(&self.tty)?.endpoint(lid)
    }

    /// True when the rpmsg tty is bound to the peer's.
    pub fn tty_bound(&self) -> bool {
        let Some(link) = self.bus.link(self.link) else {
            return false;
        };
        let name = format!("{}{}", tty::TTY_EPT_PREFIX, self.cfg.names.remote);
        link.find_endpoint(&name)
            .is_some_and(|e| tty::is_bound(link, e))
    }

    /// Writes `data` to the peer over the rpmsg tty (waits up to 2 s for TX
    /// buffers).
    pub fn tty_write(&mut self, data: &[u8]) -> Result<(), String> {
        let remote = self.cfg.remote_name().to_string();
        if !self.tty_bound() {
            return Err(format!(
                "the rpmsg tty to {remote} is not connected (link down, or {remote} has no \
                 rpmsg-tty{} endpoint)",
                self.cfg.names.remote
            ));
        }
        let ept = self.tty_endpoint().ok_or("no tty endpoint")?;
        let end = Instant::now() + Duration::from_secs(2);
        let mut done = 0;
        let mut wait = self.wait();
        while done < data.len() {
            let link = self.bus.link_mut(self.link).ok_or("no link")?;
            match tty::try_write(link, ept, &data[done..]) {
                Ok(n) => done += n,
                Err(RpmsgError::NoBuffer) => {
                    let _ = link.poll();
                    let now = Instant::now();
                    if now >= end {
                        return Err(format!("{remote} is not reading its tty"));
                    }
                    wait.seen = wait.bell.wait_once(wait.seen, end - now);
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(())
    }
}

fn no_link(cpu: &str, known: &[String]) -> String {
    format!(
        "no link to cpu `{cpu}`; known: {}",
        if known.is_empty() {
            "none".to_string()
        } else {
            known.join(", ")
        }
    )
}

/// A short name for a virtio device id.
pub fn vdev_name(id: u32) -> &'static str {
    match id {
        id::ENTROPY => "virtio-rng",
        id::RPMSG => "rpmsg",
        id::CONSOLE => "virtio-console",
        _ => "virtio",
    }
}

type Job = Box<dyn FnOnce(&mut Node) + Send>;

struct Shared {
    pending: AtomicBool,
    cancel: Arc<AtomicBool>,
    exit: Mutex<Option<String>>,
    done: AtomicBool,
}

/// The handle of a running node: runs closures in its thread.
#[derive(Clone)]
pub struct NodeHandle {
    tx: Sender<Job>,
    bell: Doorbell,
    shared: Arc<Shared>,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl std::fmt::Debug for NodeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeHandle")
            .field("finished", &self.is_finished())
            .finish_non_exhaustive()
    }
}

/// The node thread is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the simulator node has stopped")]
pub struct NodeGone;

impl NodeHandle {
    /// Runs `node` in a thread named `rptun-<role>`: its start-up
    /// ([`Node::startup`]) then the loop.
    pub fn spawn(mut node: Node) -> Result<NodeHandle, NodeError> {
        let (tx, rx) = channel::<Job>();
        let bell = node.bell.doorbell().clone();
        let shared = Arc::new(Shared {
            pending: AtomicBool::new(false),
            cancel: node.cancel.clone(),
            exit: Mutex::new(None),
            done: AtomicBool::new(false),
        });
        let sh = shared.clone();
        let name = format!("rptun-{}", node.cfg.local_name());
        let thread = std::thread::Builder::new().name(name).spawn(move || {
            node.startup();
            let reason = run(&mut node, &rx, &sh);
            *lock(&sh.exit) = reason;
            sh.done.store(true, Ordering::Release);
        })?;
        Ok(NodeHandle {
            tx,
            bell,
            shared,
            thread: Arc::new(Mutex::new(Some(thread))),
        })
    }

    /// Runs `f` in the node thread and returns its result.
    pub fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Node) -> R + Send + 'static,
    ) -> Result<R, NodeGone> {
        let (t, r) = channel();
        self.tx
            .send(Box::new(move |n: &mut Node| {
                let _ = t.send(f(n));
            }))
            .map_err(|_| NodeGone)?;
        self.shared.pending.store(true, Ordering::Release);
        self.bell.wake_local();
        r.recv().map_err(|_| NodeGone)
    }

    /// Makes the node service every link now (from any thread): what a
    /// transport whose data arrives outside the shared memory (rpmsg over a
    /// byte stream) calls when bytes came in.
    pub fn wake(&self) {
        self.shared.pending.store(true, Ordering::Release);
        self.bell.wake_local();
    }

    /// True once the node thread ended.
    pub fn is_finished(&self) -> bool {
        self.shared.done.load(Ordering::Acquire)
    }

    /// Why the node ended by itself (its shm object was removed...).
    pub fn exit_reason(&self) -> Option<String> {
        lock(&self.shared.exit).clone()
    }

    /// Stops the node thread (blocking waits give up) and joins it.
    pub fn shutdown(&self) {
        self.shared.cancel.store(true, Ordering::Release);
        self.bell.wake_local();
        if let Some(t) = lock(&self.thread).take() {
            let _ = t.join();
        }
    }
}

/// How often an idle node services its vdevs and links anyway (local work
/// queued by other threads, such as syslog lines, waits at most this long).
const IDLE_SERVICE: Duration = Duration::from_millis(100);

/// A busy loop (the peer rang) reads the clock for the timed checks only on
/// every this-many-th round; idle rounds read it every time, so those checks
/// run at least every [`TABLE_CHECK_PERIOD`] or this many rounds.
const CLOCK_EVERY_STEPS: u32 = 32;

fn run(node: &mut Node, rx: &Receiver<Job>, sh: &Shared) -> Option<String> {
    let mut last_seen = None;
    let mut last_service = Instant::now();
    let mut busy = 0u32;
    loop {
        let seen = node.bell.doorbell().peer_seq();
        // Calls and wakes set `pending` after queueing: while it reads
        // clear there is nothing to take (and no need for the atomic swap).
        let worked = sh.pending.load(Ordering::Relaxed) && sh.pending.swap(false, Ordering::AcqRel);
        if worked {
            while let Ok(job) = rx.try_recv() {
                job(node);
            }
        }
        if sh.cancel.load(Ordering::Acquire) {
            return None;
        }
        // The peer rang since we last looked, we ran calls, or it is time:
        // service everything. Otherwise (a bounded sleep ran out) only the
        // boot words, which the peer changes without ringing.
        let rang = last_seen != Some(seen);
        last_seen = Some(seen);
        if rang || worked {
            // The hot path: the clock only now and then.
            busy = busy.wrapping_add(1);
            let now = (busy % CLOCK_EVERY_STEPS == 0).then(Instant::now);
            if let Some(now) = now {
                last_service = now;
            }
            node.step_at(now);
        } else {
            let now = Instant::now();
            if now.saturating_duration_since(last_service) >= IDLE_SERVICE {
                last_service = now;
                node.step_at(Some(now));
            } else {
                node.idle_checks(now);
            }
        }
        if let Some(why) = node.exit.take() {
            return Some(why);
        }
        if sh.pending.load(Ordering::Acquire) {
            continue;
        }
        node.bell.doorbell().wait_once(seen, node.cfg.max_sleep);
    }
}
