//! The `rptun` command: the two-process simulator, its shell, benchmarks,
//! and the master of the QEMU firmware over ivshmem.
use anyhow::Result;
use clap::{Parser, Subcommand};

mod bench;
mod commands;
mod ivshmem;
mod logger;
mod openamp;
mod port;
mod proxy;
mod shell;
mod signals;
mod sim;
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
    /// Run the simulator: a master "server" with a shell here, a remote
    /// "proxy" in a second process (NuttX's sim:rpserver + sim:rpproxy).
    Sim(sim::SimArgs),
    /// Run the simulator's remote side ("proxy") by hand.
    Proxy(proxy::ProxyArgs),
    /// Measure rptun against raw shared-memory baselines between two processes.
    Bench(bench::BenchArgs),
    /// Boot the rptun firmware in QEMU (Cortex-A53 virt) and be its master
    /// over an ivshmem file, with a shell.
    Ivshmem(ivshmem::IvshmemArgs),
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

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            // One line that says what went wrong (and, from the error, what
            // to do), not a backtrace.
            eprintln!("rptun: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<std::process::ExitCode> {
    match cli.cmd {
        Cmd::Sim(a) => sim::run(&a),
        Cmd::Proxy(a) => proxy::run(&a).map(|()| std::process::ExitCode::SUCCESS),
        Cmd::Bench(a) => bench::run(&a).map(|()| std::process::ExitCode::SUCCESS),
        Cmd::Ivshmem(a) => ivshmem::run(&a),
        Cmd::Openamp(a) => openamp::run(&a).map(|()| std::process::ExitCode::SUCCESS),
        Cmd::BenchPeer { kind, shm, rest } => {
            bench::peer(&kind, &shm, &rest).map(|()| std::process::ExitCode::SUCCESS)
        }
        Cmd::Port(a) => port::run(&a).map(|()| std::process::ExitCode::SUCCESS),
        Cmd::Soak(a) => soak::run(&a).map(|()| std::process::ExitCode::SUCCESS),
        Cmd::SoakPeer(a) => soak::peer(&a).map(|()| std::process::ExitCode::SUCCESS),
        Cmd::SoakSide(a) => soak::side(&a).map(|()| std::process::ExitCode::SUCCESS),
    }
}
