//! `rptun sim`: NuttX's `sim:rpserver` + `sim:rpproxy` on a laptop.
//!
//! The server (remoteproc master, virtio driver of every vdev) runs in the
//! foreground with an NSH-style shell; the proxy (remote, virtio device
//! side) runs as a second process of the same executable (`rptun proxy`),
//! spawned here or started by hand. Both map the POSIX shm object laid out
//! as NuttX's simulator lays it out.
//!
//! A second link, `proxy2`, carries rpmsg over a byte stream (NuttX's
//! `rpmsg_port_uart`): the server listens on a Unix socket in the run
//! directory (or holds a pty master, `--port-link pty`) and the proxy
//! connects (`--port-link` of `rptun proxy`); both add it to their bus, so
//! `rpmsg ping all` covers both links. When the proxy process ends, its end
//! of the stream closes and the port link goes down with the other; a new
//! proxy reconnects and the port handshake runs again.
//!
//! What the server watches for the proxy: its child process (waitpid), the
//! proxy's liveness socket (closed by the kernel the moment the proxy dies,
//! also for a proxy started by hand) and the boot words (a restarted proxy
//! sets NEED_RESET). A dead proxy marks the link crashed at once;
//! `rptun start proxy` or `--restart-proxy` brings it back.
#![forbid(unsafe_code)]

use std::cell::{Cell, RefCell};
use std::io::{BufRead, IsTerminal, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rptun::remoteproc::instance::State;
use rptun::remoteproc::Role;
use rptun::rpmsg::LinkId;
use rptun_host::shm::ShmObject;
use rptun_host::sim::layout::{SHM_NAME, SHM_SIZE};
use rptun_host::sim::liveness::{self, Beacon, Presence};
use rptun_host::sim::node::{Node, NodeConfig, NodeHandle, NodeHooks};
use rptun_host::sim::port;
use rptun_host::stream::{ListenStream, PtyStream, StreamAddr};

use crate::commands;
use crate::shell::{failed, Flow, Shell};

/// Options of `rptun sim`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// Busy-poll the doorbells instead of sleeping on them (lowest latency,
    /// one busy core per side).
    #[arg(long)]
    pub poll: bool,
    /// Commands to run, separated by `;`, then exit (instead of reading
    /// stdin).
    #[arg(long, value_name = "\"CMD; CMD\"")]
    pub script: Option<String>,
    /// Name of the POSIX shm object (/dev/shm/NAME).
    #[arg(long, default_value = SHM_NAME)]
    pub shm: String,
    /// Do not spawn the proxy: wait for one started by hand (`rptun proxy`).
    #[arg(long)]
    pub no_spawn: bool,
    /// Restart the proxy automatically when it dies.
    #[arg(long)]
    pub restart_proxy: bool,
    /// Seconds to wait for the link before the shell starts.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    pub wait_link: f64,
    /// The second link to the proxy, rpmsg over a byte stream (cpu
    /// `proxy2`): over a Unix socket in the run directory, over a pty pair,
    /// or none.
    #[arg(long, value_enum, default_value_t = PortKind::Unix, value_name = "KIND")]
    pub port_link: PortKind,
    /// No second link (same as `--port-link off`).
    #[arg(long)]
    pub no_port_link: bool,
}

/// The stream of the `proxy2` link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PortKind {
    /// A Unix stream socket the server listens on
    /// (`$XDG_RUNTIME_DIR/rptun-sim-<shm>-proxy2.sock`, else in /tmp).
    Unix,
    /// A pseudo-terminal: the server holds the master, the proxy opens the
    /// slave as a serial line (NuttX's rpmsg_port_uart over a UART).
    Pty,
    /// No port link.
    Off,
}

/// Port link buffers: NuttX's simulator uses 8 of 2048 bytes each way.
const PORT_BUFFERS: usize = 8;
/// Port link buffer size, port header included.
const PORT_BUFFER_SIZE: usize = 2048;

