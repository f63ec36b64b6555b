//! A master and a remote instance in two threads over one heap region.
//!
//! The platform is a real (small) one: a NuttX-simulator-like shared header
//! with boot words and a handshake, the resource table at 0x18, and doorbells
//! carried between the threads by channels (each carries the notify id). The
//! virtio device running on the vdevs is a tiny request/response device
//! written here: the driver posts a readable request and a writable response
//! buffer, the device answers with the request's bytes reversed.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rptun::remoteproc::addr::{AddrEnv, AddrEnvEntry, AddressMap, PhysMap};
use rptun::remoteproc::instance::{Event, Instance, InstanceError, State, VdevState};
use rptun::remoteproc::mailbox::Command;
use rptun::remoteproc::platform::{
    Doorbell, LinkMap, Notify, Platform, PlatformError, RemoteCpuName, TableLocation,
};
use rptun::remoteproc::registry::{Registry, VirtioHandler};
use rptun::remoteproc::table::TableError;
use rptun::remoteproc::vdev::{VdevDevice, VdevDriver};
use rptun::shm::Region;
use rptun::virtio::queue::{Buf, DeviceQueue, DriverQueue};
use rptun::virtio::{status, DeviceTransport, Role, Transport, VirtioError};
use rptun::wire::rsc::{Carveout, Name, RscError, TableBuilder, Vdev, Vring, ANY};

// ---- the shared memory layout (NuttX-simulator-like) -----------------------

const REGION_LEN: usize = 0x10000;
const BASE_PA: u64 = 0x8000_0000;
const BASE: usize = 0x00;
const BOOTS: usize = 0x10;
const BOOTM: usize = 0x14;
const RSC: usize = 0x18;
const RSC_MAX: usize = 0x800;
const BOOT: u32 = 1;
const OK: u32 = 2;
const NEED_RESET: u32 = 4;

/// Our request/response device's virtio id (unused by the standard).
const ECHO: u32 = 42;
/// A device id nobody registers.
const UNKNOWN: u32 = 99;

const LIMIT: Duration = Duration::from_secs(20);

