//! The rptun remote ("proxy") over ivshmem: a remoteproc [`Instance`] on the
//! shared-memory platform of `rptun::remoteproc::shmem`, rpmsg-virtio in the
//! device role on the rpmsg vdev with the rpmsg-ping and rpmsg-test
//! services, and a virtio-rng device on the entropy vdevs.
//!
//! There is no doorbell interrupt (ivshmem-plain): the main loop polls the
//! master's counter (`seqm`) every [`POLL_PERIOD_US`] and services every
//! vdev when it moved, or at least every [`IDLE_SERVICE_US`]. Waiting uses
//! the generic timer, never loop counts (TCG timing is not a clock).
//!
//! Life cycle: the master's mailbox commands STOP (stop and power off),
//! RESET (restart the link) and PANIC (report and power off); a master that
//! restarts sets NEED_RESET in `boots`, and the link restarts.
#![forbid(unsafe_code)]

use alloc::sync::Arc;
use alloc::vec::Vec;

use rptun::remoteproc::instance::{Event, Instance};
use rptun::remoteproc::mailbox::Command;
use rptun::remoteproc::platform::{Doorbell, Platform, RemoteCpuName};
use rptun::remoteproc::registry::Registry;
use rptun::remoteproc::rpmsg_vdev::{register_device, DeviceLink, LinkEvent, LinkSink};
use rptun::remoteproc::shmem::{self, ivshmem, SeqNotifier, SeqWatch, ShmemError, ShmemRemote};
use rptun::rpmsg::services::ping::PingService;
use rptun::rpmsg::services::test::TestService;
use rptun::rpmsg::virtio::RpmsgVirtioOptions;
use rptun::rpmsg::{Bus, Link, LinkId, LocalCpu, RemoteCpu, ServiceConfig};
use rptun::shm::Region;

use crate::hw::sync::SpinLock;
use crate::hw::{heap, idle, psci, timer};

/// How often the master's doorbell counter is read, microseconds.
pub const POLL_PERIOD_US: u64 = ivshmem::POLL_PERIOD_US;
/// Every vdev is serviced at least this often, microseconds, even without a
/// doorbell (a safety net; the doorbell is the normal path).
pub const IDLE_SERVICE_US: u64 = 20_000;
/// How often "waiting for the master" is repeated, microseconds.
const WAIT_LOG_US: u64 = 10_000_000;
/// Entries per vring this firmware handles (the master's table uses 8).
const QUEUE: usize = 8;

type Rpmsg = DeviceLink<SeqNotifier, QUEUE>;

/// A queue shared between the instance's callbacks and the main loop.
struct Queue<T>(Arc<SpinLock<Vec<T>>>);

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Queue(self.0.clone())
    }
}

impl<T> Queue<T> {
    fn new() -> Self {
        Queue(Arc::new(SpinLock::new(Vec::new())))
    }

    fn take(&self) -> Vec<T> {
        core::mem::take(&mut *self.0.lock())
    }
}

impl LinkSink<Rpmsg> for Queue<LinkEvent<Rpmsg>> {
    fn push(&self, event: LinkEvent<Rpmsg>) {
        self.0.lock().push(event);
    }
}

/// What the master asked for.
enum Next {
    /// Restart the link (RESET, or the master restarted).
    Restart,
    /// Stop and power off (STOP, PANIC).
    PowerOff,
}