/// Opens the server's end of the `proxy2` link and attaches it to the node.
/// Returns the link and what the proxy passes as `--port-link`.
fn open_port_link(
    node: &NodeHandle,
    kind: PortKind,
    shm: &str,
) -> Result<Option<(LinkId, String)>> {
    let (stream, proxy_arg): (port::SimStream, String) = match kind {
        PortKind::Off => return Ok(None),
        PortKind::Unix => {
            let path = port::default_socket_path(shm);
            let addr = StreamAddr::Unix(path);
            let l = ListenStream::bind(&addr)
                .with_context(|| format!("cannot open the port link (proxy2) on {addr}"))?;
            (Box::new(l), addr.to_string())
        }
        PortKind::Pty => {
            let p = PtyStream::open().context("cannot open a pty for the port link (proxy2)")?;
            let path = p.path().display().to_string();
            (Box::new(p), path)
        }
    };
    let link = port::attach(
        node,
        stream,
        "server",
        port::PORT_LINK_CPU,
        PORT_BUFFERS,
        PORT_BUFFER_SIZE,
    )?;
    log::info!(
        "port link {} on {proxy_arg} ({PORT_BUFFERS} x {PORT_BUFFER_SIZE}-byte buffers each way); \
         a proxy started by hand needs `--port-link {proxy_arg}`",
        port::PORT_LINK_CPU
    );
    Ok(Some((link.id, proxy_arg)))
}

/// Things the main loop hears about.
enum Ui {
    Proxy(Presence),
    ChildExited { pid: u32, how: String },
}

enum Input {
    Line(String),
    Eof,
}

struct Supervisor {
    node: NodeHandle,
    shm: String,
    /// What the proxy passes as `--port-link` (`off` without one).
    port_arg: String,
    /// The server's port link (proxy2).
    port: Option<LinkId>,
    poll: bool,
    spawn_mode: bool,
    restart: bool,
    /// The proxy we spawned, while it runs.
    child: Option<u32>,
    /// The proxy the liveness watcher sees.
    alive: Option<u32>,
    ui: Sender<Ui>,
    restarts: Vec<Instant>,
    shutting_down: bool,
}

fn describe(st: std::io::Result<std::process::ExitStatus>) -> String {
    match st {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(c), _) => format!("exited with status {c}"),
            (None, Some(9)) => "was killed by signal 9 (SIGKILL)".into(),
            (None, Some(sig)) => format!("was killed by signal {sig}"),
            _ => format!("ended ({s})"),
        },
        Err(e) => format!("could not be waited for: {e}"),
    }
}

