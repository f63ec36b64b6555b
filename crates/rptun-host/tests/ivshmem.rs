//! The ivshmem master (the simulator's node with the ivshmem settings and a
//! [`RemoteRunner`], as `rptun ivshmem` runs it, but with a thread instead of
//! QEMU) against a remote built like the firmware (`ShmemRemote`, rpmsg
//! device role, ping service) on the same /dev/shm object: the runner starts
//! the remote, boot handshake, pings with data check at 17 and 1520 bytes, a
//! restart of the remote's link (the remote keeps running), STOP through the
//! mailbox, and a remote that dies marks the link crashed.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rptun::remoteproc::instance::State;
use rptun::remoteproc::instance::{Event, Instance};
use rptun::remoteproc::mailbox::Command;
use rptun::remoteproc::platform::{Doorbell, RemoteCpuName};
use rptun::remoteproc::registry::Registry;
use rptun::remoteproc::rpmsg_vdev::{register_device, DeviceLink, LinkEvent, LinkSink};
use rptun::remoteproc::shmem::{self, ivshmem, SeqNotifier, SeqWatch, ShmemError, ShmemRemote};
use rptun::rpmsg::services::ping::PingParams;
use rptun::rpmsg::services::ping::PingService;
use rptun::rpmsg::virtio::RpmsgVirtioOptions;
use rptun::rpmsg::{Bus, Link, LinkId, LocalCpu, RemoteCpu, ServiceConfig};
use rptun::shm::Region;
use rptun_host::ivshmem::{node_config, post_stop};
use rptun_host::shm::{exists, unlink, ShmObject};
use rptun_host::sim::node::{Node, NodeHandle, NodeHooks};
use rptun_host::sim::platform::RemoteRunner;

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

/// The test's stand-in for QEMU: runs [`remote`] in a thread.
struct ThreadRunner {
    name: String,
    quit: Arc<AtomicBool>,
    restart: Arc<AtomicBool>,
    thread: Option<JoinHandle<RemoteLog>>,
    logs: Arc<Mutex<Vec<RemoteLog>>>,
    starts: Arc<AtomicUsize>,
    stops: Arc<AtomicUsize>,
}

impl ThreadRunner {
    fn join(&mut self) {
        if let Some(t) = self.thread.take() {
            self.logs.lock().unwrap().push(t.join().unwrap());
        }
    }
}

impl RemoteRunner for ThreadRunner {
    fn start(&mut self, _region: &Region) -> Result<(), String> {
        if self.thread.as_ref().is_some_and(|t| !t.is_finished()) {
            return Ok(());
        }
        self.join();
        self.starts.fetch_add(1, Ordering::Relaxed);
        self.quit.store(false, Ordering::Relaxed);
        self.thread = Some(remote(
            self.name.clone(),
            self.quit.clone(),
            self.restart.clone(),
        ));
        Ok(())
    }

    fn exited(&mut self) -> Option<String> {
        if self.thread.as_ref()?.is_finished() {
            self.join();
            return Some("the remote thread ended".into());
        }
        None
    }

    fn stop(&mut self, region: &Region) {
        self.stops.fetch_add(1, Ordering::Relaxed);
        if self.thread.is_none() {
            return;
        }
        post_stop(region);
        let end = Instant::now() + Duration::from_secs(20);
        while !self.thread.as_ref().is_some_and(|t| t.is_finished()) {
            assert!(Instant::now() < end, "the remote did not stop on STOP");
            std::thread::sleep(Duration::from_millis(2));
        }
        self.join();
    }

    fn timeout_hint(&self, secs: u64) -> String {
        format!("the remote thread did not answer within {secs} s")
    }
}

fn ping(node: &NodeHandle, len: usize) -> rptun::rpmsg::services::ping::PingReport {
    let p = PingParams::new(10, len)
        .check(true)
        .timeout(Duration::from_secs(10));
    node.call(move |n| n.ping("proxy", &p)).unwrap().unwrap()
}

#[test]
fn the_simulator_node_runs_a_firmware_like_remote_over_ivshmem() {
    let name = format!("rptun-ivshmem-test-{}", std::process::id());
    let quit = Arc::new(AtomicBool::new(false));
    let restart = Arc::new(AtomicBool::new(false));
    let logs = Arc::new(Mutex::new(Vec::new()));
    let starts = Arc::new(AtomicUsize::new(0));
    let stops = Arc::new(AtomicUsize::new(0));
    let runner = ThreadRunner {
        name: name.clone(),
        quit: quit.clone(),
        restart: restart.clone(),
        thread: None,
        logs: logs.clone(),
        starts: starts.clone(),
        stops: stops.clone(),
    };
    let shm = ShmObject::open_or_create(&name, ivshmem::SHM_SIZE).unwrap();
    let cfg = node_config(Duration::from_micros(100), Duration::from_secs(30));
    let mut node = Node::new(cfg, NodeHooks::default(), shm).unwrap();
    node.reset_boot_words(true);
    node.set_runner(Box::new(runner));
    let node = NodeHandle::spawn(node).unwrap();

    // The runner starts the remote once the table is published.
    node.call(|n| n.start_link()).unwrap().unwrap();
    assert_eq!(starts.load(Ordering::Relaxed), 1);
    assert!(node
        .call(|n| n.wait_until(Duration::from_secs(20), |n| n.peer_ready()))
        .unwrap());
    for len in [17, 1520] {
        let r = ping(&node, len);
        assert_eq!((r.times, r.send_len, r.buffer_len), (10, len, 1520));
    }

    // The remote restarts its link (as RESET makes the firmware do): the
    // node notices NEED_RESET and runs the handshake again without stopping
    // the remote, and the link comes back.
    let before = node.call(|n| n.session()).unwrap();
    restart.store(true, Ordering::Relaxed);
    assert!(node
        .call(
            move |n| n.wait_until(Duration::from_secs(20), |n| n.peer_ready()
                && n.session() != before)
        )
        .unwrap());
    assert_eq!(ping(&node, 1520).send_len, 1520);
    assert_eq!(
        stops.load(Ordering::Relaxed),
        0,
        "a restart stopped the remote"
    );
    assert_eq!(
        starts.load(Ordering::Relaxed),
        1,
        "a restart started another remote"
    );

    // Stop: the runner posts STOP, the remote obeys and ends.
    assert!(node
        .call(|n| n.stop_link(Duration::from_secs(2)))
        .unwrap()
        .unwrap());
    assert_eq!(stops.load(Ordering::Relaxed), 1);
    {
        let logs = logs.lock().unwrap();
        assert_eq!(logs.len(), 1);
        assert!(logs[0].stopped_by_master, "{:?}", logs[0]);
        assert_eq!(logs[0].links_up, 2, "{:?}", logs[0]);
    }

    // Started again; then the remote dies on its own (QEMU exits): the node
    // marks the link crashed.
    node.call(|n| n.start_link()).unwrap().unwrap();
    assert_eq!(starts.load(Ordering::Relaxed), 2);
    quit.store(true, Ordering::Relaxed);
    assert!(node
        .call(|n| n.wait_until(Duration::from_secs(20), |n| n.state() == State::Crashed))
        .unwrap());
    node.shutdown();
    let _ = unlink(&name);
    assert!(!exists(&name));
}
