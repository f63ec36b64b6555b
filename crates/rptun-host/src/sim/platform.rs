//! The simulator's [`Platform`]: NuttX's `sim_rptun.c` for both roles, over
//! the shared-memory object of [`layout`](super::layout).
//!
//! - master (`server`): [`resource_table`](Platform::resource_table) writes
//!   the table of [`table::build`](super::table::build) at 0x18 and `base`,
//!   and runs the handshake up to `bootm = BOOT`;
//!   [`start`](Platform::start) waits for `boots & BOOT` and sets
//!   `bootm = OK`; [`stop`](Platform::stop) is unsupported, so the instance
//!   sends STOP through the command mailbox (a process cannot be halted from
//!   the outside).
//! - remote (`proxy`): [`resource_table`](Platform::resource_table) runs the
//!   whole remote handshake (and learns `base`); `start`/`stop` do nothing.
//!
//! Both: the address map is one window, `da 0 → pa base` over the whole
//! object (a 32-bit physical space, as NuttX's 32-bit simulator sees it), and
//! the doorbell increments this side's counter (`seqm` for the master,
//! `seqs` for the remote) and wakes the peer's futex waiters. NuttX peers
//! poll the counter every tick; ours sleep on it (see
//! [`Doorbell`]).
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::Duration;

use rptun::remoteproc::addr::{AddrEnv, AddrEnvEntry, AddressMap, PhysMap};
use rptun::remoteproc::platform::{
    Doorbell as Target, LinkMap, Notify, Platform, PlatformError, RemoteCpuName, TableLocation,
};
use rptun::remoteproc::Role;
use rptun::shm::Region;

use super::boot::{self, BootError};
use super::layout::{BASE, BOOT, BOOTS, DEFAULT_BASE, RSC, SEQM, SEQS, SLEEPM, SLEEPS};
use crate::doorbell::Doorbell;

/// The simulator's doorbell handle: rings the peer by incrementing this
/// side's counter. The notify id is not carried (the peer services every
/// vring on each ring, like NuttX's `RPTUN_NOTIFY_ALL`).
#[derive(Debug, Clone)]
pub struct SimBell(Doorbell);

impl SimBell {
    /// The doorbell of `role` in `region`: rings `seqm` (master) or `seqs`
    /// (remote), waits on the other one; adaptive (wakes the peer only when
    /// its sleepers word says it sleeps, see [`layout`](super::layout)).
    pub fn new(region: Region, role: Role, poll: bool, max_sleep: Duration) -> SimBell {
        let (mine, peer, my_flag, peer_flag) = match role {
            Role::Master => (SEQM, SEQS, SLEEPM, SLEEPS),
            Role::Remote => (SEQS, SEQM, SLEEPS, SLEEPM),
        };
        SimBell(
            Doorbell::new(region, mine, peer, poll)
                .with_max_sleep(max_sleep)
                .with_sleep_flags(my_flag, peer_flag),
        )
    }

    /// The underlying host doorbell (to wait on the peer's counter).
    pub fn doorbell(&self) -> &Doorbell {
        &self.0
    }
}

impl Notify for SimBell {
    fn notify(&self, _target: Target) -> Result<(), PlatformError> {
        self.0.ring();
        Ok(())
    }
}

/// Says whether a blocking handshake should keep waiting.
pub type KeepGoing = Arc<dyn Fn() -> bool + Send + Sync>;

/// A remote the master runs itself (QEMU booting the rptun firmware over
/// ivshmem): the master's platform starts it once the table is published,
/// watches it while waiting for the handshake, and stops it. Without a
/// runner the remote is another process started by someone else (the
/// simulator's proxy), and STOP goes through the command mailbox.
pub trait RemoteRunner: Send {
    /// Starts the remote unless it runs already. The error says what went
    /// wrong and what to do.
    fn start(&mut self, region: &Region) -> Result<(), String>;
    /// `Some(why)` once the remote can no longer answer (it exited).
    fn exited(&mut self) -> Option<String>;
    /// Stops the remote (e.g. STOP in the mailbox, then wait, bounded, for
    /// it to power off, then kill it).
    fn stop(&mut self, region: &Region);
    /// The message for a remote that did not answer the handshake within
    /// `secs` seconds.
    fn timeout_hint(&self, secs: u64) -> String;
}

