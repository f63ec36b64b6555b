//! Fault injection in process: a master and a remote instance in two
//! threads over one region, running rpmsg-virtio on a remoteproc vdev, with
//! a doorbell that loses and duplicates notifications at random, and a peer
//! that stops returning buffers for a while.
//!
//! The stack must recover by itself: each side polls every vdev
//! periodically (as NuttX's simulator does every tick), so a lost doorbell
//! only delays work; a duplicated one is harmless. Every message carries a
//! sequence number and an FNV-1a checksum: none may be lost, reordered or
//! corrupted, and after the traffic stops every buffer is back where it
//! started. Every wait is bounded.
//!
//! `RPTUN_FAULT_MESSAGES` sets the messages sent each way (default 2000).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rptun::remoteproc::addr::{AddrEnv, AddrEnvEntry, AddressMap, PhysMap};
use rptun::remoteproc::instance::{Instance, State};
use rptun::remoteproc::platform::{
    Doorbell, LinkMap, Notify, Platform, PlatformError, RemoteCpuName, TableLocation,
};
use rptun::remoteproc::registry::{Registry, VirtioHandler};
use rptun::remoteproc::vdev::{VdevDevice, VdevDriver};
use rptun::rpmsg::virtio::{RpmsgVirtioDevice, RpmsgVirtioDriver, RpmsgVirtioOptions};
use rptun::rpmsg::{
    on_message, BufferStats, Clock, EndpointConfig, EndpointId, Link, LocalCpu, RemoteCpu,
    RpmsgError, RpmsgTransport, Wait, ADDR_ANY,
};
use rptun::shm::Region;
use rptun::virtio::VirtioError;
use rptun::wire::rpmsg_config::{ConfigLayout, CpuName, RpmsgConfig};
use rptun::wire::rsc::{Carveout, Name, TableBuilder, Vdev, Vring, ANY};