fn wait_until(mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + LIMIT;
    while !f() {
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    true
}

/// `(device id, reserved[0])` per vdev; vdev i uses carveout i.
fn table(vdevs: &[(u32, u8)]) -> Vec<u8> {
    let mut b = TableBuilder::new_vec(2 * vdevs.len() as u32).unwrap();
    for (i, &(id, reserved0)) in vdevs.iter().enumerate() {
        let v = Vdev {
            id,
            notifyid: ANY,
            reserved: [reserved0, 0],
            ..Vdev::default()
        };
        let ring = Vring {
            da: ANY,
            align: 16,
            num: 8,
            notifyid: ANY,
            reserved: 0,
        };
        b.add_vdev(&v, &[ring], &[]).unwrap();
        b.add_carveout(&Carveout {
            da: 0x1000 + 0x2000 * i as u32,
            pa: ANY,
            len: 0x2000,
            name: Name::new("echo_shm").unwrap(),
            ..Carveout::default()
        })
        .unwrap();
    }
    b.finish_vec().unwrap()
}

// ---- the platform ----------------------------------------------------------

enum Msg {
    Doorbell(Doorbell),
    Run(Box<dyn FnOnce(&mut Inst) + Send>),
    Quit,
}

type Inst = Instance<TestPlatform>;

/// Rings the peer: a message with the notify id into its thread's queue.
#[derive(Clone)]
struct Bell(Sender<Msg>);

impl Notify for Bell {
    fn notify(&self, target: Doorbell) -> Result<(), PlatformError> {
        self.0
            .send(Msg::Doorbell(target))
            .map_err(|_| PlatformError::Failed("ring the peer's doorbell"))
    }
}

struct TestPlatform {
    master: bool,
    region: Region,
    peer: Sender<Msg>,
    /// The master's initial table.
    table: Vec<u8>,
}

impl Platform for TestPlatform {
    type Notifier = Bell;

    fn remote_cpu(&self) -> RemoteCpuName {
        RemoteCpuName::new(if self.master { "proxy" } else { "server" }).unwrap()
    }

    fn is_master(&self) -> bool {
        self.master
    }

    fn region(&self) -> Region {
        self.region.clone()
    }

    fn resource_table(&mut self) -> Result<TableLocation, PlatformError> {
        let r = &self.region;
        let fail = |_| PlatformError::Failed("access the shared header");
        if self.master {
            r.fill(RSC, RSC_MAX, 0).map_err(fail)?;
            r.write_bytes(RSC, &self.table).map_err(fail)?;
            r.write_u64(BASE, BASE_PA).map_err(fail)?;
            if r.load_u32(BOOTS).map_err(fail)? & OK != 0 {
                r.store_u32(BOOTS, NEED_RESET).map_err(fail)?;
            }
            r.store_u32(BOOTM, BOOT).map_err(fail)?;
        } else {
            if r.load_u32(BOOTS).map_err(fail)? & OK != 0 {
                // A restart: clear the master's stale OK.
                r.store_u32(BOOTM, NEED_RESET).map_err(fail)?;
            }
            r.store_u32(BOOTS, BOOT).map_err(fail)?;
            if !wait_until(|| r.load_u32(BOOTM).unwrap() & OK != 0) {
                return Err(PlatformError::Timeout("master boot"));
            }
            r.store_u32(BOOTS, OK).map_err(fail)?;
        }
        Ok(TableLocation {
            offset: RSC,
            max_len: RSC_MAX,
        })
    }

    fn address_map(&self) -> Result<LinkMap, PlatformError> {
        let base = self
            .region
            .read_u64(BASE)
            .map_err(|_| PlatformError::Failed("read the base"))?;
        let env = AddrEnv::from_entries(&[AddrEnvEntry {
            pa: base,
            da: 0,
            size: REGION_LEN as u64,
        }])
        .map_err(|_| PlatformError::Failed("build the address environment"))?;
        let phys = PhysMap::new(base, REGION_LEN)
            .map_err(|_| PlatformError::Failed("place the region"))?;
        Ok(AddressMap::new(env, phys))
    }

    fn start(&mut self) -> Result<(), PlatformError> {
        if self.master {
            let r = &self.region;
            if !wait_until(|| r.load_u32(BOOTS).unwrap() & BOOT != 0) {
                return Err(PlatformError::Timeout("remote boot"));
            }
            r.store_u32(BOOTM, OK)
                .map_err(|_| PlatformError::Failed("write bootm"))?;
        }
        Ok(())
    }

    fn stop(&mut self) -> Result<(), PlatformError> {
        if self.master {
            // A thread cannot be stopped from outside: ask it (mailbox STOP).
            Err(PlatformError::Unsupported("stop"))
        } else {
            Ok(())
        }
    }

    fn notifier(&self) -> Bell {
        Bell(self.peer.clone())
    }
}

// ---- the request/response device --------------------------------------------

#[derive(Default)]
struct Client {
    to_send: VecDeque<Vec<u8>>,
    replies: Vec<Vec<u8>>,
}

type SharedClient = Arc<Mutex<Client>>;

struct EchoDriver {
    t: VdevDriver<Bell>,
    q: DriverQueue<8>,
    /// head → (request offset, response offset, length)
    inflight: HashMap<u16, (usize, usize, usize)>,
    client: SharedClient,
}

fn q_err(_: rptun::virtio::queue::QueueError) -> VirtioError {
    VirtioError::Queue("echo ring")
}

impl EchoDriver {
    fn probe(mut t: VdevDriver<Bell>, client: SharedClient) -> Result<Self, VirtioError> {
        t.set_status(0)?;
        t.set_status(status::ACKNOWLEDGE | status::DRIVER)?;
        let features = t.device_features()?;
        t.set_driver_features(features)?;
        let num = t.max_queue_size(0)?;
        let mem = t.setup_queue(0, num)?;
        let q = DriverQueue::new(mem.region, mem.layout, mem.window, false).map_err(q_err)?;
        t.set_status(status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK)?;
        Ok(EchoDriver {
            t,
            q,
            inflight: HashMap::new(),
            client,
        })
    }

    fn pump(&mut self) {
        loop {
            if self.q.num_free() < 2 {
                break;
            }
            let Some(req) = self.client.lock().unwrap().to_send.pop_front() else {
                break;
            };
            let len = req.len();
            let a = self.t.alloc_shared(len, 8).unwrap();
            let b = self.t.alloc_shared(len, 8).unwrap();
            self.t.region().write_bytes(a, &req).unwrap();
            let head = self
                .q
                .add(&[Buf::new(a, len as u32)], &[Buf::new(b, len as u32)])
                .unwrap();
            self.inflight.insert(head, (a, b, len));
        }
        if self.q.publish().unwrap() {
            self.t.notify(0).unwrap();
        }
    }
}

impl VirtioHandler for EchoDriver {
    fn notify(&mut self, _queue: u16) {
        while let Some(used) = self.q.pop_used().unwrap() {
            let (a, b, len) = self.inflight.remove(&used.head).unwrap();
            let mut reply = vec![0u8; (used.len as usize).min(len)];
            self.t.region().read_bytes(b, &mut reply).unwrap();
            self.client.lock().unwrap().replies.push(reply);
            self.t.free_shared(a, len);
            self.t.free_shared(b, len);
        }
        self.pump();
    }

    fn poll(&mut self) {
        self.pump();
    }
}

struct EchoDevice {
    t: VdevDevice<Bell>,
    q: DeviceQueue,
    served: Arc<AtomicUsize>,
}

impl VirtioHandler for EchoDevice {
    fn notify(&mut self, _queue: u16) {
        self.served.fetch_add(1, Ordering::SeqCst);
        while let Some(chain) = self.q.pop::<4>().unwrap() {
            let mut buf = vec![0u8; chain.readable_len().min(4096) as usize];
            let n = chain.read_at(self.q.region(), 0, &mut buf).unwrap();
            buf.truncate(n);
            buf.reverse();
            let w = chain.write_at(self.q.region(), 0, &buf).unwrap();
            self.q.push_used(chain.head(), w as u32).unwrap();
        }
        if self.q.should_notify().unwrap() {
            self.t.notify(0).unwrap();
        }
    }
}

/// Both roles of the echo device; the driver serves `client`, the device
/// counts its notifications in `served`.
fn echo_registry(client: SharedClient, served: Arc<AtomicUsize>) -> Registry<Bell> {
    let mut reg = Registry::new();
    reg.register_driver(ECHO, move |t| {
        Ok(Box::new(EchoDriver::probe(t, client.clone())?) as Box<dyn VirtioHandler>)
    });
    reg.register_device(ECHO, move |t| {
        let mem = t.queue(0)?;
        let q = DeviceQueue::new(mem.region, mem.layout, mem.window, false).map_err(q_err)?;
        Ok(Box::new(EchoDevice {
            t,
            q,
            served: served.clone(),
        }) as Box<dyn VirtioHandler>)
    });
    reg
}

// ---- two sides in two threads -------------------------------------------------

struct Side {
    tx: Sender<Msg>,
    log: Arc<Mutex<Vec<Event>>>,
    client: SharedClient,
    served: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl Side {
    fn spawn(
        master: bool,
        region: Region,
        table: Vec<u8>,
        (tx, rx): (Sender<Msg>, Receiver<Msg>),
        peer: Sender<Msg>,
    ) -> Side {
        let log = Arc::new(Mutex::new(Vec::new()));
        let client = SharedClient::default();
        let served = Arc::new(AtomicUsize::new(0));
        let (log2, client2, served2) = (log.clone(), client.clone(), served.clone());
        let thread = std::thread::spawn(move || {
            let platform = TestPlatform {
                master,
                region: region.clone(),
                peer,
                table,
            };
            let mut inst = Instance::new(platform, echo_registry(client2, served2));
            let (ev_tx, ev_rx) = channel();
            inst.set_event_handler(move |e| {
                let _ = ev_tx.send(*e);
            });
            loop {
                match rx.recv_timeout(Duration::from_millis(2)) {
                    Ok(Msg::Doorbell(d)) => inst.handle_doorbell(d),
                    Ok(Msg::Run(f)) => f(&mut inst),
                    Ok(Msg::Quit) => break,
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => break,
                }
                // The remote's application: STOP from the master stops it.
                // (Before the restart check below: a STOP read from the old
                // table must not stop the session a restart brings up.)
                while let Ok(e) = ev_rx.try_recv() {
                    if !master
                        && e == Event::Command(Command::Stop)
                        && inst.state() == State::Running
                    {
                        inst.stop().unwrap();
                    }
                    log2.lock().unwrap().push(e);
                }
                // The remote's platform poller: the master restarted.
                if !master && region.load_u32(BOOTS).unwrap() & NEED_RESET != 0 {
                    region.store_u32(BOOTS, 0).unwrap();
                    let _ = inst.start();
                    while let Ok(e) = ev_rx.try_recv() {
                        log2.lock().unwrap().push(e);
                    }
                }
            }
        });
        Side {
            tx,
            log,
            client,
            served,
            thread: Some(thread),
        }
    }

    fn run_async<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Inst) -> R + Send + 'static,
    ) -> Receiver<R> {
        let (t, r) = channel();
        self.tx
            .send(Msg::Run(Box::new(move |i| {
                let _ = t.send(f(i));
            })))
            .unwrap();
        r
    }

    fn run<R: Send + 'static>(&self, f: impl FnOnce(&mut Inst) -> R + Send + 'static) -> R {
        self.run_async(f)
            .recv_timeout(LIMIT)
            .expect("the side's thread did not answer")
    }

    fn doorbell(&self, d: Doorbell) {
        self.tx.send(Msg::Doorbell(d)).unwrap();
    }

    fn mark(&self) -> usize {
        self.log.lock().unwrap().len()
    }

    fn wait_event(&self, since: usize, want: Event) {
        assert!(
            wait_until(|| self.log.lock().unwrap()[since..].contains(&want)),
            "no {want:?} among {:?}",
            &self.log.lock().unwrap()[since..]
        );
    }

    fn wait_running(&self, vdevs: usize) {
        let ok = wait_until(|| {
            self.run(move |i| {
                i.state() == State::Running
                    && i.vdevs().len() == vdevs
                    && i.vdevs()
                        .iter()
                        .all(|v| matches!(v.state, VdevState::Active | VdevState::Skipped))
            })
        });
        assert!(ok, "link not up: {:?}", self.run(|i| i.vdevs()));
    }

    /// Queues `msgs` for this side's echo driver and kicks it locally (the
    /// handlers' `poll()` sends what is queued).
    fn send(&self, msgs: &[Vec<u8>]) {
        self.client
            .lock()
            .unwrap()
            .to_send
            .extend(msgs.iter().cloned());
        self.doorbell(Doorbell::All);
    }

    /// Sends `msgs` through this side's echo driver and returns the replies.
    fn echo(&self, msgs: &[Vec<u8>]) -> Vec<Vec<u8>> {
        self.send(msgs);
        self.replies(msgs.len())
    }

    /// Waits for `n` replies and takes them.
    fn replies(&self, n: usize) -> Vec<Vec<u8>> {
        assert!(
            wait_until(|| self.client.lock().unwrap().replies.len() >= n),
            "only {} of {n} replies",
            self.client.lock().unwrap().replies.len()
        );
        std::mem::take(&mut self.client.lock().unwrap().replies)
    }
}

