//! rptun against NuttX's simulator contract (DESIGN.md §7) from both ends,
//! with independent reference peers written from the byte-level contract
//! (not from rptun's code): `tests/oracles/nuttx-sim/pyproxy.py` plays
//! NuttX's `sim:rpproxy` (remote, virtio device) and `pyserver.py` plays
//! `sim:rpserver` (master, virtio driver). Set `RPTUN_ORACLES` to a directory
//! holding another `nuttx-sim/` copy to use that one instead.
//!
//! Like NuttX, the reference peers ring a doorbell only by incrementing their
//! counter (no futex wake) and poll the other side's counter every 10 ms, so
//! these cases also prove rptun notices a peer that never wakes it.
//!
//! Every case uses its own shm object name, kills its children if it fails or
//! runs out of time, and removes the object at the end.

mod peers;

use peers::{assert_has, finish, Proc};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const RPTUN: &str = env!("CARGO_BIN_EXE_rptun");
/// Bound on each case; each takes a second or two.
const CASE_TIMEOUT: Duration = Duration::from_secs(90);
/// What `pyproxy.py` reports of NuttX's rpmsg vdev once it is live: notify
/// ids 4/5/6, all four features, the config names and buffer sizes, the
/// vrings at the front of the `rpmsg0_shm` carveout, 0xe0 apart.
const NUTTX_RPMSG_VDEV: &str = "notifyid=4 gfeatures=0xf host='server' remote='proxy' \
     h2r_buf_size=1536 r2h_buf_size=1536 vring0 da=0x201cc align=8 num=8 notifyid=5 \
     vring1 da=0x202ac align=8 num=8 notifyid=6";

/// The directory holding `pyproxy.py` and `pyserver.py`.
fn oracles() -> PathBuf {
    peers::oracles(
        "nuttx-sim",
        &["pyproxy.py", "pyserver.py"],
        "NuttX-simulator reference peer",
    )
}

fn snapshot(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../rptun/tests/vectors")
        .join(name)
}

/// A shm object name of this case's own; the object is removed before and
/// after the case.
struct ShmName(String);

impl ShmName {
    fn new(tag: &str) -> ShmName {
        let name = format!("rptun-nuttxsim-{tag}-{}", std::process::id());
        let _ = std::fs::remove_file(format!("/dev/shm/{name}"));
        ShmName(name)
    }

    fn path(&self) -> String {
        format!("/dev/shm/{}", self.0)
    }
}

impl Drop for ShmName {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.path());
    }
}

/// The line of `out` that starts with `prefix` (panics with the output if none).
fn line<'a>(out: &'a str, who: &str, prefix: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("{who} printed no line starting {prefix:?}:\n{out}"))
}

/// The reference proxy finds the real NuttX layout: vrings, descriptors and
/// buffers through `base`, from the table alone (what makes it a fair judge
/// of our server's layout).
#[test]
fn reference_proxy_reads_the_real_nuttx_snapshot_as_decoded() {
    let dir = oracles();
    let deadline = Instant::now() + CASE_TIMEOUT;
    let snap = snapshot("after-boot.bin");
    let mut p = Proc::python(
        "pyproxy.py --parse",
        &dir.join("pyproxy.py"),
        &["--parse", snap.to_str().unwrap()],
    );
    let out = finish(&mut [&mut p], deadline).remove(0);
    let who = "pyproxy --parse";
    assert_has(
        &out,
        who,
        "pyproxy: snapshot 197072 bytes base=0xf3d5c000 seqs=33 seqm=53 boots=0x2 bootm=0x2",
    );
    assert_has(
        &out,
        who,
        "carveouts=rng0_shm@0xa8+0x10000,rng1_shm@0x10110+0x10000,rpmsg0_shm@0x201cc+0x10000",
    );
    assert_has(
        &out,
        who,
        "pyproxy: vdev2 config h2r_buf_size=1536 r2h_buf_size=1536 host='server' remote='proxy'",
    );
    // rpmsg vring0: the used ring is 8-aligned in the shared space (0x20268),
    // the 8 RX buffers are device-writable and 0x600 apart from 0x203a0
    // (descriptor address 0xf3d7c3a0 - base).
    let v0 = line(&out, who, "pyproxy: vdev2.vring0 ");
    assert!(
        v0.contains("da=0x201cc notifyid=5 desc@0x201cc avail@0x2024c used@0x20268 avail.idx=30 used.idx=22"),
        "{v0}"
    );
    let rx: Vec<String> = (0..8)
        .map(|i| format!("{:#x}+1536w", 0x203a0 + i * 0x600))
        .collect();
    assert!(v0.ends_with(&format!("buffers=[{}]", rx.join(" "))), "{v0}");
    let v1 = line(&out, who, "pyproxy: vdev2.vring1 ");
    assert!(
        v1.contains("da=0x202ac notifyid=6 desc@0x202ac avail@0x2032c used@0x20348"),
        "{v1}"
    );
    let tx: Vec<String> = (0..8)
        .map(|i| format!("{:#x}+1536r", 0x233a0 + i * 0x600))
        .collect();
    assert!(v1.ends_with(&format!("buffers=[{}]", tx.join(" "))), "{v1}");
    let rng0 = line(&out, who, "pyproxy: vdev0.vring0 ");
    assert!(rng0.contains("da=0xa8 notifyid=1"), "{rng0}");
}

