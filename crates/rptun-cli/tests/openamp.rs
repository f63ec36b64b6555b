//! `rptun openamp` against the reference peers of OpenAMP's Linux demo
//! contract (DESIGN.md §10): `pydevice.py` (virtio device, echoes) and
//! `pydriver.py` (virtio driver, pings), copied into the repository under
//! `tests/oracles/openamp/` (set `RPTUN_ORACLES` to a directory holding
//! another `openamp/` copy to use that one instead).
//!
//! The oracles hard-code `/dev/shm/openamp.shm` and `/tmp/openamp.event.0`,
//! so the two oracle cases hold a lock (a mutex within this binary and an
//! advisory file lock across processes) and run one at a time. Every child
//! is killed if a case fails or times out, and both names are removed at the
//! end of each case.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const RPTUN: &str = env!("CARGO_BIN_EXE_rptun");
const SHM_PATH: &str = "/dev/shm/openamp.shm";
const SOCKET: &str = "/tmp/openamp.event.0";
/// Bound on each case; the runs take well under a second.
const CASE_TIMEOUT: Duration = Duration::from_secs(90);

/// The directory holding `pydevice.py` and `pydriver.py`. Fails (never
/// skips) when they are missing.
fn oracles() -> PathBuf {
    let root = match std::env::var_os("RPTUN_ORACLES") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/oracles"),
    };
    let dir = root.join("openamp");
    for f in ["pydevice.py", "pydriver.py"] {
        assert!(
            dir.join(f).is_file(),
            "the OpenAMP reference peer {f} is missing from {}: restore tests/oracles/openamp/ \
             in the repository, or set RPTUN_ORACLES to a directory that holds openamp/{f}",
            dir.display()
        );
    }
    dir
}

fn python3() -> &'static str {
    let ok = Command::new("python3")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "python3 is needed to run the OpenAMP reference peers (standard library only); \
         install it"
    );
    "python3"
}

/// A child process whose stdout and stderr are collected; killed on drop.
struct Proc {
    name: &'static str,
    child: Child,
    out: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
    status: Option<ExitStatus>,
}

