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

mod peers;

use peers::{assert_has, finish, python3, Proc};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

const RPTUN: &str = env!("CARGO_BIN_EXE_rptun");
const SHM_PATH: &str = "/dev/shm/openamp.shm";
const SOCKET: &str = "/tmp/openamp.event.0";
/// Bound on each case; the runs take well under a second.
const CASE_TIMEOUT: Duration = Duration::from_secs(90);

/// The directory holding `pydevice.py` and `pydriver.py`.
fn oracles() -> PathBuf {
    peers::oracles(
        "openamp",
        &["pydevice.py", "pydriver.py"],
        "OpenAMP reference peer",
    )
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
