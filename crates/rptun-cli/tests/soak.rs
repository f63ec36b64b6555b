//! `rptun soak` in CI: 10^5 checked messages each way between two
//! processes over the simulator's shared memory (the 10^7 run is a manual
//! benchmark, see docs/RELIABILITY.md). Also: a stuck peer is reported as a
//! failure within the stall bound, not a hang.

use std::process::Command;
use std::time::{Duration, Instant};

const RPTUN: &str = env!("CARGO_BIN_EXE_rptun");

#[test]
fn hundred_thousand_messages_each_way_none_lost_reordered_or_corrupted() {
    let shm = format!("rptun-soak-ci-{}", std::process::id());
    let out = Command::new(RPTUN)
        .args([
            "soak",
            "--messages",
            "100000",
            "--size",
            "64",
            "--shm",
            &shm,
        ])
        .args(["--stall", "60"])
        .output()
        .expect("run rptun soak");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("errors 0"), "{stdout}");
    for who in ["server", "proxy"] {
        assert!(
            stdout.contains(&format!(
                "{who}: sent 100000, received 100000, lost 0, reordered 0, corrupted 0"
            )),
            "{stdout}"
        );
    }
    assert!(
        !std::path::Path::new("/dev/shm").join(&shm).exists(),
        "the shm object is removed"
    );
}

#[test]
fn a_proxy_that_never_comes_is_a_bounded_failure() {
    // The server alone (its peer process is the one `soak` spawns, so run
    // the proxy side alone instead): it must give up, not hang.
    let shm = format!("rptun-soak-lone-{}", std::process::id());
    let t0 = Instant::now();
    let out = Command::new(RPTUN)
        .args(["soak-peer", "--shm", &shm, "--messages", "10"])
        .args(["--size", "64", "--stall", "1"])
        .output()
        .expect("run rptun soak-peer");
    let _ = std::fs::remove_file(std::path::Path::new("/dev/shm").join(&shm));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("rptun proxy") || stderr.contains("handshake"),
        "{stderr}"
    );
    assert!(t0.elapsed() < Duration::from_secs(120));
}
