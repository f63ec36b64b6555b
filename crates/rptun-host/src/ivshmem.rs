//! The ivshmem platform, host side: this process is the **master** of a
//! remote running in QEMU (the `firmware/qemu-virt` image) and shares a file
//! in `/dev/shm` with it, which QEMU exposes to the guest as BAR2 of an
//! `ivshmem-plain` PCI device (docs/IVSHMEM.md).
//!
//! - [`IvshmemMaster`]: the [`Platform`]: maps the object, writes the
//!   resource table (the simulator's, [`crate::sim::table`]) and runs the
//!   master's half of the boot handshake ([`rptun::remoteproc::shmem`]);
//!   optionally starts QEMU itself ([`QemuConfig`]) and stops it (STOP in the
//!   command mailbox, then power-off, then kill if it hangs).
//! - [`IvshmemNode`]: the master's runtime: the remoteproc instance, the
//!   rpmsg bus with the ping and test services, and a poller that checks the
//!   remote's doorbell counter at a bounded period (ivshmem-plain has no
//!   doorbell interrupt).
//! - [`Qemu`]: a QEMU child process whose UART output goes to a sink.
//!
//! Everything is bounded: the handshake by `boot_timeout`, a stop by
//! `stop_timeout`; dropping the platform kills QEMU and removes the
//! shared-memory object (if this process created it or ran QEMU on it).

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command as Process, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rptun::devices::rng::RngDriver;
use rptun::devices::DeviceError;
use rptun::remoteproc::instance::{Event, Instance, InstanceError, State};
use rptun::remoteproc::mailbox::{Command, Mailbox};
use rptun::remoteproc::platform::{
    Doorbell, LinkMap, Platform, PlatformError, RemoteCpuName, TableLocation,
};
use rptun::remoteproc::registry::Registry;
use rptun::remoteproc::rpmsg_vdev::{
    handoff_handler, register_driver, DriverLink, LinkEvent, LinkSink,
};
use rptun::remoteproc::shmem::{self, ivshmem, SeqNotifier, ShmemError};
use rptun::remoteproc::vdev::VdevDriver;
use rptun::remoteproc::Role;
use rptun::rpmsg::services::ping::PingService;
use rptun::rpmsg::services::test::TestService;
use rptun::rpmsg::virtio::RpmsgVirtioOptions;
use rptun::rpmsg::wait::{Clock, Wait};
use rptun::rpmsg::{Bus, Link, LinkId, LocalCpu, RemoteCpu, ServiceConfig, ServiceId};
use rptun::shm::{Region, ShmError};
use rptun::virtio::{id, VirtioError};

use crate::doorbell::Doorbell as CounterWait;
use crate::shm::{ShmObject, ShmObjectError};
use crate::sim::layout::DEFAULT_BASE;
use crate::sim::table::{self, SimTableConfig, SimTableError};

/// Entries per vring the host's rpmsg driver handles (the table uses 8).
pub const QUEUE: usize = 8;

/// The rpmsg transport of the master's bus.
pub type HostRpmsg = DriverLink<SeqNotifier, QUEUE>;

/// The master's virtio-rng driver on an entropy vdev.
pub type HostRng = RngDriver<VdevDriver<SeqNotifier>, QUEUE>;

