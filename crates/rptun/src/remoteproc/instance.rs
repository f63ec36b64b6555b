//! The life cycle of one remoteproc link (one remote cpu).
//!
//! ```text
//!            configure            start                 stop
//!  Offline ───────────▶ Configured ─────▶ Running ───────────────▶ Stopped
//!     │                     ▲                │ ▲   panic_remote /        │
//!     └──── start ──────────┘                │ │   mark_crashed          │
//!                                            ▼ │ start (restart)         │
//!                                          Crashed ── stop ─────────────▶│
//!                    start (from Stopped: config again) ◀────────────────┘
//! ```
//!
//! [`Instance::start`]: config → resource table (from the platform, or the
//! `.resource_table` of an ELF firmware the master loads) → master: assign
//! notify ids and vring addresses / remote: adopt the master's table →
//! platform start → create every vdev. `start` on a running (or crashed)
//! link restarts it. [`Instance::stop`]: remove every vdev, stop the core
//! (or, on a master whose platform cannot, send STOP through the command
//! mailbox). Every refused transition is an [`InstanceError::InvalidState`].
//!
//! Vdevs: for each vdev the [`Registry`] factory of its device id and this
//! side's role builds a [`VirtioHandler`]. A driver-role handler is built at
//! start; a device-role one once the driver set DRIVER_OK (and removed again
//! if the driver resets the device). A device-role vdev's vring entries are
//! its driver's until DRIVER_OK (NuttX's refactored master writes a vdev's
//! vring addresses only when it creates that vdev, after boot): they are read
//! and validated at DRIVER_OK
//! ([`LinkTable::bind_vrings`](crate::remoteproc::table::LinkTable::bind_vrings)),
//! and bad values there fail only that vdev. A vdev without a factory is
//! skipped with a log line; a vdev whose table entry or factory fails is
//! marked failed; neither affects the other vdevs.
//!
//! Doorbells: the platform calls [`Instance::handle_doorbell`] with the
//! notify id that rang, or [`Doorbell::All`]. An id reaches only the vdev
//! that owns it, and a queue's handler is called only when the peer
//! published new work on it; "all" polls every handler and checks every
//! queue. Every doorbell on a running link also checks that the resource
//! table still has the structure validated at start (a device-role vdev's
//! vring entries from its DRIVER_OK on)
//! ([`LinkTable::verify`](crate::remoteproc::table::LinkTable::verify));
//! a fast link can thin that to every n-th doorbell, the one after any
//! event, and the caller's own clock
//! ([`Instance::set_table_check_every`], [`Instance::verify_table`]). A
//! peer that rewrote it takes the link down (every vdev
//! [`Event::VdevFailed`] with `TableError::ChangedAfterBoot`, state
//! [`State::Crashed`]) until a restart. Every doorbell also polls the
//! command mailbox: a command from the peer (PANIC, RESET, STOP) is
//! acknowledged and handed to the application as an [`Event::Command`]; the
//! library never acts on it (it never aborts).
#![forbid(unsafe_code)]

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use crate::remoteproc::elf::{self, ElfError, SegmentAddr};
use crate::remoteproc::mailbox::{Command, Mailbox, MailboxError};
use crate::remoteproc::platform::{
    Doorbell, Firmware, LinkMap, Notify, Platform, PlatformError, RemoteCpuName, TableLocation,
};
use crate::remoteproc::registry::{Registry, VirtioHandler};
use crate::remoteproc::table::{self, LinkTable, TableError};
use crate::remoteproc::vdev::{driver_ready, VdevDevice, VdevDriver, VdevLink};
use crate::remoteproc::Role as LinkRole;
use crate::shm::Region;
use crate::virtio::{QueueMem, Role, VirtioError};

/// Life-cycle state of a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Nothing done yet.
    Offline,
    /// The platform configured the remote core; not started.
    Configured,
    /// The table is set up, the core started, the vdevs created.
    Running,
    /// Stopped by [`Instance::stop`].
    Stopped,
    /// The remote crashed (or was told to panic); vdevs are gone.
    Crashed,
}

