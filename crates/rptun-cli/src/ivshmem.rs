//! `rptun ivshmem`: boots the rptun firmware in QEMU (Cortex-A53 `virt`),
//! becomes the master of the link over an ivshmem file, and gives a shell.
//!
//! ```text
//! rptun ivshmem                       # QEMU + firmware, then the shell on stdin
//! rptun ivshmem -c 'rpmsg ping all 10 1520 3 0; rptun stop all'
//! ```
//!
//! The shell reads commands from stdin (one or more per line, separated by
//! `;`) and leaves at `exit` or end of input; leaving stops the link (the
//! firmware powers off) and removes the shared-memory file.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use rptun::remoteproc::instance::Event;
use rptun::remoteproc::shmem::ivshmem as consts;
use rptun::rpmsg::services::ping::{ping_cpu, PingParams};
use rptun::rpmsg::services::test::send_hold_rx;
use rptun::rpmsg::wait::{deadline, Clock, Wait};
use rptun::rpmsg::{RemoteCpu, ADDR_ANY};
use rptun_host::ivshmem::{
    header, run_poller, CounterClock, IvshmemConfig, IvshmemMaster, IvshmemNode, QemuConfig,
    UartSink,
};

use crate::shell::{arg, failed, Flow, Shell};

/// Where `cargo build --release` in firmware/qemu-virt puts the image.
const DEFAULT_FIRMWARE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../firmware/qemu-virt/target/aarch64-unknown-none/release/rptun-fw-qemu-virt"
);

/// Options of `rptun ivshmem`.
#[derive(Args, Debug)]
pub struct IvshmemArgs {
    /// The firmware ELF to boot (default: the release build of
    /// firmware/qemu-virt).
    #[arg(long, value_name = "PATH")]
    pub firmware: Option<PathBuf>,
    /// The QEMU binary.
    #[arg(long, value_name = "PATH", default_value = "qemu-system-aarch64")]
    pub qemu: String,
    /// Do not start QEMU: wait for a remote started by someone else on the
    /// same shared-memory file.
    #[arg(long)]
    pub no_qemu: bool,
    /// Name of the shared-memory object in /dev/shm.
    #[arg(long, value_name = "NAME", default_value = consts::SHM_NAME)]
    pub shm: String,
    /// Doorbell polling period in microseconds (ivshmem-plain has no
    /// interrupt; NuttX polls on a similar period).
    #[arg(long, value_name = "US", default_value_t = consts::POLL_PERIOD_US)]
    pub poll_us: u64,
    /// Longest wait for the firmware to answer the boot handshake, seconds.
    #[arg(long, value_name = "S", default_value_t = 60)]
    pub boot_timeout: u64,
    /// Send QEMU's UART output to this file instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub uart_log: Option<PathBuf>,
    /// Run these commands (separated by `;`) instead of reading stdin, then
    /// leave.
    #[arg(short = 'c', value_name = "COMMANDS")]
    pub commands: Option<String>,
    /// Extra QEMU arguments (after `--`).
    #[arg(last = true)]
    pub qemu_args: Vec<String>,
}

