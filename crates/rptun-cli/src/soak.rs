//! `rptun soak`: a long run between two processes over the simulator's
//! shared-memory layout (DESIGN.md §7), checking every message.
//!
//! This process is the server (master, rpmsg virtio driver); it spawns
//! itself as the proxy (remote, rpmsg virtio device, `rptun soak-peer`).
//! Both run the real stack: the remoteproc instance over the NuttX
//! simulator's resource table, boot handshake and doorbell counters
//! (`seqm`/`seqs`, futex-woken), rpmsg-virtio on the rpmsg vdev, and an
//! rpmsg link with one endpoint, "soak", bound by the name service.
//!
//! Each side sends `--messages` messages of `--size` payload bytes:
//! `u64 seq`, a pattern that follows from `seq`, and the FNV-1a 64 of what
//! precedes it. Each side checks that every message arrives once, in order
//! and intact. The run fails if any is lost, reordered or corrupted, or if
//! nothing moves for `--stall` seconds.

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use rptun::remoteproc::addr::{AddrEnv, AddrEnvEntry, AddressMap, PhysMap};
use rptun::remoteproc::instance::Instance;
use rptun::remoteproc::platform::{
    self, LinkMap, Notify, Platform, PlatformError, RemoteCpuName, TableLocation,
};
use rptun::remoteproc::registry::{Registry, VirtioHandler};
use rptun::remoteproc::vdev::{VdevDevice, VdevDriver};
use rptun::rpmsg::virtio::{RpmsgVirtioDevice, RpmsgVirtioDriver, RpmsgVirtioOptions};
use rptun::rpmsg::{
    on_message, EndpointConfig, EndpointId, Link, LocalCpu, RemoteCpu, RpmsgError, ADDR_ANY,
};
use rptun::shm::Region;
use rptun::virtio::VirtioError;
use rptun_host::doorbell::Doorbell;
use rptun_host::shm::{self, ShmObject};
use rptun_host::sim::{boot, layout, table};

/// Largest payload of the simulator's 0x600-byte buffers.
const MAX_SIZE: usize = layout::RPMSG_BUF_SIZE as usize - 16;

/// Options of `rptun soak`.
#[derive(Debug, Clone, clap::Args)]
pub struct SoakArgs {
    /// Messages each way.
    #[arg(long, default_value_t = 10_000_000)]
    pub messages: u64,
    /// Payload bytes per message (sequence number, pattern and checksum;
    /// 16 to 1520).
    #[arg(long, default_value_t = 64, value_parser = parse_size)]
    pub size: usize,
    /// The shm object under /dev/shm (default: rptun-soak-<pid>, removed
    /// at the end).
    #[arg(long)]
    pub shm: Option<String>,
    /// Seconds without any message moving before the run is declared
    /// stuck.
    #[arg(long, default_value_t = 30)]
    pub stall: u64,
}

/// Options of the hidden `rptun soak-peer` (the proxy side).
#[derive(Debug, Clone, clap::Args)]
pub struct SoakPeerArgs {
    /// The shm object under /dev/shm.
    #[arg(long)]
    pub shm: String,
    /// Messages each way.
    #[arg(long)]
    pub messages: u64,
    /// Payload bytes per message.
    #[arg(long, value_parser = parse_size)]
    pub size: usize,
    /// Seconds without progress before giving up.
    #[arg(long)]
    pub stall: u64,
}

fn parse_size(s: &str) -> Result<usize, String> {
    let v: usize = s.parse().map_err(|e| format!("{e}"))?;
    if (16..=MAX_SIZE).contains(&v) {
        Ok(v)
    } else {
        Err(format!("the size must be 16 to {MAX_SIZE} bytes"))
    }
}

// ------------------------------------------------------------- the platform

/// `notify` increments this side's counter and wakes the peer.
#[derive(Clone)]
struct SimBell(Arc<Doorbell>);

impl Notify for SimBell {
    fn notify(&self, _target: platform::Doorbell) -> Result<(), PlatformError> {
        self.0.ring();
        Ok(())
    }
}