/// Errors of the ivshmem platform.
#[derive(Debug, thiserror::Error)]
pub enum IvshmemError {
    /// The shared-memory object could not be opened.
    #[error(transparent)]
    Shm(#[from] ShmObjectError),
    /// The resource table could not be built.
    #[error(transparent)]
    Table(#[from] SimTableError),
    /// The handshake or a header access failed.
    #[error(transparent)]
    Handshake(#[from] ShmemError),
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
    /// QEMU exited before the firmware answered.
    #[error(
        "QEMU exited ({status}) before the firmware answered the boot handshake; see its \
         output above (wrong firmware image? a machine option QEMU does not know?)"
    )]
    QemuExited {
        /// Its exit status.
        status: ExitStatus,
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

/// Settings of the ivshmem master.
#[derive(Clone)]
pub struct IvshmemConfig {
    /// Name of the object in `/dev/shm`.
    pub shm_name: String,
    /// Its size (QEMU's `size=`; a multiple of 1 MiB).
    pub shm_size: usize,
    /// The `base` written into the header (origin of the physical space).
    pub base: u64,
    /// The table's cpu names and config layout.
    pub table: SimTableConfig,
    /// How to start QEMU; `None` when the remote is started by someone else.
    pub qemu: Option<QemuConfig>,
    /// Longest wait for the firmware's half of the boot handshake.
    pub boot_timeout: Duration,
    /// Longest wait for QEMU to power off after STOP before it is killed.
    pub stop_timeout: Duration,
    /// Doorbell polling period (the remote's counter is read this often).
    pub poll_period: Duration,
}

impl Default for IvshmemConfig {
    fn default() -> Self {
        IvshmemConfig {
            shm_name: ivshmem::SHM_NAME.into(),
            shm_size: ivshmem::SHM_SIZE,
            base: DEFAULT_BASE,
            table: SimTableConfig {
                host: ivshmem::MASTER_CPU.into(),
                remote: ivshmem::REMOTE_CPU.into(),
                ..SimTableConfig::default()
            },
            qemu: None,
            boot_timeout: Duration::from_secs(60),
            stop_timeout: Duration::from_secs(10),
            poll_period: Duration::from_micros(ivshmem::POLL_PERIOD_US),
        }
    }
}

/// The master's platform over the ivshmem object.
pub struct IvshmemMaster {
    cfg: IvshmemConfig,
    shm: ShmObject,
    region: Region,
    qemu: Option<Qemu>,
    cancel: Arc<AtomicBool>,
    keep_remote: Arc<AtomicBool>,
}

impl IvshmemMaster {
    /// Opens (or creates) the object; nothing is written before `start`.
    /// With a QEMU configuration, checks that the firmware image exists.
    pub fn new(cfg: IvshmemConfig) -> Result<IvshmemMaster, IvshmemError> {
        if let Some(q) = &cfg.qemu {
            if !q.firmware.is_file() {
                return Err(IvshmemError::NoFirmware(q.firmware.clone()));
            }
        }
        let shm = ShmObject::open_or_create(&cfg.shm_name, cfg.shm_size)?;
        let region = shm.region().clone();
        Ok(IvshmemMaster {
            cfg,
            shm,
            region,
            qemu: None,
            cancel: Arc::new(AtomicBool::new(false)),
            keep_remote: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The shared memory.
    pub fn shared(&self) -> &Region {
        &self.region
    }

    /// The settings.
    pub fn config(&self) -> &IvshmemConfig {
        &self.cfg
    }

    /// A flag that, once set, makes a pending boot wait give up.
    pub fn cancel_flag(&self) -> Arc<AtomicBool> {
        self.cancel.clone()
    }

    /// A flag that, while set, makes `stop` leave the remote running: the
    /// remote restarted its link by itself and only the handshake must run
    /// again.
    pub fn keep_remote_flag(&self) -> Arc<AtomicBool> {
        self.keep_remote.clone()
    }

    /// True while QEMU (if this platform started it) runs.
    pub fn qemu_running(&mut self) -> bool {
        self.qemu.as_mut().is_some_and(|q| q.exited().is_none())
    }

    /// Starts QEMU if it is configured and not running.
    fn ensure_qemu(&mut self) -> Result<(), IvshmemError> {
        let Some(q) = &self.cfg.qemu else {
            return Ok(());
        };
        if self.qemu.as_mut().is_some_and(|q| q.exited().is_none()) {
            return Ok(());
        }
        let args = q.args(&self.cfg.shm_name, self.cfg.shm_size);
        log::info!("starting {} {}", q.binary, args.join(" "));
        self.qemu = Some(Qemu::spawn(&q.binary, &args, q.uart.clone())?);
        Ok(())
    }

    fn wait_remote(&mut self) -> Result<(), IvshmemError> {
        let start = Instant::now();
        let timeout = self.cfg.boot_timeout;
        let cancel = self.cancel.clone();
        let qemu = &mut self.qemu;
        let mut exited = None;
        let mut wait = || {
            if let Some(s) = qemu.as_mut().and_then(Qemu::exited) {
                exited = Some(s);
                return Err(ShmemError::Timeout("remote"));
            }
            if start.elapsed() > timeout || cancel.load(Ordering::Relaxed) {
                return Err(ShmemError::Timeout("remote"));
            }
            std::thread::sleep(Duration::from_millis(1));
            Ok(())
        };
        // BOOT, then OK once the remote adopted the table: only then may the
        // mailbox carry commands (they overlay the table header).
        let r = shmem::master_wait_remote(&self.region, &mut wait)
            .and_then(|()| shmem::master_wait_ready(&self.region, &mut wait));
        match (r, exited) {
            (Ok(()), _) => Ok(()),
            (Err(_), Some(status)) => Err(IvshmemError::QemuExited { status }),
            (Err(ShmemError::Timeout(_)), None) => Err(IvshmemError::Timeout(timeout.as_secs())),
            (Err(e), None) => Err(e.into()),
        }
    }

    /// Asks the firmware to stop (STOP in the mailbox), waits for QEMU to
    /// power off, kills it if it does not.
    fn stop_qemu(&mut self) {
        let Some(mut q) = self.qemu.take() else {
            return;
        };
        if q.exited().is_none() {
            let posted = Mailbox::new(self.region.clone(), Role::Master, shmem::RSC)
                .and_then(|m| m.post(Command::Stop));
            if let Err(e) = posted {
                log::warn!("ivshmem: cannot post STOP: {e}");
            }
            let _ = SeqNotifier::new(self.region.clone(), true).ring();
            match q.wait_timeout(self.cfg.stop_timeout) {
                Some(s) => log::info!("ivshmem: QEMU exited ({s})"),
                None => {
                    log::warn!(
                        "ivshmem: the firmware did not power off within {} s after STOP; \
                         killing QEMU",
                        self.cfg.stop_timeout.as_secs()
                    );
                    q.kill();
                }
            }
        }
    }
}

impl Drop for IvshmemMaster {
    fn drop(&mut self) {
        if let Some(mut q) = self.qemu.take() {
            q.kill();
        }
        // The object is this link's: remove it when this process created it,
        // or when it ran the QEMU that used it (a file left behind by an
        // interrupted run is adopted by the next one, and removed then).
        if self.shm.created() || self.cfg.qemu.is_some() {
            let _ = self.shm.unlink();
        }
    }
}

fn platform_error(e: IvshmemError) -> PlatformError {
    log::error!("ivshmem: {e}");
    match e {
        IvshmemError::Timeout(_) => PlatformError::Timeout("ivshmem boot handshake"),
        IvshmemError::QemuExited { .. } => PlatformError::Failed("boot the firmware (QEMU exited)"),
        IvshmemError::QemuSpawn { .. } => PlatformError::Failed("start QEMU"),
        _ => PlatformError::Failed("set up the ivshmem shared memory"),
    }
}

impl Platform for IvshmemMaster {
    type Notifier = SeqNotifier;

    fn remote_cpu(&self) -> RemoteCpuName {
        RemoteCpuName::new(&self.cfg.table.remote)
            .unwrap_or_else(|_| RemoteCpuName::new(ivshmem::REMOTE_CPU).expect("valid"))
    }

    fn is_master(&self) -> bool {
        true
    }

    fn is_autostart(&self) -> bool {
        true
    }

    fn region(&self) -> Region {
        self.region.clone()
    }

    fn resource_table(&mut self) -> Result<TableLocation, PlatformError> {
        let t = table::build(&self.cfg.table).map_err(|e| platform_error(e.into()))?;
        shmem::master_publish(&self.region, &t, self.cfg.base)
            .map_err(|e| platform_error(e.into()))?;
        Ok(TableLocation {
            offset: shmem::RSC,
            max_len: ivshmem::TABLE_MAX.min(self.region.len() - shmem::RSC),
        })
    }

    fn address_map(&self) -> Result<LinkMap, PlatformError> {
        shmem::link_map(self.cfg.base, self.region.len()).map_err(|e| platform_error(e.into()))
    }

    fn start(&mut self) -> Result<(), PlatformError> {
        self.cancel.store(false, Ordering::Relaxed);
        self.ensure_qemu().map_err(platform_error)?;
        self.wait_remote().map_err(platform_error)
    }

    fn stop(&mut self) -> Result<(), PlatformError> {
        if self.keep_remote.load(Ordering::Relaxed) {
            return Ok(());
        }
        if self.cfg.qemu.is_none() {
            // Someone else runs the remote: ask it through the mailbox.
            return Err(PlatformError::Unsupported("stop"));
        }
        self.stop_qemu();
        Ok(())
    }

    fn notifier(&self) -> SeqNotifier {
        SeqNotifier::new(self.region.clone(), true)
    }
}

/// A queue shared between the instance's callbacks and the node.
pub struct Queue<T>(Arc<Mutex<Vec<T>>>);

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Queue(self.0.clone())
    }
}

impl<T> Default for Queue<T> {
    fn default() -> Self {
        Queue(Arc::new(Mutex::new(Vec::new())))
    }
}

impl<T> Queue<T> {
    fn take(&self) -> Vec<T> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn push_item(&self, v: T) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(v);
    }
}

impl<T: Send + 'static> LinkSink<T> for Queue<LinkEvent<T>> {
    fn push(&self, event: LinkEvent<T>) {
        self.push_item(event);
    }
}

/// The master's runtime: instance, bus, services.
pub struct IvshmemNode {
    /// The remoteproc link.
    pub instance: Instance<IvshmemMaster>,
    /// The rpmsg bus (one link per rpmsg vdev).
    pub bus: Bus<HostRpmsg>,
    /// The rpmsg-ping service.
    pub ping: ServiceId<PingService>,
    /// The rpmsg-test service.
    pub test: ServiceId<TestService>,
    region: Region,
    keep_remote: Arc<AtomicBool>,
    links: Queue<LinkEvent<HostRpmsg>>,
    rng_events: Queue<LinkEvent<HostRng>>,
    events: Queue<Event>,
    attached: Vec<(usize, LinkId)>,
    rngs: Vec<(usize, HostRng)>,
    restarts: u64,
}

impl IvshmemNode {
    /// A node over `platform` (not started).
    pub fn new(platform: IvshmemMaster) -> IvshmemNode {
        let region = platform.shared().clone();
        let keep_remote = platform.keep_remote_flag();
        let table = platform.config().table.clone();
        let links: Queue<LinkEvent<HostRpmsg>> = Queue::default();
        let events: Queue<Event> = Queue::default();
        let mut registry = Registry::new();
        let local = LocalCpu::new(&table.host).unwrap_or(LocalCpu::new("server").expect("valid"));
        let remote =
            RemoteCpu::new(&table.remote).unwrap_or(RemoteCpu::new("proxy").expect("valid"));
        register_driver::<_, _, QUEUE>(
            &mut registry,
            RpmsgVirtioOptions::new(local, remote),
            links.clone(),
        );
        let rng_events: Queue<LinkEvent<HostRng>> = Queue::default();
        let sink = rng_events.clone();
        registry.register_driver(id::ENTROPY, move |t: VdevDriver<SeqNotifier>| {
            let vdev = t.info().index;
            match HostRng::with_config(t, Default::default()) {
                Ok(d) => {
                    sink.push(LinkEvent::Up { vdev, transport: d });
                    Ok(handoff_handler(vdev, sink.clone()))
                }
                Err(DeviceError::Virtio(e)) => Err(e),
                Err(e) => {
                    log::warn!("virtio-rng driver on vdev {vdev}: {e}");
                    Err(VirtioError::Protocol("virtio-rng driver set-up failed"))
                }
            }
        });
        let mut instance = Instance::new(platform, registry);
        let sink = events.clone();
        instance.set_event_handler(move |e| sink.push_item(*e));
        let mut bus = Bus::new();
        let ping = bus.register(ServiceConfig::any("rpmsg-ping"), PingService::new());
        let test = bus.register(ServiceConfig::any("rpmsg-test"), TestService::new());
        IvshmemNode {
            instance,
            bus,
            ping,
            test,
            region,
            keep_remote,
            links,
            rng_events,
            events,
            attached: Vec::new(),
            rngs: Vec::new(),
            restarts: 0,
        }
    }

    /// How many times the link was restarted because the remote restarted.
    pub fn remote_restarts(&self) -> u64 {
        self.restarts
    }

    /// True when an rpmsg link is up.
    pub fn rpmsg_up(&self) -> bool {
        self.bus
            .link_ids()
            .into_iter()
            .any(|id| self.bus.link(id).is_some_and(|l| l.is_up()))
    }

    /// The shared memory.
    pub fn region(&self) -> &Region {
        &self.region
    }

    /// Starts (or restarts) the link: table, QEMU, handshake, vdevs.
    pub fn start(&mut self) -> Result<(), InstanceError> {
        let r = self.instance.start();
        self.sync();
        if r.is_ok() {
            self.service();
        }
        r
    }

    /// Stops the link (and QEMU, when this node started it).
    pub fn stop(&mut self) -> Result<(), InstanceError> {
        let r = self.instance.stop();
        self.sync();
        r
    }

    /// Handles a doorbell (or a poll tick): services every vdev, polls the
    /// bus, and restarts the link if the remote restarted. Returns the
    /// events of the instance.
    pub fn service(&mut self) -> Vec<Event> {
        self.instance.handle_doorbell(Doorbell::All);
        self.sync();
        if let Err(e) = self.bus.poll_all() {
            log::debug!("rpmsg poll: {e}");
        }
        let events = self.events.take();
        if shmem::take_need_reset(&self.region, true).unwrap_or(false)
            && matches!(self.instance.state(), State::Running | State::Crashed)
        {
            log::info!("ivshmem: the remote restarted; restarting the link");
            self.keep_remote.store(true, Ordering::Relaxed);
            self.restarts += 1;
            let r = self.start();
            self.keep_remote.store(false, Ordering::Relaxed);
            if let Err(e) = r {
                log::error!("ivshmem: restart failed: {e}");
            }
        }
        events
    }

    /// The virtio-rng drivers, by vdev ordinal (`/dev/random0` is the first).
    pub fn rngs(&mut self) -> &mut [(usize, HostRng)] {
        &mut self.rngs
    }

    fn sync(&mut self) {
        for ev in self.rng_events.take() {
            match ev {
                LinkEvent::Up { vdev, transport } => {
                    self.rngs.push((vdev, transport));
                    self.rngs.sort_by_key(|(v, _)| *v);
                }
                // The vdev's memory may be reused: forget the driver without
                // touching the device again.
                LinkEvent::Down { vdev } => self.rngs.retain(|(v, _)| *v != vdev),
            }
        }
        for ev in self.links.take() {
            match ev {
                LinkEvent::Up { vdev, transport } => {
                    let id = self.bus.add_link(Link::new(transport));
                    self.attached.push((vdev, id));
                }
                LinkEvent::Down { vdev } => {
                    let bus = &mut self.bus;
                    self.attached.retain(|&(v, id)| {
                        if v == vdev {
                            bus.remove_link(id);
                        }
                        v != vdev
                    });
                }
            }
        }
    }
}

/// A [`Wait`] for blocking calls on the master (ping...): sleeps until the
/// remote's counter moves or one poll period passes.
pub struct CounterClock {
    bell: CounterWait,
    seen: u32,
    origin: Instant,
    period: Duration,
}

impl CounterClock {
    /// Waits on the remote's counter (`seqs`) in `region`.
    pub fn new(region: &Region, period: Duration) -> CounterClock {
        let bell = CounterWait::new(region.clone(), shmem::SEQM, shmem::SEQS, false)
            .with_max_sleep(period);
        let seen = bell.peer_seq();
        CounterClock {
            bell,
            seen,
            origin: Instant::now(),
            period,
        }
    }
}

impl Clock for CounterClock {
    fn now_ns(&mut self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }
}

impl Wait for CounterClock {
    fn wait_until(&mut self, deadline_ns: u64) {
        let left = Duration::from_nanos(deadline_ns.saturating_sub(self.now_ns()));
        self.seen = self.bell.wait(self.seen, left.min(self.period * 10));
    }
}

/// Runs [`IvshmemNode::service`] whenever the remote's counter moves, or at
/// least every `idle`, until `stop` is set. Events go to `on_event`.
pub fn run_poller(
    node: Arc<Mutex<IvshmemNode>>,
    stop: Arc<AtomicBool>,
    period: Duration,
    idle: Duration,
    mut on_event: impl FnMut(&Event) + Send + 'static,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let region = node
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .region()
            .clone();
        let bell = CounterWait::new(region, shmem::SEQM, shmem::SEQS, false).with_max_sleep(period);
        let mut seen = bell.peer_seq();
        while !stop.load(Ordering::Relaxed) {
            seen = bell.wait(seen, idle);
            let events = node.lock().unwrap_or_else(|p| p.into_inner()).service();
            for e in &events {
                on_event(e);
            }
        }
    })
}

/// Reads a header word for dumps.
pub fn header(region: &Region) -> Result<[u32; 4], ShmError> {
    Ok([
        region.load_u32(shmem::SEQS)?,
        region.load_u32(shmem::SEQM)?,
        region.load_u32(shmem::BOOTS)?,
        region.load_u32(shmem::BOOTM)?,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use rptun::wire::rsc::{Entry, ParseOptions, ResourceTable};

    #[test]
    fn the_table_is_laid_out_as_docs_ivshmem_md_says() {
        let t = table::build(&IvshmemConfig::default().table).unwrap();
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
        let cfg = IvshmemConfig {
            shm_name: format!("rptun-ivshmem-nofw-{}", std::process::id()),
            qemu: Some(QemuConfig {
                binary: "qemu-system-aarch64".into(),
                firmware: PathBuf::from("/nonexistent/fw.elf"),
                extra_args: Vec::new(),
                uart: UartSink::Stdout,
            }),
            ..IvshmemConfig::default()
        };
        let e = IvshmemMaster::new(cfg).err().unwrap().to_string();
        assert!(e.contains("cargo build --release"), "{e}");
    }
}