/// Runs `rptun ivshmem`.
pub fn run(a: &IvshmemArgs) -> Result<()> {
    let period = Duration::from_micros(a.poll_us.max(1));
    let mut cfg = IvshmemConfig {
        shm_name: a.shm.clone(),
        boot_timeout: Duration::from_secs(a.boot_timeout.max(1)),
        poll_period: period,
        ..IvshmemConfig::default()
    };
    if !a.no_qemu {
        let firmware = a
            .firmware
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_FIRMWARE));
        if which(&a.qemu).is_none() {
            bail!(
                "{} not found; install QEMU with scripts/install-qemu.sh (Debian bookworm: \
                 qemu-system-arm from bookworm-backports) or pass --qemu PATH",
                a.qemu
            );
        }
        cfg.qemu = Some(QemuConfig {
            binary: a.qemu.clone(),
            firmware,
            extra_args: a.qemu_args.clone(),
            uart: match &a.uart_log {
                Some(p) => UartSink::File(p.clone()),
                None => UartSink::Stdout,
            },
        });
    }
    let platform = IvshmemMaster::new(cfg).context("setting up the ivshmem master")?;
    let cancel = platform.cancel_flag();
    let node = Arc::new(Mutex::new(IvshmemNode::new(platform)));
    let out = &mut std::io::stdout();
    println!(
        "rptun ivshmem: master \"server\" on /dev/shm/{} ({} KiB), polling every {} us",
        a.shm,
        consts::SHM_SIZE / 1024,
        period.as_micros()
    );
    let started = lock(&node).start();
    if let Err(e) = &started {
        println!("rptun start proxy: {e} (the shell still runs; try `rptun start all`)");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let poller = run_poller(
        node.clone(),
        stop.clone(),
        period,
        Duration::from_millis(20),
        |e| match e {
            Event::Command(c) => println!("rptun: the remote sent {c:?}"),
            Event::VdevFailed { index, id, error } => {
                println!("rptun: vdev {index} (virtio id {id}) failed: {error}")
            }
            _ => {}
        },
    );
    let mut shell = shell(node.clone(), period);
    match &a.commands {
        Some(c) => {
            for line in c.split(['\n']) {
                println!("server> {}", line.trim());
                if shell.run_line(line, out) == Flow::Exit {
                    break;
                }
            }
        }
        None => {
            let stdin = std::io::stdin();
            let interactive = stdin.is_terminal();
            loop {
                if interactive {
                    print!("server> ");
                    let _ = out.flush();
                }
                let mut line = String::new();
                match stdin.lock().read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                if !interactive {
                    println!("server> {}", line.trim_end());
                }
                if shell.run_line(&line, out) == Flow::Exit {
                    break;
                }
            }
        }
    }
    drop(shell);
    cancel.store(true, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let _ = poller.join();
    let mut n = lock(&node);
    if matches!(
        n.instance.state(),
        rptun::remoteproc::instance::State::Running | rptun::remoteproc::instance::State::Crashed
    ) {
        if let Err(e) = n.stop() {
            println!("rptun stop proxy: {e}");
        }
    }
    println!("rptun ivshmem: done");
    Ok(())
}

fn lock(node: &Arc<Mutex<IvshmemNode>>) -> std::sync::MutexGuard<'_, IvshmemNode> {
    node.lock().unwrap_or_else(|p| p.into_inner())
}

fn which(bin: &str) -> Option<PathBuf> {
    if bin.contains('/') {
        let p = PathBuf::from(bin);
        return p.is_file().then_some(p);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(bin))
            .find(|p| p.is_file())
    })
}

/// Waits (bounded) until the ping endpoint on the link to `cpu` is bound
/// to the peer's, polling the bus meanwhile.
fn wait_bound(
    node: &mut IvshmemNode,
    cpu: &RemoteCpu,
    wait: &mut CounterClock,
    timeout: Duration,
) -> Result<(), String> {
    let end = deadline(wait, timeout);
    loop {
        let lid = node
            .bus
            .link_by_cpu(cpu)
            .ok_or_else(|| format!("no rpmsg link to `{cpu}`"))?;
        let ping = node.ping;
        if let Some((svc, link)) = node.bus.service_and_link_mut(&ping, lid) {
            let bound = svc
                .endpoint(lid)
                .and_then(|e| link.endpoint(e))
                .is_some_and(|i| i.dest != ADDR_ANY);
            if bound {
                return Ok(());
            }
        }
        if wait.now_ns() >= end {
            return Err(format!(
                "the peer's rpmsg-ping endpoint did not bind within {} s (is the firmware's \
                 ping service running?)",
                timeout.as_secs()
            ));
        }
        wait.wait_until(end);
        let _ = node.bus.poll(lid);
    }
}

/// True when `cpu` (a shell argument) names the link's remote cpu or is
/// `all`.
fn cpu_matches(arg: &str, remote: &str) -> bool {
    arg == "all" || arg == remote
}

