//! `rptun ivshmem`: boots the rptun firmware in QEMU (Cortex-A53 `virt`),
//! becomes the master of the link over an ivshmem file, and gives the
//! simulator's shell.
//!
//! ```text
//! rptun ivshmem                       # QEMU + firmware, then the shell on stdin
//! rptun ivshmem -c 'rpmsg ping all 10 1520 3 0; rptun stop all'
//! ```
//!
//! The runtime is the simulator server's ([`rptun_host::sim::node`]) over the
//! 4 MiB ivshmem object, with a [`QemuRunner`] that starts, watches and
//! stops QEMU; the shell commands are the simulator's
//! ([`crate::commands`]): `rpmsg ping|dump|test`, `rptun
//! start|stop|reset|panic|dump`, `hexdump /dev/random1`, `ls`, `ps`...
//! Leaving the shell (`exit`, end of input, Ctrl-C) stops the link (the
//! firmware powers off) and removes the shared-memory file.
#![forbid(unsafe_code)]

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{channel, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use rptun::remoteproc::instance::State;
use rptun::remoteproc::shmem::ivshmem as consts;
use rptun_host::ivshmem::{node_config, QemuConfig, QemuRunner, UartSink};
use rptun_host::shm::ShmObject;
use rptun_host::sim::node::{Node, NodeHandle, NodeHooks};

use crate::commands;
use crate::shell::{Flow, Shell};

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
    /// Run these commands (lines, or commands separated by `;`) instead of
    /// reading stdin, then leave.
    #[arg(short = 'c', long = "script", value_name = "COMMANDS")]
    pub commands: Option<String>,
    /// Extra QEMU arguments (after `--`).
    #[arg(last = true)]
    pub qemu_args: Vec<String>,
}