impl Proc {
    fn spawn(name: &'static str, mut cmd: Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let out = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        let pipes: [Box<dyn Read + Send>; 2] = [
            Box::new(child.stdout.take().unwrap()),
            Box::new(child.stderr.take().unwrap()),
        ];
        for pipe in pipes {
            let out = out.clone();
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let mut o = out.lock().unwrap_or_else(|e| e.into_inner());
                    o.push_str(&line);
                    o.push('\n');
                }
            }));
        }
        Proc {
            name,
            child,
            out,
            readers,
            status: None,
        }
    }

    fn output(&self) -> String {
        self.out.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits until `pattern` appears in the output (or the process exits,
    /// or the deadline passes); true if it appeared.
    fn wait_for_line(&mut self, pattern: &str, deadline: Instant) -> bool {
        while Instant::now() < deadline {
            if self.output().contains(pattern) {
                return true;
            }
            if self.child.try_wait().ok().flatten().is_some() {
                return self.output().contains(pattern);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// Waits for the exit until `deadline`; `None` if still running.
    fn wait(&mut self, deadline: Instant) -> Option<ExitStatus> {
        while self.status.is_none() {
            match self.child.try_wait() {
                Ok(Some(s)) => {
                    self.status = Some(s);
                    for r in self.readers.drain(..) {
                        let _ = r.join();
                    }
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => return None,
            }
        }
        self.status
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Exclusive use of the fixed names for one case; removes them before and
/// after.
struct Names {
    _guard: MutexGuard<'static, ()>,
    _lock: File,
}

fn remove_names() {
    let _ = std::fs::remove_file(SHM_PATH);
    let _ = std::fs::remove_file(SOCKET);
}

impl Names {
    fn take() -> Names {
        static IN_PROCESS: Mutex<()> = Mutex::new(());
        let guard = IN_PROCESS.lock().unwrap_or_else(|e| e.into_inner());
        let lock = File::create(std::env::temp_dir().join("rptun-openamp-oracles.lock"))
            .expect("cannot create the lock file in the temp directory");
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
            .expect("cannot lock the oracle lock file");
        remove_names();
        Names {
            _guard: guard,
            _lock: lock,
        }
    }
}

impl Drop for Names {
    fn drop(&mut self) {
        remove_names();
    }
}

/// Waits for every process; on a timeout or failure, panics with all the
/// output (the `Proc`s are killed when dropped).
fn finish(procs: &mut [&mut Proc], deadline: Instant) -> Vec<String> {
    let mut outs = Vec::new();
    let mut failed = None;
    for p in procs.iter_mut() {
        match p.wait(deadline) {
            Some(s) if s.success() => {}
            Some(s) => failed = failed.or(Some(format!("{} exited with {s}", p.name))),
            None => failed = failed.or(Some(format!("{} did not finish in time", p.name))),
        }
    }
    for p in procs.iter() {
        outs.push(p.output());
    }
    if let Some(why) = failed {
        let mut msg = why;
        for (p, o) in procs.iter().zip(&outs) {
            msg.push_str(&format!("\n--- {} output ---\n{o}", p.name));
        }
        panic!("{msg}");
    }
    outs
}

fn assert_has(out: &str, who: &str, want: &str) {
    assert!(
        out.contains(want),
        "{who} did not print {want:?}; it printed:\n{out}"
    );
}

#[test]
fn rptun_driver_echoes_every_size_through_pydevice() {
    let dir = oracles();
    let py = python3();
    let _names = Names::take();
    let deadline = Instant::now() + CASE_TIMEOUT;

    let mut cmd = Command::new(py);
    cmd.arg("-u").arg(dir.join("pydevice.py"));
    let mut device = Proc::spawn("pydevice.py", cmd);
    let mut cmd = Command::new(RPTUN);
    cmd.args([
        "openamp", "--role", "driver", "--ping", "1", "--sizes", "1..=496",
    ])
    .args(["--timeout", "30"]);
    let mut driver = Proc::spawn("rptun openamp --role driver", cmd);
    let outs = finish(&mut [&mut driver, &mut device], deadline);
    let (ours, theirs) = (&outs[0], &outs[1]);

    // The device saw the driver accept NS only, our endpoint's CREATE and,
    // after every echo, its DESTROY.
    assert_has(theirs, "pydevice", "DRIVER_OK, gfeatures=0x1");
    assert_has(
        theirs,
        "pydevice",
        "NS from driver: b'rpmsg-openamp-demo-channel' addr=0x400 flags=0",
    );
    assert_has(
        theirs,
        "pydevice",
        "NS from driver: b'rpmsg-openamp-demo-channel' addr=0x400 flags=1",
    );
    assert_has(
        theirs,
        "pydevice",
        "echoed 496 messages; driver destroyed its endpoint",
    );

    assert_has(
        ours,
        "rptun",
        "link up, features NS; 256 RX + 256 TX buffers of 512 B",
    );
    assert_has(
        ours,
        "rptun",
        "device announced rpmsg-openamp-demo-channel at 0x400; our endpoint 0x400 is bound to it",
    );
    assert_has(
        ours,
        "rptun",
        "ping times: 496\nbuffer_len: 496, send_len: 248\n",
    );
    assert_has(
        ours,
        "rptun",
        "all 496 echoes matched byte for byte (496 sizes)",
    );
    assert_has(
        ours,
        "rptun",
        "destroyed our endpoint 0x400 (NS DESTROY sent",
    );
}

#[test]
fn pydriver_checks_pass_against_the_rptun_device() {
    let dir = oracles();
    let py = python3();
    let _names = Names::take();
    let deadline = Instant::now() + CASE_TIMEOUT;

    let mut cmd = Command::new(RPTUN);
    cmd.args(["openamp", "--role", "device", "--timeout", "30"]);
    let mut device = Proc::spawn("rptun openamp --role device", cmd);
    // The table is written before the socket listens; wait for both so the
    // driver's first look at the object finds the table.
    assert!(
        device.wait_for_line("waiting for a driver", deadline),
        "the rptun device did not start:\n{}",
        device.output()
    );
    let mut cmd = Command::new(py);
    cmd.arg("-u").arg(dir.join("pydriver.py")).arg("200");
    let mut driver = Proc::spawn("pydriver.py 200", cmd);
    let outs = finish(&mut [&mut driver, &mut device], deadline);
    let (theirs, ours) = (&outs[0], &outs[1]);

    assert_has(
        theirs,
        "pydriver",
        "rsc ver=1 num=1 vdev@0x14 type=3 id=7 dfeat=0x1 status@0x2c \
         vrings=[('0x4000', '0x1000', 256, 1), ('0x8000', '0x1000', 256, 2)]",
    );
    // Our announcement, in a whole 512-byte buffer.
    assert_has(
        theirs,
        "pydriver",
        "NS from 0x400: name=b'rpmsg-openamp-demo-channel' addr=0x400 flags=0 len=40 used.len=512",
    );
    // Its summary lines: every echo checked, whole-buffer used lengths.
    for size in [17, 496] {
        let line = theirs
            .lines()
            .find(|l| l.starts_with(&format!("python-driver echo size={size} n=200:")))
            .unwrap_or_else(|| panic!("no summary for size {size}:\n{theirs}"));
        assert!(line.ends_with("used.len=512"), "{line}");
    }
    assert_has(theirs, "pydriver", "done");

    assert_has(
        ours,
        "rptun",
        "link up, features NS; serving rpmsg-openamp-demo-channel at 0x400",
    );
    assert_has(ours, "rptun", "bound to the driver's endpoint 0x400");
    assert_has(
        ours,
        "rptun",
        "driver destroyed its endpoint 0x400 (NS DESTROY); echoed 400 messages",
    );
    // The device created both names and removed them when it ended.
    assert!(!Path::new(SHM_PATH).exists(), "{SHM_PATH} left behind");
    assert!(!Path::new(SOCKET).exists(), "{SOCKET} left behind");
}

/// Names of this test's own, so it runs beside the oracle cases.
fn private_names(tag: &str) -> (String, String) {
    let shm = format!("rptun-cli-openamp-{tag}-{}", std::process::id());
    let sock = std::env::temp_dir()
        .join(format!("{shm}.sock"))
        .display()
        .to_string();
    (shm, sock)
}

#[test]
fn rptun_talks_to_itself_on_other_names_and_obeys_the_shutdown_message() {
    let (shm, sock) = private_names("self");
    let deadline = Instant::now() + CASE_TIMEOUT;
    let mut cmd = Command::new(RPTUN);
    cmd.args([
        "openamp",
        "--role",
        "device",
        "--timeout",
        "30",
        "--shm",
        &shm,
    ])
    .args(["--socket", &sock]);
    let mut device = Proc::spawn("rptun device", cmd);
    let mut cmd = Command::new(RPTUN);
    cmd.args([
        "openamp",
        "--role",
        "driver",
        "--timeout",
        "30",
        "--shm",
        &shm,
    ])
    .args([
        "--socket",
        &sock,
        "--sizes",
        "17,496",
        "--ping",
        "3",
        "--shutdown",
    ]);
    let mut driver = Proc::spawn("rptun driver", cmd);
    let outs = finish(&mut [&mut driver, &mut device], deadline);
    assert_has(
        &outs[0],
        "driver",
        "all 6 echoes matched byte for byte (2 sizes)",
    );
    assert_has(&outs[0], "driver", "sent the shutdown message");
    assert_has(
        &outs[0],
        "driver",
        "the device destroyed the channel (NS DESTROY)",
    );
    assert_has(
        &outs[1],
        "device",
        "shutdown message received; echoed 6 messages",
    );
    assert!(!Path::new("/dev/shm").join(&shm).exists());
    assert!(!Path::new(&sock).exists());
}

#[test]
fn a_driver_without_a_device_fails_with_a_clear_message() {
    let (shm, sock) = private_names("nodev");
    let out = Command::new(RPTUN)
        .args([
            "openamp",
            "--role",
            "driver",
            "--timeout",
            "1",
            "--shm",
            &shm,
        ])
        .args(["--socket", &sock])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no OpenAMP device accepted a connection"),
        "{err}"
    );
    assert!(err.contains("start the device side first"), "{err}");

    let out = Command::new(RPTUN)
        .args(["openamp", "--role", "driver", "--sizes", "0..=3"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("sizes start at 1 byte"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