/// The two reference peers complete the whole contract with each other, so
/// the contract they encode is self-consistent before either judges rptun.
/// The master writes each vdev's vring addresses only when it creates that
/// vdev, well after `bootm = OK` (as the refactored NuttX does); a NuttX-like
/// remote reads them at DRIVER_OK.
#[test]
fn reference_server_and_proxy_agree_with_each_other() {
    let dir = oracles();
    let shm = ShmName::new("refs");
    let deadline = Instant::now() + CASE_TIMEOUT;
    let mut proxy = Proc::python(
        "pyproxy.py",
        &dir.join("pyproxy.py"),
        &["--shm", &shm.0, "--timeout", "60"],
    );
    let mut server = Proc::python(
        "pyserver.py",
        &dir.join("pyserver.py"),
        &[
            "--shm",
            &shm.0,
            "--timeout",
            "60",
            "--pings",
            "2",
            "--probe-delay",
            "0.05",
        ],
    );
    let outs = finish(&mut [&mut server, &mut proxy], deadline);
    let (srv, prx) = (&outs[0], &outs[1]);
    assert_has(
        srv,
        "pyserver",
        "pyserver: summary: ok=yes pings=[17x2,1520x2] rng=[1024, 1024]",
    );
    // Like NuttX's master: status exactly DRIVER_OK, all RX buffers posted.
    assert_has(
        prx,
        "pyproxy",
        &format!("pyproxy: rpmsg DRIVER_OK status=0x4 {NUTTX_RPMSG_VDEV} rx_posted=8"),
    );
    let sum = line(prx, "pyproxy", "pyproxy: summary: ");
    assert!(
        sum.starts_with(
            "pyproxy: summary: pings=4 sizes=[17x2,1520x2] replies=4 check_errors=0 \
             rng0_requests=1 rng0_bytes=1024 rng1_requests=1 rng1_bytes=1024"
        ) && sum.ends_with("errors=0"),
        "{sum}"
    );
    assert!(
        !Path::new(&shm.path()).exists(),
        "pyserver did not unlink {}",
        shm.path()
    );
}

