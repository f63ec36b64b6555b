//! `cargo bench -p rptun-host`: the CPU cost of the rptun stack per message,
//! both sides (the simulator's own nodes, as `rptun sim` / `rptun proxy`
//! run them) in ONE thread over one simulator shm object (no cross-core
//! traffic, no scheduler, no doorbell waits: the server's waits run the
//! proxy's loop body instead). What remains is the instructions
//! rptun executes per round trip and per one-way message — the part of
//! `rptun bench`'s two-process figures that rptun's code, not the machine,
//! decides. Steady enough to run under `valgrind --tool=callgrind`:
//!
//! ```sh
//! cargo bench -p rptun-host --bench stack --no-run   # prints the binary
//! valgrind --tool=callgrind target/release/deps/stack-* --iters 2000
//! ```
//!
//! The rpmsg-port figures (`--port`) run the two sides in two threads over
//! a Unix socket: they include the socket's system calls and thread
//! switches, so they are an upper bound of the stack's own cost.

use rptun::remoteproc::Role;
use rptun_host::benchlink::{self, Mode, Server};
use rptun_host::benchport::PortNode;
use rptun_host::shm::{self, ShmObject};
use rptun_host::sim::layout;
use rptun_host::stream::StreamAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(20);

/// Removes the shm object at the end.
struct Unlink(String);
impl Drop for Unlink {
    fn drop(&mut self) {
        let _ = shm::unlink(&self.0);
    }
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    let iters: u32 = argv
        .iter()
        .position(|a| a == "--iters")
        .and_then(|i| argv.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(50_000);
    if argv.iter().any(|a| a == "--port") {
        port(iters);
        return;
    }

    // The simulator's two nodes over one shm object. Bring the link up with
    // the proxy's node stepping in a thread, then take it home.
    let name = format!("rptun-stack-{}", std::process::id());
    let ours = ShmObject::open_or_create(&name, layout::SHM_SIZE).expect("shm object");
    let _u = Unlink(name.clone());
    let theirs = ShmObject::open_existing(&name, layout::SHM_SIZE).expect("shm object");
    let home = Arc::new(AtomicBool::new(false));
    let h2 = home.clone();
    let proxy = std::thread::spawn(move || {
        let (mut p, _) = benchlink::node(Role::Remote, theirs, Mode::Poll, TIMEOUT).expect("proxy");
        p.startup();
        while !h2.load(Ordering::Acquire) {
            p.step();
            std::thread::yield_now();
        }
        p
    });
    let mut server = Server::start(ours, Mode::Poll, TIMEOUT).expect("server up");
    home.store(true, Ordering::Release);
    let mut proxy = proxy.join().expect("proxy thread");
    let mut pump = || proxy.step();

    println!("rptun stack, both sides in one thread ({iters} messages per figure)");
    for len in [17usize, 496, 1520] {
        for _ in 0..iters / 10 {
            server
                .ping_once_pumped(len, TIMEOUT, &mut pump)
                .expect("ping");
        }
        let t = Instant::now();
        for _ in 0..iters {
            server
                .ping_once_pumped(len, TIMEOUT, &mut pump)
                .expect("ping");
        }
        let rtt = t.elapsed().as_nanos() as f64 / f64::from(iters);
        let timed = server
            .stream_with(len, iters, TIMEOUT, Some(&mut pump))
            .expect("stream");
        let one_way = timed.total.as_nanos() as f64 / f64::from(iters);
        println!(
            "{len:>5} B: round trip {rtt:>7.0} ns   one-way {one_way:>6.0} ns/msg ({:.0} MB/s)",
            len as f64 * 1e3 / one_way
        );
    }
}

/// rpmsg-port over a Unix socket, the proxy in a second thread.
fn port(iters: u32) {
    let path = std::env::temp_dir().join(format!("rptun-stack-{}.sock", std::process::id()));
    let addr = StreamAddr::Unix(path.clone());
    let a2 = addr.clone();
    let proxy = std::thread::spawn(move || {
        let mut p = PortNode::proxy(&a2).expect("proxy");
        p.serve(TIMEOUT).expect("proxy serves");
    });
    let mut server = PortNode::server(&addr, TIMEOUT).expect("server up");
    println!(
        "rpmsg-port over a Unix socket, proxy in a second thread ({iters} messages per figure)"
    );
    for len in [17usize, 496, 1520] {
        let t = Instant::now();
        for _ in 0..iters {
            server.ping_once(len, TIMEOUT).expect("ping");
        }
        let rtt = t.elapsed().as_nanos() as f64 / f64::from(iters);
        let timed = server.stream(len, iters, TIMEOUT).expect("stream");
        let one_way = timed.total.as_nanos() as f64 / f64::from(iters);
        println!("{len:>5} B: round trip {rtt:>7.0} ns   one-way {one_way:>6.0} ns/msg");
    }
    drop(server);
    proxy.join().expect("proxy thread");
    let _ = std::fs::remove_file(path);
}