fn shell(node: Arc<Mutex<IvshmemNode>>, period: Duration) -> Shell<'static> {
    let mut sh = Shell::new();
    let n = node.clone();
    sh.add(
        "rpmsg ping",
        "<cpu|all> <times> <len> <cmd> <sleep_ms>",
        "ping the peer's rpmsg-ping endpoint (cmd bits: 1 ack, 2 check, 4 random length)",
        move |a, o| {
            let cpu = *a.first().ok_or("missing argument <cpu|all>")?;
            let times: u32 = arg(a, 1, "times")?;
            let len: usize = arg(a, 2, "len")?;
            let cmd: u32 = arg(a, 3, "cmd")?;
            let sleep: u64 = arg(a, 4, "sleep_ms")?;
            let params = PingParams::new(times, len)
                .ack(cmd & 1 != 0)
                .check(cmd & 2 != 0)
                .random_len(cmd & 4 != 0)
                .sleep(Duration::from_millis(sleep))
                .timeout(Duration::from_secs(5));
            let mut g = lock(&n);
            let node = &mut *g;
            let cpus: Vec<RemoteCpu> = node
                .bus
                .link_ids()
                .into_iter()
                .filter_map(|id| node.bus.link(id).map(|l| l.remote_cpu()))
                .filter(|c| cpu_matches(cpu, c.as_str()))
                .collect();
            if cpus.is_empty() {
                return Err(failed(format!(
                    "no rpmsg link to `{cpu}` (is the firmware up? see `rptun dump all`)"
                )));
            }
            let mut wait = CounterClock::new(node.region(), period);
            for c in cpus {
                if let Err(e) = wait_bound(node, &c, &mut wait, Duration::from_secs(10)) {
                    let _ = writeln!(o, "rpmsg ping {c}: FAILED: {e}");
                    continue;
                }
                match ping_cpu(&mut node.bus, &node.ping, &c, &params, &mut wait) {
                    Ok(r) => {
                        let _ = write!(o, "{r}");
                    }
                    Err(e) => {
                        let _ = writeln!(o, "rpmsg ping {c}: FAILED: {e}");
                    }
                }
            }
            Ok(())
        },
    );
    let n = node.clone();
    sh.add(
        "rpmsg dump",
        "<cpu|all>",
        "links, vrings, endpoints and buffers",
        move |a, o| {
            let cpu = *a.first().ok_or("missing argument <cpu|all>")?;
            let g = lock(&n);
            if cpu == "all" {
                let _ = write!(o, "{}", g.bus.dump());
            } else {
                let c = RemoteCpu::new(cpu).map_err(|e| e.to_string())?;
                match g.bus.dump_cpu(&c) {
                    Some(d) => {
                        let _ = write!(o, "{d}");
                    }
                    None => return Err(failed(format!("no rpmsg link to `{cpu}`"))),
                }
            }
            Ok(())
        },
    );
    let n = node.clone();
    sh.add(
        "rpmsg test",
        "<cpu|all>",
        "send every TX buffer to the peer's rpmsg-test endpoint (it holds and releases them)",
        move |a, o| {
            let cpu = *a.first().ok_or("missing argument <cpu|all>")?;
            let mut g = lock(&n);
            let node = &mut *g;
            let test = node.test;
            let mut any = false;
            for id in node.bus.link_ids() {
                let Some((svc, link)) = node.bus.service_and_link_mut(&test, id) else {
                    continue;
                };
                if !cpu_matches(cpu, link.remote_cpu().as_str()) {
                    continue;
                }
                any = true;
                let Some(ept) = svc.endpoint(id) else {
                    let _ = writeln!(o, "rpmsg test: no rpmsg-test endpoint on this link");
                    continue;
                };
                match send_hold_rx(link, ept) {
                    Ok(k) => {
                        let _ = writeln!(o, "rpmsg test {}: sent {k} buffers", link.remote_cpu());
                    }
                    Err(e) => {
                        let _ = writeln!(o, "rpmsg test {}: FAILED: {e}", link.remote_cpu());
                    }
                }
            }
            if !any {
                return Err(failed(format!("no rpmsg link to `{cpu}`")));
            }
            Ok(())
        },
    );
    for (word, help) in [
        (
            "start",
            "start (or restart) the remote: table, QEMU, handshake, vdevs",
        ),
        (
            "stop",
            "stop the remote (STOP in the mailbox; the firmware powers off)",
        ),
        (
            "reset",
            "ask the remote to restart its link (RESET in the mailbox)",
        ),
        ("panic", "ask the remote to panic (PANIC in the mailbox)"),
        (
            "dump",
            "life-cycle state, vdevs and the ivshmem header words",
        ),
    ] {
        let n = node.clone();
        sh.add(&format!("rptun {word}"), "<cpu|all>", help, move |a, o| {
            let cpu = *a.first().ok_or("missing argument <cpu|all>")?;
            let mut g = lock(&n);
            let remote = g.instance.remote_cpu();
            if !cpu_matches(cpu, remote.as_str()) {
                return Err(failed(format!(
                    "no remote cpu `{cpu}`; this link's remote is `{remote}`"
                )));
            }
            let r = match word {
                "start" => g.start(),
                "stop" => g.stop(),
                "reset" => {
                    let before = g.remote_restarts();
                    let r = g.instance.reset_remote(0);
                    drop(g);
                    if r.is_ok() {
                        // The remote restarts its link and asks for a new
                        // handshake; the poller runs it. Wait for that.
                        let end = std::time::Instant::now() + Duration::from_secs(30);
                        loop {
                            std::thread::sleep(Duration::from_millis(5));
                            let g = lock(&n);
                            if g.remote_restarts() > before && g.rpmsg_up() {
                                break;
                            }
                            if std::time::Instant::now() > end {
                                let _ = writeln!(
                                    o,
                                    "rptun reset {remote}: FAILED: the remote did not restart its \
                                     link within 30 s"
                                );
                                return Ok(());
                            }
                        }
                    }
                    g = lock(&n);
                    r
                }
                "panic" => g.instance.panic_remote(),
                _ => {
                    let h = header(g.region()).map_err(|e| e.to_string())?;
                    let _ = writeln!(
                        o,
                        "remote {remote}: {}, seqs {} seqm {} boots {:#x} bootm {:#x}",
                        g.instance.state(),
                        h[0],
                        h[1],
                        h[2],
                        h[3]
                    );
                    for v in g.instance.vdevs() {
                        let _ = writeln!(
                            o,
                            "  vdev {} id {} role {:?} notifyid {:?}: {:?}",
                            v.index, v.id, v.role, v.notifyid, v.state
                        );
                    }
                    Ok(())
                }
            };
            match r {
                Ok(()) => {
                    if word != "dump" {
                        let _ = writeln!(o, "rptun {word} {remote}: ok");
                    }
                    Ok(())
                }
                Err(e) => {
                    let _ = writeln!(o, "rptun {word} {remote}: FAILED: {e}");
                    Ok(())
                }
            }
        });
    }
    let n = node.clone();
    sh.add(
        "hexdump",
        "/dev/random<N> [len]",
        "read len (default 64) bytes from the remote's virtio-rng N (0: the first entropy vdev)",
        move |a, o| {
            let dev = *a.first().ok_or("missing argument /dev/random<N>")?;
            let idx: usize = dev
                .strip_prefix("/dev/random")
                .and_then(|k| k.parse().ok())
                .ok_or_else(|| format!("`{dev}` is not /dev/random<N>"))?;
            let len: usize = if a.len() > 1 { arg(a, 1, "len")? } else { 64 };
            if len == 0 || len > 1 << 20 {
                return Err("<len> must be 1..=1048576".into());
            }
            let mut g = lock(&n);
            let node = &mut *g;
            let mut clock = CounterClock::new(node.region(), period);
            let end = deadline(&mut clock, Duration::from_secs(10));
            let count = node.rngs().len();
            let Some((_, rng)) = node.rngs().get_mut(idx) else {
                return Err(failed(format!(
                    "no {dev}: the remote serves {count} virtio-rng device(s) (is the link up?)"
                )));
            };
            let mut buf = vec![0u8; len];
            let r = rng.read(&mut buf, || {
                let next = clock.now_ns().saturating_add(1_000_000).min(end);
                clock.wait_until(next);
                clock.now_ns() < end
            });
            if let Err(e) = r {
                let _ = writeln!(o, "hexdump {dev}: FAILED: {e}");
                return Ok(());
            }
            let _ = writeln!(o, "{dev} at 00000000:");
            for (i, chunk) in buf.chunks(16).enumerate() {
                let hex: String = chunk.iter().map(|b| format!("{b:02x} ")).collect();
                let text: String = chunk
                    .iter()
                    .map(|&b| if b.is_ascii_graphic() { b as char } else { '.' })
                    .collect();
                let _ = writeln!(o, "{:04x}: {hex:<48} {text}", i * 16);
            }
            Ok(())
        },
    );
    sh.add("sleep", "<ms>", "wait (scripts)", |a, _o| {
        let ms: u64 = arg(a, 0, "ms")?;
        std::thread::sleep(Duration::from_millis(ms));
        Ok(())
    });
    sh
}