/// The simulator's contract: table and handshake from `rptun_host::sim`.
struct SimPlatform {
    master: bool,
    region: Region,
    bell: SimBell,
    base: u64,
    table: Vec<u8>,
    /// Bound on the boot handshake.
    timeout: Duration,
}

fn boot_error(e: boot::BootError) -> PlatformError {
    eprintln!("soak: boot handshake: {e}");
    match e {
        boot::BootError::Timeout { .. } => PlatformError::Timeout("the boot handshake"),
        _ => PlatformError::Failed("run the boot handshake"),
    }
}

impl Platform for SimPlatform {
    type Notifier = SimBell;

    fn remote_cpu(&self) -> RemoteCpuName {
        RemoteCpuName::new(if self.master { "proxy" } else { "server" })
            .expect("a valid constant name")
    }

    fn is_master(&self) -> bool {
        self.master
    }

    fn region(&self) -> Region {
        self.region.clone()
    }

    fn resource_table(&mut self) -> Result<TableLocation, PlatformError> {
        if self.master {
            boot::master_publish(&self.region, &self.table, layout::DEFAULT_BASE)
                .map_err(boot_error)?;
            self.base = layout::DEFAULT_BASE;
        } else {
            self.base =
                boot::remote_boot(&self.region, self.timeout, || true).map_err(boot_error)?;
        }
        Ok(TableLocation {
            offset: layout::RSC,
            max_len: layout::SHM_SIZE - layout::RSC,
        })
    }

    fn address_map(&self) -> Result<LinkMap, PlatformError> {
        let env = AddrEnv::from_entries(&[AddrEnvEntry {
            pa: self.base,
            da: 0,
            size: layout::SHM_SIZE as u64,
        }])
        .map_err(|_| PlatformError::Failed("build the address environment"))?;
        let phys = PhysMap::new(self.base, layout::SHM_SIZE)
            .map_err(|_| PlatformError::Failed("place the shared memory"))?;
        Ok(AddressMap::new(env, phys))
    }

    fn start(&mut self) -> Result<(), PlatformError> {
        if self.master {
            boot::master_wait_remote(&self.region, self.timeout, || true).map_err(boot_error)?;
        }
        Ok(())
    }

    fn stop(&mut self) -> Result<(), PlatformError> {
        Ok(())
    }

    fn notifier(&self) -> SimBell {
        self.bell.clone()
    }
}

// ------------------------------------------------------------- rpmsg on the vdev

type Drv = RpmsgVirtioDriver<VdevDriver<SimBell>, 8>;
type Dev = RpmsgVirtioDevice<VdevDevice<SimBell>, 8>;

/// This side's rpmsg link, in whichever role the vdev gives it.
#[allow(clippy::large_enum_variant)] // one per process, behind a lock
enum AnyLink {
    Driver(Link<Drv>),
    Device(Link<Dev>),
}

macro_rules! with_link {
    ($l:expr, $x:ident => $e:expr) => {
        match $l {
            AnyLink::Driver($x) => $e,
            AnyLink::Device($x) => $e,
        }
    };
}

type Shared = Arc<Mutex<Option<AnyLink>>>;

/// The link as the rpmsg vdev's handler: every doorbell polls it.
struct Handler(Shared);

impl VirtioHandler for Handler {
    fn notify(&mut self, _queue: u16) {
        self.poll();
    }

    fn poll(&mut self) {
        if let Ok(mut g) = self.0.lock() {
            if let Some(l) = g.as_mut() {
                // Errors are counted by the link and show in its dump.
                let _ = with_link!(l, l => l.poll());
            }
        }
    }

    fn remove(&mut self) {
        if let Ok(mut g) = self.0.lock() {
            g.take();
        }
    }
}

fn options(master: bool) -> RpmsgVirtioOptions {
    let (local, remote) = if master {
        ("server", "proxy")
    } else {
        ("proxy", "server")
    };
    RpmsgVirtioOptions::new(
        LocalCpu::new(local).expect("a valid constant name"),
        RemoteCpu::new(remote).expect("a valid constant name"),
    )
}