impl Drop for Side {
    fn drop(&mut self) {
        let _ = self.tx.send(Msg::Quit);
        if let Some(t) = self.thread.take() {
            if !std::thread::panicking() {
                t.join().unwrap();
            }
        }
    }
}

struct Pair {
    master: Side,
    remote: Side,
    region: Region,
}

fn pair(vdevs: &[(u32, u8)]) -> Pair {
    let region = Region::new_heap(REGION_LEN);
    let (mtx, mrx) = channel();
    let (rtx, rrx) = channel();
    let master = Side::spawn(
        true,
        region.clone(),
        table(vdevs),
        (mtx.clone(), mrx),
        rtx.clone(),
    );
    let remote = Side::spawn(false, region.clone(), Vec::new(), (rtx, rrx), mtx);
    Pair {
        master,
        remote,
        region,
    }
}

fn boot(vdevs: &[(u32, u8)]) -> Pair {
    let p = pair(vdevs);
    let m = p.master.run_async(|i| i.start());
    let r = p.remote.run_async(|i| i.start());
    m.recv_timeout(LIMIT).unwrap().expect("master start");
    r.recv_timeout(LIMIT).unwrap().expect("remote start");
    p.master.wait_running(vdevs.len());
    p.remote.wait_running(vdevs.len());
    p
}