const REGION_LEN: usize = 0x40000;
const BASE_PA: u64 = 0x8000_0000;
const BOOTS: usize = 0x10;
const BOOTM: usize = 0x14;
const RSC: usize = 0x18;
const RSC_MAX: usize = 0x400;
const BOOT: u32 = 1;
const OK: u32 = 2;
/// Every wait of the test gives up after this.
const LIMIT: Duration = Duration::from_secs(60);
/// The periodic poll of each side (NuttX's simulator: one tick).
const TICK: Duration = Duration::from_millis(2);

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + LIMIT;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn messages() -> u32 {
    std::env::var("RPTUN_FAULT_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

// ---------------------------------------------------------------- doorbells

/// How a doorbell misbehaves: percentages of notifications lost and
/// delivered twice.
#[derive(Default)]
struct Faults {
    drop_pct: u64,
    dup_pct: u64,
    rng: Mutex<u64>,
    sent: AtomicU64,
    dropped: AtomicU64,
    duplicated: AtomicU64,
}

impl Faults {
    fn new(drop_pct: u64, dup_pct: u64, seed: u64) -> Arc<Faults> {
        Arc::new(Faults {
            drop_pct,
            dup_pct,
            rng: Mutex::new(seed | 1),
            ..Faults::default()
        })
    }

    fn roll(&self) -> u64 {
        let mut x = self.rng.lock().unwrap();
        *x ^= *x >> 12;
        *x ^= *x << 25;
        *x ^= *x >> 27;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d) % 100
    }
}

enum Msg {
    Doorbell(Doorbell),
    Run(Box<dyn FnOnce(&mut Ctx) + Send>),
    Quit,
}

/// Rings the peer's thread, losing or doubling notifications as told.
#[derive(Clone)]
struct FlakyBell {
    peer: Sender<Msg>,
    faults: Arc<Faults>,
}

impl Notify for FlakyBell {
    fn notify(&self, target: Doorbell) -> Result<(), PlatformError> {
        let f = &self.faults;
        f.sent.fetch_add(1, Ordering::Relaxed);
        if f.roll() < f.drop_pct {
            f.dropped.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let copies = if f.roll() < f.dup_pct {
            f.duplicated.fetch_add(1, Ordering::Relaxed);
            2
        } else {
            1
        };
        for _ in 0..copies {
            // The peer thread may be gone at the end of a test.
            let _ = self.peer.send(Msg::Doorbell(target));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- platform

fn config() -> [u8; 64] {
    RpmsgConfig {
        h2r_buf_size: 1536,
        r2h_buf_size: 1536,
        h2r_buf_addr: 0,
        r2h_buf_addr: 0,
        host_cpuname: CpuName::new("server").unwrap(),
        remote_cpuname: CpuName::new("proxy").unwrap(),
    }
    .to_bytes(ConfigLayout::Current)
    .unwrap()
}

fn table() -> Vec<u8> {
    let mut b = TableBuilder::new_vec(2).unwrap();
    let v = Vdev {
        id: rptun::virtio::id::RPMSG,
        notifyid: ANY,
        dfeatures: 0xf,
        ..Vdev::default()
    };
    let ring = Vring {
        da: ANY,
        align: 8,
        num: 8,
        notifyid: ANY,
        reserved: 0,
    };
    b.add_vdev(&v, &[ring, ring], &config()).unwrap();
    b.add_carveout(&Carveout {
        da: 0x1000,
        pa: ANY,
        len: 0x20000,
        name: Name::new("rpmsg0_shm").unwrap(),
        ..Carveout::default()
    })
    .unwrap();
    b.finish_vec().unwrap()
}

/// The NuttX-simulator-like boot handshake over the region's boot words.
struct PairPlatform {
    master: bool,
    region: Region,
    bell: FlakyBell,
}

fn shm_err(_: rptun::shm::ShmError) -> PlatformError {
    PlatformError::Failed("access the shared header")
}

fn wait_word(r: &Region, at: usize, bit: u32) -> Result<(), PlatformError> {
    let end = Instant::now() + LIMIT;
    while r.load_u32(at).map_err(shm_err)? & bit == 0 {
        if Instant::now() > end {
            return Err(PlatformError::Timeout("boot handshake"));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

impl Platform for PairPlatform {
    type Notifier = FlakyBell;

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
        if self.master {
            r.fill(RSC, RSC_MAX, 0).map_err(shm_err)?;
            r.write_bytes(RSC, &table()).map_err(shm_err)?;
            r.store_u32(BOOTM, BOOT).map_err(shm_err)?;
        } else {
            r.store_u32(BOOTS, BOOT).map_err(shm_err)?;
            wait_word(r, BOOTM, OK)?;
            r.store_u32(BOOTS, OK).map_err(shm_err)?;
        }
        Ok(TableLocation {
            offset: RSC,
            max_len: RSC_MAX,
        })
    }
    fn address_map(&self) -> Result<LinkMap, PlatformError> {
        let env = AddrEnv::from_entries(&[AddrEnvEntry {
            pa: BASE_PA,
            da: 0,
            size: REGION_LEN as u64,
        }])
        .map_err(|_| PlatformError::Failed("address environment"))?;
        let phys =
            PhysMap::new(BASE_PA, REGION_LEN).map_err(|_| PlatformError::Failed("physical map"))?;
        Ok(AddressMap::new(env, phys))
    }
    fn start(&mut self) -> Result<(), PlatformError> {
        if self.master {
            wait_word(&self.region, BOOTS, BOOT)?;
            self.region.store_u32(BOOTM, OK).map_err(shm_err)?;
        }
        Ok(())
    }
    fn stop(&mut self) -> Result<(), PlatformError> {
        Ok(())
    }
    fn notifier(&self) -> FlakyBell {
        self.bell.clone()
    }
}

// ---------------------------------------------------------------- rpmsg

type Drv = RpmsgVirtioDriver<VdevDriver<FlakyBell>, 8>;
type Dev = RpmsgVirtioDevice<VdevDevice<FlakyBell>, 8>;

/// Our side's link, whichever role the vdev gives it.
#[allow(clippy::large_enum_variant)] // one per process, behind a lock
enum AnyLink {
    Driver(Link<Drv>),
    Device(Link<Dev>),
}

macro_rules! with_link {
    ($l:expr, $x:ident => $e:expr) => {
        match $l {
            AnyLink::Driver($x) => $e,
            AnyLink::Device($x) => $e,
        }
    };
}

type Shared = Arc<Mutex<Option<AnyLink>>>;

struct Handler(Shared);

impl VirtioHandler for Handler {
    fn notify(&mut self, _queue: u16) {
        self.poll();
    }
    fn poll(&mut self) {
        if let Some(l) = self.0.lock().unwrap().as_mut() {
            // Errors are counted by the link; a broken ring shows in the
            // final checks.
            let _ = with_link!(l, l => l.poll());
        }
    }
    fn remove(&mut self) {
        self.0.lock().unwrap().take();
    }
}

fn opts(local: &str, remote: &str) -> RpmsgVirtioOptions {
    RpmsgVirtioOptions::new(
        LocalCpu::new(local).unwrap(),
        RemoteCpu::new(remote).unwrap(),
    )
}

fn registry(shared: Shared) -> Registry<FlakyBell> {
    let mut reg = Registry::new();
    let s = shared.clone();
    reg.register_driver(rptun::virtio::id::RPMSG, move |t| {
        let d = Drv::start_new(t, opts("server", "proxy")).map_err(|(e, _)| match e {
            rptun::rpmsg::virtio::RpmsgVirtioError::Virtio(v) => v,
            _ => VirtioError::Protocol("rpmsg-virtio start failed"),
        })?;
        *s.lock().unwrap() = Some(AnyLink::Driver(Link::new(d)));
        Ok(Box::new(Handler(s.clone())) as Box<dyn VirtioHandler>)
    });
    reg.register_device(rptun::virtio::id::RPMSG, move |t| {
        let d = Dev::new(t, opts("proxy", "server"));
        *shared.lock().unwrap() = Some(AnyLink::Device(Link::new(d)));
        Ok(Box::new(Handler(shared.clone())) as Box<dyn VirtioHandler>)
    });
    reg
}

// ---------------------------------------------------------------- messages

fn fnv32(bytes: &[u8]) -> u32 {
    let mut h = 0x811c_9dc5u32;
    for &b in bytes {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// `seq`, a body whose length and bytes follow from `seq`, then the FNV-1a
/// of everything before it.
fn message(seq: u32) -> Vec<u8> {
    let len = 1 + (seq as usize * 7919) % 1500;
    let mut m = seq.to_le_bytes().to_vec();
    m.extend((0..len).map(|i| (seq as usize * 31 + i) as u8));
    let sum = fnv32(&m);
    m.extend_from_slice(&sum.to_le_bytes());
    m
}

/// What a receiver saw.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Seen {
    next: u32,
    out_of_order: u32,
    corrupt: u32,
}

fn check(seen: &Mutex<Seen>, m: &[u8]) {
    let mut s = seen.lock().unwrap();
    let ok = m.len() >= 8 && {
        let (body, sum) = m.split_at(m.len() - 4);
        fnv32(body).to_le_bytes() == sum
    };
    if !ok {
        s.corrupt += 1;
        return;
    }
    let seq = u32::from_le_bytes(m[..4].try_into().unwrap());
    if seq != s.next || m != message(seq) {
        s.out_of_order += 1;
    }
    s.next = seq + 1;
}

// ---------------------------------------------------------------- sides

/// The application of one side, run in its thread.
struct App {
    ept: Option<EndpointId>,
    sent: u32,
    to_send: u32,
    no_buffer: u64,
    seen: Arc<Mutex<Seen>>,
}

struct Ctx {
    inst: Instance<PairPlatform>,
    link: Shared,
    app: App,
    /// A stalled core: no doorbell handled, no polling, no sending.
    paused: bool,
}

impl Ctx {
    /// Sends while buffers last.
    fn pump(&mut self) {
        let Some(ept) = self.app.ept else { return };
        let mut g = self.link.lock().unwrap();
        let Some(l) = g.as_mut() else { return };
        while self.app.sent < self.app.to_send {
            let m = message(self.app.sent);
            match with_link!(l, l => l.trysend(ept, &m)) {
                Ok(()) => self.app.sent += 1,
                Err(RpmsgError::NoBuffer) => {
                    self.app.no_buffer += 1;
                    break;
                }
                Err(_) => break,
            }
        }
    }
}

struct Side {
    tx: Sender<Msg>,
    seen: Arc<Mutex<Seen>>,
    thread: Option<JoinHandle<()>>,
}

impl Side {
    fn spawn(
        master: bool,
        region: Region,
        bell: FlakyBell,
        rx: Receiver<Msg>,
        tx: Sender<Msg>,
    ) -> Side {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let seen2 = seen.clone();
        let thread = std::thread::spawn(move || {
            let link = Shared::default();
            let inst = Instance::new(
                PairPlatform {
                    master,
                    region,
                    bell,
                },
                registry(link.clone()),
            );
            let mut ctx = Ctx {
                inst,
                link,
                app: App {
                    ept: None,
                    sent: 0,
                    to_send: 0,
                    no_buffer: 0,
                    seen: seen2,
                },
                paused: false,
            };
            loop {
                match rx.recv_timeout(TICK) {
                    Ok(Msg::Doorbell(d)) => {
                        if !ctx.paused {
                            ctx.inst.handle_doorbell(d);
                        }
                    }
                    Ok(Msg::Run(f)) => f(&mut ctx),
                    Ok(Msg::Quit) | Err(RecvTimeoutError::Disconnected) => break,
                    Err(RecvTimeoutError::Timeout) => {
                        // The periodic poll: what recovers lost doorbells.
                        if !ctx.paused {
                            ctx.inst.handle_doorbell(Doorbell::All);
                        }
                    }
                }
                if !ctx.paused {
                    ctx.pump();
                }
            }
        });
        Side {
            tx,
            seen,
            thread: Some(thread),
        }
    }

    fn run<R: Send + 'static>(&self, f: impl FnOnce(&mut Ctx) -> R + Send + 'static) -> R {
        let (t, r) = channel();
        self.tx
            .send(Msg::Run(Box::new(move |c| {
                let _ = t.send(f(c));
            })))
            .unwrap();
        r.recv_timeout(LIMIT).expect("the side's thread answered")
    }

    /// Runs `f` on the side's link (None while it has none).
    fn on_link<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut AnyLink, &mut App) -> R + Send + 'static,
    ) -> Option<R> {
        self.run(move |c| {
            let mut g = c.link.lock().unwrap();
            g.as_mut().map(|l| f(l, &mut c.app))
        })
    }

    fn buffers(&self) -> Option<(BufferStats, usize, usize)> {
        self.on_link(|l, _| {
            with_link!(l, l => {
                let d = l.dump();
                (l.transport().buffer_stats(), d.rx_held, d.tx_lent)
            })
        })
    }

    fn stats(&self) -> Option<rptun::rpmsg::LinkStats> {
        self.on_link(|l, _| with_link!(l, l => l.stats()))
    }

    fn dump(&self) -> String {
        self.on_link(|l, _| with_link!(l, l => l.dump().to_string()))
            .unwrap_or_else(|| "no link".into())
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
    to_remote: Arc<Faults>,
    to_master: Arc<Faults>,
}

/// Boots both sides, binds "faulty" on each and waits until both ends know
/// their destination.
fn pair(to_remote: Arc<Faults>, to_master: Arc<Faults>) -> Pair {
    let region = Region::new_heap(REGION_LEN);
    let (mtx, mrx) = channel();
    let (rtx, rrx) = channel();
    let master = Side::spawn(
        true,
        region.clone(),
        FlakyBell {
            peer: rtx.clone(),
            faults: to_remote.clone(),
        },
        mrx,
        mtx.clone(),
    );
    let remote = Side::spawn(
        false,
        region,
        FlakyBell {
            peer: mtx,
            faults: to_master.clone(),
        },
        rrx,
        rtx,
    );
    // Both start at once (the handshake needs both).
    let (a, b) = (channel(), channel());
    let (at, ar) = a;
    let (bt, br) = b;
    master
        .tx
        .send(Msg::Run(Box::new(move |c| {
            let _ = at.send(c.inst.start());
        })))
        .unwrap();
    remote
        .tx
        .send(Msg::Run(Box::new(move |c| {
            let _ = bt.send(c.inst.start());
        })))
        .unwrap();
    ar.recv_timeout(LIMIT).unwrap().expect("master start");
    br.recv_timeout(LIMIT).unwrap().expect("remote start");
    let p = Pair {
        master,
        remote,
        to_remote,
        to_master,
    };
    for side in [&p.master, &p.remote] {
        wait_until("the link to come up", || {
            side.on_link(|l, _| with_link!(l, l => l.is_up())) == Some(true)
        });
        side.on_link(|l, app| {
            let id = with_link!(l, l => {
                let seen = app.seen.clone();
                l.create_endpoint(
                    EndpointConfig::new("faulty"),
                    on_message(move |_ctx, msg| check(&seen, &msg.to_vec())),
                )
            });
            app.ept = Some(id.unwrap());
        });
    }
    for side in [&p.master, &p.remote] {
        wait_until("the endpoints to bind", || {
            side.on_link(|l, app| {
                let ept = app.ept.unwrap();
                with_link!(l, l => l.endpoint(ept).unwrap().dest != ADDR_ANY)
            }) == Some(true)
        });
    }
    p
}

/// Real time for blocking sends: sleeps a little per wait.
struct SleepWait(Instant);

impl Clock for SleepWait {
    fn now_ns(&mut self) -> u64 {
        self.0.elapsed().as_nanos() as u64
    }
}

impl Wait for SleepWait {
    fn wait_until(&mut self, deadline_ns: u64) {
        let now = self.now_ns();
        if deadline_ns > now {
            std::thread::sleep(Duration::from_nanos(deadline_ns - now).min(TICK));
        }
    }
}

/// Waits until both sides hold every buffer they started with: the driver
/// has all its TX buffers back, the device sees every RX buffer of the
/// driver posted, nothing is held or lent.
fn wait_all_buffers_back(p: &Pair) {
    for side in [&p.master, &p.remote] {
        wait_until("every buffer back", || {
            side.buffers().is_some_and(|(b, held, lent)| {
                b.tx_total == 8 && b.tx_free == 8 && b.rx_total == 8 && held == 0 && lent == 0
            })
        });
    }
}

fn assert_clean(p: &Pair, n: u32) {
    for (side, what) in [(&p.master, "remote→master"), (&p.remote, "master→remote")] {
        let seen = *side.seen.lock().unwrap();
        assert_eq!(
            seen,
            Seen {
                next: n,
                out_of_order: 0,
                corrupt: 0
            },
            "{what}: every message once, in order, intact"
        );
        let st = side.stats().unwrap();
        assert_eq!(
            (
                st.dropped_short,
                st.dropped_bad_length,
                st.dropped_unknown_dst,
                st.dropped_bad_ns,
                st.transport_errors
            ),
            (0, 0, 0, 0, 0),
            "{}",
            side.dump()
        );
        assert_eq!(side.run(|c| c.inst.state()), State::Running);
    }
}

fn send_both_ways(p: &Pair, n: u32) {
    for side in [&p.master, &p.remote] {
        side.run(move |c| c.app.to_send += n);
    }
    for side in [&p.master, &p.remote] {
        let target = side.run(|c| c.app.to_send);
        let seen = side.seen.clone();
        let _ = target;
        wait_until("every message delivered", || {
            let s = *seen.lock().unwrap();
            s.next + s.out_of_order + s.corrupt >= n || s.corrupt > 0
        });
    }
}

#[test]
fn lost_and_doubled_doorbells_lose_no_message() {
    let n = messages();
    let p = pair(Faults::new(30, 30, 0x1234), Faults::new(30, 30, 0x9876));
    send_both_ways(&p, n);
    assert_clean(&p, n);
    wait_all_buffers_back(&p);
    for f in [&p.to_remote, &p.to_master] {
        let (sent, dropped, dup) = (
            f.sent.load(Ordering::Relaxed),
            f.dropped.load(Ordering::Relaxed),
            f.duplicated.load(Ordering::Relaxed),
        );
        assert!(
            dropped > 0 && dup > 0,
            "faults happened: {sent} {dropped} {dup}"
        );
    }
}

#[test]
fn every_doorbell_lost_still_delivers_by_polling() {
    let n = messages() / 4;
    let p = pair(Faults::new(100, 0, 1), Faults::new(100, 0, 2));
    send_both_ways(&p, n);
    assert_clean(&p, n);
    wait_all_buffers_back(&p);
    assert_eq!(
        p.to_remote.dropped.load(Ordering::Relaxed),
        p.to_remote.sent.load(Ordering::Relaxed)
    );
}

/// `stalled` stops serving; `sender` fills every buffer, then gets clean
/// errors; when `stalled` resumes, everything is delivered and sending works
/// again.
fn stall_and_resume(sender: &Side, stalled: &Side, base: u32) {
    stalled.run(|c| c.paused = true);
    let (sent, no_buffer, timed_out) = sender
        .on_link(|l, app| {
            let ept = app.ept.unwrap();
            let mut sent = 0;
            let mut no_buffer = 0;
            for _ in 0..100 {
                let m = message(app.sent);
                match with_link!(l, l => l.trysend(ept, &m)) {
                    Ok(()) => {
                        app.sent += 1;
                        app.to_send += 1;
                        sent += 1;
                    }
                    Err(RpmsgError::NoBuffer) => no_buffer += 1,
                    Err(e) => panic!("{e}"),
                }
            }
            let m = message(app.sent);
            let mut w = SleepWait(Instant::now());
            let r = with_link!(l, l => l.send(ept, &m, &mut w, Duration::from_millis(50)));
            (sent, no_buffer, r)
        })
        .unwrap();
    assert_eq!(sent, 8, "exactly the peer's buffers");
    assert_eq!(no_buffer, 92);
    assert_eq!(timed_out, Err(RpmsgError::Timeout));
    assert!(RpmsgError::Timeout.to_string().contains("not consuming"));
    // Nothing was delivered while stalled.
    assert_eq!(stalled.seen.lock().unwrap().next, base);
    stalled.run(|c| c.paused = false);
    let seen = stalled.seen.clone();
    wait_until("the stalled side to catch up", || {
        seen.lock().unwrap().next == base + 8
    });
    // The sender can fill the window again once the buffers are back.
    sender.run(|c| c.app.to_send += 16);
    wait_until("16 more", || seen.lock().unwrap().next == base + 24);
}

#[test]
fn a_peer_that_stops_returning_buffers_gives_clean_errors_then_recovers() {
    let p = pair(Faults::new(0, 0, 1), Faults::new(0, 0, 2));
    wait_all_buffers_back(&p);
    // The remote stalls: the master's TX buffers stay with it.
    stall_and_resume(&p.master, &p.remote, 0);
    // The master stalls: it stops re-posting its RX buffers.
    stall_and_resume(&p.remote, &p.master, 0);
    wait_all_buffers_back(&p);
    assert_clean(&p, 24);
}