/// `rptun sim` (master, virtio driver) with the reference proxy as its
/// remote: the proxy finds NuttX's layout in our table, our pings and
/// entropy reads are served by a peer that only increments `seqs`, and our
/// STOP ends it.
#[test]
fn our_server_works_with_the_reference_proxy() {
    let dir = oracles();
    let shm = ShmName::new("server");
    let deadline = Instant::now() + CASE_TIMEOUT;
    let mut proxy = Proc::python(
        "pyproxy.py",
        &dir.join("pyproxy.py"),
        &["--shm", &shm.0, "--timeout", "60"],
    );
    let mut cmd = Command::new(RPTUN);
    cmd.args(["sim", "--no-spawn", "--shm", &shm.0, "--wait-link", "30"])
        .arg("--script")
        .arg(
            "rpmsg ping proxy 3 17 3 0; rpmsg ping proxy 3 1520 3 0; \
             hexdump /dev/random count=64; hexdump /dev/random1 count=64; exit",
        );
    let mut server = Proc::spawn("rptun sim --no-spawn", cmd);
    let outs = finish(&mut [&mut server, &mut proxy], deadline);
    let (ours, theirs) = (&outs[0], &outs[1]);

    // Our side: both ping reports (payload capacity 1520) and both dumps.
    assert_has(
        ours,
        "rptun sim",
        "ping times: 3\nbuffer_len: 1520, send_len: 17\n",
    );
    assert_has(
        ours,
        "rptun sim",
        "ping times: 3\nbuffer_len: 1520, send_len: 1520\n",
    );
    for dev in ["/dev/random", "/dev/random1"] {
        assert_has(ours, "rptun sim", &format!("{dev} at 00000000:\n0000: "));
        assert_has(ours, "rptun sim", "\n0030: ");
    }

    // The proxy's view: NuttX's table and layout, what it served, no error.
    assert_has(
        theirs,
        "pyproxy",
        "vdev0(id=4 nvrings=1 reserved0=0) vdev1(id=4 nvrings=1 reserved0=0) \
         vdev2(id=7 nvrings=2 reserved0=0) \
         carveouts=rng0_shm@0xa8+0x10000,rng1_shm@0x10110+0x10000,rpmsg0_shm@0x201cc+0x10000",
    );
    // NuttX's rpmsg vdev, every RX buffer posted before DRIVER_OK. (NuttX's
    // master leaves the status byte at exactly 4; peers test the bit.)
    let ok = line(theirs, "pyproxy", "pyproxy: rpmsg DRIVER_OK status=");
    assert!(
        ok.ends_with(&format!("{NUTTX_RPMSG_VDEV} rx_posted=8")),
        "{ok}"
    );
    let status = ok["pyproxy: rpmsg DRIVER_OK status=0x".len()..]
        .split_whitespace()
        .next()
        .and_then(|v| u8::from_str_radix(v, 16).ok())
        .unwrap_or_else(|| panic!("no status in {ok}"));
    assert!(status & 4 != 0 && status & 0xc0 == 0, "{ok}");
    assert_has(theirs, "pyproxy", "pyproxy: STOP from the master");
    let sum = line(theirs, "pyproxy", "pyproxy: summary: ");
    assert!(
        sum.starts_with(
            "pyproxy: summary: pings=6 sizes=[17x3,1520x3] replies=6 check_errors=0 rng0_requests="
        ) && sum.ends_with(" errors=0"),
        "{sum}"
    );
    for rng in ["rng0", "rng1"] {
        let bytes: u64 = sum
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{rng}_bytes=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {rng}_bytes in {sum}"));
        assert!(bytes >= 64, "{rng} served {bytes} bytes: {sum}");
    }
    assert!(
        !Path::new(&shm.path()).exists(),
        "rptun sim left {} behind",
        shm.path()
    );
}