fn requests(tag: u8) -> Vec<Vec<u8>> {
    (1..=12)
        .map(|n| (0..n * 37).map(|i| (i as u8) ^ tag).collect())
        .collect()
}

fn reversed(msgs: &[Vec<u8>]) -> Vec<Vec<u8>> {
    msgs.iter()
        .map(|m| m.iter().rev().copied().collect())
        .collect()
}

/// vdev 0: master drives (reserved[0] = 0); vdev 1: remote drives
/// (reserved[0] = 1).
const TWO_WAYS: &[(u32, u8)] = &[(ECHO, 0), (ECHO, 1)];

// ---- tests ---------------------------------------------------------------------

#[test]
#[cfg_attr(
    miri,
    ignore = "known data race, see docs/RELIABILITY.md (Miri): the remote copies the live resource table with plain reads while the master driver writes gfeatures"
)]
fn master_boots_remote_and_both_see_the_vdevs_with_the_right_roles() {
    let p = boot(TWO_WAYS);
    let m = p.master.run(|i| i.vdevs());
    let r = p.remote.run(|i| i.vdevs());
    assert_eq!(
        m.iter().map(|v| v.role).collect::<Vec<_>>(),
        vec![Some(Role::Driver), Some(Role::Device)]
    );
    assert_eq!(
        r.iter().map(|v| v.role).collect::<Vec<_>>(),
        vec![Some(Role::Device), Some(Role::Driver)]
    );
    // Both sides use the master's notify ids: vdev then its vring.
    assert_eq!(
        m.iter().map(|v| v.notifyid).collect::<Vec<_>>(),
        vec![Some(0), Some(2)]
    );
    assert_eq!(
        r.iter().map(|v| v.notifyid).collect::<Vec<_>>(),
        vec![Some(0), Some(2)]
    );
    assert!(m.iter().chain(&r).all(|v| v.state == VdevState::Active));
    assert_eq!(p.master.run(|i| i.remote_cpu().to_string()), "proxy");
    assert_eq!(p.remote.run(|i| i.remote_cpu().to_string()), "server");
    // The master wrote its assignments into the shared table: vdev 0's
    // vring at the front of carveout 0 (da 0x1000), notify id 1.
    let ring0 = RSC + 4 * 4 + 4 * 4 + 28;
    assert_eq!(p.region.read_u32(ring0).unwrap(), 0x1000);
    assert_eq!(p.region.read_u32(ring0 + 12).unwrap(), 1);
}