/// `gen` counts the links the factories made (a restarted instance makes a
/// new one, whose session numbers start again).
fn registry(shared: Shared, gen: Arc<AtomicU64>) -> Registry<SimBell> {
    let mut reg = Registry::new();
    let s = shared.clone();
    let g2 = gen.clone();
    reg.register_driver(rptun::virtio::id::RPMSG, move |t| {
        g2.fetch_add(1, Ordering::Relaxed);
        let d = Drv::start_new(t, options(true)).map_err(|(e, _)| match e {
            rptun::rpmsg::virtio::RpmsgVirtioError::Virtio(v) => v,
            _ => VirtioError::Protocol("rpmsg-virtio could not start"),
        })?;
        if let Ok(mut g) = s.lock() {
            *g = Some(AnyLink::Driver(Link::new(d)));
        }
        Ok(Box::new(Handler(s.clone())) as Box<dyn VirtioHandler>)
    });
    reg.register_device(rptun::virtio::id::RPMSG, move |t| {
        gen.fetch_add(1, Ordering::Relaxed);
        let d = Dev::new(t, options(false));
        if let Ok(mut g) = shared.lock() {
            *g = Some(AnyLink::Device(Link::new(d)));
        }
        Ok(Box::new(Handler(shared.clone())) as Box<dyn VirtioHandler>)
    });
    reg
}

/// One side: the instance, its link and its doorbell.
struct Node {
    master: bool,
    region: Region,
    inst: Instance<SimPlatform>,
    link: Shared,
    bell: SimBell,
    seen: u32,
    /// Links made so far (see [`registry`]).
    gen: Arc<AtomicU64>,
    /// Restarts that followed the peer's (NEED_RESET in our boot word).
    restarts: u64,
}

impl Node {
    /// `timeout` bounds the boot handshake.
    fn new(master: bool, region: &Region, timeout: Duration) -> Result<Node> {
        let (mine, peer) = if master {
            (layout::SEQM, layout::SEQS)
        } else {
            (layout::SEQS, layout::SEQM)
        };
        let bell = SimBell(Arc::new(Doorbell::new(region.clone(), mine, peer, false)));
        let link = Shared::default();
        let gen = Arc::new(AtomicU64::new(0));
        let table = table::build(&table::SimTableConfig::default())?;
        let inst = Instance::new(
            SimPlatform {
                master,
                region: region.clone(),
                bell: bell.clone(),
                base: 0,
                table,
                timeout,
            },
            registry(link.clone(), gen.clone()),
        );
        Ok(Node {
            master,
            region: region.clone(),
            inst,
            link,
            bell,
            seen: 0,
            gen,
            restarts: 0,
        })
    }

    fn start(&mut self) -> Result<()> {
        self.seen = self.bell.0.peer_seq();
        self.inst.start().context("starting the remoteproc link")?;
        Ok(())
    }

    /// Waits up to `timeout` for the peer's doorbell (returns at once if it
    /// rang since the last step), follows a peer restart, then services
    /// every vdev.
    fn step(&mut self, timeout: Duration) -> Result<()> {
        let now = self.bell.0.peer_seq();
        self.seen = if now == self.seen {
            self.bell.0.wait(self.seen, timeout)
        } else {
            now
        };
        if boot::take_need_reset(&self.region, self.master)? {
            self.restarts += 1;
            self.start()?;
        }
        self.inst.handle_doorbell(platform::Doorbell::All);
        Ok(())
    }

    fn with<R>(&self, f: impl FnOnce(&mut AnyLink) -> R) -> Option<R> {
        let mut g = self.link.lock().ok()?;
        g.as_mut().map(f)
    }

    fn dump(&self) -> String {
        let link = self
            .with(|l| with_link!(l, l => l.dump().to_string()))
            .unwrap_or_else(|| "no rpmsg link\n".into());
        format!(
            "remoteproc {} ({:?})\n{link}",
            self.inst.state(),
            self.inst.vdevs()
        )
    }
}

