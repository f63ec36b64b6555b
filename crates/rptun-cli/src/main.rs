//! The `rptun` command: the two-process simulator, its shell, benchmarks.
use anyhow::Result;
use clap::{Parser, Subcommand};

mod bench;
mod openamp;
mod port;
#[allow(dead_code)] // wired into `rptun sim` as it lands
mod shell;

/// rptun: inter-processor communication for asymmetric multi-core systems.
#[derive(Parser)]
#[command(name = "rptun", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Measure rptun against raw shared-memory baselines between two processes.
    Bench(bench::BenchArgs),
    /// Talk to OpenAMP's Linux demos (rpmsg-echo / rpmsg-echo-ping) over
    /// /dev/shm/openamp.shm and /tmp/openamp.event.0.
    Openamp(openamp::OpenampArgs),
    /// (internal) the peer process of `rptun bench`.
    #[command(hide = true)]
    BenchPeer {
        /// Which baseline.
        kind: String,
        /// The shm object name.
        shm: String,
        /// Baseline parameters.
        rest: Vec<String>,
    },
    /// One rpmsg-port link over a byte stream (Unix/TCP socket, pty, serial
    /// device), answering pings; `--ping N LEN` pings the other end.
    Port(port::PortArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Bench(a) => bench::run(&a),
        Cmd::Openamp(a) => openamp::run(&a),
        Cmd::BenchPeer { kind, shm, rest } => bench::peer(&kind, &shm, &rest),
        Cmd::Port(a) => port::run(&a),
    }
}
