//! The ivshmem master (`IvshmemNode` over `IvshmemMaster`, without QEMU)
//! against a remote built like the firmware (`ShmemRemote`, rpmsg device
//! role, ping service) running in a thread on the same /dev/shm object:
//! boot handshake, pings with data check at 17 and 1520 bytes, a restart of
//! the remote's link, and STOP through the mailbox.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rptun::remoteproc::instance::{Event, Instance};
use rptun::remoteproc::mailbox::Command;
use rptun::remoteproc::platform::{Doorbell, RemoteCpuName};
use rptun::remoteproc::registry::Registry;
use rptun::remoteproc::rpmsg_vdev::{register_device, DeviceLink, LinkEvent, LinkSink};
use rptun::remoteproc::shmem::{self, ivshmem, SeqNotifier, SeqWatch, ShmemError, ShmemRemote};
use rptun::rpmsg::services::ping::{ping_cpu, PingParams, PingService};
use rptun::rpmsg::virtio::RpmsgVirtioOptions;
use rptun::rpmsg::{Bus, Link, LinkId, LocalCpu, RemoteCpu, ServiceConfig, ADDR_ANY};
use rptun_host::ivshmem::{run_poller, CounterClock, IvshmemConfig, IvshmemMaster, IvshmemNode};
use rptun_host::shm::{exists, ShmObject};

type Dev = DeviceLink<SeqNotifier, 8>;

struct Q<T>(Arc<Mutex<Vec<T>>>);

impl<T> Clone for Q<T> {
    fn clone(&self) -> Self {
        Q(self.0.clone())
    }
}

impl<T> Q<T> {
    fn new() -> Self {
        Q(Arc::new(Mutex::new(Vec::new())))
    }

    fn take(&self) -> Vec<T> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

impl LinkSink<Dev> for Q<LinkEvent<Dev>> {
    fn push(&self, e: LinkEvent<Dev>) {
        self.0.lock().unwrap().push(e);
    }
}

/// What the remote thread saw.
#[derive(Debug, Default)]
struct RemoteLog {
    links_up: usize,
    stopped_by_master: bool,
}

/// The firmware's main loop, on a thread: serves until STOP (or `quit`);
/// restarts its link when `restart` is set (as RESET makes the firmware do).
fn remote(name: String, quit: Arc<AtomicBool>, restart: Arc<AtomicBool>) -> JoinHandle<RemoteLog> {
    std::thread::spawn(move || {
        let shm = ShmObject::open_existing(&name, ivshmem::SHM_SIZE).unwrap();
        let region = shm.region().clone();
        let q2 = quit.clone();
        let wait = move || -> Result<(), ShmemError> {
            if q2.load(Ordering::Relaxed) {
                return Err(ShmemError::Timeout("master"));
            }
            std::thread::sleep(Duration::from_micros(200));
            Ok(())
        };
        let platform = ShmemRemote::new(
            region.clone(),
            RemoteCpuName::new("server").unwrap(),
            ivshmem::TABLE_MAX,
            wait,
        );
        let links: Q<LinkEvent<Dev>> = Q::new();
        let events: Q<Event> = Q::new();
        let mut reg = Registry::new();
        register_device::<_, _, 8>(
            &mut reg,
            RpmsgVirtioOptions::new(
                LocalCpu::new("proxy").unwrap(),
                RemoteCpu::new("server").unwrap(),
            ),
            links.clone(),
        );
        let mut inst = Instance::new(platform, reg);
        let ev = events.clone();
        inst.set_event_handler(move |e| ev.0.lock().unwrap().push(*e));
        let mut bus: Bus<Dev> = Bus::new();
        bus.register(ServiceConfig::any("rpmsg-ping"), PingService::new());
        let mut attached: Vec<(usize, LinkId)> = Vec::new();
        let mut log = RemoteLog::default();
        let sync = |bus: &mut Bus<Dev>, attached: &mut Vec<(usize, LinkId)>, up: &mut usize| {
            for e in links.take() {
                match e {
                    LinkEvent::Up { vdev, transport } => {
                        attached.push((vdev, bus.add_link(Link::new(transport))));
                        *up += 1;
                    }
                    LinkEvent::Down { vdev } => attached.retain(|&(v, id)| {
                        if v == vdev {
                            bus.remove_link(id);
                        }
                        v != vdev
                    }),
                }
            }
        };
        'session: while !quit.load(Ordering::Relaxed) {
            let mut watch = SeqWatch::new(&region, false);
            if inst.start().is_err() {
                continue;
            }
            let mut last = Instant::now() - Duration::from_secs(1);
            loop {
                if quit.load(Ordering::Relaxed) {
                    break 'session;
                }
                if restart.swap(false, Ordering::Relaxed) {
                    let _ = inst.stop();
                    sync(&mut bus, &mut attached, &mut log.links_up);
                    continue 'session;
                }
                if watch.changed(&region) || last.elapsed() > Duration::from_millis(5) {
                    last = Instant::now();
                    inst.handle_doorbell(Doorbell::All);
                    sync(&mut bus, &mut attached, &mut log.links_up);
                    let _ = bus.poll_all();
                }
                for e in events.take() {
                    if e == Event::Command(Command::Stop) {
                        log.stopped_by_master = true;
                        let _ = inst.stop();
                        sync(&mut bus, &mut attached, &mut log.links_up);
                        break 'session;
                    }
                }
                if shmem::take_need_reset(&region, false).unwrap() {
                    let _ = inst.stop();
                    sync(&mut bus, &mut attached, &mut log.links_up);
                    continue 'session;
                }
                std::thread::sleep(Duration::from_micros(100));
            }
        }
        log
    })
}