impl State {
    /// Lower-case name, as printed by dumps.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Offline => "offline",
            State::Configured => "configured",
            State::Running => "running",
            State::Stopped => "stopped",
            State::Crashed => "crashed",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Errors of the life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InstanceError {
    /// The operation is not allowed in the current state.
    #[error("cannot {op} while the link is {state}; {hint}")]
    InvalidState {
        /// The operation refused.
        op: &'static str,
        /// The state the link is in.
        state: State,
        /// What to do instead.
        hint: &'static str,
    },
    /// The platform failed.
    #[error("{0}")]
    Platform(#[from] PlatformError),
    /// The resource table was refused.
    #[error("{0}")]
    Table(#[from] TableError),
    /// The firmware could not be loaded.
    #[error("{0}")]
    Firmware(#[from] ElfError),
    /// The firmware has no usable resource table.
    #[error(
        "the firmware image has no loaded .resource_table section; link one into a loaded \
         segment, or let the platform provide the table"
    )]
    NoResourceTable,
    /// The command mailbox failed.
    #[error("{0}")]
    Mailbox(#[from] MailboxError),
    /// A virtio transport or device failed.
    #[error("{0}")]
    Virtio(#[from] VirtioError),
}

/// Something the application may want to react to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The peer sent a command through the mailbox (already acknowledged).
    /// The application decides what to do: the library never acts on it.
    Command(Command),
    /// The peer acknowledged the command this side sent.
    CommandAcked(Command),
    /// A vdev's handler was created.
    VdevUp {
        /// vdev ordinal.
        index: usize,
        /// virtio device id.
        id: u32,
        /// This side's role.
        role: Role,
    },
    /// A vdev has no factory for its id and this side's role.
    VdevSkipped {
        /// vdev ordinal.
        index: usize,
        /// virtio device id.
        id: u32,
        /// This side's role.
        role: Role,
    },
    /// A vdev could not be set up; the others are not affected.
    VdevFailed {
        /// vdev ordinal.
        index: usize,
        /// virtio device id.
        id: u32,
        /// Why.
        error: InstanceError,
    },
    /// A vdev's handler was removed (stop, crash, or the driver reset it).
    VdevDown {
        /// vdev ordinal.
        index: usize,
        /// virtio device id.
        id: u32,
    },
}

/// State of one vdev of a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VdevState {
    /// Its handler runs.
    Active,
    /// Device role: waiting for the driver to set DRIVER_OK.
    WaitingForDriver,
    /// Nothing is registered for its id and role.
    Skipped,
    /// It could not be set up.
    Failed(InstanceError),
}

/// One vdev of a running link, for dumps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VdevSummary {
    /// vdev ordinal.
    pub index: usize,
    /// virtio device id.
    pub id: u32,
    /// This side's role (unknown for a vdev whose entry is faulty).
    pub role: Option<Role>,
    /// The vdev's notify id (unknown for a faulty entry).
    pub notifyid: Option<u32>,
    /// Its state.
    pub state: VdevState,
}

enum SlotState {
    Failed(InstanceError),
    Skipped,
    Waiting,
    Active(Box<dyn VirtioHandler>),
}

struct Slot<N> {
    index: usize,
    id: u32,
    link: Option<VdevLink<N>>,
    state: SlotState,
    /// Per queue, the peer index last delivered to the handler.
    seen: Vec<Option<u16>>,
    /// Per queue, where the ring lives, for the index the peer advances
    /// (its used index when we drive, its avail index when we are the
    /// device): worked out once when the vdev becomes active, not on every
    /// doorbell, and read only while it is active. The slots are rebuilt on
    /// every start, and a table changed under a running link crashes it
    /// at the next table check ([`Instance::check_table`]: every doorbell
    /// by default, see [`Instance::set_table_check_every`]), so a cached
    /// layout outlives the validated table it came from by at most that
    /// long, and it only ever points at the vring memory that was
    /// validated. (Index loads stay bounds-checked by the region.)
    watch: Vec<Option<QueueMem>>,
}

struct Link<N> {
    region: Region,
    table: LinkTable,
    mailbox: Mailbox,
    notifier: N,
}

/// What a doorbell asks a vdev to look at.
#[derive(Clone, Copy)]
enum Which {
    All,
    Config,
    Queue(u16),
}

type EventHandler = Box<dyn FnMut(&Event) + Send>;

/// One remoteproc link: a platform, its virtio factories and its life cycle.
pub struct Instance<P: Platform> {
    platform: P,
    registry: Registry<P::Notifier>,
    state: State,
    link: Option<Link<P::Notifier>>,
    slots: Vec<Slot<P::Notifier>>,
    pending_cmd: Option<Command>,
    events: Vec<Event>,
    on_event: Option<EventHandler>,
    /// The table is verified on every this-many-th doorbell (at least 1).
    table_check_every: u32,
    /// Doorbells served since the table was last verified.
    table_unchecked: u32,
}

impl<P: Platform> fmt::Debug for Instance<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Instance")
            .field("remote_cpu", &self.platform.remote_cpu())
            .field("master", &self.platform.is_master())
            .field("state", &self.state)
            .field("vdevs", &self.vdevs())
            .finish()
    }
}