/// Runs the remote until the master stops it, then powers off.
pub fn run(shm: Region) -> ! {
    if idle::init() {
        log::info!("idle: WFI on the generic timer (GICv2)");
    } else {
        log::info!("idle: no GICv2 found, polling with a busy-wait");
    }
    let master = RemoteCpuName::new(ivshmem::MASTER_CPU).expect("a valid constant name");
    let mut last_log = timer::now();
    let boot_wait = move || -> Result<(), ShmemError> {
        if timer::now().micros_since(last_log) >= WAIT_LOG_US {
            log::info!("still waiting for the master ({})", ivshmem::MASTER_CPU);
            last_log = timer::now();
        }
        idle::sleep_us(1000);
        Ok(())
    };
    let platform = ShmemRemote::new(shm.clone(), master, ivshmem::TABLE_MAX, boot_wait);

    let links: Queue<LinkEvent<Rpmsg>> = Queue::new();
    let events: Queue<Event> = Queue::new();
    let mut registry = Registry::new();
    let local = LocalCpu::new(ivshmem::REMOTE_CPU).expect("a valid constant name");
    let remote = RemoteCpu::new(ivshmem::MASTER_CPU).expect("a valid constant name");
    register_device::<_, _, QUEUE>(
        &mut registry,
        RpmsgVirtioOptions::new(local, remote),
        links.clone(),
    );
    crate::rng::register(&mut registry);

    let mut instance = Instance::new(platform, registry);
    let sink = events.clone();
    instance.set_event_handler(move |e| sink.0.lock().push(*e));

    let mut bus: Bus<Rpmsg> = Bus::new();
    bus.register(ServiceConfig::any("rpmsg-ping"), PingService::new());
    bus.register(ServiceConfig::any("rpmsg-test"), TestService::new());
    let mut attached: Vec<(usize, LinkId)> = Vec::new();

    loop {
        // Read the master's counter before announcing ourselves (DESIGN.md
        // §11); the first service below is unconditional anyway.
        let mut watch = SeqWatch::new(&shm, false);
        log::info!(
            "waiting for the master ({}) on {} KiB of shared memory",
            ivshmem::MASTER_CPU,
            shm.len() / 1024
        );
        if let Err(e) = instance.start() {
            log::error!("rptun start failed: {e}; retrying in 1 s");
            sync_links(&links, &mut bus, &mut attached);
            idle::sleep_us(1_000_000);
            continue;
        }
        let (used, free) = heap::usage();
        log::info!(
            "rptun link to {} up (base {:#x}), heap {used} used / {free} free",
            ivshmem::MASTER_CPU,
            shmem_base(&shm)
        );
        let next = serve(
            &shm,
            &mut instance,
            &mut bus,
            &links,
            &events,
            &mut attached,
            &mut watch,
        );
        if let Err(e) = instance.stop() {
            log::warn!("stopping the link: {e}");
        }
        sync_links(&links, &mut bus, &mut attached);
        events.take();
        match next {
            Next::Restart => log::info!("restarting the link"),
            Next::PowerOff => {
                log::info!("stopped by the master; powering off");
                psci::system_off()
            }
        }
    }
}

fn shmem_base(shm: &Region) -> u64 {
    shm.read_u64(shmem::BASE).unwrap_or(0)
}

/// Serves a running link until the master asks for something else.
fn serve<P: Platform>(
    shm: &Region,
    instance: &mut Instance<P>,
    bus: &mut Bus<Rpmsg>,
    links: &Queue<LinkEvent<Rpmsg>>,
    events: &Queue<Event>,
    attached: &mut Vec<(usize, LinkId)>,
    watch: &mut SeqWatch,
) -> Next {
    let mut last_service = None;
    loop {
        let due = last_service.is_none_or(|t| timer::now().micros_since(t) >= IDLE_SERVICE_US);
        if watch.changed(shm) || due {
            last_service = Some(timer::now());
            instance.handle_doorbell(Doorbell::All);
            sync_links(links, bus, attached);
            if let Err(e) = bus.poll_all() {
                log::debug!("rpmsg poll: {e}");
            }
        }
        for e in events.take() {
            match e {
                Event::Command(Command::Stop) => return Next::PowerOff,
                Event::Command(Command::Reset(v)) => {
                    log::info!("RESET ({v}) requested by the master");
                    return Next::Restart;
                }
                Event::Command(Command::Panic) => {
                    log::error!("PANIC requested by the master; halting");
                    return Next::PowerOff;
                }
                Event::VdevUp { index, id, .. } => log::info!("vdev {index} (virtio id {id}) up"),
                Event::VdevDown { index, id } => log::info!("vdev {index} (virtio id {id}) down"),
                Event::VdevFailed { index, id, error } => {
                    log::warn!("vdev {index} (virtio id {id}) failed: {error}")
                }
                _ => {}
            }
        }
        if shmem::take_need_reset(shm, false).unwrap_or(false) {
            log::info!("the master restarted");
            return Next::Restart;
        }
        idle::sleep_us(POLL_PERIOD_US);
    }
}

/// Moves rpmsg transports the instance created onto the bus, and removes
/// the links of vdevs that went away.
fn sync_links(
    links: &Queue<LinkEvent<Rpmsg>>,
    bus: &mut Bus<Rpmsg>,
    attached: &mut Vec<(usize, LinkId)>,
) {
    for ev in links.take() {
        match ev {
            LinkEvent::Up { vdev, transport } => {
                let id = bus.add_link(Link::new(transport));
                attached.push((vdev, id));
            }
            LinkEvent::Down { vdev } => {
                attached.retain(|&(v, id)| {
                    if v == vdev {
                        bus.remove_link(id);
                    }
                    v != vdev
                });
            }
        }
    }
}
