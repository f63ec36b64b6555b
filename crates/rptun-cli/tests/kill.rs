//! kill -9 of either side at random points of traffic, over the simulator's
//! shared-memory layout (two `rptun soak-side` processes: the server is the
//! master and rpmsg virtio driver, the proxy the remote and virtio device).
//!
//! Each iteration: both sides send continuously; after a random delay one
//! of them (chosen at random) is killed with SIGKILL and started again. The
//! survivor must notice the restart through the boot handshake
//! (NEED_RESET) or the rewritten resource table, bring up a new link
//! session, carry new traffic in order and intact, and end with every
//! buffer accounted for (all TX buffers free, all RX buffers posted,
//! nothing held or lent). Every wait is bounded.
//!
//! `RPTUN_KILL_ITERS` sets the iterations (default 20); `RPTUN_KILL_SEED`
//! the random seed (printed on failure).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

const RPTUN: &str = env!("CARGO_BIN_EXE_rptun");
const LIMIT: Duration = Duration::from_secs(60);

struct Side {
    role: &'static str,
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
}

type Status = HashMap<String, String>;

impl Side {
    fn spawn(role: &'static str, shm: &str) -> Side {
        let mut child = Command::new(RPTUN)
            .args(["soak-side", "--role", role, "--shm", shm, "--timeout", "60"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn rptun soak-side");
        let stdin = child.stdin.take().unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Side {
            role,
            child,
            stdin,
            lines,
        }
    }

    fn cmd(&mut self, c: &str) {
        writeln!(self.stdin, "{c}").expect("the side takes commands");
    }

    fn status(&mut self) -> Status {
        self.cmd("status");
        let end = Instant::now() + LIMIT;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("the {} stopped answering", self.role));
            if let Some(rest) = line.strip_prefix("status ") {
                return rest
                    .split_whitespace()
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
            }
        }
    }

    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Side {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn num(s: &Status, k: &str) -> u64 {
    s.get(k)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {k} in {s:?}"))
}

/// Polls both sides until `ok` holds for both (bounded).
fn wait_both(sides: &mut [Side; 2], what: &str, ok: impl Fn(&Status) -> bool) -> [Status; 2] {
    let end = Instant::now() + LIMIT;
    loop {
        let s = [sides[0].status(), sides[1].status()];
        if ok(&s[0]) && ok(&s[1]) {
            return s;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}: {s:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn up_and_bound(s: &Status) -> bool {
    num(s, "up") == 1 && num(s, "bound") == 1
}

/// Every buffer back: the driver's TX buffers free, the driver's RX buffers
/// posted (the device's `tx_free`), nothing held or lent.
fn quiet(s: &Status) -> bool {
    num(s, "tx_total") == 8
        && num(s, "tx_free") == 8
        && num(s, "rx_total") == 8
        && num(s, "held") == 0
        && num(s, "lent") == 0
}

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

struct Unlink(String);

impl Drop for Unlink {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(std::path::Path::new("/dev/shm").join(&self.0));
    }
}

#[test]
fn kill_9_either_side_at_random_points_of_traffic_and_recover() {
    let iters: u32 = std::env::var("RPTUN_KILL_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("RPTUN_KILL_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("kill test: {iters} iterations, RPTUN_KILL_SEED={seed}");
    let mut rng = Rng(seed | 1);
    let shm = format!("rptun-kill-{}", std::process::id());
    let _unlink = Unlink(shm.clone());
    let mut sides = [Side::spawn("server", &shm), Side::spawn("proxy", &shm)];
    wait_both(&mut sides, "the first link", up_and_bound);
    let mut kills = [0u32; 2];
    for i in 0..iters {
        let before = [sides[0].status(), sides[1].status()];
        for s in sides.iter_mut() {
            s.cmd("send 100000000");
        }
        // Let traffic flow, then kill at a random point of it.
        let start = Instant::now();
        let target = [
            num(&before[0], "received") + 50 + rng.below(3000),
            num(&before[1], "received") + 50,
        ];
        while num(&sides[0].status(), "received") < target[0]
            || num(&sides[1].status(), "received") < target[1]
        {
            assert!(start.elapsed() < LIMIT, "no traffic in iteration {i}");
        }
        std::thread::sleep(Duration::from_millis(rng.below(30)));
        let v = rng.below(2) as usize;
        kills[v] += 1;
        let role = sides[v].role;
        sides[v].kill();
        sides[v] = Side::spawn(role, &shm);
        let survivor = 1 - v;
        let gen0 = num(&before[survivor], "gen");
        let restarts0 = num(&before[survivor], "restarts");
        let st = wait_both(&mut sides, "a new session after the restart", |s| {
            up_and_bound(s)
        });
        // The survivor followed the restart: a new link (the boot
        // handshake told it, or the table was rewritten under it).
        assert!(
            num(&st[survivor], "gen") > gen0,
            "iteration {i} (seed {seed}): the {} kept its old link after the {role} \
             restarted: {:?}",
            sides[survivor].role,
            st[survivor]
        );
        if survivor == 0 {
            assert!(num(&st[0], "restarts") > restarts0, "{:?}", st[0]);
        }
        // New traffic, checked, then every buffer back.
        for s in sides.iter_mut() {
            s.cmd("send 2000");
        }
        let st = wait_both(&mut sides, "2000 messages each way", |s| {
            num(s, "received") >= 2000 && num(s, "sent") >= 2000
        });
        for s in &st {
            assert_eq!(
                (
                    num(s, "received"),
                    num(s, "out_of_order"),
                    num(s, "corrupt"),
                    num(s, "transport_errors")
                ),
                (2000, 0, 0, 0),
                "iteration {i} (seed {seed}): {s:?}"
            );
        }
        wait_both(&mut sides, "every buffer back", quiet);
    }
    eprintln!(
        "kill test: killed the server {} and the proxy {} times",
        kills[0], kills[1]
    );
    assert!(iters < 4 || (kills[0] > 0 && kills[1] > 0), "{kills:?}");
    for s in sides.iter_mut() {
        s.cmd("quit");
    }
}