#[test]
#[cfg_attr(
    miri,
    ignore = "known data race, see docs/RELIABILITY.md (Miri): the remote copies the live resource table with plain reads while the master driver writes gfeatures"
)]
fn echo_works_both_ways_over_two_vdevs_at_once() {
    let p = boot(TWO_WAYS);
    for round in 0..3u8 {
        let to_remote = requests(round);
        let to_master = requests(0x80 | round);
        // Both drivers post before either waits.
        p.master.send(&to_remote);
        p.remote.send(&to_master);
        assert_eq!(p.master.replies(to_remote.len()), reversed(&to_remote));
        assert_eq!(p.remote.replies(to_master.len()), reversed(&to_master));
    }
}

#[test]
#[cfg_attr(
    miri,
    ignore = "known data race, see docs/RELIABILITY.md (Miri): the remote copies the live resource table with plain reads while the master driver writes gfeatures"
)]
fn doorbells_reach_only_queues_that_exist_and_have_work() {
    let p = boot(TWO_WAYS);
    let msgs = requests(1);
    assert_eq!(p.master.echo(&msgs), reversed(&msgs));
    // The remote serves vdev 0 (ids: vdev 0, vring 1). Everything is served.
    let before = p.remote.served.load(Ordering::SeqCst);
    for d in [
        Doorbell::Id(1),   // the vring, no new work
        Doorbell::Id(0),   // the vdev itself: config/status only
        Doorbell::Id(3),   // vdev 1's vring: the remote drives it
        Doorbell::Id(777), // nobody's
        Doorbell::All,
    ] {
        p.remote.doorbell(d);
    }
    // Messages are handled in order: once this runs, the doorbells were.
    p.remote.run(|_| ());
    assert_eq!(p.remote.served.load(Ordering::SeqCst), before);
    // New work on the vring reaches the device.
    assert_eq!(p.master.echo(&msgs[..1]), reversed(&msgs[..1]));
    assert!(p.remote.served.load(Ordering::SeqCst) > before);
}