impl Supervisor {
    fn spawn_proxy(&mut self) -> Result<u32, String> {
        let exe = std::env::current_exe()
            .map_err(|e| format!("cannot find the rptun executable to spawn the proxy: {e}"))?;
        let mut cmd = Command::new(exe);
        cmd.arg("proxy")
            .arg("--shm")
            .arg(&self.shm)
            .arg("--spawned")
            .arg("--port-link")
            .arg(&self.port_arg)
            .stdin(Stdio::null())
            // Its own process group: Ctrl-C reaches the server only, which
            // then shuts the proxy down in order.
            .process_group(0);
        if self.poll {
            cmd.arg("--poll");
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot spawn the proxy process: {e}"))?;
        let pid = child.id();
        let ui = self.ui.clone();
        std::thread::Builder::new()
            .name("rptun-child".into())
            .spawn(move || {
                let how = describe(child.wait());
                let _ = ui.send(Ui::ChildExited { pid, how });
            })
            .map_err(|e| format!("cannot watch the proxy process: {e}"))?;
        self.child = Some(pid);
        log::info!("spawned the proxy (pid {pid})");
        Ok(pid)
    }

    fn on_ui(&mut self, ev: Ui) {
        match ev {
            Ui::Proxy(Presence::Up(pid)) => self.alive = Some(pid),
            Ui::Proxy(Presence::Gone(pid)) => {
                // Both the watcher and our beacon may report the same death.
                if self.alive != Some(pid) && self.child != Some(pid) {
                    return;
                }
                if self.alive == Some(pid) {
                    self.alive = None;
                }
                if self.child == Some(pid) {
                    // Its exit status follows from the child watcher.
                    self.child = None;
                } else if !self.shutting_down {
                    log::warn!("the proxy (pid {pid}) is gone");
                }
                self.gone();
            }
            Ui::ChildExited { pid, how } => {
                if !self.shutting_down {
                    log::warn!("proxy process {pid} {how}");
                }
                if self.child == Some(pid) {
                    self.child = None;
                    if self.alive == Some(pid) {
                        self.alive = None;
                    }
                    self.gone();
                }
            }
        }
    }

    /// The proxy process ended: the link is marked down (the node says so),
    /// and the proxy is restarted if asked to.
    fn gone(&mut self) {
        if self.shutting_down {
            return;
        }
        let was = self.node.call(|n| n.peer_gone()).unwrap_or(false);
        if self.restart && self.spawn_mode && self.child.is_none() && self.alive.is_none() {
            let now = Instant::now();
            self.restarts
                .retain(|t| now.duration_since(*t) < Duration::from_secs(30));
            if self.restarts.len() >= 5 {
                log::error!(
                    "the proxy died 5 times within 30 s; not restarting it again (`rptun start \
                     proxy` tries once more)"
                );
                return;
            }
            self.restarts.push(now);
            log::info!("restarting the proxy (--restart-proxy)");
            let _ = self.node.call(|n| n.forget_remote());
            if let Err(e) = self.spawn_proxy() {
                log::error!("{e}");
            }
        } else if was {
            log::info!("type `rptun start proxy` to bring it back");
        }
    }

    fn start(&mut self) -> Result<String, String> {
        let st = self.node.call(|n| n.state()).map_err(|e| e.to_string())?;
        if st == State::Running {
            return Err(
                "proxy is already running; `rptun stop proxy` first, or `rptun reset proxy 0` \
                 to reboot it"
                    .into(),
            );
        }
        if self.spawn_mode && self.child.is_none() && self.alive.is_none() {
            self.node
                .call(|n| n.forget_remote())
                .map_err(|e| e.to_string())?;
            self.spawn_proxy()?;
        }
        self.node
            .call(|n| n.ensure_started())
            .map_err(|e| e.to_string())??;
        let ready = self
            .node
            .call(|n| n.wait_until(Duration::from_secs(5), |n| n.peer_ready()))
            .map_err(|e| e.to_string())?;
        if ready {
            let Some(port) = self.port else {
                return Ok("proxy started; link up".into());
            };
            // The port link reconnects by itself; wait a moment for it.
            let port_ready = self
                .node
                .call(move |n| n.wait_until(Duration::from_secs(3), move |n| n.link_ready(port)))
                .map_err(|e| e.to_string())?;
            Ok(if port_ready {
                format!(
                    "proxy started; link up (and {})",
                    rptun_host::sim::port::PORT_LINK_CPU
                )
            } else {
                format!(
                    "proxy started; link up, but {p} is not up yet (`rpmsg dump {p}`)",
                    p = rptun_host::sim::port::PORT_LINK_CPU
                )
            })
        } else {
            Err(
                "the remoteproc link started but proxy did not bind its rpmsg endpoints within \
                 5 s; see `rpmsg dump proxy`"
                    .into(),
            )
        }
    }
}

fn add_devices<'a>(sh: &mut Shell<'a>, node: &NodeHandle, cu: &'a Cell<bool>) {
    commands::add_hexdump(sh, node);
    let n = node.clone();
    sh.add(
        "cu",
        "[/dev/ttyproxy]",
        "talk to the proxy's shell over the rpmsg tty (type ~. to return)",
        move |a, _o| {
            let dev = a.first().copied().unwrap_or("/dev/ttyproxy");
            if dev != "/dev/ttyproxy" {
                return Err(format!("no such tty `{dev}`; use /dev/ttyproxy").into());
            }
            if !n.call(|n| n.tty_bound()).map_err(failed)? {
                return Err(failed(
                    "/dev/ttyproxy is not connected: the link to proxy is down (`rptun start \
                     proxy`)",
                ));
            }
            cu.set(true);
            Ok(())
        },
    );
}