impl<P: Platform> Instance<P> {
    /// A link over `platform`, running the factories of `registry`. Nothing
    /// happens until [`start`](Self::start) or [`autostart`](Self::autostart).
    pub fn new(platform: P, registry: Registry<P::Notifier>) -> Self {
        Instance {
            platform,
            registry,
            state: State::Offline,
            link: None,
            slots: Vec::new(),
            pending_cmd: None,
            events: Vec::new(),
            on_event: None,
            table_check_every: 1,
            table_unchecked: 0,
        }
    }

    /// Verifies the resource table (against the digest taken when it was
    /// validated) on every `doorbells`-th [`handle_doorbell`] instead of on
    /// every one (the default, `1`; `0` is taken as `1`), and on the next
    /// doorbell after any [`Event`]. The digest covers the whole table, so
    /// on a fast link it is a sizeable part of a doorbell's cost. A caller
    /// that sets more than 1 should also call [`verify_table`] on its own
    /// clock (every few milliseconds) so that a peer that rewrites the table
    /// is caught within a bounded time however few doorbells ring: the
    /// link then goes down exactly as on a doorbell.
    ///
    /// [`handle_doorbell`]: Self::handle_doorbell
    /// [`verify_table`]: Self::verify_table
    pub fn set_table_check_every(&mut self, doorbells: u32) {
        self.table_check_every = doorbells.max(1);
    }

    /// Verifies the resource table now (while running): a table changed
    /// after validation takes the link down as [`handle_doorbell`] does
    /// (every vdev fails with [`TableError::ChangedAfterBoot`], state
    /// [`State::Crashed`], events delivered). False when it did.
    ///
    /// [`handle_doorbell`]: Self::handle_doorbell
    pub fn verify_table(&mut self) -> bool {
        if self.state != State::Running {
            return true;
        }
        self.table_unchecked = 0;
        self.check_table();
        self.flush();
        self.state == State::Running
    }

    /// Calls `f` for every [`Event`], from the context that drives the
    /// instance, at the end of the call that produced it. `f` cannot call
    /// back into the instance: record the event and react after the call
    /// returns (e.g. stop the link on `Event::Command(Command::Stop)`).
    /// Without a handler events are only logged.
    pub fn set_event_handler(&mut self, f: impl FnMut(&Event) + Send + 'static) {
        self.on_event = Some(Box::new(f));
    }

    /// The life-cycle state.
    pub fn state(&self) -> State {
        self.state
    }

    /// The remote cpu of this link.
    pub fn remote_cpu(&self) -> RemoteCpuName {
        self.platform.remote_cpu()
    }

    /// True when this side is the master.
    pub fn is_master(&self) -> bool {
        self.platform.is_master()
    }

    /// The platform.
    pub fn platform(&self) -> &P {
        &self.platform
    }

    /// The platform, mutably.
    pub fn platform_mut(&mut self) -> &mut P {
        &mut self.platform
    }