/// `rptun proxy` (remote, virtio device) with the reference server as its
/// master: the master chose `base` (a 32-bit value of its own, also one that
/// puts the object's end just below 4 GiB), wrote NuttX's table, posts
/// buffers and rings only by incrementing `seqm`; every check of the master
/// passes and our proxy leaves when the master unlinks the object. The
/// second run has the master stay silent, so our proxy must announce
/// `rpmsg-ping` itself and accept the master's CREATE_ACK.
///
/// The master writes every vring address before `bootm = OK` here (NuttX's
/// order before its rptun refactor); the refactored order is the next case.
#[test]
fn reference_server_checks_pass_against_our_proxy() {
    let dir = oracles();
    for (tag, base, announce) in [
        ("proxy", "0xf3d5c000", true),
        ("proxy-top", "0xfffcf000", false),
    ] {
        let shm = ShmName::new(tag);
        let deadline = Instant::now() + CASE_TIMEOUT;
        let mut cmd = Command::new(RPTUN);
        cmd.args(["proxy", "--shm", &shm.0]);
        let mut proxy = Proc::spawn("rptun proxy", cmd);
        let mut args = vec![
            "--shm",
            &shm.0,
            "--timeout",
            "60",
            "--base",
            base,
            "--early-vrings",
        ];
        if !announce {
            args.push("--no-announce");
        }
        let mut server = Proc::python("pyserver.py", &dir.join("pyserver.py"), &args);
        let outs = finish(&mut [&mut server, &mut proxy], deadline);
        let theirs = &outs[0];
        assert_has(
            theirs,
            "pyserver",
            &format!("pyserver: table written: 131508 bytes at 0x18, base={base}"),
        );
        if !announce {
            assert_has(theirs, "pyserver", "pyserver: NS CREATE rpmsg-ping addr=");
            assert_has(theirs, "pyserver", "pyserver: CREATE_ACK sent: rpmsg-ping");
        }
        assert_has(theirs, "pyserver", "pyserver: rpmsg-ping bound to 0x");
        for size in [17, 1520] {
            assert_has(
                theirs,
                "pyserver",
                &format!("pyserver: ping times: 3 buffer_len: 1520 send_len: {size} "),
            );
        }
        let sum = line(theirs, "pyserver", "pyserver: summary: ");
        assert!(
            sum.starts_with("pyserver: summary: ok=yes pings=[17x3,1520x3] rng=[1024, 1024]")
                && sum.ends_with(" errors=0"),
            "base {base}: {sum}"
        );
        assert!(
            !Path::new(&shm.path()).exists(),
            "{} left behind",
            shm.path()
        );
    }
}

/// The refactored NuttX master (the one of the snapshots) writes a vdev's
/// vring addresses into the table only when it creates that vdev, after
/// `bootm = OK` and after probing the vdevs before it; its remote reads them
/// at that vdev's DRIVER_OK. `--probe-delay` gives the reference server that
/// timing deterministically.
///
/// This found a bug in `rptun proxy`: its remoteproc instance validated (and
/// digested) every vdev's vrings when the link started, so it reported "the
/// master did not assign its vring address" for the vdevs not created yet,
/// then "the resource table changed after it was validated" when the master
/// assigned them, and took every vdev down for good. A device-role vdev now
/// reads its vring entries at its driver's DRIVER_OK
/// (`LinkTable::bind_vrings`) and guards them only from then on.
#[test]
fn our_proxy_waits_for_vring_addresses_assigned_after_boot() {
    let dir = oracles();
    // With a probe delay, and with none (the race NuttX itself runs).
    for (tag, delay) in [("late-vrings", "0.05"), ("late-vrings-now", "0")] {
        let shm = ShmName::new(tag);
        let deadline = Instant::now() + CASE_TIMEOUT;
        let mut cmd = Command::new(RPTUN);
        cmd.args(["proxy", "--shm", &shm.0]);
        let mut proxy = Proc::spawn("rptun proxy", cmd);
        let mut server = Proc::python(
            "pyserver.py",
            &dir.join("pyserver.py"),
            &["--shm", &shm.0, "--timeout", "30", "--probe-delay", delay],
        );
        let outs = finish(&mut [&mut server, &mut proxy], deadline);
        let (theirs, ours) = (&outs[0], &outs[1]);
        // The master placed the vrings only after the boot handshake.
        let booted = theirs
            .find("pyserver: booted: ")
            .unwrap_or_else(|| panic!("pyserver never booted:\n{theirs}"));
        for vdev in ["rng0: vring da=", "rng1: vring da=", "rpmsg: gfeatures="] {
            let at = theirs
                .find(vdev)
                .unwrap_or_else(|| panic!("pyserver printed no {vdev:?}:\n{theirs}"));
            assert!(at > booted, "{vdev} before bootm = OK:\n{theirs}");
        }
        let sum = line(theirs, "pyserver", "pyserver: summary: ");
        assert!(
            sum.starts_with("pyserver: summary: ok=yes pings=[17x3,1520x3] rng=[1024, 1024]")
                && sum.ends_with(" errors=0"),
            "probe delay {delay}: {sum}"
        );
        assert!(
            !ours.contains("changed after it was validated") && !ours.contains("did not assign"),
            "probe delay {delay}: rptun proxy complained:\n{ours}"
        );
    }
}