// ------------------------------------------------------------- the traffic

fn fnv64(bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Message `seq` of `size` bytes into `buf`.
fn make(seq: u64, size: usize, buf: &mut Vec<u8>) {
    buf.clear();
    buf.extend_from_slice(&seq.to_le_bytes());
    let mix = seq.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    buf.extend((0..size - 16).map(|i| (mix >> ((i % 8) * 8)) as u8 ^ i as u8));
    let sum = fnv64(buf);
    buf.extend_from_slice(&sum.to_le_bytes());
}

/// What a receiver saw.
#[derive(Debug, Default, Clone, Copy)]
struct RxCheck {
    received: u64,
    next: u64,
    out_of_order: u64,
    corrupt: u64,
}

impl RxCheck {
    fn check(&mut self, m: &[u8], size: usize, scratch: &mut Vec<u8>) {
        self.received += 1;
        if m.len() != size {
            self.corrupt += 1;
            return;
        }
        let seq = u64::from_le_bytes(m[..8].try_into().unwrap_or([0; 8]));
        make(seq, size, scratch);
        if m != scratch.as_slice() {
            self.corrupt += 1;
            return;
        }
        if seq != self.next {
            self.out_of_order += 1;
        }
        self.next = seq.wrapping_add(1);
    }

    fn errors(&self, expected: u64) -> u64 {
        expected.saturating_sub(self.received) + self.out_of_order + self.corrupt
    }
}

/// The result of one side.
#[derive(Debug, Clone, Copy)]
struct Outcome {
    sent: u64,
    rx: RxCheck,
    elapsed: Duration,
}

impl Outcome {
    fn line(&self) -> String {
        format!(
            "soak-result sent {} received {} out_of_order {} corrupt {} secs {:.3}",
            self.sent,
            self.rx.received,
            self.rx.out_of_order,
            self.rx.corrupt,
            self.elapsed.as_secs_f64()
        )
    }

    fn parse(line: &str) -> Option<Outcome> {
        let w: Vec<&str> = line.split_whitespace().collect();
        if w.len() != 11 || w[0] != "soak-result" {
            return None;
        }
        Some(Outcome {
            sent: w[2].parse().ok()?,
            rx: RxCheck {
                received: w[4].parse().ok()?,
                next: 0,
                out_of_order: w[6].parse().ok()?,
                corrupt: w[8].parse().ok()?,
            },
            elapsed: Duration::from_secs_f64(w[10].parse().ok()?),
        })
    }
}

/// Creates "soak" on the link; its messages are checked into `rx`.
fn create_endpoint(
    node: &Node,
    rx: &Arc<Mutex<RxCheck>>,
    size: usize,
) -> Option<Result<EndpointId, RpmsgError>> {
    node.with(|l| {
        with_link!(l, l => {
            let rx = rx.clone();
            let mut buf = vec![0u8; MAX_SIZE];
            let mut scratch = Vec::with_capacity(MAX_SIZE);
            l.create_endpoint(
                EndpointConfig::new("soak"),
                on_message(move |_ctx, msg| {
                    let len = msg.len().min(buf.len());
                    let ok = msg.read(0, &mut buf[..len]).is_ok();
                    if let Ok(mut c) = rx.lock() {
                        if ok {
                            c.check(&buf[..len], size, &mut scratch);
                        } else {
                            c.received += 1;
                            c.corrupt += 1;
                        }
                    }
                }),
            )
        })
    })
}

/// Brings the link up, binds "soak", sends `n` messages and receives `n`.
fn traffic(node: &mut Node, n: u64, size: usize, stall: Duration) -> Result<Outcome> {
    node.start()?;
    let deadline = Instant::now() + stall;
    while node.with(|l| with_link!(l, l => l.is_up())) != Some(true) {
        if Instant::now() > deadline {
            bail!("the rpmsg link did not come up:\n{}", node.dump());
        }
        node.step(Duration::from_millis(10))?;
    }
    let rx = Arc::new(Mutex::new(RxCheck::default()));
    let ept: EndpointId =
        create_endpoint(node, &rx, size).ok_or_else(|| anyhow!("the rpmsg link went away"))??;
    let bound = |node: &Node| {
        node.with(|l| with_link!(l, l => l.endpoint(ept).map(|e| e.dest != ADDR_ANY)))
            .flatten()
            == Some(true)
    };
    while !bound(node) {
        if Instant::now() > deadline {
            bail!("the peer never bound \"soak\":\n{}", node.dump());
        }
        node.step(Duration::from_millis(10))?;
    }

    let t0 = Instant::now();
    let mut sent = 0u64;
    let mut msg = Vec::with_capacity(size);
    let mut progress = (0u64, Instant::now());
    loop {
        let received = rx.lock().map(|c| c.received).unwrap_or(0);
        if sent == n && received >= n {
            break;
        }
        if sent < n {
            let r = node.with(|l| {
                with_link!(l, l => {
                    while sent < n {
                        make(sent, size, &mut msg);
                        match l.trysend(ept, &msg) {
                            Ok(()) => sent += 1,
                            Err(RpmsgError::NoBuffer) => return Ok(()),
                            Err(e) => return Err(e),
                        }
                    }
                    Ok(())
                })
            });
            match r {
                Some(Ok(())) => {}
                Some(Err(e)) => bail!("sending failed: {e}\n{}", node.dump()),
                None => bail!("the rpmsg link went away:\n{}", node.dump()),
            }
        }
        let moved = sent + received;
        if moved != progress.0 {
            progress = (moved, Instant::now());
        } else if progress.1.elapsed() > stall {
            bail!(
                "nothing moved for {stall:?} (sent {sent}, received {received} of {n}):\n{}",
                node.dump()
            );
        }
        node.step(Duration::from_millis(10))?;
    }
    let elapsed = t0.elapsed();
    let rx = *rx.lock().map_err(|_| anyhow!("receiver state poisoned"))?;
    Ok(Outcome { sent, rx, elapsed })
}

// ------------------------------------------------------------- the two processes

/// Kills the peer process if the run fails.
struct Peer(Option<Child>);

impl Drop for Peer {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Removes the shm object at the end.
struct Unlink(String);

impl Drop for Unlink {
    fn drop(&mut self) {
        let _ = shm::unlink(&self.0);
    }
}

/// `rptun soak`.
pub fn run(args: &SoakArgs) -> Result<()> {
    let name = args
        .shm
        .clone()
        .unwrap_or_else(|| format!("rptun-soak-{}", std::process::id()));
    let _ = shm::unlink(&name);
    let obj = ShmObject::open_or_create(&name, layout::SHM_SIZE)?;
    let _unlink = Unlink(name.clone());
    let exe = std::env::current_exe().context("cannot find the rptun executable")?;
    let child = Command::new(exe)
        .arg("soak-peer")
        .args(["--shm", &name])
        .args(["--messages", &args.messages.to_string()])
        .args(["--size", &args.size.to_string()])
        .args(["--stall", &args.stall.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot spawn the proxy process (rptun soak-peer)")?;
    let mut peer = Peer(Some(child));
    eprintln!(
        "soak: {} messages of {} bytes each way between two processes over /dev/shm/{name}",
        args.messages, args.size
    );
    let stall = Duration::from_secs(args.stall);
    let mut node = Node::new(true, obj.region(), stall)?;
    let t0 = Instant::now();
    let ours = traffic(&mut node, args.messages, args.size, stall)?;
    // Keep serving until the proxy is done (it may still be collecting).
    let mut child = peer.0.take().context("the proxy process is gone")?;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if t0.elapsed() > ours.elapsed + 2 * stall {
            peer.0 = Some(child);
            bail!("the proxy process did not finish:\n{}", node.dump());
        }
        node.step(Duration::from_millis(10))?;
    };
    let total = t0.elapsed();
    let mut out = String::new();
    if let Some(mut so) = child.stdout.take() {
        so.read_to_string(&mut out)?;
    }
    if !status.success() {
        bail!("the proxy process failed ({status}):\n{out}");
    }
    let theirs = out
        .lines()
        .find_map(Outcome::parse)
        .with_context(|| format!("the proxy printed no result:\n{out}"))?;
    let n = args.messages;
    let errors = ours.rx.errors(n) + theirs.rx.errors(n);
    let secs = ours.elapsed.max(theirs.elapsed).as_secs_f64();
    let rate = (2 * n) as f64 / secs;
    let mut o = std::io::stdout().lock();
    writeln!(
        o,
        "soak: {n} messages of {} bytes each way in {secs:.2} s ({:.2} s with boot): \
         {rate:.0} msgs/s both ways, {:.1} MB/s",
        args.size,
        total.as_secs_f64(),
        rate * args.size as f64 / 1e6
    )?;
    for (who, r) in [("server", &ours), ("proxy", &theirs)] {
        writeln!(
            o,
            "  {who}: sent {}, received {}, lost {}, reordered {}, corrupted {}",
            r.sent,
            r.rx.received,
            n.saturating_sub(r.rx.received),
            r.rx.out_of_order,
            r.rx.corrupt
        )?;
    }
    writeln!(o, "  errors {errors}")?;
    if errors != 0 {
        bail!("{errors} messages were lost, reordered or corrupted");
    }
    Ok(())
}

/// `rptun soak-peer`: the proxy side.
pub fn peer(args: &SoakPeerArgs) -> Result<()> {
    let obj = ShmObject::open_or_create(&args.shm, layout::SHM_SIZE)?;
    let stall = Duration::from_secs(args.stall);
    let mut node = Node::new(false, obj.region(), stall)?;
    let r = traffic(&mut node, args.messages, args.size, stall)?;
    println!("{}", r.line());
    Ok(())
}

// ------------------------------------------------------------- one side, for fault injection

/// Which side `rptun soak-side` plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SideRole {
    /// The master (rpmsg virtio driver), like `rptun soak` itself.
    Server,
    /// The remote (rpmsg virtio device), like `rptun soak-peer`.
    Proxy,
}

/// Options of the hidden `rptun soak-side`: one side that runs until told
/// to quit, follows the peer's restarts, and takes commands on stdin.
#[derive(Debug, Clone, clap::Args)]
pub struct SoakSideArgs {
    /// Which side to play.
    #[arg(long, value_enum)]
    pub role: SideRole,
    /// The shm object under /dev/shm.
    #[arg(long)]
    pub shm: String,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 64, value_parser = parse_size)]
    pub size: usize,
    /// Seconds to wait for the peer's boot handshake.
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
}

