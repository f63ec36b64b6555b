//! The `rptun` command: the two-process simulator, its shell, benchmarks.
use anyhow::Result;
use clap::{Parser, Subcommand};

mod bench;
mod openamp;
mod port;
#[allow(dead_code)] // wired into `rptun sim` as it lands
mod shell;
mod soak;

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
    /// Soak test: millions of checked messages each way between two
    /// processes over the simulator's shared memory.
    Soak(soak::SoakArgs),
    /// (internal) the proxy process of `rptun soak`.
    #[command(hide = true)]
    SoakPeer(soak::SoakPeerArgs),
    /// (internal) one side of the soak link driven from stdin (fault
    /// injection tests).
    #[command(hide = true)]
    SoakSide(soak::SoakSideArgs),
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
        Cmd::Soak(a) => soak::run(&a),
        Cmd::SoakPeer(a) => soak::peer(&a),
        Cmd::SoakSide(a) => soak::side(&a),
        Cmd::BenchPeer { kind, shm, rest } => bench::peer(&kind, &shm, &rest),
        Cmd::Port(a) => port::run(&a),
    }
}