    /// The factories (changes apply to vdevs created later).
    pub fn registry_mut(&mut self) -> &mut Registry<P::Notifier> {
        &mut self.registry
    }

    /// The validated resource table, once started.
    pub fn table(&self) -> Option<&LinkTable> {
        self.link.as_ref().map(|l| &l.table)
    }

    /// The shared region, once started.
    pub fn region(&self) -> Option<&Region> {
        self.link.as_ref().map(|l| &l.region)
    }

    /// The command mailbox, once started.
    pub fn mailbox(&self) -> Option<&Mailbox> {
        self.link.as_ref().map(|l| &l.mailbox)
    }

    /// The vdevs of the running link.
    pub fn vdevs(&self) -> Vec<VdevSummary> {
        self.slots
            .iter()
            .map(|s| VdevSummary {
                index: s.index,
                id: s.id,
                role: s.link.as_ref().map(|l| l.info().role),
                notifyid: s.link.as_ref().map(|l| l.info().notifyid),
                state: match &s.state {
                    SlotState::Active(_) => VdevState::Active,
                    SlotState::Waiting => VdevState::WaitingForDriver,
                    SlotState::Skipped => VdevState::Skipped,
                    SlotState::Failed(e) => VdevState::Failed(*e),
                },
            })
            .collect()
    }

    /// The command sent to the peer that was not acknowledged yet.
    pub fn pending_command(&self) -> Option<Command> {
        self.pending_cmd
    }

    fn refuse(&self, op: &'static str, hint: &'static str) -> InstanceError {
        InstanceError::InvalidState {
            op,
            state: self.state,
            hint,
        }
    }

    fn flush(&mut self) {
        for e in self.events.drain(..) {
            match &mut self.on_event {
                Some(f) => f(&e),
                None => log::debug!("remoteproc event (no handler): {e:?}"),
            }
        }
    }

    /// Offline or stopped → configured: the platform prepares the core.
    pub fn configure(&mut self) -> Result<(), InstanceError> {
        match self.state {
            State::Offline | State::Stopped => {}
            State::Configured => return Ok(()),
            _ => {
                return Err(self.refuse("configure", "stop the link first"));
            }
        }
        self.platform.config()?;
        self.state = State::Configured;
        Ok(())
    }

    /// Starts the link if the platform says it autostarts; true if started.
    pub fn autostart(&mut self) -> Result<bool, InstanceError> {
        if self.state != State::Offline || !self.platform.is_autostart() {
            return Ok(false);
        }
        self.start().map(|()| true)
    }

    /// Starts the link (config → table or firmware → start → vdevs); on a
    /// running or crashed link, stops it first (restart).
    ///
    /// On failure the link is left configured, without vdevs.
    pub fn start(&mut self) -> Result<(), InstanceError> {
        if matches!(self.state, State::Running | State::Crashed) {
            if let Err(e) = self.stop_inner() {
                log::warn!(
                    "remoteproc {}: stopping for restart: {e}",
                    self.platform.remote_cpu()
                );
            }
        }
        let r = self.configure().and_then(|()| self.bring_up());
        match r {
            Ok(()) => {
                self.state = State::Running;
                self.create_vdevs();
            }
            Err(e) => {
                log::warn!(
                    "remoteproc {}: start failed: {e}",
                    self.platform.remote_cpu()
                );
                self.link = None;
                self.slots.clear();
            }
        }
        self.flush();
        r
    }

    fn locate_table(&mut self, region: &Region) -> Result<(TableLocation, LinkMap), InstanceError> {
        if self.platform.is_master() {
            if let Some(Firmware::Elf(image)) = self.platform.firmware() {
                let map = self.platform.address_map()?;
                let loaded = elf::load(image, region, &map, SegmentAddr::Physical)?;
                let rt = loaded
                    .resource_table
                    .ok_or(InstanceError::NoResourceTable)?;
                let offset = rt.region_offset.ok_or(InstanceError::NoResourceTable)?;
                return Ok((
                    TableLocation {
                        offset,
                        max_len: rt.size,
                    },
                    map,
                ));
            }
        }
        let loc = self.platform.resource_table()?;
        let map = self.platform.address_map()?;
        Ok((loc, map))
    }