#[test]
#[cfg_attr(
    miri,
    ignore = "known data race, see docs/RELIABILITY.md (Miri): the remote copies the live resource table with plain reads while the master driver writes gfeatures"
)]
fn stop_and_restart_bring_traffic_back() {
    let p = boot(TWO_WAYS);
    let msgs = requests(7);
    assert_eq!(p.master.echo(&msgs), reversed(&msgs));

    // Stop: vdevs removed, STOP through the mailbox, the remote stops.
    let (m0, r0) = (p.master.mark(), p.remote.mark());
    p.master.run(|i| i.stop()).unwrap();
    assert_eq!(p.master.run(|i| i.state()), State::Stopped);
    assert!(p.master.run(|i| i.vdevs()).is_empty());
    p.remote.wait_event(r0, Event::Command(Command::Stop));
    p.master.wait_event(m0, Event::CommandAcked(Command::Stop));
    assert!(wait_until(|| p.remote.run(|i| i.state()) == State::Stopped));
    assert!(matches!(
        p.master.run(|i| i.stop()),
        Err(InstanceError::InvalidState {
            op: "stop",
            state: State::Stopped,
            ..
        })
    ));

    // Start again: the remote's poller sees the restart and follows.
    p.master.run(|i| i.start()).unwrap();
    p.master.wait_running(2);
    p.remote.wait_running(2);
    assert_eq!(p.master.echo(&msgs), reversed(&msgs));
    assert_eq!(p.remote.echo(&msgs), reversed(&msgs));

    // Start on a running link restarts it.
    let r1 = p.remote.mark();
    p.master.run(|i| i.start()).unwrap();
    p.master.wait_running(2);
    p.remote.wait_running(2);
    p.remote.wait_event(
        r1,
        Event::VdevUp {
            index: 1,
            id: ECHO,
            role: Role::Driver,
        },
    );
    assert_eq!(p.master.echo(&msgs), reversed(&msgs));
    assert_eq!(p.remote.echo(&msgs), reversed(&msgs));
}

#[test]
#[cfg_attr(
    miri,
    ignore = "known data race, see docs/RELIABILITY.md (Miri): the remote copies the live resource table with plain reads while the master driver writes gfeatures"
)]
fn panic_and_reset_go_through_the_mailbox_and_are_acked() {
    let p = boot(TWO_WAYS);
    let (m0, r0) = (p.master.mark(), p.remote.mark());
    p.master.run(|i| i.reset_remote(0x1234)).unwrap();
    p.remote
        .wait_event(r0, Event::Command(Command::Reset(0x1234)));
    p.master
        .wait_event(m0, Event::CommandAcked(Command::Reset(0x1234)));
    // The remote application decided nothing: it still runs.
    assert_eq!(p.remote.run(|i| i.state()), State::Running);

    p.master.run(|i| i.panic_remote()).unwrap();
    assert_eq!(p.master.run(|i| i.state()), State::Crashed);
    assert!(p.master.run(|i| i.vdevs()).is_empty());
    p.remote.wait_event(r0, Event::Command(Command::Panic));
    p.master.wait_event(m0, Event::CommandAcked(Command::Panic));

    // The other way: the remote resets its master (the crashed master still
    // reads the mailbox).
    p.remote.run(|i| i.reset_remote(7)).unwrap();
    p.master.wait_event(m0, Event::Command(Command::Reset(7)));
    p.remote
        .wait_event(r0, Event::CommandAcked(Command::Reset(7)));

    // A crashed link restarts.
    p.master.run(|i| i.start()).unwrap();
    p.master.wait_running(2);
    p.remote.wait_running(2);
    let msgs = requests(3);
    assert_eq!(p.master.echo(&msgs), reversed(&msgs));
}

