//! `rptun sim` as a user runs it: the built binary, a server process that
//! spawns (or meets) a proxy process, commands through `--script` or piped
//! stdin. Every test uses its own shm object, is bounded by timeouts, and
//! kills what it started if it fails.

use std::io::{Read, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_rptun");
const LIMIT: Duration = Duration::from_secs(20);

fn shm_name(test: &str) -> String {
    format!("rptun-test-{test}-{}", std::process::id())
}

fn shm_exists(name: &str) -> bool {
    std::path::Path::new("/dev/shm").join(name).exists()
}

fn alive(pid: u32) -> bool {
    // A zombie still has /proc/<pid>; its state is Z.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn kill(pid: u32, sig: rustix::process::Signal) {
    if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(p, sig);
    }
}

fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// Everything a process printed (stdout and stderr, in arrival order).
#[derive(Clone, Default)]
struct Output(Arc<Mutex<String>>);

impl Output {
    fn collect(&self, mut r: impl Read + Send + 'static) {
        let o = self.0.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = r.read(&mut buf) {
                if n == 0 {
                    break;
                }
                o.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
    }

    fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }
}

/// A process under test; killed (with its proxies) if still running when
/// dropped, and its shm object removed.
struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    out: Output,
    shm: String,
    /// Where the next `expect` starts looking.
    mark: usize,
}

impl Proc {
    fn spawn(args: &[&str], shm: &str) -> Proc {
        let mut child = Command::new(BIN)
            .args(args)
            .env("RPTUN_LOG", "info")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn rptun");
        let out = Output::default();
        out.collect(child.stdout.take().unwrap());
        out.collect(child.stderr.take().unwrap());
        Proc {
            stdin: child.stdin.take(),
            child,
            out,
            shm: shm.to_string(),
            mark: 0,
        }
    }

    fn sim(shm: &str, extra: &[&str]) -> Proc {
        let mut args = vec!["sim", "--shm", shm];
        args.extend_from_slice(extra);
        Proc::spawn(&args, shm)
    }

    fn send(&mut self, line: &str) {
        let s = self.stdin.as_mut().expect("stdin is open");
        writeln!(s, "{line}").expect("write to the server");
        s.flush().unwrap();
    }

