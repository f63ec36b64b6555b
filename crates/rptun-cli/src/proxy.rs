//! `rptun proxy`: NuttX's `sim:rpproxy`, the remote side of the simulator.
//!
//! It maps the shm object (creating it if the server is not there yet),
//! waits for the server's boot handshake, serves entropy on the two
//! virtio-rng vdevs and is the device side of rpmsg. Its log lines go to the
//! server over rpmsg syslog once the link is up (to stderr before), and its
//! shell answers on the rpmsg tty (`cu /dev/ttyproxy` on the server). A
//! second link to the server, rpmsg over a byte stream (`--port-link`, by
//! default the Unix socket `rptun sim` listens on), makes this side `proxy2`
//! there; its services are the same. It
//! exits when the server removes the shm object, on SIGINT/SIGTERM, and (when
//! spawned by `rptun sim`) when its parent dies.
#![forbid(unsafe_code)]

use std::io::Write;
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use rptun::remoteproc::Role;
use rptun_host::entropy::GetrandomSource;
use rptun_host::shm::{self, ShmObject};
use rptun_host::sim::layout::{SHM_NAME, SHM_SIZE};
use rptun_host::sim::liveness::{self, Beacon};
use rptun_host::sim::node::{Node, NodeConfig, NodeHandle, NodeHooks};
use rptun_host::sim::port;
use rptun_host::sim::syslog::SyslogQueue;
use rptun_host::stream::serial::parse_spec;
use rptun_host::stream::{ConnectStream, HostStream, SerialStream, StreamAddr};

use crate::commands::{self, count_arg, hexdump};
use crate::shell::{failed, Flow, Shell};

/// Options of `rptun proxy`.
#[derive(Debug, Clone, clap::Args)]
pub struct ProxyArgs {
    /// Name of the POSIX shm object (/dev/shm/NAME).
    #[arg(long, default_value = SHM_NAME)]
    pub shm: String,
    /// Busy-poll the doorbells instead of sleeping on them.
    #[arg(long)]
    pub poll: bool,
    /// (internal) started by `rptun sim`: exit when the parent dies.
    #[arg(long, hide = true)]
    pub spawned: bool,
    /// The second link to the server, rpmsg over a byte stream: `auto` (the
    /// Unix socket `rptun sim` listens on for this shm object),
    /// `unix:PATH`, `tcp:HOST:PORT`, a serial device or pty slave
    /// (`/dev/pts/N`), or `off`.
    #[arg(long, default_value = "auto", value_name = "STREAM")]
    pub port_link: String,
}

/// Opens the proxy's end of the port link and attaches it to the node; a
/// stream that cannot be opened is reported and left out (the shared-memory
/// link works without it).
fn open_port_link(node: &NodeHandle, spec: &str, shm: &str) -> Result<()> {
    let stream: port::SimStream = match spec {
        "off" => return Ok(()),
        "auto" => Box::new(ConnectStream::new(&StreamAddr::Unix(
            port::default_socket_path(shm),
        ))),
        s if s.starts_with("unix:") || s.starts_with("tcp:") => {
            let addr: StreamAddr = s.parse()?;
            Box::new(ConnectStream::new(&addr))
        }
        s if s.starts_with('/') => {
            let (path, baud) = parse_spec(s).map_err(anyhow::Error::msg)?;
            match SerialStream::open(&path, baud) {
                Ok(st) => Box::new(st),
                Err(e) => {
                    log::warn!(
                        "cannot open {} for the port link: {e}; running without it",
                        path.display()
                    );
                    return Ok(());
                }
            }
        }
        s => anyhow::bail!(
            "bad --port-link `{s}`: use auto, off, unix:PATH, tcp:HOST:PORT or a device path \
             such as /dev/pts/3"
        ),
    };
    let what = stream.describe();
    // This side is proxy2 on that link; its peer is the server.
    port::attach(
        node,
        stream,
        port::PORT_LINK_CPU,
        "server",
        PORT_BUFFERS,
        PORT_BUFFER_SIZE,
    )?;
    log::info!("port link to server on {what}");
    Ok(())
}

/// Port link buffers (as the server's: 8 of 2048 bytes each way).
const PORT_BUFFERS: usize = 8;
/// Port link buffer size, port header included.
const PORT_BUFFER_SIZE: usize = 2048;

