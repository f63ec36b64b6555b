//! The ivshmem platform, host side: this process is the **master** of a
//! remote running in QEMU (the `firmware/qemu-virt` image) and shares a file
//! in `/dev/shm` with it, which QEMU exposes to the guest as BAR2 of an
//! `ivshmem-plain` PCI device (docs/IVSHMEM.md).
//!
//! The master's runtime is the simulator's ([`crate::sim::node`]): the same
//! node, table, boot handshake and services, over the 4 MiB object, with
//! - [`QemuRunner`]: the node's [`RemoteRunner`]: starts QEMU once the table
//!   is published, watches it while the handshake runs (and afterwards: a
//!   QEMU that exits marks the link crashed), and stops it (STOP in the
//!   command mailbox, then power-off, then kill if it hangs);
//! - [`node_config`]: the node's settings (cpu names, doorbell polling
//!   period: ivshmem-plain has no doorbell interrupt, so every sleep is
//!   bounded by the period);
//! - [`Qemu`]: a QEMU child process whose UART output goes to a sink.
//!
//! Everything is bounded: the handshake by the node's boot timeout, a stop
//! by [`QemuRunner::stop_timeout`]; dropping the runner kills QEMU.
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command as Process, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rptun::remoteproc::mailbox::{Command, Mailbox};
use rptun::remoteproc::shmem::{self, ivshmem, SeqNotifier};
use rptun::remoteproc::Role;
use rptun::shm::Region;

use crate::sim::node::NodeConfig;
use crate::sim::platform::RemoteRunner;
use crate::sim::table::SimTableConfig;

/// The settings of the master's node over ivshmem: cpus
/// [`MASTER_CPU`](ivshmem::MASTER_CPU) and [`REMOTE_CPU`](ivshmem::REMOTE_CPU),
/// every sleep bounded by `poll_period` (the firmware only increments its
/// counter, it cannot wake a futex), `boot_timeout` for the handshake.
pub fn node_config(poll_period: Duration, boot_timeout: Duration) -> NodeConfig {
    let mut cfg = NodeConfig::new(Role::Master);
    cfg.names = SimTableConfig {
        host: ivshmem::MASTER_CPU.into(),
        remote: ivshmem::REMOTE_CPU.into(),
        ..SimTableConfig::default()
    };
    cfg.max_sleep = poll_period.max(Duration::from_micros(1));
    cfg.boot_timeout = boot_timeout;
    cfg
}

/// Asks the remote to stop: STOP in the command mailbox (the reserved words
/// of the table at [`RSC`](shmem::RSC)), then a ring.
pub fn post_stop(region: &Region) {
    let posted =
        Mailbox::new(region.clone(), Role::Master, shmem::RSC).and_then(|m| m.post(Command::Stop));
    if let Err(e) = posted {
        log::warn!("ivshmem: cannot post STOP: {e}");
    }
    let _ = SeqNotifier::new(region.clone(), true).ring();
}

/// Runs the firmware in QEMU for the master's node (see the module docs).
pub struct QemuRunner {
    cfg: QemuConfig,
    shm_name: String,
    shm_size: usize,
    /// Longest wait for QEMU to power off after STOP before it is killed.
    pub stop_timeout: Duration,
    qemu: Option<Qemu>,
}

impl QemuRunner {
    /// A runner of `cfg` on `/dev/shm/{shm_name}` of `shm_size` bytes;
    /// checks that the firmware image exists. Nothing starts before the
    /// node starts the link.
    pub fn new(cfg: QemuConfig, shm_name: &str, shm_size: usize) -> Result<Self, IvshmemError> {
        if !cfg.firmware.is_file() {
            return Err(IvshmemError::NoFirmware(cfg.firmware.clone()));
        }
        Ok(QemuRunner {
            cfg,
            shm_name: shm_name.into(),
            shm_size,
            stop_timeout: Duration::from_secs(10),
            qemu: None,
        })
    }
}

impl RemoteRunner for QemuRunner {
    fn start(&mut self, _region: &Region) -> Result<(), String> {
        if self.qemu.as_mut().is_some_and(|q| q.exited().is_none()) {
            return Ok(());
        }
        let args = self.cfg.args(&self.shm_name, self.shm_size);
        log::info!("starting {} {}", self.cfg.binary, args.join(" "));
        self.qemu = Some(
            Qemu::spawn(&self.cfg.binary, &args, self.cfg.uart.clone())
                .map_err(|e| e.to_string())?,
        );
        Ok(())
    }

