//! `rptun bench`: rptun against the physical limits of this machine, measured
//! between two processes in one run.

use anyhow::{bail, Context, Result};
use rptun_host::baseline::{self, Side};
use rptun_host::shm::ShmObject;
use std::io::Write;
use std::process::{Child, Command};

/// Options of `rptun bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Round trips per latency figure.
    #[arg(long, default_value_t = 20_000)]
    pub iters: u32,
    /// Messages per throughput figure.
    #[arg(long, default_value_t = 200_000)]
    pub msgs: u32,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// One measured figure.
#[derive(Debug, Clone)]
pub struct Figure {
    /// What was measured.
    pub name: String,
    /// Median round trip (ns), or 0 for throughput figures.
    pub median_ns: u64,
    /// 99th percentile round trip (ns).
    pub p99_ns: u64,
    /// Minimum round trip (ns).
    pub min_ns: u64,
    /// Messages per second (throughput figures).
    pub msgs_per_s: f64,
    /// Payload megabytes per second (throughput figures).
    pub mb_per_s: f64,
}

fn spawn_peer(kind: &str, shm: &str, args: &[String]) -> Result<Child> {
    let exe = std::env::current_exe().context("cannot find the rptun executable to spawn")?;
    Command::new(exe)
        .arg("bench-peer")
        .arg(kind)
        .arg(shm)
        .args(args)
        .spawn()
        .context("cannot spawn the benchmark peer process")
}

fn finish(mut child: Child) -> Result<()> {
    let st = child.wait()?;
    if !st.success() {
        bail!("the benchmark peer process failed ({st})");
    }
    Ok(())
}

fn progress(what: &str) {
    eprint!("\r\x1b[2Kbench: {what} ...");
    let _ = std::io::stderr().flush();
}

/// Baselines: spin and futex ping-pong, raw one-way ring at `sizes`.
pub fn baselines(args: &BenchArgs, sizes: &[usize], slot: usize) -> Result<Vec<Figure>> {
    let mut out = Vec::new();
    let name = format!("rptun-bench-{}", std::process::id());
    let slots = 8u32;
    let shm = ShmObject::open_or_create(&name, baseline::region_size(slot, slots as usize))?;
    let _cleanup = Unlink(name.clone());
    for (kind, label) in [
        ("spin", "raw spin ping-pong"),
        ("futex", "raw futex ping-pong"),
    ] {
        progress(label);
        shm.region().fill(0, shm.region().len(), 0)?;
        let child = spawn_peer(kind, &name, &[args.iters.to_string()])?;
        let mut rtts = match kind {
            "spin" => baseline::spin_pingpong(shm.region(), Side::Measure, args.iters),
            _ => baseline::futex_pingpong(shm.region(), Side::Measure, args.iters),
        }
        .map_err(anyhow::Error::msg)?;
        finish(child)?;
        let (median_ns, p99_ns, min_ns) = baseline::percentiles(&mut rtts);
        out.push(Figure {
            name: label.into(),
            median_ns,
            p99_ns,
            min_ns,
            msgs_per_s: 0.0,
            mb_per_s: 0.0,
        });
    }
    for &size in sizes {
        let label = format!("raw ring {size} B");
        progress(&label);
        shm.region().fill(0, shm.region().len(), 0)?;
        let extra = [
            slot.to_string(),
            slots.to_string(),
            size.to_string(),
            args.msgs.to_string(),
        ];
        let child = spawn_peer("ring", &name, &extra)?;
        let t = baseline::raw_ring(shm.region(), Side::Measure, slot, slots, size, args.msgs)
            .map_err(anyhow::Error::msg)?;
        finish(child)?;
        let secs = t.as_secs_f64().max(1e-9);
        out.push(Figure {
            name: label,
            median_ns: 0,
            p99_ns: 0,
            min_ns: 0,
            msgs_per_s: args.msgs as f64 / secs,
            mb_per_s: args.msgs as f64 * size as f64 / secs / 1e6,
        });
    }
    eprint!("\r\x1b[2K");
    Ok(out)
}

/// The peer side of a baseline, run in the child process.
pub fn peer(kind: &str, shm: &str, rest: &[String]) -> Result<()> {
    let num = |i: usize| -> Result<u64> {
        rest.get(i)
            .context("bench-peer: missing argument")?
            .parse()
            .context("bench-peer: bad number")
    };
    // The measuring process created the object; take it at its size.
    let len = std::fs::metadata(format!("/dev/shm/{shm}"))
        .with_context(|| format!("bench-peer: /dev/shm/{shm} does not exist"))?
        .len() as usize;
    let obj = ShmObject::open_existing(shm, len)?;
    let r = obj.region();
    match kind {
        "spin" => baseline::spin_pingpong(r, Side::Answer, num(0)? as u32).map(|_| ()),
        "futex" => baseline::futex_pingpong(r, Side::Answer, num(0)? as u32).map(|_| ()),
        "ring" => baseline::raw_ring(
            r,
            Side::Answer,
            num(0)? as usize,
            num(1)? as u32,
            num(2)? as usize,
            num(3)? as u32,
        )
        .map(|_| ()),
        _ => bail!("bench-peer: unknown baseline `{kind}`"),
    }
    .map_err(anyhow::Error::msg)
}

struct Unlink(String);
impl Drop for Unlink {
    fn drop(&mut self) {
        let _ = rptun_host::shm::unlink(&self.0);
    }
}

/// Prints figures as a table.
pub fn print_table(figs: &[Figure], out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<34} {:>10} {:>10} {:>10} {:>12} {:>10}",
        "figure", "median us", "p99 us", "min us", "msgs/s", "MB/s"
    )?;
    for f in figs {
        if f.median_ns > 0 {
            writeln!(
                out,
                "{:<34} {:>10.2} {:>10.2} {:>10.2} {:>12} {:>10}",
                f.name,
                f.median_ns as f64 / 1e3,
                f.p99_ns as f64 / 1e3,
                f.min_ns as f64 / 1e3,
                "",
                ""
            )?;
        } else {
            writeln!(
                out,
                "{:<34} {:>10} {:>10} {:>10} {:>12.0} {:>10.1}",
                f.name, "", "", "", f.msgs_per_s, f.mb_per_s
            )?;
        }
    }
    Ok(())
}

/// Prints figures as JSON (no dependency: the format is flat).
pub fn print_json(figs: &[Figure], out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(out, "[")?;
    for (i, f) in figs.iter().enumerate() {
        writeln!(
            out,
            "  {{\"name\": \"{}\", \"median_ns\": {}, \"p99_ns\": {}, \"min_ns\": {}, \"msgs_per_s\": {:.1}, \"mb_per_s\": {:.3}}}{}",
            f.name,
            f.median_ns,
            f.p99_ns,
            f.min_ns,
            f.msgs_per_s,
            f.mb_per_s,
            if i + 1 < figs.len() { "," } else { "" }
        )?;
    }
    writeln!(out, "]")
}

/// `rptun bench`.
pub fn run(args: &BenchArgs) -> Result<()> {
    let sizes = [17usize, 496, 1520];
    let figs = baselines(args, &sizes, 0x600)?;
    let mut so = std::io::stdout().lock();
    if args.json {
        print_json(&figs, &mut so)?;
    } else {
        print_table(&figs, &mut so)?;
    }
    Ok(())
}