/// The simulator platform of one side.
pub struct SimPlatform {
    role: Role,
    region: Region,
    table: Vec<u8>,
    base: u64,
    remote: RemoteCpuName,
    bell: SimBell,
    boot_timeout: Duration,
    keep_going: KeepGoing,
    last_error: Option<BootError>,
    runner: Option<Box<dyn RemoteRunner>>,
    runner_error: Option<String>,
    keep_remote: bool,
}

impl std::fmt::Debug for SimPlatform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimPlatform")
            .field("role", &self.role)
            .field("remote", &self.remote)
            .field("base", &format_args!("{:#x}", self.base))
            .finish_non_exhaustive()
    }
}

impl SimPlatform {
    /// The master's platform: publishes `table` (from
    /// [`table::build`](super::table::build)) with [`DEFAULT_BASE`] as the
    /// physical base, and waits up to `boot_timeout` for the remote.
    pub fn master(
        region: Region,
        table: Vec<u8>,
        remote: RemoteCpuName,
        bell: SimBell,
        boot_timeout: Duration,
        keep_going: KeepGoing,
    ) -> SimPlatform {
        SimPlatform {
            role: Role::Master,
            region,
            table,
            base: DEFAULT_BASE,
            remote,
            bell,
            boot_timeout,
            keep_going,
            last_error: None,
            runner: None,
            runner_error: None,
            keep_remote: false,
        }
    }

    /// The remote's platform: waits for the master as long as `keep_going`
    /// says so (in rounds of `boot_timeout`).
    pub fn remote(
        region: Region,
        remote: RemoteCpuName,
        bell: SimBell,
        boot_timeout: Duration,
        keep_going: KeepGoing,
    ) -> SimPlatform {
        SimPlatform {
            role: Role::Remote,
            region,
            table: Vec::new(),
            base: 0,
            remote,
            bell,
            boot_timeout,
            keep_going,
            last_error: None,
            runner: None,
            runner_error: None,
            keep_remote: false,
        }
    }

    /// Master: the remote is started, watched and stopped by `runner`
    /// (QEMU); the handshake then also waits for `boots & OK` (the remote
    /// adopted the table) before the link counts as started.
    pub fn set_runner(&mut self, runner: Box<dyn RemoteRunner>) {
        self.runner = Some(runner);
    }

    /// True when a [`RemoteRunner`] runs the remote.
    pub fn has_runner(&self) -> bool {
        self.runner.is_some()
    }

    /// While set, stopping the instance (as a restart does) leaves the
    /// runner's remote running: it restarted its link by itself and only the
    /// handshake runs again.
    pub fn set_keep_remote(&mut self, keep: bool) {
        self.keep_remote = keep;
    }

    /// `Some(why)` once the runner's remote exited.
    pub fn runner_exited(&mut self) -> Option<String> {
        self.runner.as_mut().and_then(|r| r.exited())
    }

    /// The reason of the last failed start, in words (the instance only
    /// sees a [`PlatformError`]).
    pub fn last_start_error(&self) -> Option<String> {
        self.runner_error
            .clone()
            .or_else(|| self.last_error.map(|e| e.to_string()))
    }

    /// This side's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The physical base in use (the remote learns it in the handshake).
    pub fn base(&self) -> u64 {
        self.base
    }

    /// The detailed reason of the last handshake failure (the instance only
    /// sees a [`PlatformError`]).
    pub fn last_boot_error(&self) -> Option<BootError> {
        self.last_error
    }

    fn boot_failed(&mut self, e: BootError) -> PlatformError {
        self.last_error = Some(e);
        match e {
            BootError::Timeout { .. } | BootError::Cancelled => {
                PlatformError::Timeout("boot handshake")
            }
            _ => PlatformError::Failed("run the boot handshake"),
        }
    }
}