/// Runs `rptun ivshmem`.
pub fn run(a: &IvshmemArgs) -> Result<ExitCode> {
    let interrupt = crate::signals::install()?;
    crate::logger::init("server", None);
    let period = Duration::from_micros(a.poll_us.max(1));
    let runner = if a.no_qemu {
        None
    } else {
        if which(&a.qemu).is_none() {
            bail!(
                "{} not found; install QEMU with scripts/install-qemu.sh (Debian bookworm: \
                 qemu-system-arm from bookworm-backports) or pass --qemu PATH",
                a.qemu
            );
        }
        let qemu = QemuConfig {
            binary: a.qemu.clone(),
            firmware: a
                .firmware
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_FIRMWARE)),
            extra_args: a.qemu_args.clone(),
            uart: match &a.uart_log {
                Some(p) => UartSink::File(p.clone()),
                None => UartSink::Stdout,
            },
        };
        Some(QemuRunner::new(qemu, &a.shm, consts::SHM_SIZE)?)
    };
    let shm = ShmObject::open_or_create(&a.shm, consts::SHM_SIZE)
        .with_context(|| format!("opening /dev/shm/{}", a.shm))?;
    // The object is this link's: removed at exit when this process created
    // it or ran the QEMU that used it (a file left behind by an interrupted
    // run is adopted by the next one, and removed then).
    let remove_at_exit = shm.created() || runner.is_some();
    let identity = shm.identity();
    let mut cfg = node_config(period, Duration::from_secs(a.boot_timeout.max(1)));
    cfg.interrupt = interrupt.clone();
    let hooks = NodeHooks {
        syslog_sink: Some(Arc::new(|cpu: &str, line: &str| {
            crate::logger::line_to_stderr(&format!("[{cpu}] {line}"))
        })),
        ..NodeHooks::default()
    };
    let mut node = Node::new(cfg, hooks, shm)?;
    // A stale word from an earlier run must not pass for this remote's.
    node.reset_boot_words(true);
    if let Some(r) = runner {
        node.set_runner(Box::new(r));
    }
    let node = NodeHandle::spawn(node)?;
    println!(
        "rptun ivshmem: master \"server\" on /dev/shm/{} ({} KiB), polling every {} us",
        a.shm,
        consts::SHM_SIZE / 1024,
        period.as_micros()
    );

    let start = {
        let node = node.clone();
        move || -> Result<String, String> {
            let st = node.call(|n| n.state()).map_err(|e| e.to_string())?;
            if st == State::Running {
                return Err(
                    "proxy is already running; `rptun stop proxy` first, or `rptun reset proxy \
                     0` to restart its link"
                        .into(),
                );
            }
            node.call(|n| n.ensure_started())
                .map_err(|e| e.to_string())??;
            let ready = node
                .call(|n| n.wait_until(Duration::from_secs(10), |n| n.peer_ready()))
                .map_err(|e| e.to_string())?;
            if ready {
                Ok("proxy started; link up".into())
            } else {
                Err(
                    "the remoteproc link started but proxy did not bind its rpmsg endpoints \
                     within 10 s; see `rpmsg dump proxy` and the firmware's UART output"
                        .into(),
                )
            }
        }
    };

    let code = (|| -> Result<ExitCode> {
        let first = start.clone();
        match first() {
            Ok(m) => println!("{m}"),
            Err(e) => {
                println!("rptun start proxy: {e} (the shell runs anyway; `rptun start proxy`)")
            }
        }

        let mut sh = Shell::new();
        commands::add_rpmsg(&mut sh, &node);
        commands::add_rptun(&mut sh, &node, start);
        commands::add_system(&mut sh, &node, "server", "ivshmem");
        commands::add_hexdump(&mut sh, &node);

        let tty = a.commands.is_none() && std::io::stdin().is_terminal();
        let (tx, rx) = channel::<Option<String>>();
        match &a.commands {
            Some(c) => {
                for line in c.lines() {
                    let _ = tx.send(Some(line.to_string()));
                }
                let _ = tx.send(None);
            }
            None => {
                std::thread::Builder::new()
                    .name("rptun-stdin".into())
                    .spawn(move || {
                        for line in std::io::stdin().lock().lines() {
                            match line {
                                Ok(l) => {
                                    if tx.send(Some(l)).is_err() {
                                        return;
                                    }
                                }
                                Err(_) => break,
                            }
                        }
                        let _ = tx.send(None);
                    })
                    .context("cannot start the input thread")?;
            }
        }
        let mut out = std::io::stdout();
        let mut prompt = true;
        loop {
            if interrupt.load(Ordering::Relaxed) {
                let _ = writeln!(out);
                break;
            }
            if let Some(why) = node.exit_reason() {
                log::error!("the node stopped: {why}");
                break;
            }
            if tty && prompt {
                let _ = write!(out, "server> ");
                let _ = out.flush();
                prompt = false;
            }
            let line = match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(Some(l)) => l,
                Ok(None) | Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => continue,
            };
            prompt = true;
            if line.trim().is_empty() {
                continue;
            }
            if !tty {
                let _ = writeln!(out, "server> {}", line.trim());
                let _ = out.flush();
            }
            // The answer in one write: log and UART lines from the other
            // threads do not land inside it.
            let mut answer = Vec::new();
            let flow = sh.run_line(&line, &mut answer);
            let _ = out.write_all(&answer);
            let _ = out.flush();
            if flow == Flow::Exit {
                break;
            }
        }
        Ok(if sh.errors() > 0 && !tty {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        })
    })();

    // Whatever happened above: stop the firmware (STOP; QEMU powers off, or
    // is killed), remove the shm object, end the node.
    log::info!("exiting: stopping proxy, removing /dev/shm/{}", a.shm);
    let _ = node.call(|n| {
        if matches!(n.state(), State::Running | State::Crashed) {
            if let Err(e) = n.stop_link(Duration::from_secs(2)) {
                log::warn!("stopping proxy: {e}");
            }
        }
    });
    node.shutdown();
    if remove_at_exit && identity.still_linked() {
        let _ = rptun_host::shm::unlink(&a.shm);
    }
    println!("rptun ivshmem: done");
    code
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