    fn bring_up(&mut self) -> Result<(), InstanceError> {
        let master = self.platform.is_master();
        let region = self.platform.region();
        let (loc, map) = self.locate_table(&region)?;
        let mut scratch = vec![0u8; loc.max_len.min(region.len())];
        let table = if master {
            table::assign(&region, loc, &map, &mut scratch)?
        } else {
            table::adopt(&region, loc, &map, &mut scratch)?
        };
        drop(scratch);
        let role = if master {
            LinkRole::Master
        } else {
            LinkRole::Remote
        };
        let mailbox = Mailbox::new(region.clone(), role, loc.offset)?;
        self.platform.start()?;
        let notifier = self.platform.notifier();
        self.slots = table
            .vdevs()
            .map(|v| match v {
                Ok(info) => Slot {
                    index: info.index,
                    id: info.id,
                    link: Some(VdevLink::new(region.clone(), map, *info, notifier.clone())),
                    state: SlotState::Waiting,
                    seen: vec![None; usize::from(info.num_vrings())],
                    watch: Vec::new(),
                },
                Err(fault) => Slot {
                    index: fault.index,
                    id: fault.id,
                    link: None,
                    state: SlotState::Failed(InstanceError::Table(fault.error)),
                    seen: Vec::new(),
                    watch: Vec::new(),
                },
            })
            .collect();
        self.pending_cmd = None;
        self.link = Some(Link {
            region,
            table,
            mailbox,
            notifier,
        });
        Ok(())
    }

    fn create_vdevs(&mut self) {
        let cpu = self.platform.remote_cpu();
        for slot in &mut self.slots {
            let Some(link) = &slot.link else {
                if let SlotState::Failed(error) = slot.state {
                    log::warn!("remoteproc {cpu}: vdev {} unusable: {error}", slot.index);
                    self.events.push(Event::VdevFailed {
                        index: slot.index,
                        id: slot.id,
                        error,
                    });
                }
                continue;
            };
            let role = link.info().role;
            if !self.registry.is_registered(slot.id, role) {
                log::info!(
                    "remoteproc {cpu}: vdev {}: no virtio {} registered for device id {}; skipped",
                    slot.index,
                    role.as_str(),
                    slot.id
                );
                slot.state = SlotState::Skipped;
                self.events.push(Event::VdevSkipped {
                    index: slot.index,
                    id: slot.id,
                    role,
                });
                continue;
            }
            match role {
                Role::Driver => activate(&mut self.registry, slot, &mut self.events),
                Role::Device => {
                    // Created at once if the driver is already up.
                    if let Some(link) = &mut self.link {
                        service(
                            &mut self.registry,
                            link,
                            slot,
                            Which::Config,
                            &mut self.events,
                        );
                    }
                }
            }
        }
    }

