//! `rptun bench` end to end, tiny: every figure is measured between two
//! processes and reported with its ratios; no timing is asserted.

use std::process::Command;

fn bench(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_rptun"))
        .arg("bench")
        .args(["--iters", "300", "--msgs", "3000", "--rounds", "1"])
        .args(args)
        .output()
        .expect("rptun bench runs");
    assert!(
        out.status.success(),
        "rptun bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

#[test]
fn json_has_every_figure_with_its_ratios() {
    let json = bench(&["--no-idle", "--json"]);
    for size in ["17 B", "496 B", "1520 B"] {
        for name in [
            "raw spin ping-pong",
            "raw futex ping-pong",
            "raw socket ping-pong",
            "raw ring",
            "raw socket",
            "rptun rpmsg block",
            "rptun rpmsg poll",
            "rptun port/unix",
        ] {
            let fig = format!("\"name\": \"{name} {size}\"");
            assert!(json.contains(&fig), "missing {fig} in\n{json}");
        }
    }
    assert!(json.contains("\"ratio_vs_futex\""));
    assert!(json.contains("\"ratio_vs_spin\""));
    assert!(json.contains("\"ratio_vs_ring\""));
    assert!(json.contains("\"ratio_vs_socket\""));
    assert!(json.contains("\"targets\": [{\"target\": \"round trip 17 B, block"));
    assert!(json.trim_end().ends_with('}'));
}

#[test]
fn table_reports_idle_cpu_of_both_processes() {
    let table = bench(&["--idle-secs", "1"]);
    assert!(table.contains("idle CPU (1 s, % core)"), "{table}");
    let block = table
        .lines()
        .find(|l| l.starts_with("block "))
        .expect("a blocking idle row");
    let cols: Vec<f64> = block
        .split_whitespace()
        .skip(1)
        .map(|c| c.parse().expect("a percentage"))
        .collect();
    assert_eq!(cols.len(), 2, "server and proxy: {block}");
    assert!(table.contains("target "), "{table}");
}