    fn exited(&mut self) -> Option<String> {
        let status = self.qemu.as_mut()?.exited()?;
        Some(format!(
            "QEMU exited ({status}); see its output (wrong firmware image? a machine option \
             QEMU does not know?)"
        ))
    }

    fn stop(&mut self, region: &Region) {
        let Some(mut q) = self.qemu.take() else {
            return;
        };
        if q.exited().is_some() {
            return;
        }
        post_stop(region);
        match q.wait_timeout(self.stop_timeout) {
            Some(s) => log::info!("ivshmem: QEMU exited ({s})"),
            None => {
                log::warn!(
                    "ivshmem: the firmware did not power off within {} s after STOP; killing QEMU",
                    self.stop_timeout.as_secs()
                );
                q.kill();
            }
        }
    }

    fn timeout_hint(&self, secs: u64) -> String {
        IvshmemError::Timeout(secs).to_string()
    }
}

/// Errors of the ivshmem platform.
#[derive(Debug, thiserror::Error)]
pub enum IvshmemError {
    /// QEMU could not be started.
    #[error(
        "cannot start {binary}: {err}; install QEMU with scripts/install-qemu.sh (Debian: \
         qemu-system-arm from bookworm-backports) or pass --qemu PATH"
    )]
    QemuSpawn {
        /// The binary.
        binary: String,
        /// OS error.
        err: std::io::Error,
    },
    /// The firmware image does not exist.
    #[error(
        "firmware image {0} not found; build it with `cd firmware/qemu-virt && cargo build \
         --release` (needs `rustup target add aarch64-unknown-none`) or pass --firmware PATH"
    )]
    NoFirmware(PathBuf),
    /// The firmware did not answer in time.
    #[error(
        "the firmware did not answer the boot handshake within {0} s; is the image the rptun \
         proxy firmware, and does QEMU use the same shared-memory file?"
    )]
    Timeout(u64),
}

/// Where QEMU's UART (and QEMU's own messages) go.
#[derive(Clone)]
pub enum UartSink {
    /// Printed to this process's stdout; lines that are not the firmware's
    /// own (`[proxy] ...`) are prefixed with `[qemu] `.
    Stdout,
    /// Appended to a file, prefixed the same way.
    File(PathBuf),
    /// Handed to a closure, one line at a time (tests).
    Lines(Arc<dyn Fn(&str) + Send + Sync>),
}

/// How to start QEMU.
#[derive(Clone)]
pub struct QemuConfig {
    /// The QEMU binary (`qemu-system-aarch64`).
    pub binary: String,
    /// The firmware ELF (`-kernel`).
    pub firmware: PathBuf,
    /// Extra arguments after the standard ones.
    pub extra_args: Vec<String>,
    /// Where the UART output goes.
    pub uart: UartSink,
}

impl QemuConfig {
    /// The standard command line for `firmware` with the ivshmem device
    /// backed by `/dev/shm/{shm_name}` of `shm_size` bytes.
    pub fn args(&self, shm_name: &str, shm_size: usize) -> Vec<String> {
        let mut a: Vec<String> = [
            "-M",
            "virt,highmem=off",
            "-cpu",
            "cortex-a53",
            "-nographic",
            "-nic",
            "none",
            "-m",
            "128M",
            "-kernel",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.push(self.firmware.display().to_string());
        a.push("-object".into());
        a.push(format!(
            "memory-backend-file,id=shm,share=on,mem-path=/dev/shm/{shm_name},size={}M",
            shm_size >> 20
        ));
        a.push("-device".into());
        a.push("ivshmem-plain,memdev=shm".into());
        a.extend(self.extra_args.iter().cloned());
        a
    }
}

/// A running QEMU; killed when dropped.
pub struct Qemu {
    child: Child,
}

impl Qemu {
    /// Starts QEMU with `args`, stdin closed, its output sent to `uart`.
    pub fn spawn(binary: &str, args: &[String], uart: UartSink) -> Result<Qemu, IvshmemError> {
        let mut child = Process::new(binary)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|err| IvshmemError::QemuSpawn {
                binary: binary.into(),
                err,
            })?;
        if let Some(out) = child.stdout.take() {
            forward(out, uart.clone());
        }
        if let Some(err) = child.stderr.take() {
            forward(err, uart);
        }
        Ok(Qemu { child })
    }