    /// A doorbell rang: `Doorbell::Id(n)` for notify id `n`, or
    /// `Doorbell::All`. Call it from the platform's interrupt handler or
    /// poller (in a context where handlers may run), and also with
    /// `Doorbell::All` to let handlers do locally queued work.
    pub fn handle_doorbell(&mut self, doorbell: Doorbell) {
        self.poll_mailbox();
        if self.state == State::Running {
            self.table_unchecked = self.table_unchecked.saturating_add(1);
            if self.table_unchecked >= self.table_check_every || !self.events.is_empty() {
                self.table_unchecked = 0;
                self.check_table();
            }
        }
        if let (State::Running, Some(link)) = (self.state, &mut self.link) {
            match doorbell {
                Doorbell::All => {
                    for slot in &mut self.slots {
                        service(&mut self.registry, link, slot, Which::All, &mut self.events);
                    }
                }
                Doorbell::Id(id) => {
                    let target = self.slots.iter().enumerate().find_map(|(i, s)| {
                        let info = s.link.as_ref()?.info();
                        if info.notifyid == id {
                            Some((i, Which::Config))
                        } else {
                            info.queue_of(id).map(|q| (i, Which::Queue(q)))
                        }
                    });
                    match target {
                        Some((i, which)) => service(
                            &mut self.registry,
                            link,
                            &mut self.slots[i],
                            which,
                            &mut self.events,
                        ),
                        None => {
                            // Maybe a vring of a vdev whose driver has just
                            // set DRIVER_OK (its vring ids are not settled
                            // before): look at the waiting ones.
                            log::debug!(
                                "remoteproc {}: doorbell for notify id {id}, which no live \
                                 vdev owns; checking the vdevs waiting for their driver",
                                self.platform.remote_cpu()
                            );
                            for slot in &mut self.slots {
                                if matches!(slot.state, SlotState::Waiting) {
                                    service(
                                        &mut self.registry,
                                        link,
                                        slot,
                                        Which::Config,
                                        &mut self.events,
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
        if !self.events.is_empty() {
            // Something happened on the link: look at the table on the next
            // doorbell whatever the interval.
            self.table_unchecked = self.table_check_every;
        }
        self.flush();
    }

    /// A running link whose table changed after validation is unusable:
    /// every vdev fails with [`TableError::ChangedAfterBoot`] (the vdevs this
    /// side drives are reset so their devices see the driver go) and the
    /// link is crashed until restarted.
    fn check_table(&mut self) {
        let Some(link) = &self.link else { return };
        let Err(e) = link.table.verify(&link.region) else {
            return;
        };
        log::warn!(
            "remoteproc {}: {e}; taking every vdev down",
            self.platform.remote_cpu()
        );
        let error = InstanceError::Table(e);
        for slot in &mut self.slots {
            if let SlotState::Active(h) = &mut slot.state {
                h.remove();
                self.events.push(Event::VdevDown {
                    index: slot.index,
                    id: slot.id,
                });
            }
            if let Some(link) = &slot.link {
                if link.info().role == Role::Driver {
                    let _ = link.reset_status();
                }
            }
            slot.state = SlotState::Failed(error);
            self.events.push(Event::VdevFailed {
                index: slot.index,
                id: slot.id,
                error,
            });
        }
        self.state = State::Crashed;
    }

    fn poll_mailbox(&mut self) {
        let Some(link) = &self.link else { return };
        match link.mailbox.poll() {
            Ok(Some(cmd)) => {
                log::info!(
                    "remoteproc {}: peer sent command {cmd:?} (acknowledged)",
                    self.platform.remote_cpu()
                );
                self.events.push(Event::Command(cmd));
                if let Err(e) = link.notifier.notify(Doorbell::All) {
                    log::warn!("remoteproc: ringing the peer for an ACK failed: {e}");
                }
            }
            Ok(None) => {}
            Err(e) => log::warn!("remoteproc: command mailbox unreadable: {e}"),
        }
        if let Some(cmd) = self.pending_cmd {
            match link.mailbox.ack_received() {
                Ok(true) => {
                    self.pending_cmd = None;
                    self.events.push(Event::CommandAcked(cmd));
                }
                Ok(false) => {}
                Err(e) => log::warn!("remoteproc: command mailbox unreadable: {e}"),
            }
        }
    }

    fn send_command(&mut self, cmd: Command) -> Result<(), InstanceError> {
        let state = self.state;
        let link = self.link.as_ref().ok_or(InstanceError::InvalidState {
            op: "send a mailbox command",
            state,
            hint: "start the link first: the mailbox lives in its resource table",
        })?;
        link.mailbox.post(cmd)?;
        link.notifier.notify(Doorbell::All)?;
        self.pending_cmd = Some(cmd);
        Ok(())
    }

    /// Waits for the peer's ACK of the last command sent through the
    /// mailbox; `wait` sleeps a little and returns `false` at the deadline.
    pub fn wait_command_ack(&mut self, wait: impl FnMut() -> bool) -> Result<(), InstanceError> {
        let state = self.state;
        let link = self.link.as_ref().ok_or(InstanceError::InvalidState {
            op: "wait for a command ACK",
            state,
            hint: "start the link and send a command first",
        })?;
        link.mailbox.wait_ack(wait)?;
        if let Some(cmd) = self.pending_cmd.take() {
            self.events.push(Event::CommandAcked(cmd));
        }
        self.flush();
        Ok(())
    }

    /// Makes the remote panic: through the platform if it can, else with a
    /// PANIC command in the mailbox. The link is then crashed.
    pub fn panic_remote(&mut self) -> Result<(), InstanceError> {
        if self.state != State::Running {
            return Err(self.refuse("panic the remote", "start the link first"));
        }
        match self.platform.panic() {
            Ok(()) => {}
            Err(PlatformError::Unsupported(_)) => self.send_command(Command::Panic)?,
            Err(e) => return Err(e.into()),
        }
        self.enter_crashed();
        self.flush();
        Ok(())
    }

    /// Resets the remote with `value`: through the platform if it can, else
    /// with a RESET command in the mailbox (which needs a started link).
    pub fn reset_remote(&mut self, value: u16) -> Result<(), InstanceError> {
        let r = match self.platform.reset(value) {
            Ok(()) => Ok(()),
            Err(PlatformError::Unsupported(_)) => self.send_command(Command::Reset(value)),
            Err(e) => Err(e.into()),
        };
        self.flush();
        r
    }

    /// Records that the remote crashed (watchdog, panic report...): removes
    /// every vdev. Restart with [`start`](Self::start).
    pub fn mark_crashed(&mut self) -> Result<(), InstanceError> {
        if self.state != State::Running {
            return Err(self.refuse("mark the remote crashed", "it is not running"));
        }
        self.enter_crashed();
        self.flush();
        Ok(())
    }

    fn enter_crashed(&mut self) {
        self.remove_vdevs(false);
        self.state = State::Crashed;
    }

    /// Stops the link: removes every vdev, then stops the core (a master
    /// whose platform cannot stop it sends STOP through the mailbox).
    pub fn stop(&mut self) -> Result<(), InstanceError> {
        if !matches!(self.state, State::Running | State::Crashed) {
            return Err(self.refuse("stop", "it is not running"));
        }
        let r = self.stop_inner();
        self.flush();
        r
    }

    fn stop_inner(&mut self) -> Result<(), InstanceError> {
        let running = self.state == State::Running;
        self.remove_vdevs(running);
        let r = match self.platform.stop() {
            Ok(()) => Ok(()),
            Err(PlatformError::Unsupported(_)) if self.platform.is_master() && running => {
                self.send_command(Command::Stop)
            }
            Err(PlatformError::Unsupported(_)) => Ok(()),
            Err(e) => Err(e.into()),
        };
        self.state = State::Stopped;
        r
    }

    /// Removes every handler; `reset` also resets (status 0) the vdevs this
    /// side drives, so their devices see the driver go.
    fn remove_vdevs(&mut self, reset: bool) {
        for slot in &mut self.slots {
            if let SlotState::Active(h) = &mut slot.state {
                h.remove();
                self.events.push(Event::VdevDown {
                    index: slot.index,
                    id: slot.id,
                });
            }
            if let Some(link) = &slot.link {
                if reset && link.info().role == Role::Driver {
                    if let Err(e) = link.reset_status() {
                        log::warn!("vdev {}: resetting the status failed: {e}", slot.index);
                    }
                }
            }
        }
        self.slots.clear();
    }
}

/// Creates the handler of `slot` through its factory.
fn activate<N: Notify + Clone>(
    registry: &mut Registry<N>,
    slot: &mut Slot<N>,
    events: &mut Vec<Event>,
) {
    let Some(link) = slot.link.clone() else {
        return;
    };
    let role = link.info().role;
    let made = match role {
        Role::Driver => VdevDriver::new(link).map(|t| registry.create_driver(t)),
        Role::Device => VdevDevice::new(link).map(|t| registry.create_device(t)),
    };
    match made {
        Ok(Some(Ok(h))) => {
            slot.state = SlotState::Active(h);
            slot.seen.iter_mut().for_each(|s| *s = None);
            // The handler has set its queues up (a driver assigned its
            // vrings): their layout is final until the vdev goes down.
            slot.watch = match &slot.link {
                Some(l) => (0..l.info().num_vrings())
                    .map(|q| l.queue_mem(q).ok())
                    .collect(),
                None => Vec::new(),
            };
            events.push(Event::VdevUp {
                index: slot.index,
                id: slot.id,
                role,
            });
        }
        Ok(None) => {
            slot.state = SlotState::Skipped;
            events.push(Event::VdevSkipped {
                index: slot.index,
                id: slot.id,
                role,
            });
        }
        Ok(Some(Err(e))) | Err(e) => {
            log::warn!(
                "vdev {} (id {}): the virtio {} failed to start: {e}",
                slot.index,
                slot.id,
                role.as_str()
            );
            let error = InstanceError::Virtio(e);
            slot.state = SlotState::Failed(error);
            events.push(Event::VdevFailed {
                index: slot.index,
                id: slot.id,
                error,
            });
        }
    }
}

/// True when the peer published new work on queue `q` since the last
/// delivery (new avail entries for a device, new used ones for a driver).
fn has_work<N: Notify>(
    link: &VdevLink<N>,
    watch: &[Option<QueueMem>],
    seen: &mut [Option<u16>],
    q: u16,
) -> bool {
    let Some(Some(mem)) = watch.get(usize::from(q)) else {
        return false;
    };
    let at = match link.info().role {
        Role::Driver => mem.layout.used_idx(),
        Role::Device => mem.layout.avail_idx(),
    };
    let Ok(idx) = mem.region.load_u16(at) else {
        return false;
    };
    match seen.get_mut(usize::from(q)) {
        Some(s) if *s != Some(idx) => {
            *s = Some(idx);
            true
        }
        _ => false,
    }
}

/// Handles a doorbell for one vdev of `shared` (the running link).
fn service<N: Notify + Clone>(
    registry: &mut Registry<N>,
    shared: &mut Link<N>,
    slot: &mut Slot<N>,
    mut which: Which,
    events: &mut Vec<Event>,
) {
    let Some(link) = &mut slot.link else { return };
    let role = link.info().role;
    match &slot.state {
        SlotState::Skipped | SlotState::Failed(_) => return,
        SlotState::Waiting => {
            if role != Role::Device || !link.status().is_ok_and(driver_ready) {
                return;
            }
            // DRIVER_OK: the vring entries are settled now; read them.
            match shared.table.bind_vrings(&shared.region, slot.index) {
                Ok(info) => {
                    link.set_info(info);
                    slot.seen = vec![None; usize::from(info.num_vrings())];
                }
                Err(e) => {
                    log::warn!(
                        "vdev {} (id {}): the driver set DRIVER_OK with unusable vrings: {e}",
                        slot.index,
                        slot.id
                    );
                    let error = InstanceError::Table(e);
                    slot.state = SlotState::Failed(error);
                    events.push(Event::VdevFailed {
                        index: slot.index,
                        id: slot.id,
                        error,
                    });
                    return;
                }
            }
            activate(registry, slot, events);
            which = Which::All;
        }
        SlotState::Active(_) => {
            if role == Role::Device && !link.status().is_ok_and(driver_ready) {
                // The driver reset the device (or gave up): wait for it
                // again; the vring entries are its to rewrite meanwhile.
                if let SlotState::Active(h) = &mut slot.state {
                    h.remove();
                }
                shared.table.unbind_vrings(slot.index);
                slot.state = SlotState::Waiting;
                slot.watch.clear();
                events.push(Event::VdevDown {
                    index: slot.index,
                    id: slot.id,
                });
                return;
            }
        }
    }
    let (Some(link), SlotState::Active(h)) = (&slot.link, &mut slot.state) else {
        return;
    };
    match which {
        Which::Config => h.poll(),
        Which::Queue(q) => {
            if has_work(link, &slot.watch, &mut slot.seen, q) {
                h.notify(q);
            }
        }
        Which::All => {
            h.poll();
            for q in 0..link.info().num_vrings() {
                if has_work(link, &slot.watch, &mut slot.seen, q) {
                    h.notify(q);
                }
            }
        }
    }
}