/// Traffic of one link session.
#[derive(Default)]
struct Session {
    /// (link generation, session) it belongs to.
    id: (u64, Option<u32>),
    ept: Option<EndpointId>,
    to_send: u64,
    sent: u64,
    rx: Arc<Mutex<RxCheck>>,
}

/// `rptun soak-side`: commands on stdin, one per line: `send N` (queue N
/// more messages in the current session), `status` (print a status line),
/// `quit`. A new link session (the peer restarted) starts the counts
/// afresh and drops what was still queued. Status lines are
/// `status key=value ...` on stdout.
pub fn side(args: &SoakSideArgs) -> Result<()> {
    let master = args.role == SideRole::Server;
    let obj = ShmObject::open_or_create(&args.shm, layout::SHM_SIZE)?;
    let mut node = Node::new(master, obj.region(), Duration::from_secs(args.timeout))?;
    let (tx, cmds) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
        let _ = tx.send("quit".into());
    });
    node.start()?;
    let mut cur = Session::default();
    let mut msg = Vec::with_capacity(args.size);
    loop {
        while let Ok(c) = cmds.try_recv() {
            let w: Vec<&str> = c.split_whitespace().collect();
            match w.as_slice() {
                ["send", n] => cur.to_send += n.parse::<u64>().unwrap_or(0),
                ["status"] => side_status(&node, &cur)?,
                ["quit"] => return Ok(()),
                _ => eprintln!("soak-side: unknown command {c:?}"),
            }
        }
        let id = (
            node.gen.load(Ordering::Relaxed),
            node.with(|l| with_link!(l, l => l.session())).flatten(),
        );
        if id != cur.id {
            cur = Session {
                id,
                ..Session::default()
            };
            // A link that went down and up again keeps its endpoints: start
            // the new session with a fresh one.
            node.with(|l| {
                with_link!(l, l => {
                    while let Some(e) = l.find_endpoint("soak") {
                        if l.destroy_endpoint(e).is_err() {
                            break;
                        }
                    }
                })
            });
        }
        if cur.id.1.is_some() && cur.ept.is_none() {
            cur.ept = create_endpoint(&node, &cur.rx, args.size).and_then(Result::ok);
        }
        if let Some(ept) = cur.ept {
            let size = args.size;
            let (to_send, sent) = (&cur.to_send, &mut cur.sent);
            node.with(|l| {
                with_link!(l, l => {
                    while *sent < *to_send {
                        make(*sent, size, &mut msg);
                        // NotBound until the peer's announcement arrives;
                        // NoBuffer while the peer holds every buffer;
                        // LinkDown until the peer restarts.
                        if l.trysend(ept, &msg).is_err() {
                            break;
                        }
                        *sent += 1;
                    }
                })
            });
        }
        node.step(Duration::from_millis(5))?;
    }
}