    /// Waits for `pat` after the mark and moves the mark past it.
    fn expect(&mut self, pat: &str) -> String {
        let end = Instant::now() + LIMIT;
        loop {
            let t = self.out.text();
            if let Some(i) = t[self.mark..].find(pat) {
                let from = self.mark;
                self.mark += i + pat.len();
                return t[from..self.mark].to_string();
            }
            assert!(
                Instant::now() < end,
                "no `{pat}` within {LIMIT:?}; output so far:\n{t}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Closes stdin and waits for the exit.
    fn finish(&mut self) -> ExitStatus {
        self.stdin.take();
        let end = Instant::now() + LIMIT;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                // the proxy inherited our pipes: wait until it closed them too
                std::thread::sleep(Duration::from_millis(50));
                return st;
            }
            assert!(
                Instant::now() < end,
                "the process did not exit within {LIMIT:?}; output:\n{}",
                self.out.text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for every pattern after the mark, in any order (lines from the
    /// server's threads and the proxy interleave), and moves the mark past
    /// the last.
    fn expect_all(&mut self, pats: &[&str]) {
        let end = Instant::now() + LIMIT;
        loop {
            let t = self.out.text();
            let found: Vec<Option<usize>> = pats
                .iter()
                .map(|p| t[self.mark..].find(p).map(|i| i + p.len()))
                .collect();
            if found.iter().all(Option::is_some) {
                self.mark += found.into_iter().flatten().max().unwrap_or(0);
                return;
            }
            assert!(
                Instant::now() < end,
                "not all of {pats:?} within {LIMIT:?}; output so far:\n{t}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Every pid the output names as a proxy.
    fn proxy_pids(&self) -> Vec<u32> {
        let t = self.out.text();
        let mut v = Vec::new();
        for key in ["spawned the proxy (pid ", "[proxy] pid "] {
            for part in t.split(key).skip(1) {
                if let Ok(p) = part
                    .chars()
                    .take_while(|c| c.is_ascii_digit())
                    .collect::<String>()
                    .parse()
                {
                    v.push(p);
                }
            }
        }
        v
    }

    fn spawned_proxy(&self) -> u32 {
        let t = self.out.text();
        let part = t
            .rsplit("spawned the proxy (pid ")
            .next()
            .filter(|_| t.contains("spawned the proxy (pid "))
            .unwrap_or_else(|| panic!("no spawned proxy in:\n{t}"));
        part.chars()
            .take_while(|c| c.is_ascii_digit())
            .collect::<String>()
            .parse()
            .unwrap()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let pids = self.proxy_pids();
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        for p in pids {
            if alive(p) {
                kill(p, rustix::process::Signal::KILL);
            }
        }
        if std::thread::panicking() {
            eprintln!("--- output of the failed run:\n{}", self.out.text());
        }
        let _ = std::fs::remove_file(std::path::Path::new("/dev/shm").join(&self.shm));
    }
}

/// Runs `script` to the end and returns everything printed.
fn script(shm: &str, script: &str, extra: &[&str]) -> (ExitStatus, String, Proc) {
    let mut args = vec!["--script", script];
    args.extend_from_slice(extra);
    let mut p = Proc::sim(shm, &args);
    let st = p.finish();
    let out = p.out.text();
    (st, out, p)
}

fn assert_clean(shm: &str, p: &Proc) {
    assert!(
        wait_until(Duration::from_secs(5), || !shm_exists(shm)),
        "/dev/shm/{shm} was left behind"
    );
    for pid in p.proxy_pids() {
        assert!(
            wait_until(Duration::from_secs(5), || !alive(pid)),
            "proxy {pid} still runs"
        );
    }
}

/// The output without the log lines that stderr interleaves.
fn shell_view(out: &str) -> String {
    out.lines()
        .filter(|l| !l.starts_with('['))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// What the shell answered to `cmd` (its first occurrence), without the log
/// lines that stderr interleaves.
fn answer(out: &str, cmd: &str) -> String {
    let head = format!("server> {cmd}\n");
    let i = out
        .find(&head)
        .unwrap_or_else(|| panic!("no `{cmd}` in:\n{out}"));
    let rest = &out[i + head.len()..];
    let end = rest.find("server> ").unwrap_or(rest.len());
    rest[..end]
        .lines()
        .filter(|l| !l.starts_with('['))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// The report block of the ping with `send_len`.
fn report(out: &str, times: u32, send_len: usize) -> String {
    let out = &shell_view(out);
    let head = format!("ping times: {times}\nbuffer_len: 1520, send_len: {send_len}\n");
    let i = out
        .find(&head)
        .unwrap_or_else(|| panic!("no report for {times} x {send_len} in:\n{out}"));
    out[i..].lines().take(6).collect::<Vec<_>>().join("\n")
}

#[test]
fn ping_with_ack_and_data_check_at_17_and_1520_bytes() {
    let shm = shm_name("ping");
    let (st, out, p) = script(
        &shm,
        "rpmsg ping proxy 5 17 3 0; rpmsg ping proxy 5 1520 3 1; rpmsg ping all 2 100 1 0",
        &[],
    );
    for (times, len) in [(5, 17), (5, 1520)] {
        let r = report(&out, times, len);
        let lines: Vec<&str> = r.lines().collect();
        assert!(lines[2].starts_with("avg: 0 s, "), "{r}");
        assert!(lines[3].starts_with("min: "), "{r}");
        assert!(lines[4].starts_with("max: "), "{r}");
        assert!(
            lines[5].starts_with("rate: ") && lines[5].ends_with(" Mbits/sec"),
            "{r}"
        );
    }
    assert!(
        shell_view(&out).contains("cpu proxy:\nping times: 2\n"),
        "{out}"
    );
    // The proxy checked every data byte (cmd bit 1) and reports errors
    // through its syslog: there must be none.
    assert!(!out.contains("receive data error"), "{out}");
    assert!(st.success(), "{out}");
    assert_clean(&shm, &p);
}

#[test]
fn dump_shows_both_cpus_vrings_and_endpoints_on_both_sides() {
    let shm = shm_name("dump");
    let (st, out, p) = script(
        &shm,
        "rpmsg dump proxy; cu /dev/ttyproxy; rpmsg dump server; ~.; rptun dump",
        &[],
    );
    assert!(st.success(), "{out}");
    // server side
    assert!(
        out.contains("rpmsg link: local server remote proxy role virtio driver up"),
        "{out}"
    );
    for ring in [
        "vring0 (rx): num 8 avail.idx ",
        "vring1 (tx): num 8 avail.idx ",
    ] {
        let line = out
            .lines()
            .find(|l| l.contains(ring))
            .unwrap_or_else(|| panic!("no `{ring}` in:\n{out}"));
        assert!(
            line.contains(" used.idx ") && line.contains(" in_flight "),
            "{line}"
        );
    }
    for ept in [
        "\"rpmsg-ping\"",
        "\"rpmsg-test\"",
        "\"rpmsg-ttyproxy\"",
        "\"rpmsg-syslog\"",
    ] {
        assert!(out.contains(ept), "no {ept} in:\n{out}");
    }
    assert!(out.contains("bound (ns)"), "{out}");
    // proxy side, through its shell on the rpmsg tty
    assert!(
        out.contains("rpmsg link: local proxy remote server role virtio device up"),
        "{out}"
    );
    // the remoteproc side: the NuttX table's three vdevs, all driven here
    assert!(out.contains("vdev 0: virtio-rng (4), driver"), "{out}");
    assert!(out.contains("vdev 1: virtio-rng (4), driver"), "{out}");
    assert!(out.contains("vdev 2: rpmsg (7), driver"), "{out}");
    assert!(out.contains("boots OK bootm OK"), "{out}");
    assert_clean(&shm, &p);
}

fn hex_bytes(out: &str, nth: usize) -> Vec<u8> {
    let block = out
        .split("/dev/random1 at 00000000:\n")
        .nth(nth + 1)
        .unwrap_or_else(|| panic!("no dump #{nth} in:\n{out}"));
    let mut v = Vec::new();
    for l in block.lines() {
        let Some((off, rest)) = l.split_once(": ") else {
            break;
        };
        if off.len() != 4 || !off.chars().all(|c| c.is_ascii_hexdigit()) {
            break;
        }
        for w in rest.split_whitespace().take(16) {
            match u8::from_str_radix(w, 16) {
                Ok(b) if w.len() == 2 => v.push(b),
                _ => break,
            }
        }
    }
    v
}

#[test]
fn random1_bytes_come_from_the_proxy_and_differ_between_reads() {
    let shm = shm_name("rng");
    let (st, out, p) = script(
        &shm,
        "rptun dump; hexdump /dev/random1 count=64; hexdump /dev/random1 count=64; \
         hexdump /dev/random count=16; ls /dev; rptun dump",
        &[],
    );
    assert!(st.success(), "{out}");
    let (a, b) = (hex_bytes(&out, 0), hex_bytes(&out, 1));
    assert_eq!((a.len(), b.len()), (64, 64), "{out}");
    assert_ne!(a, b, "two reads of /dev/random1 gave the same bytes");
    assert_ne!(a, vec![0u8; 64]);
    assert!(out.contains("/dev/random at 00000000:\n0000: "), "{out}");
    for dev in [
        " random\n",
        " random1\n",
        " rpmsg/proxy\n",
        " rptun/proxy\n",
        " ttyproxy\n",
    ] {
        assert!(out.contains(dev), "ls /dev lacks{dev}in:\n{out}");
    }
    // The bytes crossed the processes: the proxy rang the server's doorbell
    // (seqs) for every request it served.
    let seqs: Vec<u32> = out
        .split("seqs ")
        .skip(1)
        .map(|s| s.split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(seqs.len(), 2, "{out}");
    assert!(seqs[1] > seqs[0], "{seqs:?}");
    assert_clean(&shm, &p);
}

#[test]
fn stop_and_start_round_trip_then_ping_works() {
    let shm = shm_name("stop");
    let (st, out, p) = script(
        &shm,
        "rptun stop proxy; rpmsg ping proxy 1 17 1 0; rptun start proxy; \
         rpmsg ping proxy 2 17 3 0; rptun stop all; rptun start all; rpmsg ping proxy 1 1520 3 0",
        &[],
    );
    // the ping while stopped failed (exit status 1), with the way out
    assert_eq!(st.code(), Some(1), "{out}");
    assert_eq!(answer(&out, "rptun stop proxy"), "proxy stopped\n", "{out}");
    assert!(
        out.contains(
            "rpmsg ping: the link to proxy is down (stopped); bring it up with `rptun start proxy`"
        ),
        "{out}"
    );
    assert!(out.contains("proxy started; link up"), "{out}");
    report(&out, 2, 17);
    report(&out, 1, 1520);
    // the proxy saw the STOP in its mailbox
    assert!(
        out.contains("[proxy] warning: stopped by server (STOP)"),
        "{out}"
    );
    assert_clean(&shm, &p);
}

#[test]
fn kill_9_of_the_proxy_is_noticed_and_start_brings_it_back() {
    let shm = shm_name("kill");
    let mut p = Proc::sim(&shm, &[]);
    p.expect("link to proxy is up");
    p.send("rpmsg ping proxy 1 17 3 0");
    p.expect("ping times: 1");
    let pid = p.spawned_proxy();
    kill(pid, rustix::process::Signal::KILL);
    p.expect_all(&[
        &format!("proxy process {pid} was killed by signal 9"),
        "[server] link to proxy is down",
        "type `rptun start proxy` to bring it back",
    ]);
    p.send("rpmsg ping proxy 1 17 3 0");
    p.expect("link to proxy is down (crashed); bring it up with `rptun start proxy`");
    p.send("rptun start proxy");
    // the new proxy connected to the port link again, too
    p.expect("proxy started; link up (and proxy2)");
    assert_ne!(p.spawned_proxy(), pid);
    p.send("rpmsg ping proxy 3 1520 3 0");
    p.expect("ping times: 3\nbuffer_len: 1520, send_len: 1520");
    p.send("rpmsg ping proxy2 2 2024 3 0");
    p.expect("ping times: 2\nbuffer_len: 2024, send_len: 2024");
    p.send("hexdump /dev/random1 count=16");
    p.expect("/dev/random1 at 00000000:\n0000: ");
    let st = p.finish();
    assert_eq!(st.code(), Some(1), "one ping failed on purpose");
    assert_clean(&shm, &p);
}

#[test]
fn restart_proxy_brings_a_killed_proxy_back_by_itself() {
    let shm = shm_name("restart");
    let mut p = Proc::sim(&shm, &["--restart-proxy"]);
    p.expect("link to proxy is up");
    let pid = p.spawned_proxy();
    kill(pid, rustix::process::Signal::KILL);
    p.expect_all(&[
        "[server] link to proxy is down",
        "restarting the proxy (--restart-proxy)",
    ]);
    p.expect("[server] link to proxy is up");
    assert_ne!(p.spawned_proxy(), pid);
    p.send("rpmsg ping proxy 2 17 3 0");
    p.expect("ping times: 2");
    assert!(p.finish().success(), "{}", p.out.text());
    assert_clean(&shm, &p);
}

#[test]
fn a_proxy_restarted_by_hand_while_the_server_runs() {
    let shm = shm_name("hand");
    // The server first, waiting for a proxy started by hand.
    let mut s = Proc::sim(&shm, &["--no-spawn", "--wait-link", "0"]);
    s.expect("waiting for a proxy: start one with `rptun proxy --shm");
    let mut p1 = Proc::spawn(&["proxy", "--shm", &shm], &shm);
    s.expect("[server] link to proxy is up");
    s.send("rpmsg ping proxy 1 17 3 0");
    s.expect("ping times: 1");
    // The proxy goes away (Ctrl-C) and another one is started by hand: it
    // sets NEED_RESET and the server boots the link again.
    kill(p1.child.id(), rustix::process::Signal::INT);
    assert!(p1.finish().success());
    s.expect_all(&[
        &format!("the proxy (pid {}) is gone", p1.child.id()),
        "[server] link to proxy is down",
    ]);
    let p2 = Proc::spawn(&["proxy", "--shm", &shm], &shm);
    s.expect("proxy restarted (NEED_RESET): booting the link again");
    s.expect("[server] link to proxy is up");
    s.send("rpmsg ping proxy 2 1520 3 0");
    s.expect("ping times: 2\nbuffer_len: 1520, send_len: 1520");
    // and once more, killed this time
    kill(p2.child.id(), rustix::process::Signal::KILL);
    s.expect_all(&[
        &format!("the proxy (pid {}) is gone", p2.child.id()),
        "[server] link to proxy is down",
    ]);
    let _p3 = Proc::spawn(&["proxy", "--shm", &shm], &shm);
    s.expect("[server] link to proxy is up");
    s.send("rpmsg ping proxy 1 17 3 0");
    s.expect("ping times: 1");
    // The server's exit removes the object; the hand-started proxy sees it
    // and leaves.
    assert!(s.finish().success(), "{}", s.out.text());
    assert!(wait_until(Duration::from_secs(5), || !shm_exists(&shm)));
    let mut p3 = _p3;
    assert!(p3.finish().success(), "{}", p3.out.text());
    assert!(p3
        .out
        .text()
        .contains("was removed: the server exited; exiting"));
}

#[test]
fn exit_eof_and_ctrl_c_clean_up_both_processes_and_the_shm_object() {
    // `exit` in a script
    let shm = shm_name("exit");
    let (st, out, p) = script(&shm, "uname -a; exit; uname -a", &[]);
    assert!(st.success(), "{out}");
    assert_eq!(out.matches("rptun server 0.1.0").count(), 1, "{out}");
    assert_clean(&shm, &p);
    // EOF of piped stdin
    let shm = shm_name("eof");
    let mut p = Proc::sim(&shm, &[]);
    p.expect("link to proxy is up");
    assert!(p.finish().success());
    assert_clean(&shm, &p);
    // SIGINT (Ctrl-C)
    let shm = shm_name("sigint");
    let mut p = Proc::sim(&shm, &[]);
    p.expect("link to proxy is up");
    let proxy = p.spawned_proxy();
    assert!(shm_exists(&shm));
    kill(p.child.id(), rustix::process::Signal::INT);
    let end = Instant::now() + LIMIT;
    while p.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < end, "the server ignored SIGINT");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(wait_until(Duration::from_secs(5), || !alive(proxy)));
    assert_clean(&shm, &p);
}

#[test]
fn mistakes_get_one_clear_line_each() {
    let shm = shm_name("errors");
    let (st, out, p) = script(
        &shm,
        "rpmsg ping foo 1 1 1 1; rpmsg ping proxy x; rpmsg ping proxy 1 4 1 0; rptun start; \
         rptun stop bar; frob; rpmsg pong; hexdump /dev/nope; ls /tmp; uname -x; rptun start proxy",
        &[],
    );
    assert_eq!(st.code(), Some(1), "{out}");
    for want in [
        "rpmsg ping: no link to cpu `foo`; known: proxy, proxy2\n",
        "rpmsg ping: <times> must be a number, got `x` (usage: rpmsg ping <cpu|all> <times> <len> \
         <cmd> <sleep_ms>)\n",
        "rpmsg ping: <len> must be at least 17",
        "rptun start: missing argument <cpu|all> (usage: rptun start <cpu|all>)\n",
        "rptun stop: no remote cpu `bar`; known: proxy\n",
        "frob: command not found; type `help` for the list\n",
        "rpmsg: unknown subcommand `pong`; try: rpmsg ping",
        "hexdump: no such device `/dev/nope`; try /dev/random or /dev/random1",
        "ls: `/tmp`: only /dev is simulated here; try `ls /dev`\n",
        "uname: unknown option `-x`; use `uname -a`",
        "rptun start: proxy is already running; `rptun stop proxy` first",
    ] {
        assert!(out.contains(want), "missing `{want}` in:\n{out}");
    }
    // one line per mistake: every line after a command is its answer
    for block in out.split("server> ").skip(1) {
        let answer: Vec<&str> = block
            .lines()
            .skip(1)
            .filter(|l| !l.starts_with('['))
            .collect();
        assert_eq!(answer.len(), 1, "not one line: {block:?}");
    }
    assert_clean(&shm, &p);
}

#[test]
fn proxy_shell_over_the_rpmsg_tty_and_its_syslog_on_the_server() {
    let shm = shm_name("cu");
    let (st, out, p) = script(
        &shm,
        "cu /dev/ttyproxy; uname -a; log hello-from-the-proxy; rpmsg ping server 2 64 3 0; \
         exit; ~.; rpmsg test proxy; rptun reset proxy 5; rpmsg ping proxy 1 17 3 0; \
         rptun panic proxy; rptun start proxy; rpmsg ping proxy 1 17 3 0",
        &[],
    );
    assert!(st.success(), "{out}");
    assert!(out.contains("Connected to proxy's shell"), "{out}");
    assert!(
        shell_view(&out).contains("proxy> uname -a\nrptun proxy 0.1.0"),
        "{out}"
    );
    // the proxy's log line travelled over rpmsg-syslog
    assert!(out.contains("[proxy] hello-from-the-proxy"), "{out}");
    // the proxy pinged the server from its side
    assert!(
        shell_view(&out).contains("proxy> rpmsg ping server 2 64 3 0\nping times: 2"),
        "{out}"
    );
    assert!(out.contains("type ~. to return to the server"), "{out}");
    assert!(out.contains("[back to the server shell]"), "{out}");
    assert!(
        out.contains("held every one and released them all: PASS"),
        "{out}"
    );
    assert!(
        out.contains("proxy reset (value 5); link up again"),
        "{out}"
    );
    assert!(
        out.contains("[proxy] warning: reset requested by server (value 5)"),
        "{out}"
    );
    assert!(out.contains("proxy panicked; the link is down until `rptun start proxy`"));
    assert_eq!(out.matches("ping times: 1\n").count(), 2, "{out}");
    assert_clean(&shm, &p);
}

/// The heading and the first two lines of each link's report in `rpmsg
/// ping all <times> <len>`.
fn ping_all_heads(cpu_lines: &[(&str, usize)], times: u32, len: usize) -> Vec<String> {
    cpu_lines
        .iter()
        .map(|(cpu, buffer_len)| {
            format!("{cpu}:\nping times: {times}\nbuffer_len: {buffer_len}, send_len: {len}\n")
        })
        .collect()
}

#[test]
fn ping_all_reports_the_shm_link_and_the_port_link_proxy2() {
    let shm = shm_name("port");
    let (st, out, p) = script(
        &shm,
        "rpmsg ping all 2 100 3 0; rpmsg ping proxy2 5 2024 3 0; rpmsg dump all; \
         rpmsg test all; cu /dev/ttyproxy; rpmsg ping all 1 64 3 0; ~.",
        &[],
    );
    assert!(st.success(), "{out}");
    let view = shell_view(&out);
    // Both links, each with its payload size: 1536-byte vring buffers on
    // the shared memory, 2048-byte port buffers (less the 8-byte port and
    // 16-byte rpmsg headers) on the stream.
    let all = answer(&out, "rpmsg ping all 2 100 3 0");
    for head in ping_all_heads(&[("cpu proxy", 1520), ("cpu proxy2", 2024)], 2, 100) {
        assert!(all.contains(&head), "no `{head}` in:\n{all}");
    }
    assert!(all.find("cpu proxy:") < all.find("cpu proxy2:"), "{all}");
    assert_eq!(all.matches("rate: ").count(), 2, "{all}");
    // A full-size ping over proxy2 whose every data byte the proxy checked
    // (cmd bit 1): a bad byte would show as a syslog error.
    let big = answer(&out, "rpmsg ping proxy2 5 2024 3 0");
    assert!(
        big.starts_with("ping times: 5\nbuffer_len: 2024, send_len: 2024\navg: "),
        "{big}"
    );
    assert!(!out.contains("receive data error"), "{out}");
    // The dump has both links; the port link shows its stream and buffers.
    let dump = answer(&out, "rpmsg dump all");
    for want in [
        "rpmsg link: local server remote proxy role virtio driver up",
        "rpmsg link: local server remote proxy2 role port up features NS|ACK",
        "tx buffers: 8 x 2040 B (payload 2024)",
        "(listening, peer connected)",
        "port: Connected, session 1, crc off, 8 x 2048 bytes each way",
    ] {
        assert!(dump.contains(want), "no `{want}` in:\n{dump}");
    }
    // The hold-rx test runs on the shm link; the port link is skipped with
    // the reason (it would overrun the proxy's RX buffers).
    let test = answer(&out, "rpmsg test all");
    assert!(
        test.starts_with("rpmsg test proxy: sent 8 buffers; proxy held every one"),
        "{test}"
    );
    assert!(
        test.contains("rpmsg test proxy2: skipped (the hold-rx test"),
        "{test}"
    );
    // The proxy sees two links to the server: its `rpmsg ping all` names
    // each with its transport.
    for head in ping_all_heads(
        &[
            ("cpu server (virtio device)", 1520),
            ("cpu server (port)", 2024),
        ],
        1,
        64,
    ) {
        assert!(view.contains(&head), "no `{head}` in:\n{view}");
    }
    assert_clean(&shm, &p);
    assert!(
        !rptun_socket(&shm).exists(),
        "the port link's socket was left behind"
    );
}

fn rptun_socket(shm: &str) -> std::path::PathBuf {
    let dir = std::env::var_os("XDG_RUNTIME_DIR")
        .map(std::path::PathBuf::from)
        .filter(|d| d.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    dir.join(format!("rptun-sim-{shm}-proxy2.sock"))
}

#[test]
fn kill_9_takes_both_links_down_and_restart_proxy_brings_both_back() {
    let shm = shm_name("port-kill");
    let mut p = Proc::sim(&shm, &["--restart-proxy"]);
    p.expect_all(&[
        "[server] link to proxy is up",
        "[server] link to proxy2 (port) is up",
    ]);
    p.send("rpmsg ping proxy2 1 17 3 0");
    p.expect("ping times: 1\nbuffer_len: 2024, send_len: 17");
    let pid = p.spawned_proxy();
    kill(pid, rustix::process::Signal::KILL);
    p.expect_all(&[
        "[server] link to proxy is down",
        "[server] link to proxy2 (port) is down",
        "restarting the proxy (--restart-proxy)",
    ]);
    // The new proxy boots the shm link and reconnects the stream
    // (CONNREQ/CONNACK run again).
    p.expect_all(&[
        "[server] link to proxy is up",
        "[server] link to proxy2 (port) is up",
    ]);
    assert_ne!(p.spawned_proxy(), pid);
    p.send("rpmsg ping all 2 1000 3 0");
    p.expect_all(&[
        "cpu proxy:\nping times: 2\nbuffer_len: 1520, send_len: 1000\n",
        "cpu proxy2:\nping times: 2\nbuffer_len: 2024, send_len: 1000\n",
    ]);
    assert!(p.finish().success(), "{}", p.out.text());
    assert!(!p.out.text().contains("receive data error"));
    assert_clean(&shm, &p);
}

#[test]
fn port_link_over_a_pty_and_without_one() {
    // over a pseudo-terminal pair
    let shm = shm_name("port-pty");
    let (st, out, p) = script(&shm, "rpmsg ping all 2 500 3 0", &["--port-link", "pty"]);
    assert!(st.success(), "{out}");
    assert!(out.contains("port link proxy2 on /dev/pts/"), "{out}");
    let all = answer(&out, "rpmsg ping all 2 500 3 0");
    for head in ping_all_heads(&[("cpu proxy", 1520), ("cpu proxy2", 2024)], 2, 500) {
        assert!(all.contains(&head), "no `{head}` in:\n{all}");
    }
    assert!(!out.contains("receive data error"), "{out}");
    assert_clean(&shm, &p);
    // turned off: the shm link alone
    let shm = shm_name("port-off");
    let (st, out, p) = script(
        &shm,
        "rpmsg ping all 1 17 3 0; rpmsg ping proxy2 1 17 3 0",
        &["--no-port-link"],
    );
    assert_eq!(st.code(), Some(1), "{out}");
    let all = answer(&out, "rpmsg ping all 1 17 3 0");
    assert!(all.starts_with("cpu proxy:\nping times: 1\n"), "{all}");
    assert!(!all.contains("proxy2"), "{all}");
    assert!(
        out.contains("rpmsg ping: no link to cpu `proxy2`; known: proxy\n"),
        "{out}"
    );
    assert_clean(&shm, &p);
}