#[test]
#[cfg_attr(
    miri,
    ignore = "known data race, see docs/RELIABILITY.md (Miri): the remote copies the live resource table with plain reads while the master driver writes gfeatures"
)]
fn unregistered_vdev_is_skipped_and_the_next_one_works() {
    let p = boot(&[(UNKNOWN, 0), (ECHO, 0)]);
    for side in [&p.master, &p.remote] {
        let v = side.run(|i| i.vdevs());
        assert_eq!(v[0].state, VdevState::Skipped);
        assert_eq!(v[1].state, VdevState::Active);
        assert!(side.log.lock().unwrap().iter().any(|e| matches!(
            e,
            Event::VdevSkipped {
                index: 0,
                id: UNKNOWN,
                ..
            }
        )));
    }
    let msgs = requests(9);
    assert_eq!(p.master.echo(&msgs), reversed(&msgs));
}

/// A master alone: its start fails on the table, before any handshake.
fn lone_master(table: Vec<u8>) -> Inst {
    let (tx, _rx) = channel();
    Instance::new(
        TestPlatform {
            master: true,
            region: Region::new_heap(REGION_LEN),
            peer: tx,
            table,
        },
        echo_registry(SharedClient::default(), Arc::default()),
    )
}

#[test]
fn tables_with_bad_offsets_or_counts_are_refused_with_a_clear_error() {
    // entry 1's offset points past the table
    let mut t = table(TWO_WAYS);
    t[16 + 4..16 + 8].copy_from_slice(&0x900u32.to_le_bytes());
    let mut inst = lone_master(t);
    let err = inst.start().unwrap_err();
    assert!(
        matches!(
            err,
            InstanceError::Table(TableError::Rsc(RscError::OffsetOutOfBounds {
                index: 1,
                ..
            }))
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("entry 1"), "{err}");
    assert_eq!(inst.state(), State::Configured);
    assert!(inst.vdevs().is_empty());

    // an entry count the table cannot hold
    let mut t = table(TWO_WAYS);
    t[4..8].copy_from_slice(&1000u32.to_le_bytes());
    let err = lone_master(t).start().unwrap_err();
    assert!(
        matches!(err, InstanceError::Table(TableError::Rsc(_))),
        "{err:?}"
    );
    assert!(err.to_string().contains("1000"), "{err}");

    // a vdev claiming more vrings than its entry has room for
    let mut t = table(TWO_WAYS);
    let vdev0 = u32::from_le_bytes(t[16..20].try_into().unwrap()) as usize;
    t[vdev0 + 25] = 200;
    let err = lone_master(t).start().unwrap_err();
    assert!(
        matches!(err, InstanceError::Table(TableError::Rsc(_))),
        "{err:?}"
    );
}

#[test]
fn refused_transitions_are_clear_errors() {
    let mut inst = lone_master(table(TWO_WAYS));
    for (r, op) in [
        (inst.stop(), "stop"),
        (inst.panic_remote(), "panic the remote"),
        (inst.mark_crashed(), "mark the remote crashed"),
        (inst.reset_remote(1), "send a mailbox command"),
    ] {
        match r {
            Err(e @ InstanceError::InvalidState { op: o, state, .. }) => {
                assert_eq!((o, state), (op, State::Offline));
                assert!(e.to_string().contains("offline"), "{e}");
            }
            other => panic!("{op}: {other:?}"),
        }
    }
    assert!(!inst.autostart().unwrap());
    inst.configure().unwrap();
    assert_eq!(inst.state(), State::Configured);
}
