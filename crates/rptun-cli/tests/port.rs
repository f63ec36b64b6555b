//! `rptun port` between two processes: over a Unix socket, TCP and a pty;
//! pings with data check, 10^4 checked messages each way, and a peer killed
//! with SIGKILL and restarted. Every wait is bounded.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

/// A running `rptun port`, killed when dropped.
struct Proc {
    name: String,
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
    stderr: Arc<Mutex<String>>,
}

impl Proc {
    fn start(name: &str, args: &[&str]) -> Proc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_rptun"))
            .arg("port")
            .args(args)
            .args(["--timeout", "20"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn rptun");
        let (tx, lines) = channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let mut err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Proc {
            name: name.to_string(),
            child,
            lines,
            seen: Vec::new(),
            stderr,
        }
    }

    fn fail(&self, what: &str) -> ! {
        panic!(
            "{}: {what}\n--- stdout so far:\n{}\n--- stderr:\n{}",
            self.name,
            self.seen.join("\n"),
            self.stderr.lock().unwrap()
        );
    }

    /// Waits for the next line containing `text` and returns it.
    fn expect(&mut self, text: &str) -> String {
        let end = Instant::now() + WAIT;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(text) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => self.fail(&format!("no line with {text:?}")),
                Err(RecvTimeoutError::Disconnected) => {
                    self.fail(&format!("exited before printing {text:?}"))
                }
            }
        }
    }

    /// Waits for the process to exit successfully; returns all its stdout.
    fn success(&mut self) -> String {
        let end = Instant::now() + WAIT;
        loop {
            match self.child.try_wait().unwrap() {
                Some(st) => {
                    // Collect what is left of stdout.
                    while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
                        self.seen.push(line);
                    }
                    if !st.success() {
                        self.fail(&format!("exited with {st}"));
                    }
                    return self.seen.join("\n");
                }
                None if Instant::now() > end => self.fail("did not exit"),
                None => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    fn kill9(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sock(tag: &str) -> String {
    let p: PathBuf =
        std::env::temp_dir().join(format!("rptun-port-{tag}-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&p);
    format!("unix:{}", p.display())
}

/// Checks a ping report and that the responder saw no data error.
fn check_ping(out: &str, times: u32, len: usize, responder: &Proc) {
    assert!(out.contains(&format!("ping times: {times}\n")), "{out}");
    assert!(
        out.contains(&format!("buffer_len: 2024, send_len: {len}\n")),
        "{out}"
    );
    assert!(out.contains("rate: "), "{out}");
    let err = responder.stderr();
    assert!(!err.contains("data error"), "responder: {err}");
}

/// The `count:` line's fields: sent, sent checksum, received, received
/// checksum, errors.
fn count_line(line: &str) -> (String, String, String, String, String) {
    let w: Vec<&str> = line.split([' ', ',']).filter(|s| !s.is_empty()).collect();
    // count: sent N checksum X received N checksum X errors E
    assert_eq!(w.len(), 11, "{line}");
    (
        w[2].into(),
        w[4].into(),
        w[6].into(),
        w[8].into(),
        w[10].into(),
    )
}

fn check_counts(a: &str, b: &str, n: &str) {
    let (a_sent, a_sum, a_recv, a_rsum, a_err) = count_line(a);
    let (b_sent, b_sum, b_recv, b_rsum, b_err) = count_line(b);
    assert_eq!(
        (a_sent.as_str(), a_recv.as_str(), a_err.as_str()),
        (n, n, "0")
    );
    assert_eq!(
        (b_sent.as_str(), b_recv.as_str(), b_err.as_str()),
        (n, n, "0")
    );
    assert_eq!(a_sum, b_rsum, "what A sent is what B got");
    assert_eq!(b_sum, a_rsum, "what B sent is what A got");
}

#[test]
fn unix_socket_ping_with_data_check() {
    let addr = sock("ping");
    let mut a = Proc::start("listener", &["--listen", &addr, "--name", "proxy", "--crc"]);
    a.expect("listening:");
    let mut b = Proc::start("pinger", &["--connect", &addr, "--ping", "20", "1500"]);
    let out = b.success();
    check_ping(&out, 20, 1500, &a);
    a.expect("link up (session 1) to proxy");
}

#[test]
fn tcp_ping_on_a_chosen_port() {
    let mut a = Proc::start("listener", &["--listen", "tcp:127.0.0.1:0"]);
    let line = a.expect("listening: tcp:");
    let addr = line.trim_start_matches("listening: ").to_string();
    let mut b = Proc::start("pinger", &["--connect", &addr, "--ping", "5", "17"]);
    let out = b.success();
    check_ping(&out, 5, 17, &a);
}

#[test]
fn unix_socket_ten_thousand_ordered_messages_each_way() {
    let addr = sock("count");
    let mut a = Proc::start("A", &["--listen", &addr, "--count", "10000"]);
    a.expect("listening:");
    let mut b = Proc::start("B", &["--connect", &addr, "--count", "10000", "--crc"]);
    let la = a.expect("count:");
    let lb = b.expect("count:");
    check_counts(&la, &lb, "10000");
    a.success();
    b.success();
}

#[test]
fn unix_socket_peers_killed_and_restarted() {
    let addr = sock("kill");
    let mut a = Proc::start("listener", &["--listen", &addr]);
    a.expect("listening:");
    let mut b = Proc::start("connector", &["--connect", &addr]);
    a.expect("link up (session 1)");
    b.expect("link up (session 1)");

    // The connector dies: the listener's link goes down; a new connector
    // brings it back and pings through it.
    b.kill9();
    a.expect("link down");
    let mut b = Proc::start("new connector", &["--connect", &addr, "--ping", "5", "600"]);
    let out = b.success();
    check_ping(&out, 5, 600, &a);
    a.expect("link up (session 2)");

    // Now the listener dies (leaving its socket file): a connector keeps
    // retrying and links up with the restarted listener.
    let mut c = Proc::start("survivor", &["--connect", &addr]);
    a.expect("link down"); // the pinger left
    a.expect("link up (session 3)");
    c.expect("link up (session 1)");
    a.kill9();
    c.expect("link down");
    let mut a = Proc::start("new listener", &["--listen", &addr, "--ping", "5", "600"]);
    let out = a.success();
    check_ping(&out, 5, 600, &c);
    c.expect("link up (session 2)");
}

fn pty_pair(extra_a: &[&str]) -> (Proc, String) {
    let mut args = vec!["--pty"];
    args.extend_from_slice(extra_a);
    let mut a = Proc::start("pty", &args);
    let line = a.expect("pty: ");
    let path = line.trim_start_matches("pty: ").to_string();
    assert!(path.starts_with("/dev/"), "{path}");
    (a, path)
}

#[test]
fn pty_ping_and_ten_thousand_ordered_messages() {
    let (mut a, path) = pty_pair(&["--count", "10000", "--crc"]);
    let mut b = Proc::start("serial", &["--serial", &path, "--count", "10000"]);
    let la = a.expect("count:");
    let lb = b.expect("count:");
    check_counts(&la, &lb, "10000");
    a.success();
    b.success();

    let (a, path) = pty_pair(&[]);
    let serial = format!("{path},115200");
    let mut b = Proc::start("pinger", &["--serial", &serial, "--ping", "10", "2024"]);
    let out = b.success();
    check_ping(&out, 10, 2024, &a);
}

#[test]
fn pty_peer_killed_and_restarted() {
    let (mut a, path) = pty_pair(&[]);
    let mut b = Proc::start("serial", &["--serial", &path]);
    a.expect("link up (session 1)");
    b.expect("link up (session 1)");
    b.kill9();
    a.expect("link down");
    let mut b = Proc::start("new serial", &["--serial", &path, "--ping", "5", "300"]);
    let out = b.success();
    check_ping(&out, 5, 300, &a);
    a.expect("link up (session 2)");
}