fn side_status(node: &Node, cur: &Session) -> Result<()> {
    let rx = *cur
        .rx
        .lock()
        .map_err(|_| anyhow!("receiver state poisoned"))?;
    let bound = cur.ept.and_then(|e| {
        node.with(|l| with_link!(l, l => l.endpoint(e).map(|i| i.dest != ADDR_ANY)))
            .flatten()
    }) == Some(true);
    let link = node.with(|l| {
        with_link!(l, l => {
            let d = l.dump();
            let s = l.stats();
            (
                d.tx_total,
                d.tx_free,
                d.rx_total,
                d.rx_held,
                d.tx_lent,
                s.transport_errors,
            )
        })
    });
    let (tx_total, tx_free, rx_total, held, lent, terr) = link.unwrap_or((0, 0, 0, 0, 0, 0));
    let mut o = std::io::stdout().lock();
    writeln!(
        o,
        "status gen={} session={} up={} bound={} state={} restarts={} to_send={} sent={} \
         received={} out_of_order={} corrupt={} tx_total={tx_total} tx_free={tx_free} \
         rx_total={rx_total} held={held} lent={lent} transport_errors={terr}",
        cur.id.0,
        cur.id.1.map_or(0, u64::from),
        u8::from(cur.id.1.is_some()),
        u8::from(bound),
        node.inst.state(),
        node.restarts,
        cur.to_send,
        cur.sent,
        rx.received,
        rx.out_of_order,
        rx.corrupt,
    )?;
    o.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_check_and_results_round_trip() {
        let mut c = RxCheck::default();
        let (mut m, mut s) = (Vec::new(), Vec::new());
        for seq in [0u64, 1, 3] {
            make(seq, 64, &mut m);
            assert_eq!(m.len(), 64);
            c.check(&m, 64, &mut s);
        }
        make(4, 64, &mut m);
        m[20] ^= 1;
        c.check(&m, 64, &mut s);
        assert_eq!((c.received, c.out_of_order, c.corrupt), (4, 1, 1));
        assert_eq!(c.errors(5), 3);
        let o = Outcome {
            sent: 7,
            rx: c,
            elapsed: Duration::from_millis(1500),
        };
        let p = Outcome::parse(&o.line()).unwrap();
        assert_eq!((p.sent, p.rx.received, p.rx.corrupt), (7, 4, 1));
        assert_eq!(
            parse_size("15").unwrap_err(),
            "the size must be 16 to 1520 bytes"
        );
    }
}