impl SimPlatform {
    /// Master with a runner: start the remote, then BOOT and OK, watching
    /// the remote meanwhile.
    fn start_runner(
        &mut self,
        runner: &mut dyn RemoteRunner,
        keep: &KeepGoing,
    ) -> Result<(), PlatformError> {
        if let Err(e) = runner.start(&self.region) {
            self.runner_error = Some(e);
            return Err(PlatformError::Failed("start the remote"));
        }
        let mut exited = None;
        let mut keep_going = || {
            if let Some(why) = runner.exited() {
                exited = Some(why);
                return false;
            }
            keep()
        };
        let r = boot::master_wait_remote(&self.region, self.boot_timeout, &mut keep_going)
            .and_then(|()| {
                boot::master_wait_ready(&self.region, self.boot_timeout, &mut keep_going)
            });
        let Err(e) = r else {
            return Ok(());
        };
        self.runner_error = match (exited, e) {
            (Some(why), _) => Some(why),
            (None, BootError::Timeout { secs, .. }) => Some(runner.timeout_hint(secs)),
            (None, _) => None,
        };
        Err(self.boot_failed(e))
    }
}

impl Platform for SimPlatform {
    type Notifier = SimBell;

    fn remote_cpu(&self) -> RemoteCpuName {
        self.remote
    }

    fn is_master(&self) -> bool {
        self.role.is_master()
    }

    fn region(&self) -> Region {
        self.region.clone()
    }

    fn resource_table(&mut self) -> Result<TableLocation, PlatformError> {
        self.last_error = None;
        self.runner_error = None;
        match self.role {
            Role::Master => {
                if let Err(e) = boot::master_publish(&self.region, &self.table, self.base) {
                    return Err(self.boot_failed(e));
                }
            }
            Role::Remote => {
                let region = self.region.clone();
                let keep = self.keep_going.clone();
                // While we wait, a master that (re)starts writes NEED_RESET
                // over our BOOT: keep announcing ourselves.
                let keep_announcing = move || {
                    if region.load_u32(BOOTS).is_ok_and(|v| v & BOOT == 0) {
                        let _ = region.store_u32(BOOTS, BOOT);
                    }
                    keep()
                };
                loop {
                    match boot::remote_boot(&self.region, self.boot_timeout, &keep_announcing) {
                        Ok(base) => {
                            self.base = base;
                            break;
                        }
                        Err(BootError::Timeout { .. }) => {
                            log::debug!("still waiting for the master to boot");
                        }
                        Err(e) => return Err(self.boot_failed(e)),
                    }
                }
            }
        }
        Ok(TableLocation {
            offset: RSC,
            max_len: self.region.len() - RSC,
        })
    }

    fn address_map(&self) -> Result<LinkMap, PlatformError> {
        let len = self.region.len();
        let base = if self.role.is_master() {
            self.base
        } else {
            self.region
                .read_u64(BASE)
                .map_err(|_| PlatformError::Failed("read the physical base"))?
        };
        let env = AddrEnv::from_entries(&[AddrEnvEntry {
            pa: base,
            da: 0,
            size: len as u64,
        }])
        .map_err(|_| PlatformError::Failed("build the address environment"))?;
        let phys = PhysMap::with_address_bits(base, len, 32).map_err(|_| {
            PlatformError::Failed("place the shared memory (base + size must fit 32 bits)")
        })?;
        Ok(AddressMap::new(env, phys))
    }

    fn start(&mut self) -> Result<(), PlatformError> {
        if !self.role.is_master() {
            return Ok(());
        }
        let keep = self.keep_going.clone();
        let Some(mut runner) = self.runner.take() else {
            if let Err(e) = boot::master_wait_remote(&self.region, self.boot_timeout, || keep()) {
                return Err(self.boot_failed(e));
            }
            return Ok(());
        };
        let r = self.start_runner(runner.as_mut(), &keep);
        self.runner = Some(runner);
        r
    }

    fn stop(&mut self) -> Result<(), PlatformError> {
        if let Some(runner) = self.runner.as_mut() {
            if !self.keep_remote {
                runner.stop(&self.region);
            }
            return Ok(());
        }
        match self.role {
            // The remote is another process: ask it (mailbox STOP).
            Role::Master => Err(PlatformError::Unsupported("stop")),
            Role::Remote => Ok(()),
        }
    }

    fn notifier(&self) -> SimBell {
        self.bell.clone()
    }
}