/// Bytes from the proxy's tty go to the `cu` session, if one is open.
#[derive(Default)]
struct CuTap(Mutex<Option<Sender<Vec<u8>>>>);

impl CuTap {
    fn feed(&self, b: &[u8]) {
        if let Some(tx) = self.0.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            let _ = tx.send(b.to_vec());
        }
    }
    fn open(&self) -> Receiver<Vec<u8>> {
        let (tx, rx) = channel();
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
        rx
    }
    fn close(&self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

const PROXY_PROMPT: &[u8] = b"proxy> ";

/// Prints the proxy's answer until its prompt (or a quiet timeout). On a
/// terminal the bytes show as they arrive; otherwise the answer is written
/// in one piece and the trailing prompt is returned, to be written with the
/// next echoed line (so log lines cannot land between them). `None` when
/// nothing came at all.
fn cu_collect(
    rx: &Receiver<Vec<u8>>,
    out: &mut dyn Write,
    interrupt: &AtomicBool,
    tty: bool,
) -> Option<Vec<u8>> {
    let start = Instant::now();
    let mut got = Vec::new();
    let done = loop {
        let budget = if got.is_empty() {
            Duration::from_secs(5)
        } else {
            Duration::from_secs(30)
        };
        if interrupt.load(Ordering::Relaxed) || start.elapsed() > budget {
            break !got.is_empty();
        }
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(b) => {
                if tty {
                    let _ = out.write_all(&b);
                    let _ = out.flush();
                }
                got.extend_from_slice(&b);
                if got.ends_with(PROXY_PROMPT) {
                    break true;
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break !got.is_empty(),
        }
    };
    if !done {
        if !tty {
            let _ = out.write_all(&got);
        }
        return None;
    }
    if tty {
        return Some(Vec::new());
    }
    let keep = got.len() - PROXY_PROMPT.len().min(got.len());
    let _ = out.write_all(&got[..keep]);
    let _ = out.flush();
    Some(got[keep..].to_vec())
}

/// Runs the server.
pub fn run(args: &SimArgs) -> Result<std::process::ExitCode> {
    let interrupt = crate::signals::install()?;
    crate::logger::init("server", None);
    let (ui_tx, ui_rx) = channel();
    // A proxy that starts after us attaches to our beacon: we see it die
    // even if it lives only a moment.
    let ui = Mutex::new(ui_tx.clone());
    let _beacon = Beacon::bind_with(
        &args.shm,
        "server",
        Some(Box::new(move |p| {
            let _ = ui
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .send(Ui::Proxy(p));
        })),
    )?;
    let shm = ShmObject::open_or_create(&args.shm, SHM_SIZE)?;
    let existing = liveness::probe(&args.shm, "proxy");
    let spawn_now = !args.no_spawn && existing.is_none();
    if let Some(pid) = existing {
        log::info!(
            "a proxy already runs on /dev/shm/{} (pid {pid}): using it",
            args.shm
        );
    }
    let mut cfg = NodeConfig::new(Role::Master);
    cfg.poll = args.poll;
    cfg.interrupt = interrupt.clone();
    let tap = Arc::new(CuTap::default());
    let t2 = tap.clone();
    let hooks = NodeHooks {
        tty_sink: Some(Arc::new(move |b: &[u8]| t2.feed(b))),
        syslog_sink: Some(Arc::new(|cpu: &str, line: &str| {
            crate::logger::line_to_stderr(&format!("[{cpu}] {line}"))
        })),
        syslog_queue: None,
    };
    let identity = shm.identity();
    let mut node = Node::new(cfg, hooks, shm)?;
    // A stale OK from a crashed run must not let a proxy boot on an old
    // table; a proxy we are about to spawn starts from a clean word too.
    node.reset_boot_words(spawn_now);
    let node = NodeHandle::spawn(node)?;
    let kind = if args.no_port_link {
        PortKind::Off
    } else {
        args.port_link
    };
    let (port, port_arg) = match open_port_link(&node, kind, &args.shm) {
        Ok(Some((id, arg))) => (Some(id), arg),
        Ok(None) => (None, "off".to_string()),
        Err(e) => {
            node.shutdown();
            return Err(e);
        }
    };

    let sup = RefCell::new(Supervisor {
        node: node.clone(),
        shm: args.shm.clone(),
        port_arg,
        port,
        poll: args.poll,
        spawn_mode: !args.no_spawn,
        restart: args.restart_proxy,
        child: None,
        alive: existing,
        ui: ui_tx.clone(),
        restarts: Vec::new(),
        shutting_down: false,
    });
    let stop_watch = Arc::new(AtomicBool::new(false));
    let code = (|| -> Result<std::process::ExitCode> {
        if spawn_now {
            sup.borrow_mut().spawn_proxy().map_err(anyhow::Error::msg)?;
        } else if existing.is_none() {
            log::info!(
                "waiting for a proxy: start one with `rptun proxy --shm {}`",
                args.shm
            );
        }
        let ui = ui_tx.clone();
        liveness::watch(
            &args.shm,
            "proxy",
            Duration::from_millis(200),
            stop_watch.clone(),
            move |p| {
                let _ = ui.send(Ui::Proxy(p));
            },
        )
        .context("cannot watch the proxy")?;

        // Wait (bounded) for the link, so that a script's first command
        // finds the proxy.
        let end = Instant::now() + Duration::from_secs_f64(args.wait_link.clamp(0.0, 3600.0));
        loop {
            while let Ok(ev) = ui_rx.try_recv() {
                sup.borrow_mut().on_ui(ev);
            }
            let (ready, port_ready) =
                node.call(move |n| (n.peer_ready(), port.is_none_or(|p| n.link_ready(p))))?;
            if interrupt.load(Ordering::Relaxed) || (ready && port_ready) {
                break;
            }
            if Instant::now() >= end {
                if !ready {
                    log::warn!(
                        "the link to proxy did not come up within {} s; the shell runs anyway \
                         (`rptun dump`, `rptun start proxy`)",
                        args.wait_link
                    );
                } else {
                    log::warn!(
                        "the port link to {} did not come up within {} s; the shell runs \
                         anyway (`rpmsg dump {}`)",
                        port::PORT_LINK_CPU,
                        args.wait_link,
                        port::PORT_LINK_CPU
                    );
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }

        let tty = args.script.is_none() && std::io::stdin().is_terminal();
        let (in_tx, in_rx) = channel();
        match &args.script {
            Some(s) => {
                for part in s.split(';') {
                    let _ = in_tx.send(Input::Line(part.trim().to_string()));
                }
                let _ = in_tx.send(Input::Eof);
            }
            None => {
                std::thread::Builder::new()
                    .name("rptun-stdin".into())
                    .spawn(move || {
                        let stdin = std::io::stdin();
                        for line in stdin.lock().lines() {
                            match line {
                                Ok(l) => {
                                    if in_tx.send(Input::Line(l)).is_err() {
                                        return;
                                    }
                                }
                                Err(_) => break,
                            }
                        }
                        let _ = in_tx.send(Input::Eof);
                    })
                    .context("cannot start the input thread")?;
            }
        }

        let cu_req = Cell::new(false);
        let mut sh = Shell::new();
        commands::add_rpmsg(&mut sh, &node);
        commands::add_rptun(&mut sh, &node, || sup.borrow_mut().start());
        commands::add_system(&mut sh, &node, "server", "rpserver");
        add_devices(&mut sh, &node, &cu_req);

        let mut out = std::io::stdout();
        let mut cu: Option<Receiver<Vec<u8>>> = None;
        // The proxy's prompt, held until the next line is echoed after it.
        let mut held: Vec<u8> = Vec::new();
        let mut prompt = true;
        loop {
            while let Ok(ev) = ui_rx.try_recv() {
                sup.borrow_mut().on_ui(ev);
            }
            if interrupt.load(Ordering::Relaxed) {
                let _ = writeln!(out);
                break;
            }
            if tty && prompt && cu.is_none() {
                let _ = write!(out, "server> ");
                let _ = out.flush();
                prompt = false;
            }
            let line = match in_rx.recv_timeout(Duration::from_millis(50)) {
                Ok(Input::Line(l)) => l,
                Ok(Input::Eof) | Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => continue,
            };
            prompt = true;
            if let Some(rx) = &cu {
                if !tty {
                    // the proxy's prompt and the echoed line in one write
                    let mut echo = std::mem::take(&mut held);
                    echo.extend_from_slice(line.as_bytes());
                    echo.push(b'\n');
                    let _ = out.write_all(&echo);
                }
                if line.trim() == "~." {
                    tap.close();
                    cu = None;
                    let _ = writeln!(out, "\n[back to the server shell]");
                    continue;
                }
                let mut data = line.clone().into_bytes();
                data.push(b'\n');
                let sent = node.call(move |n| n.tty_write(&data))?;
                let answered = match sent {
                    Ok(()) => cu_collect(rx, &mut out, &interrupt, tty),
                    Err(e) => {
                        let _ = writeln!(out, "cu: {e}");
                        None
                    }
                };
                if let Some(p) = answered {
                    held = p;
                } else {
                    let _ = writeln!(
                        out,
                        "\ncu: no answer from proxy within 5 s; back to the server shell"
                    );
                    tap.close();
                    cu = None;
                }
                continue;
            }
            if line.trim().is_empty() {
                continue;
            }
            if !tty {
                let _ = writeln!(out, "server> {line}");
                let _ = out.flush();
            }
            // The answer in one write: log lines from the other threads and
            // the proxy do not land inside it.
            let mut answer = Vec::new();
            let flow = sh.run_line(&line, &mut answer);
            let _ = out.write_all(&answer);
            let _ = out.flush();
            if flow == Flow::Exit {
                break;
            }
            if cu_req.replace(false) {
                let rx = tap.open();
                let _ = writeln!(
                    out,
                    "Connected to proxy's shell on /dev/ttyproxy (rpmsg-ttyproxy); type ~. to \
                     return"
                );
                let _ = node.call(|n| n.tty_write(b"\n"))?;
                if let Some(p) = cu_collect(&rx, &mut out, &interrupt, tty) {
                    held = p;
                    cu = Some(rx);
                } else {
                    let _ = writeln!(out, "cu: no answer from proxy within 5 s");
                    tap.close();
                }
            }
        }
        let _ = out.flush();
        Ok(if sh.errors() > 0 && !tty {
            std::process::ExitCode::FAILURE
        } else {
            std::process::ExitCode::SUCCESS
        })
    })();

    // Clean up whatever happened above: STOP the proxy, remove the shm
    // object (a proxy started by hand leaves when it sees that), end the
    // child we spawned.
    stop_watch.store(true, Ordering::Release);
    sup.borrow_mut().shutting_down = true;
    log::info!("exiting: stopping proxy, removing /dev/shm/{}", args.shm);
    let _ = node.call(|n| {
        if n.state() == State::Running {
            let _ = n.stop_link(Duration::from_millis(500));
        }
    });
    // By identity, so that this works even if the node thread died, and
    // never removes a newer object of the same name.
    if identity.still_linked() {
        let _ = rptun_host::shm::unlink(&args.shm);
    }
    let child = sup.borrow().child;
    if let Some(pid) = child {
        terminate(pid, &ui_rx);
    }
    node.shutdown();
    code
}

/// SIGTERM, then SIGKILL if it does not end within 2 s.
fn terminate(pid: u32, ui: &Receiver<Ui>) {
    let Some(p) = rustix::process::Pid::from_raw(pid as i32) else {
        return;
    };
    let wait_exit = |t: Duration| {
        let end = Instant::now() + t;
        while Instant::now() < end {
            match ui.recv_timeout(Duration::from_millis(20)) {
                Ok(Ui::ChildExited { pid: p2, .. }) if p2 == pid => return true,
                Ok(_) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return false,
            }
        }
        false
    };
    if rustix::process::kill_process(p, rustix::process::Signal::TERM).is_err() {
        return;
    }
    if !wait_exit(Duration::from_secs(2)) {
        log::warn!("the proxy (pid {pid}) did not exit on SIGTERM; killing it");
        let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
        wait_exit(Duration::from_secs(2));
    }
}