    /// The exit status if QEMU has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits up to `timeout` for QEMU to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(s) = self.exited() {
                return Some(s);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills QEMU and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        if self.exited().is_none() {
            self.kill();
        }
    }
}

/// Prefixes a UART line that is not the firmware's own.
pub fn uart_line(line: &str) -> String {
    if line.starts_with("[proxy]") {
        line.to_string()
    } else {
        format!("[qemu] {line}")
    }
}

fn forward(stream: impl std::io::Read + Send + 'static, uart: UartSink) {
    std::thread::spawn(move || {
        let mut file = match &uart {
            UartSink::File(p) => std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .ok(),
            _ => None,
        };
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            // QEMU's serial output carries CR LF.
            let line = uart_line(line.trim_end_matches('\r'));
            match &uart {
                UartSink::Stdout => {
                    let mut o = std::io::stdout().lock();
                    let _ = writeln!(o, "{line}");
                    let _ = o.flush();
                }
                UartSink::File(_) => {
                    if let Some(f) = file.as_mut() {
                        let _ = writeln!(f, "{line}");
                    }
                }
                UartSink::Lines(f) => f(&line),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use rptun::wire::rsc::{Entry, ParseOptions, ResourceTable};

    #[test]
    fn the_table_is_laid_out_as_docs_ivshmem_md_says() {
        let t = crate::sim::table::build(
            &node_config(Duration::from_micros(100), Duration::from_secs(1)).names,
        )
        .unwrap();
        let parsed = ResourceTable::parse(&t, &ParseOptions::default()).unwrap();
        let offsets: Vec<usize> = parsed.entries().map(|e| e.offset()).collect();
        // Hand-derived: 16-byte header + 6 offsets; vdev 28 + 20/vring
        // (+64 config for rpmsg); carveout 56 (+64 KiB embedded for rng0/1).
        assert_eq!(offsets, [0x28, 0x58, 0x10090, 0x100C0, 0x200F8, 0x2017C]);
        let das: Vec<u32> = parsed
            .entries()
            .filter_map(|e| match e {
                Entry::Carveout(c) => Some(c.da),
                _ => None,
            })
            .collect();
        assert_eq!(das, [0xA8, 0x10110, 0x201CC]);
        assert_eq!(shmem::RSC + t.len(), 0x201CC);
        assert!(shmem::RSC + t.len() + 0x10000 <= ivshmem::SHM_SIZE);
        assert!(t.len() <= ivshmem::TABLE_MAX);
    }

    #[test]
    fn qemu_command_line_and_uart_prefix() {
        let q = QemuConfig {
            binary: "qemu-system-aarch64".into(),
            firmware: PathBuf::from("/fw.elf"),
            extra_args: vec!["-s".into()],
            uart: UartSink::Stdout,
        };
        assert_eq!(
            q.args("rptun-ivshmem", 4 << 20).join(" "),
            "-M virt,highmem=off -cpu cortex-a53 -nographic -nic none -m 128M -kernel /fw.elf \
             -object memory-backend-file,id=shm,share=on,mem-path=/dev/shm/rptun-ivshmem,size=4M \
             -device ivshmem-plain,memdev=shm -s"
        );
        assert_eq!(uart_line("[proxy] hello"), "[proxy] hello");
        assert_eq!(uart_line("qemu: warning"), "[qemu] qemu: warning");
    }

    #[test]
    fn a_missing_firmware_image_says_how_to_build_it() {
        let cfg = QemuConfig {
            binary: "qemu-system-aarch64".into(),
            firmware: PathBuf::from("/nonexistent/fw.elf"),
            extra_args: Vec::new(),
            uart: UartSink::Stdout,
        };
        let e = QemuRunner::new(cfg, "rptun-ivshmem-nofw", ivshmem::SHM_SIZE)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("cargo build --release"), "{e}");
    }
}
