//! `rptun bench`: rptun against the physical limits of this machine, measured
//! between two processes in one run.
//!
//! Every rptun figure is measured in the same run as the baseline it is
//! compared with, interleaved in rounds (baselines, then rptun, per round),
//! and each ratio is the median of the per-round ratios: the machines are
//! shared and noisy, and a ratio of two figures taken seconds apart is far
//! steadier than either figure.

use anyhow::{bail, Context, Result};
use rptun_host::baseline::{self, Side};
use rptun_host::benchlink::{self, Mode, NodeHandle, Server};
use rptun_host::benchport::{self, PortNode};
use rptun_host::shm::ShmObject;
use rptun_host::sim::layout;
use rptun_host::stream::StreamAddr;
use std::io::{IsTerminal, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Options of `rptun bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Round trips per latency figure (over all rounds).
    #[arg(long, default_value_t = 20_000)]
    pub iters: u32,
    /// Messages per throughput figure (over all rounds).
    #[arg(long, default_value_t = 150_000)]
    pub msgs: u32,
    /// Rounds: each measures every baseline and every rptun figure once.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Seconds of idle link per idle-CPU figure.
    #[arg(long, default_value_t = 5)]
    pub idle_secs: u64,
    /// Skip the idle-CPU figures.
    #[arg(long)]
    pub no_idle: bool,
    /// Where the two processes run: `auto` pins spinning figures (spin
    /// baselines, raw ring, poll mode) to two different cpus and lets the
    /// scheduler place blocking ones; `always` pins everything (the two
    /// cores of an AMP system); `never` pins nothing.
    #[arg(long, default_value = "auto", value_parser = ["auto", "always", "never"])]
    pub pin: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Environment variable telling a peer process which cpu to pin itself to.
const PIN_ENV: &str = "RPTUN_BENCH_PEER_CPU";

/// Pins this process to `cpu`.
fn pin(cpu: usize) -> Result<()> {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    rustix::thread::sched_setaffinity(None, &set)
        .with_context(|| format!("cannot pin the benchmark to cpu {cpu}"))
}

/// Where the measuring process and its peer run.
struct Placement {
    /// The cpus this process may use at start.
    all: rustix::thread::CpuSet,
    /// Two of them: ours and the peer's.
    pair: Option<(usize, usize)>,
    policy: String,
}

impl Placement {
    fn new(policy: &str) -> Placement {
        let all = rustix::thread::sched_getaffinity(None).unwrap_or_default();
        let mut cpus = (0..rustix::thread::CpuSet::MAX_CPU).filter(|&c| all.is_set(c));
        let pair = match (cpus.next(), cpus.next()) {
            (Some(a), Some(b)) if policy != "never" => Some((a, b)),
            _ => None,
        };
        Placement {
            all,
            pair,
            policy: policy.to_string(),
        }
    }

    /// Places this process for a figure that spins (`spins`) or blocks, and
    /// returns the cpu the peer must pin itself to, if any.
    fn place(&self, spins: bool) -> Result<Option<usize>> {
        match self.pair {
            Some((a, b)) if spins || self.policy == "always" => {
                pin(a)?;
                Ok(Some(b))
            }
            _ => {
                rustix::thread::sched_setaffinity(None, &self.all)
                    .context("cannot restore the cpu affinity")?;
                Ok(None)
            }
        }
    }

    fn describe(&self) -> String {
        match (self.pair, self.policy.as_str()) {
            (None, _) => "processes placed by the scheduler".into(),
            (Some((a, b)), "always") => format!("pinned: measuring side cpu {a}, peer cpu {b}"),
            (Some((a, b)), _) => format!(
                "spinning figures pinned (measuring side cpu {a}, peer cpu {b}); blocking \
                 figures placed by the scheduler"
            ),
        }
    }
}

/// Payload sizes: the smallest ping, a mid size, and the maximum payload of
/// the simulator's 0x600-byte buffers.
pub const SIZES: [usize; 3] = [17, 496, 1520];
/// Slot size of the raw ring: the rpmsg buffer size.
const SLOT: usize = layout::RPMSG_BUF_SIZE as usize;
/// Slots of the raw ring: the vring size.
const SLOTS: u32 = layout::VRING_NUM;
/// Round trips before measuring, per size (caches, page faults).
const WARMUP: u32 = 200;
/// Longest wait for a peer before giving up.
const PEER_TIMEOUT: Duration = Duration::from_secs(20);

/// Latency samples of one figure, over all rounds.
#[derive(Debug, Clone, Default)]
pub struct Latency {
    /// Round trips (ns).
    pub samples: Vec<u64>,
    /// Median of each round (ns).
    pub round_medians: Vec<u64>,
}

impl Latency {
    fn add_round(&mut self, mut s: Vec<u64>) {
        self.round_medians.push(baseline::percentiles(&mut s).0);
        self.samples.extend(s);
    }

    /// (median, p99, min) in ns.
    pub fn stats(&self) -> (u64, u64, u64) {
        baseline::percentiles(&mut self.samples.clone())
    }
}

/// Throughput of one figure, per round.
#[derive(Debug, Clone, Default)]
pub struct Rate {
    /// Messages per second of each round's median batch.
    pub rounds: Vec<f64>,
    /// Messages per second of each round as a whole.
    pub overall: Vec<f64>,
}

impl Rate {
    fn add_round(&mut self, t: &baseline::Timed) {
        self.rounds.push(t.median_batch_rate());
        self.overall.push(t.overall_rate());
    }

    /// Median over rounds of the median-batch rate (messages per second).
    pub fn msgs_per_s(&self) -> f64 {
        median_f(&self.rounds)
    }

    /// Median over rounds of the whole-run rate (messages per second).
    pub fn overall_msgs_per_s(&self) -> f64 {
        median_f(&self.overall)
    }
}

fn median_f(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Median over rounds of `a[r] / b[r]`.
fn ratio(a: &[f64], b: &[f64]) -> f64 {
    let r: Vec<f64> = a
        .iter()
        .zip(b)
        .filter(|(_, b)| **b > 0.0)
        .map(|(a, b)| a / b)
        .collect();
    median_f(&r)
}

fn as_f(v: &[u64]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Everything one run measured.
#[derive(Debug, Default)]
pub struct Results {
    /// Raw spin ping-pong, per size.
    pub spin: Vec<Latency>,
    /// Raw futex ping-pong, per size.
    pub futex: Vec<Latency>,
    /// Raw ring, per size.
    pub ring: Vec<Rate>,
    /// rptun round trip, per mode (block, poll) and size.
    pub rtt: [Vec<Latency>; 2],
    /// rptun one-way throughput, per mode and size.
    pub thr: [Vec<Rate>; 2],
    /// Raw Unix-socket ping-pong, per size.
    pub sock_rtt: Vec<Latency>,
    /// Raw Unix-socket one-way stream, per size.
    pub sock_thr: Vec<Rate>,
    /// rpmsg-port over a Unix socket: round trip, per size.
    pub port_rtt: Vec<Latency>,
    /// rpmsg-port over a Unix socket: one-way throughput, per size.
    pub port_thr: Vec<Rate>,
    /// Idle CPU (% of one core) of (server, proxy), per mode.
    pub idle: [Option<(f64, f64)>; 2],
    /// Lines for figures that could not be measured here.
    pub skipped: Vec<String>,
    /// Code-size rows: (example, text, rodata, data, bss).
    pub code_size: Vec<(String, u64, u64, u64, u64)>,
    /// Wall time of the whole run.
    pub elapsed: Duration,
    /// Load average before and after.
    pub load: (String, String),
    /// How the processes were placed.
    pub placement: String,
    /// cpu model, cpu count, kernel.
    pub machine: (String, usize, String),
}

const MODES: [Mode; 2] = [Mode::Blocking, Mode::Poll];

// ------------------------------------------------------------------ children

/// A peer process, killed if we bail out before it finished.
struct Peer(Option<Child>);

impl Peer {
    fn spawn(kind: &str, shm: &str, args: &[String], cpu: Option<usize>) -> Result<Peer> {
        let exe = std::env::current_exe().context("cannot find the rptun executable to spawn")?;
        let mut cmd = Command::new(exe);
        cmd.arg("bench-peer")
            .arg(kind)
            .arg(shm)
            .args(args)
            .stdin(Stdio::null());
        match cpu {
            Some(c) => cmd.env(PIN_ENV, c.to_string()),
            None => cmd.env_remove(PIN_ENV),
        };
        let child = cmd
            .spawn()
            .context("cannot spawn the benchmark peer process")?;
        Ok(Peer(Some(child)))
    }

    fn pid(&self) -> u32 {
        self.0.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    fn finish(mut self) -> Result<()> {
        let Some(mut child) = self.0.take() else {
            return Ok(());
        };
        let st = child.wait()?;
        if !st.success() {
            bail!("the benchmark peer process failed ({st})");
        }
        Ok(())
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct RemoveFile(PathBuf);
impl Drop for RemoveFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

struct Unlink(String);
impl Drop for Unlink {
    fn drop(&mut self) {
        let _ = rptun_host::shm::unlink(&self.0);
    }
}

// ------------------------------------------------------------------ progress

struct Progress {
    total: usize,
    done: usize,
    tty: bool,
    quiet: bool,
    start: Instant,
}

impl Progress {
    fn step(&mut self, what: &str) {
        self.done += 1;
        if self.quiet {
            return;
        }
        let line = format!(
            "bench [{}/{}] {:>4.0}s {what}",
            self.done,
            self.total,
            self.start.elapsed().as_secs_f64()
        );
        let mut e = std::io::stderr().lock();
        if self.tty {
            let _ = write!(e, "\r\x1b[2K{line} ...");
        } else {
            let _ = writeln!(e, "{line}");
        }
        let _ = e.flush();
    }

    fn clear(&self) {
        if self.tty && !self.quiet {
            eprint!("\r\x1b[2K");
        }
    }
}

// -------------------------------------------------------------- measurement

/// One round of the baselines.
fn round_baselines(
    args: &BenchArgs,
    shm: &ShmObject,
    place: &Placement,
    res: &mut Results,
    p: &mut Progress,
) -> Result<()> {
    let iters = (args.iters / args.rounds).max(1);
    let msgs = (args.msgs / args.rounds).max(SLOTS);
    let r = shm.region();
    for (i, &size) in SIZES.iter().enumerate() {
        for kind in ["spin", "futex"] {
            p.step(&format!("raw {kind} ping-pong {size} B"));
            r.fill(0, r.len(), 0)?;
            let cpu = place.place(kind == "spin")?;
            let peer = Peer::spawn(
                kind,
                shm.name(),
                &[iters.to_string(), size.to_string()],
                cpu,
            )?;
            let rtts = match kind {
                "spin" => baseline::spin_pingpong(r, Side::Measure, iters, size),
                _ => baseline::futex_pingpong(r, Side::Measure, iters, size),
            }
            .map_err(anyhow::Error::msg)?;
            peer.finish()?;
            match kind {
                "spin" => res.spin[i].add_round(rtts),
                _ => res.futex[i].add_round(rtts),
            }
        }
    }
    for (i, &size) in SIZES.iter().enumerate() {
        p.step(&format!("raw ring {size} B"));
        r.fill(0, r.len(), 0)?;
        let extra = [
            SLOT.to_string(),
            SLOTS.to_string(),
            size.to_string(),
            msgs.to_string(),
        ];
        let cpu = place.place(true)?;
        let peer = Peer::spawn("ring", shm.name(), &extra, cpu)?;
        let t = baseline::raw_ring(r, Side::Measure, SLOT, SLOTS, size, msgs)
            .map_err(anyhow::Error::msg)?;
        peer.finish()?;
        res.ring[i].add_round(&t);
    }
    Ok(())
}

/// A simulator link: the server's node in this process, the proxy's in a
/// child, over a fresh shm object (removing it ends the proxy, as it ends
/// `rptun proxy`).
struct SimPair {
    server: Server,
    peer: Peer,
    obj: Unlink,
}

impl SimPair {
    fn start(place: &Placement, mode: Mode) -> Result<SimPair> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("rptun-bench-sim-{}-{n}", std::process::id());
        let shm = ShmObject::open_or_create(&name, layout::SHM_SIZE)?;
        let obj = Unlink(name.clone());
        let cpu = place.place(mode != Mode::Blocking)?;
        let peer = Peer::spawn("sim-proxy", &name, &[mode.as_str().to_string()], cpu)?;
        let server = Server::start(shm, mode, PEER_TIMEOUT)?;
        Ok(SimPair { server, peer, obj })
    }

    /// STOP, remove the object, wait for the proxy to leave.
    fn finish(self) -> Result<()> {
        self.server.stop()?;
        drop(self.obj);
        self.peer.finish()
    }
}

/// One round of rptun round trips and throughput in `mode`.
fn round_rptun(
    args: &BenchArgs,
    place: &Placement,
    mode: Mode,
    res: &mut Results,
    p: &mut Progress,
) -> Result<()> {
    let iters = (args.iters / args.rounds).max(1);
    let msgs = (args.msgs / args.rounds).max(SLOTS);
    let m = mode as usize;
    p.step(&format!("rptun rpmsg, {} mode", mode.as_str()));
    let mut pair = SimPair::start(place, mode)?;
    let node = &mut pair.server;
    for (i, &size) in SIZES.iter().enumerate() {
        for _ in 0..WARMUP {
            node.ping_once(size, PEER_TIMEOUT)?;
        }
        let mut s = Vec::with_capacity(iters as usize);
        for _ in 0..iters {
            s.push(node.ping_once(size, PEER_TIMEOUT)?);
        }
        res.rtt[m][i].add_round(s);
    }
    for (i, &size) in SIZES.iter().enumerate() {
        node.stream(size, msgs.min(1000), PEER_TIMEOUT)?; // warm-up
        let t = node.stream(size, msgs, PEER_TIMEOUT)?;
        res.thr[m][i].add_round(&t);
    }
    pair.finish()
}

/// Connects to a Unix socket, retrying while the listener is not there yet.
fn connect_retry(path: &Path) -> Result<UnixStream> {
    let end = Instant::now() + PEER_TIMEOUT;
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() > end => {
                return Err(e).with_context(|| format!("cannot connect to {}", path.display()))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

/// One round of the raw Unix-socket baselines (blocking: placed by the
/// scheduler unless `--pin always`).
fn round_socket(
    args: &BenchArgs,
    path: &Path,
    place: &Placement,
    res: &mut Results,
    p: &mut Progress,
) -> Result<()> {
    let iters = (args.iters / args.rounds).max(1);
    let msgs = (args.msgs / args.rounds).max(SLOTS);
    p.step("raw unix socket");
    let _ = std::fs::remove_file(path);
    let listener =
        UnixListener::bind(path).with_context(|| format!("cannot listen on {}", path.display()))?;
    let cpu = place.place(false)?;
    let peer = Peer::spawn(
        "sock",
        &path.to_string_lossy(),
        &[iters.to_string(), msgs.to_string()],
        cpu,
    )?;
    let (mut s, _) = listener
        .accept()
        .context("the socket peer did not connect")?;
    for (i, &size) in SIZES.iter().enumerate() {
        let rtts = benchport::socket_pingpong(&mut s, Side::Measure, iters, size)
            .map_err(anyhow::Error::msg)?;
        res.sock_rtt[i].add_round(rtts);
    }
    for (i, &size) in SIZES.iter().enumerate() {
        let t = benchport::socket_oneway(&mut s, Side::Measure, size, msgs)
            .map_err(anyhow::Error::msg)?;
        res.sock_thr[i].add_round(&t);
    }
    peer.finish()
}

/// One round of rpmsg-port over a Unix socket.
fn round_port(
    args: &BenchArgs,
    path: &Path,
    place: &Placement,
    res: &mut Results,
    p: &mut Progress,
) -> Result<()> {
    let iters = (args.iters / args.rounds).max(1);
    let msgs = (args.msgs / args.rounds).max(SLOTS);
    p.step("rptun rpmsg-port over a unix socket");
    let _ = std::fs::remove_file(path);
    let addr = StreamAddr::Unix(path.to_path_buf());
    let cpu = place.place(false)?;
    let peer = Peer::spawn("port-proxy", &path.to_string_lossy(), &[], cpu)?;
    let mut node = PortNode::server(&addr, PEER_TIMEOUT)?;
    for (i, &size) in SIZES.iter().enumerate() {
        for _ in 0..WARMUP {
            node.ping_once(size, PEER_TIMEOUT)?;
        }
        let mut s = Vec::with_capacity(iters as usize);
        for _ in 0..iters {
            s.push(node.ping_once(size, PEER_TIMEOUT)?);
        }
        res.port_rtt[i].add_round(s);
    }
    for (i, &size) in SIZES.iter().enumerate() {
        node.stream(size, msgs.min(1000), PEER_TIMEOUT)?; // warm-up
        let t = node.stream(size, msgs, PEER_TIMEOUT)?;
        res.port_thr[i].add_round(&t);
    }
    drop(node); // closes the socket: the proxy ends
    peer.finish()
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: &str) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat"))?;
    // The command name may contain spaces: fields start after the last ')'.
    let rest = s
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("unexpected /proc/PID/stat format")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime and stime are fields 14 and 15.
    let num = |i: usize| -> Result<u64> {
        f.get(i)
            .context("short /proc/PID/stat")?
            .parse()
            .context("bad /proc/PID/stat number")
    };
    Ok(num(11)? + num(12)?)
}

/// Linux reports utime/stime in USER_HZ ticks, which is 100 on every
/// architecture rptun's host side runs on.
const USER_HZ: f64 = 100.0;

/// Idle CPU of both processes with the link up and no traffic, both nodes
/// in the simulator's own loop.
fn idle(args: &BenchArgs, place: &Placement, mode: Mode, p: &mut Progress) -> Result<(f64, f64)> {
    p.step(&format!(
        "idle CPU, {} mode, {} s",
        mode.as_str(),
        args.idle_secs
    ));
    let SimPair {
        mut server,
        peer,
        obj,
    } = SimPair::start(place, mode)?;
    // One round trip proves the link is up and both sides are in their loop.
    server.ping_once(17, PEER_TIMEOUT)?;
    let h = NodeHandle::spawn(server.into_node()).map_err(anyhow::Error::msg)?;
    let pid = peer.pid().to_string();
    let (s0, p0) = (cpu_ticks("self")?, cpu_ticks(&pid)?);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(args.idle_secs));
    let secs = t0.elapsed().as_secs_f64();
    let (s1, p1) = (cpu_ticks("self")?, cpu_ticks(&pid)?);
    let up = h.call(|n| n.peer_ready()).unwrap_or(false);
    let _ = h.call(|n| n.stop_link(Duration::from_secs(2)));
    h.shutdown();
    drop(obj);
    peer.finish()?;
    if !up {
        bail!("the link went down while idle");
    }
    let pct = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / USER_HZ / secs * 100.0;
    Ok((pct(s0, s1), pct(p0, p1)))
}

// -------------------------------------------------------------- code size

/// The repository this binary was built from (for `scripts/code-size.sh`).
fn repo_root() -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.join("scripts/code-size.sh").exists().then_some(root)
}

fn code_size(res: &mut Results) {
    let Some(root) = repo_root() else {
        res.skipped
            .push("skipped: code size (scripts/code-size.sh not found next to this build)".into());
        return;
    };
    let out = Command::new("bash")
        .arg(root.join("scripts/code-size.sh"))
        .args(["--no-build", "--tsv"])
        .stderr(Stdio::null())
        .output();
    let out = match out {
        Ok(o) => o,
        Err(e) => {
            res.skipped
                .push(format!("skipped: code size (cannot run bash: {e})"));
            return;
        }
    };
    let text = String::from_utf8_lossy(&out.stdout);
    for line in text.lines() {
        if let Some(s) = line.strip_prefix("skipped:") {
            res.skipped.push(format!("skipped: code size:{s}"));
            continue;
        }
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() >= 5 && f[0] != "example" {
            let n = |i: usize| f[i].trim().parse::<u64>().unwrap_or(0);
            res.code_size
                .push((f[0].to_string(), n(1), n(2), n(3), n(4)));
        }
    }
    if res.code_size.is_empty() && !res.skipped.iter().any(|s| s.contains("code size")) {
        res.skipped
            .push("skipped: code size (no example built; run scripts/code-size.sh first)".into());
    }
}

// ------------------------------------------------------------------ output

fn machine() -> (String, usize, String) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown cpu".into());
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    (cpu, n, kernel)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1e3
}

/// A named figure and its ratios, shared by both outputs.
struct Row {
    name: String,
    kind: &'static str,
    /// (median, p99, min) ns for latency rows.
    lat: Option<(u64, u64, u64)>,
    /// (msgs/s of the median batch, MB/s of it, msgs/s over whole runs)
    /// for throughput rows.
    rate: Option<(f64, f64, f64)>,
    /// (baseline name, ratio).
    ratios: Vec<(&'static str, f64)>,
}

impl Row {
    fn ratio(&self, baseline: &str) -> String {
        self.ratios
            .iter()
            .find(|(k, _)| *k == baseline)
            .map_or(String::new(), |(_, v)| format!("{v:.2}"))
    }
}

fn rows(res: &Results) -> Vec<Row> {
    let mut v = Vec::new();
    for (i, size) in SIZES.iter().enumerate() {
        let spin_r = as_f(&res.spin[i].round_medians);
        let futex_r = as_f(&res.futex[i].round_medians);
        let sock_r = as_f(&res.sock_rtt[i].round_medians);
        for (name, l) in [
            ("spin", &res.spin[i]),
            ("futex", &res.futex[i]),
            ("socket", &res.sock_rtt[i]),
        ] {
            if l.samples.is_empty() {
                continue;
            }
            v.push(Row {
                name: format!("raw {name} ping-pong {size} B"),
                kind: "rtt",
                lat: Some(l.stats()),
                rate: None,
                ratios: vec![],
            });
        }
        for m in MODES {
            let l = &res.rtt[m as usize][i];
            if l.samples.is_empty() {
                continue;
            }
            let mine = as_f(&l.round_medians);
            v.push(Row {
                name: format!("rptun rpmsg {} {size} B", m.as_str()),
                kind: "rtt",
                lat: Some(l.stats()),
                rate: None,
                ratios: vec![
                    ("futex", ratio(&mine, &futex_r)),
                    ("spin", ratio(&mine, &spin_r)),
                ],
            });
        }
        let l = &res.port_rtt[i];
        if !l.samples.is_empty() {
            let mine = as_f(&l.round_medians);
            v.push(Row {
                name: format!("rptun port/unix {size} B"),
                kind: "rtt",
                lat: Some(l.stats()),
                rate: None,
                ratios: vec![
                    ("futex", ratio(&mine, &futex_r)),
                    ("spin", ratio(&mine, &spin_r)),
                    ("socket", ratio(&mine, &sock_r)),
                ],
            });
        }
    }
    for (i, size) in SIZES.iter().enumerate() {
        let ring = &res.ring[i];
        let mps = ring.msgs_per_s();
        v.push(Row {
            name: format!("raw ring {size} B"),
            kind: "throughput",
            lat: None,
            rate: Some((mps, mps * *size as f64 / 1e6, ring.overall_msgs_per_s())),
            ratios: vec![],
        });
        for m in MODES {
            let t = &res.thr[m as usize][i];
            if t.rounds.is_empty() {
                continue;
            }
            let mps = t.msgs_per_s();
            v.push(Row {
                name: format!("rptun rpmsg {} {size} B", m.as_str()),
                kind: "throughput",
                lat: None,
                rate: Some((mps, mps * *size as f64 / 1e6, t.overall_msgs_per_s())),
                ratios: vec![("ring", ratio(&t.rounds, &ring.rounds))],
            });
        }
        let sock = &res.sock_thr[i];
        if !sock.rounds.is_empty() {
            let mps = sock.msgs_per_s();
            v.push(Row {
                name: format!("raw socket {size} B"),
                kind: "throughput",
                lat: None,
                rate: Some((mps, mps * *size as f64 / 1e6, sock.overall_msgs_per_s())),
                ratios: vec![],
            });
        }
        let t = &res.port_thr[i];
        if !t.rounds.is_empty() {
            let mps = t.msgs_per_s();
            v.push(Row {
                name: format!("rptun port/unix {size} B"),
                kind: "throughput",
                lat: None,
                rate: Some((mps, mps * *size as f64 / 1e6, t.overall_msgs_per_s())),
                ratios: vec![
                    ("ring", ratio(&t.rounds, &ring.rounds)),
                    ("socket", ratio(&t.rounds, &sock.rounds)),
                ],
            });
        }
    }
    v
}

/// The targets of docs/PERFORMANCE.md, checked against this run.
fn targets(res: &Results) -> Vec<(String, bool)> {
    let mut t = Vec::new();
    for (i, size) in SIZES.iter().enumerate() {
        let spin_r = as_f(&res.spin[i].round_medians);
        let futex_r = as_f(&res.futex[i].round_medians);
        let b = &res.rtt[Mode::Blocking as usize][i];
        if !b.samples.is_empty() {
            let r = ratio(&as_f(&b.round_medians), &futex_r);
            t.push((
                format!("round trip {size} B, block <= 3x futex: {r:.2}x"),
                r <= 3.0,
            ));
        }
        let p = &res.rtt[Mode::Poll as usize][i];
        if !p.samples.is_empty() {
            let r = ratio(&as_f(&p.round_medians), &spin_r);
            t.push((
                format!("round trip {size} B, poll <= 5x spin: {r:.2}x"),
                r <= 5.0,
            ));
        }
    }
    let last = SIZES.len() - 1;
    for m in MODES {
        let th = &res.thr[m as usize][last];
        if !th.rounds.is_empty() {
            let r = ratio(&th.rounds, &res.ring[last].rounds);
            t.push((
                format!(
                    "throughput {} B, {} >= 50% of raw ring: {:.0}%",
                    SIZES[last],
                    m.as_str(),
                    r * 100.0
                ),
                r >= 0.5,
            ));
        }
    }
    if let Some((s, p)) = res.idle[Mode::Blocking as usize] {
        t.push((
            format!("idle CPU, block, near 0 (< 1% each): server {s:.2}%, proxy {p:.2}%"),
            s < 1.0 && p < 1.0,
        ));
    }
    t
}

/// Prints the human-readable report.
pub fn print_table(res: &Results, args: &BenchArgs, out: &mut dyn Write) -> std::io::Result<()> {
    let (cpu, n, kernel) = &res.machine;
    writeln!(out, "rptun bench: {cpu}, {n} cpus, Linux {kernel}")?;
    writeln!(
        out,
        "{} rounds, {} round trips and {} messages per figure; load {} -> {}; {:.0} s",
        args.rounds,
        args.iters,
        args.msgs,
        res.load.0,
        res.load.1,
        res.elapsed.as_secs_f64()
    )?;
    writeln!(
        out,
        "ratios: median over rounds of (rptun / baseline of the same round); throughput: \
         median {}-message batch",
        baseline::BATCH
    )?;
    writeln!(out, "{}", res.placement)?;
    let rows = rows(res);
    writeln!(out)?;
    writeln!(
        out,
        "{:<28} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "round trip", "median us", "p99 us", "min us", "x futex", "x spin", "x socket"
    )?;
    for r in rows.iter().filter(|r| r.kind == "rtt") {
        let (m, p, mi) = r.lat.unwrap_or_default();
        writeln!(
            out,
            "{:<28} {:>9.2} {:>9.2} {:>9.2} {:>9} {:>9} {:>9}",
            r.name,
            us(m),
            us(p),
            us(mi),
            r.ratio("futex"),
            r.ratio("spin"),
            r.ratio("socket")
        )?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "{:<28} {:>11} {:>9} {:>9} {:>9} {:>13}",
        "one-way throughput", "msgs/s", "MB/s", "x ring", "x socket", "whole-run m/s"
    )?;
    for r in rows.iter().filter(|r| r.kind == "throughput") {
        let (mps, mbs, overall) = r.rate.unwrap_or_default();
        writeln!(
            out,
            "{:<28} {:>11.0} {:>9.1} {:>9} {:>9} {:>13.0}",
            r.name,
            mps,
            mbs,
            r.ratio("ring"),
            r.ratio("socket"),
            overall
        )?;
    }
    if res.idle.iter().any(|i| i.is_some()) {
        writeln!(out)?;
        writeln!(
            out,
            "{:<28} {:>9} {:>9}",
            format!("idle CPU ({} s, % core)", args.idle_secs),
            "server",
            "proxy"
        )?;
        for m in MODES {
            if let Some((s, p)) = res.idle[m as usize] {
                writeln!(out, "{:<28} {:>9.2} {:>9.2}", m.as_str(), s, p)?;
            }
        }
    }
    if !res.code_size.is_empty() {
        writeln!(out)?;
        writeln!(
            out,
            "{:<28} {:>9} {:>9} {:>9} {:>9}",
            "code size (thumbv7em, B)", ".text", ".rodata", ".data", ".bss"
        )?;
        for (name, t, ro, d, b) in &res.code_size {
            writeln!(out, "{name:<28} {t:>9} {ro:>9} {d:>9} {b:>9}")?;
        }
    }
    writeln!(out)?;
    for (what, ok) in targets(res) {
        writeln!(out, "target {}: {what}", if ok { "met" } else { "MISSED" })?;
    }
    for s in &res.skipped {
        writeln!(out, "{s}")?;
    }
    Ok(())
}

fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// Prints the results as JSON (no dependency: the format is flat).
pub fn print_json(res: &Results, args: &BenchArgs, out: &mut dyn Write) -> std::io::Result<()> {
    let (cpu, n, kernel) = &res.machine;
    writeln!(out, "{{")?;
    writeln!(
        out,
        "  \"machine\": {{\"cpu\": {}, \"cpus\": {n}, \"kernel\": {}, \"load_before\": {}, \"load_after\": {}}},",
        json_str(cpu),
        json_str(kernel),
        json_str(&res.load.0),
        json_str(&res.load.1)
    )?;
    writeln!(
        out,
        "  \"run\": {{\"placement\": {}, \"rounds\": {}, \"iters\": {}, \"msgs\": {}, \"idle_secs\": {}, \"elapsed_s\": {:.2}}},",
        json_str(&res.placement),
        args.rounds,
        args.iters,
        args.msgs,
        args.idle_secs,
        res.elapsed.as_secs_f64()
    )?;
    writeln!(out, "  \"figures\": [")?;
    let rows = rows(res);
    for (i, r) in rows.iter().enumerate() {
        let mut f = format!(
            "{{\"name\": {}, \"kind\": \"{}\"",
            json_str(&r.name),
            r.kind
        );
        if let Some((m, p, mi)) = r.lat {
            f.push_str(&format!(
                ", \"median_ns\": {m}, \"p99_ns\": {p}, \"min_ns\": {mi}"
            ));
        }
        if let Some((mps, mbs, overall)) = r.rate {
            f.push_str(&format!(
                ", \"msgs_per_s\": {mps:.1}, \"mb_per_s\": {mbs:.3}, \"whole_run_msgs_per_s\": {overall:.1}"
            ));
        }
        for (k, v) in &r.ratios {
            f.push_str(&format!(", \"ratio_vs_{k}\": {v:.3}"));
        }
        f.push('}');
        writeln!(out, "    {f}{}", if i + 1 < rows.len() { "," } else { "" })?;
    }
    writeln!(out, "  ],")?;
    let idle: Vec<String> = MODES
        .iter()
        .filter_map(|&m| {
            res.idle[m as usize].map(|(s, p)| {
                format!(
                    "{{\"mode\": \"{}\", \"server_pct\": {s:.3}, \"proxy_pct\": {p:.3}}}",
                    m.as_str()
                )
            })
        })
        .collect();
    writeln!(out, "  \"idle_cpu\": [{}],", idle.join(", "))?;
    let cs: Vec<String> = res
        .code_size
        .iter()
        .map(|(n, t, ro, d, b)| {
            format!(
                "{{\"example\": {}, \"text\": {t}, \"rodata\": {ro}, \"data\": {d}, \"bss\": {b}}}",
                json_str(n)
            )
        })
        .collect();
    writeln!(out, "  \"code_size\": [{}],", cs.join(", "))?;
    let tg: Vec<String> = targets(res)
        .iter()
        .map(|(w, ok)| format!("{{\"target\": {}, \"met\": {ok}}}", json_str(w)))
        .collect();
    writeln!(out, "  \"targets\": [{}],", tg.join(", "))?;
    let sk: Vec<String> = res.skipped.iter().map(|s| json_str(s)).collect();
    writeln!(out, "  \"skipped\": [{}]", sk.join(", "))?;
    writeln!(out, "}}")
}

// ------------------------------------------------------------------ entry

/// `rptun bench`.
pub fn run(args: &BenchArgs) -> Result<()> {
    let mut args = args.clone();
    args.rounds = args.rounds.max(1);
    let start = Instant::now();
    let mut res = Results {
        spin: vec![Latency::default(); SIZES.len()],
        futex: vec![Latency::default(); SIZES.len()],
        ring: vec![Rate::default(); SIZES.len()],
        sock_rtt: vec![Latency::default(); SIZES.len()],
        sock_thr: vec![Rate::default(); SIZES.len()],
        port_rtt: vec![Latency::default(); SIZES.len()],
        port_thr: vec![Rate::default(); SIZES.len()],
        rtt: std::array::from_fn(|_| vec![Latency::default(); SIZES.len()]),
        thr: std::array::from_fn(|_| vec![Rate::default(); SIZES.len()]),
        load: (loadavg(), String::new()),
        ..Results::default()
    };
    let per_round = 3 * SIZES.len() + MODES.len() + 2;
    let idle_steps = if args.no_idle { 0 } else { MODES.len() };
    let mut p = Progress {
        total: per_round * args.rounds as usize + idle_steps,
        done: 0,
        tty: std::io::stderr().is_terminal(),
        quiet: false,
        start,
    };
    res.machine = machine();
    let place = Placement::new(&args.pin);
    res.placement = place.describe();
    let pid = std::process::id();
    let base_name = format!("rptun-bench-{pid}");
    let base = ShmObject::open_or_create(&base_name, baseline::region_size(SLOT, SLOTS as usize))?;
    let _u1 = Unlink(base_name);
    let sock_path = std::env::temp_dir().join(format!("rptun-bench-{pid}.sock"));
    let port_path = std::env::temp_dir().join(format!("rptun-bench-port-{pid}.sock"));
    let _u3 = RemoveFile(sock_path.clone());
    let _u4 = RemoveFile(port_path.clone());

    let r = (|| -> Result<()> {
        for _ in 0..args.rounds {
            round_baselines(&args, &base, &place, &mut res, &mut p)?;
            for m in MODES {
                round_rptun(&args, &place, m, &mut res, &mut p)?;
            }
            round_socket(&args, &sock_path, &place, &mut res, &mut p)?;
            round_port(&args, &port_path, &place, &mut res, &mut p)?;
        }
        if !args.no_idle {
            for m in MODES {
                res.idle[m as usize] = Some(idle(&args, &place, m, &mut p)?);
            }
        }
        Ok(())
    })();
    p.clear();
    r?;
    code_size(&mut res);
    res.elapsed = start.elapsed();
    res.load.1 = loadavg();
    let mut so = std::io::stdout().lock();
    if args.json {
        print_json(&res, &args, &mut so)?;
    } else {
        print_table(&res, &args, &mut so)?;
    }
    Ok(())
}

/// The peer side of a measurement, run in the child process.
pub fn peer(kind: &str, shm: &str, rest: &[String]) -> Result<()> {
    if let Some(cpu) = std::env::var(PIN_ENV).ok().and_then(|c| c.parse().ok()) {
        pin(cpu)?;
    }
    let num = |i: usize| -> Result<u64> {
        rest.get(i)
            .context("bench-peer: missing argument")?
            .parse()
            .context("bench-peer: bad number")
    };
    let obj;
    let r = if matches!(kind, "sock" | "port-proxy") {
        // A socket path, not a shm object.
        None
    } else {
        // The measuring process created the object; take it at its size.
        let len = std::fs::metadata(format!("/dev/shm/{shm}"))
            .with_context(|| format!("bench-peer: /dev/shm/{shm} does not exist"))?
            .len() as usize;
        obj = ShmObject::open_existing(shm, len)?;
        Some(obj.region())
    };
    let region = || r.context("bench-peer: no shm object");
    match kind {
        "spin" => {
            baseline::spin_pingpong(region()?, Side::Answer, num(0)? as u32, num(1)? as usize)
                .map(|_| ())
                .map_err(anyhow::Error::msg)
        }
        "futex" => {
            baseline::futex_pingpong(region()?, Side::Answer, num(0)? as u32, num(1)? as usize)
                .map(|_| ())
                .map_err(anyhow::Error::msg)
        }
        "ring" => baseline::raw_ring(
            region()?,
            Side::Answer,
            num(0)? as usize,
            num(1)? as u32,
            num(2)? as usize,
            num(3)? as u32,
        )
        .map(|_| ())
        .map_err(anyhow::Error::msg),
        "sock" => {
            let iters = num(0)? as u32;
            let msgs = num(1)? as u32;
            let mut s = connect_retry(Path::new(shm))?;
            for &size in &SIZES {
                benchport::socket_pingpong(&mut s, Side::Answer, iters, size)
                    .map_err(anyhow::Error::msg)?;
            }
            for &size in &SIZES {
                benchport::socket_oneway(&mut s, Side::Answer, size, msgs)
                    .map_err(anyhow::Error::msg)?;
            }
            Ok(())
        }
        "port-proxy" => {
            let addr = StreamAddr::Unix(PathBuf::from(shm));
            let mut node = PortNode::proxy(&addr)?;
            node.serve(PEER_TIMEOUT)?;
            Ok(())
        }
        "sim-proxy" => {
            let mode = rest
                .first()
                .and_then(|m| Mode::parse(m))
                .context("bench-peer sim-proxy: mode must be `block` or `poll`")?;
            serve_proxy(shm, mode)
        }
        _ => bail!("bench-peer: unknown kind `{kind}`"),
    }
}

/// Runs the proxy's simulator node (the loop `rptun proxy` runs) until the
/// server removes the shm object (or its parent is gone, or two minutes
/// passed).
fn serve_proxy(shm: &str, mode: Mode) -> Result<()> {
    let parent = rustix::process::getppid();
    let obj = ShmObject::open_existing(shm, layout::SHM_SIZE)?;
    let end = Instant::now() + Duration::from_secs(120);
    benchlink::serve_proxy(obj, mode, PEER_TIMEOUT, || {
        Instant::now() > end || rustix::process::getppid() != parent
    })
    .context("bench-peer sim-proxy")
}