fn lock(n: &Arc<Mutex<IvshmemNode>>) -> std::sync::MutexGuard<'_, IvshmemNode> {
    n.lock().unwrap()
}

/// Pings the remote once the ping endpoints are bound (bounded wait).
fn ping(node: &Arc<Mutex<IvshmemNode>>, len: usize) -> rptun::rpmsg::services::ping::PingReport {
    let cpu = RemoteCpu::new("proxy").unwrap();
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        {
            let mut g = lock(node);
            let n = &mut *g;
            let ping = n.ping;
            if let Some(lid) = n.bus.link_by_cpu(&cpu) {
                let bound = n
                    .bus
                    .service_and_link_mut(&ping, lid)
                    .is_some_and(|(s, l)| {
                        s.endpoint(lid)
                            .and_then(|e| l.endpoint(e))
                            .is_some_and(|i| i.dest != ADDR_ANY)
                    });
                if bound {
                    let mut wait = CounterClock::new(n.region(), Duration::from_micros(100));
                    let params = PingParams::new(10, len)
                        .check(true)
                        .timeout(Duration::from_secs(10));
                    return ping_cpu(&mut n.bus, &ping, &cpu, &params, &mut wait).unwrap();
                }
            }
        }
        assert!(Instant::now() < end, "the ping endpoints never bound");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn master_and_firmware_like_remote_ping_restart_and_stop() {
    let name = format!("rptun-ivshmem-test-{}", std::process::id());
    let cfg = IvshmemConfig {
        shm_name: name.clone(),
        boot_timeout: Duration::from_secs(30),
        ..IvshmemConfig::default()
    };
    let master = IvshmemMaster::new(cfg).unwrap();
    let quit = Arc::new(AtomicBool::new(false));
    let restart = Arc::new(AtomicBool::new(false));
    let remote = remote(name.clone(), quit.clone(), restart.clone());
    let node = Arc::new(Mutex::new(IvshmemNode::new(master)));
    lock(&node).start().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let poller = run_poller(
        node.clone(),
        stop.clone(),
        Duration::from_micros(100),
        Duration::from_millis(5),
        |_| {},
    );

    for len in [17, 1520] {
        let r = ping(&node, len);
        assert_eq!((r.times, r.send_len, r.buffer_len), (10, len, 1520));
    }

    // The remote restarts its link (as RESET makes the firmware do): the
    // master notices NEED_RESET, runs the handshake again, and the link
    // comes back.
    restart.store(true, Ordering::Relaxed);
    let end = Instant::now() + Duration::from_secs(20);
    while !(lock(&node).remote_restarts() == 1 && lock(&node).rpmsg_up()) {
        assert!(Instant::now() < end, "the master never restarted the link");
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(ping(&node, 1520).send_len, 1520);

    // Without QEMU the master stops the remote through the mailbox.
    stop.store(true, Ordering::Relaxed);
    poller.join().unwrap();
    lock(&node).stop().unwrap();
    let end = Instant::now() + Duration::from_secs(20);
    while !remote.is_finished() {
        // The remote needs the master's ACK poll to see nothing else; just
        // give it time (bounded).
        assert!(Instant::now() < end, "the remote did not stop on STOP");
        std::thread::sleep(Duration::from_millis(5));
    }
    let log = remote.join().unwrap();
    assert!(log.stopped_by_master, "{log:?}");
    assert_eq!(log.links_up, 2, "{log:?}");
    drop(node);
    assert!(!exists(&name), "the master removes the object it created");
    quit.store(true, Ordering::Relaxed);
}