/// The proxy's shell, fed by the rpmsg tty, answering on it.
fn tty_shell(node: NodeHandle, rx: Receiver<Vec<u8>>) {
    let mut sh = Shell::new();
    commands::add_rpmsg(&mut sh, &node);
    commands::add_system(&mut sh, &node, "proxy", "rpproxy");
    sh.add(
        "hexdump",
        "/dev/random [count=N]",
        "dump bytes of this side's /dev/random (the OS generator)",
        |a, o| {
            let path = a.first().copied().ok_or("missing argument <file>")?;
            if path != "/dev/random" {
                return Err(format!("no such device `{path}`; try /dev/random").into());
            }
            let mut data = vec![0u8; count_arg(&a[1..])?];
            use rptun::devices::rng::EntropySource;
            GetrandomSource::new().fill(&mut data).map_err(failed)?;
            hexdump(o, path, &data);
            Ok(())
        },
    );
    let mut pending = Vec::new();
    for bytes in rx {
        pending.extend_from_slice(&bytes);
        while let Some(pos) = pending.iter().position(|&b| b == b'\n') {
            let raw: Vec<u8> = pending.drain(..=pos).collect();
            let line = String::from_utf8_lossy(&raw).trim().to_string();
            let mut out = Vec::new();
            if !line.is_empty() && sh.run_line(&line, &mut out) == Flow::Exit {
                let _ = writeln!(
                    out,
                    "exit: this is proxy's shell on /dev/ttyproxy; type ~. to return to the \
                     server"
                );
            }
            out.extend_from_slice(b"proxy> ");
            // Service the link first: log lines the command wrote go out
            // over syslog before its answer on the tty.
            let answered = node.call(move |n| {
                n.step();
                n.tty_write(&out)
            });
            if answered.is_err() {
                return;
            }
        }
        if pending.len() > 4096 {
            pending.clear();
        }
    }
}

/// Runs the proxy until the server goes away or a signal arrives.
pub fn run(args: &ProxyArgs) -> Result<()> {
    let interrupt = crate::signals::install()?;
    if args.spawned {
        // Spawned by `rptun sim`: never outlive it.
        rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM))
            .context("cannot ask for the parent-death signal")?;
        if rustix::process::getppid().is_none_or(|p| p.as_raw_nonzero().get() == 1) {
            return Ok(());
        }
    }
    let queue = SyslogQueue::new(1024, |l| {
        crate::logger::line_to_stderr(&format!("[proxy] {l}"))
    });
    crate::logger::init("proxy", Some(queue.clone()));
    let local_log = queue.clone();
    let _beacon = Beacon::bind(&args.shm, "proxy")?;
    // Tell a running server we exist, so it sees us die however short we
    // live (a server started later watches our beacon instead).
    let _attached = liveness::attach(&args.shm, "server", "proxy");
    let shm = ShmObject::open_or_create(&args.shm, SHM_SIZE)?;
    let identity = shm.identity();
    log::info!(
        "pid {}, /dev/shm/{}: waiting for the server",
        std::process::id(),
        args.shm
    );
    let (tty_tx, tty_rx) = channel::<Vec<u8>>();
    let tty_tx = Mutex::new(tty_tx);
    let hooks = NodeHooks {
        tty_sink: Some(Arc::new(move |b: &[u8]| {
            let _ = tty_tx
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .send(b.to_vec());
        })),
        syslog_sink: None,
        syslog_queue: Some(queue),
    };
    let mut cfg = NodeConfig::new(Role::Remote);
    cfg.poll = args.poll;
    cfg.interrupt = interrupt.clone();
    let node = NodeHandle::spawn(Node::new(cfg, hooks, shm)?)?;
    if let Err(e) = open_port_link(&node, &args.port_link, &args.shm) {
        node.shutdown();
        return Err(e);
    }
    let n2 = node.clone();
    std::thread::Builder::new()
        .name("rptun-nsh".into())
        .spawn(move || tty_shell(n2, tty_rx))
        .context("cannot start the tty shell")?;
    while !interrupt.load(std::sync::atomic::Ordering::Relaxed) && !node.is_finished() {
        std::thread::sleep(Duration::from_millis(50));
    }
    // The last lines go to stderr: the link may not carry them any more.
    local_log.disconnect();
    match node.exit_reason() {
        Some(why) => log::info!("{why}; exiting"),
        None => log::info!("exiting"),
    }
    node.shutdown();
    // The last one out removes the object (a server, if alive, owns it).
    if liveness::probe(&args.shm, "server").is_none() && identity.still_linked() {
        let _ = shm::unlink(&args.shm);
    }
    Ok(())
}
