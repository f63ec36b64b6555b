//! `rptun openamp`: talk to OpenAMP's Linux user-space demos (and any peer
//! that follows their contract, DESIGN.md §10) over `/dev/shm/openamp.shm`
//! and the kick socket `/tmp/openamp.event.0`.
//!
//! - `--role device`: the virtio device / rpmsg remote, like OpenAMP's
//!   `rpmsg-echo`: writes the resource table, serves the socket, echoes
//!   every payload on `rpmsg-openamp-demo-channel`; ends when the driver
//!   destroys its endpoint (NS DESTROY) or sends the shutdown message.
//!   Pair it with `rpmsg-echo-ping 1`, `msg-test-rpmsg-ping 1` or
//!   `pydriver.py`.
//! - `--role driver`: the virtio driver / rpmsg host, like
//!   `rpmsg-echo-ping`: connects, drives the vdev, binds the announced
//!   channel, sends echo requests of every size asked for, checks every
//!   byte, prints a NuttX-style ping report, then destroys its endpoint.
//!   Pair it with `rpmsg-echo` or `pydevice.py` (start those first).

use std::io::Write;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rptun::rpmsg::RpmsgTransport;
use rptun_host::openamp::echo::{echo_payload, serve_echo, EchoClient, EchoEnd, EchoStats};
use rptun_host::openamp::{self, Config, DeviceServer};

/// Which side `rptun openamp` plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OpenampRole {
    /// virtio device / rpmsg remote: the echo (socket server, writes the
    /// resource table).
    Device,
    /// virtio driver / rpmsg host: the pinger (socket client).
    Driver,
}

/// Options of `rptun openamp`.
#[derive(Debug, Clone, clap::Args)]
pub struct OpenampArgs {
    /// Which side to play.
    #[arg(long, value_enum)]
    pub role: OpenampRole,
    /// Echo requests per payload size (driver).
    #[arg(long, default_value_t = 1)]
    pub ping: u32,
    /// Payload sizes (driver): `A..=B`, `A..B`, `N`, or a comma-separated
    /// list of those; at most 496 bytes (512-byte buffers).
    #[arg(long, default_value = "1..=496", value_parser = parse_sizes)]
    pub sizes: Sizes,
    /// End with the shutdown message (u32 0xEF56A55A) instead of destroying
    /// our endpoint, and wait for the device to destroy the channel (driver).
    #[arg(long)]
    pub shutdown: bool,
    /// The shm object under /dev/shm.
    #[arg(long, default_value = openamp::SHM_NAME)]
    pub shm: String,
    /// The kick socket.
    #[arg(long, default_value = openamp::SOCKET_PATH)]
    pub socket: PathBuf,
    /// Seconds to wait for the peer at each step (connection, DRIVER_OK,
    /// the announcement, each echo); 0 waits forever for a driver to
    /// connect (device).
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
    /// Log more (-v: info, -vv: debug).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// A list of payload sizes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sizes(pub Vec<RangeInclusive<usize>>);

impl Sizes {
    fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.0.iter().flat_map(|r| r.clone())
    }

    fn count(&self) -> usize {
        self.0.iter().map(|r| r.clone().count()).sum()
    }

    fn max(&self) -> usize {
        self.0.iter().map(|r| *r.end()).max().unwrap_or(0)
    }
}

impl std::fmt::Display for Sizes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if r.start() == r.end() {
                write!(f, "{}", r.start())?;
            } else {
                write!(f, "{}..={}", r.start(), r.end())?;
            }
        }
        Ok(())
    }
}

/// Parses `--sizes`.
pub fn parse_sizes(s: &str) -> Result<Sizes, String> {
    let num = |t: &str| {
        t.trim()
            .parse::<usize>()
            .map_err(|_| format!("{t:?} is not a payload size in bytes"))
    };
    let mut out = Vec::new();
    for part in s.split(',') {
        let r = if let Some((a, b)) = part.split_once("..=") {
            num(a)?..=num(b)?
        } else if let Some((a, b)) = part.split_once("..") {
            let b = num(b)?;
            if b == 0 {
                return Err(format!("{part:?} is empty"));
            }
            num(a)?..=b - 1
        } else {
            let n = num(part)?;
            n..=n
        };
        if r.is_empty() || *r.start() == 0 {
            return Err(format!(
                "{part:?}: sizes start at 1 byte and a range must not be empty"
            ));
        }
        out.push(r);
    }
    Ok(Sizes(out))
}

/// A minimal stderr logger for `-v`.
struct StderrLog(log::LevelFilter);

impl log::Log for StderrLog {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= self.0
    }
    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            eprintln!("[{}] {}", r.level(), r.args());
        }
    }
    fn flush(&self) {}
}

fn init_log(verbose: u8) {
    let level = match verbose {
        0 => log::LevelFilter::Warn,
        1 => log::LevelFilter::Info,
        _ => log::LevelFilter::Debug,
    };
    if log::set_boxed_logger(Box::new(StderrLog(level))).is_ok() {
        log::set_max_level(level);
    }
}

fn say(role: &str, what: &str) {
    println!("rptun openamp {role}: {what}");
    let _ = std::io::stdout().flush();
}

/// Runs `rptun openamp`.
pub fn run(a: &OpenampArgs) -> Result<()> {
    init_log(a.verbose);
    let cfg = Config::named(&a.shm, a.socket.clone());
    match a.role {
        OpenampRole::Device => device(a, &cfg),
        OpenampRole::Driver => driver(a, &cfg),
    }
}

fn step_timeout(a: &OpenampArgs) -> Duration {
    Duration::from_secs(a.timeout.max(1))
}

fn device(a: &OpenampArgs, cfg: &Config) -> Result<()> {
    let server = DeviceServer::create(cfg)?;
    say(
        "device",
        &format!(
            "resource table written to /dev/shm/{}; waiting for a driver on {}",
            cfg.shm_name,
            cfg.socket_path.display()
        ),
    );
    let accept = (a.timeout > 0).then(|| Duration::from_secs(a.timeout));
    let mut ol = server.accept(accept)?;
    say("device", "driver connected");
    let sum = serve_echo(&mut ol, Some(step_timeout(a)), |e| say("device", e))?;
    say(
        "device",
        &format!(
            "{}; echoed {} messages ({} bytes)",
            sum.end, sum.echoed, sum.bytes
        ),
    );
    if sum.dropped > 0 {
        bail!("{} echo requests were dropped (no TX buffer)", sum.dropped);
    }
    match sum.end {
        EchoEnd::PeerDestroyed { .. } | EchoEnd::Shutdown => Ok(()),
        EchoEnd::LinkDown | EchoEnd::PeerGone => bail!("the driver left uncleanly: {}", sum.end),
    }
}

fn driver(a: &OpenampArgs, cfg: &Config) -> Result<()> {
    let t = step_timeout(a);
    let mut ol = openamp::connect_driver(cfg, t)?;
    say(
        "driver",
        &format!(
            "connected to {}; /dev/shm/{}: {}",
            cfg.socket_path.display(),
            cfg.shm_name,
            ol.table_summary()
        ),
    );
    let stats = ol.link().transport().buffer_stats();
    say(
        "driver",
        &format!(
            "link up, features {}; {} RX + {} TX buffers of {} B",
            ol.link().features(),
            stats.rx_total,
            stats.tx_total,
            ol.link().transport().tx_buffer_size()
        ),
    );
    let max = ol.link().max_payload();
    if a.sizes.max() > max {
        bail!(
            "--sizes goes up to {} bytes but a message carries at most {max}",
            a.sizes.max()
        );
    }
    let mut c = EchoClient::bind(&mut ol, t)?;
    say(
        "driver",
        &format!(
            "device announced {} at {:#x}; our endpoint {:#x} is bound to it",
            openamp::SERVICE_NAME,
            c.peer(),
            c.local()
        ),
    );
    let mut stats = EchoStats::default();
    let mut seq = 0u64;
    for len in a.sizes.iter() {
        for _ in 0..a.ping {
            let p = echo_payload(seq, len);
            let rtt = c
                .echo(&mut ol, &p, t)
                .with_context(|| format!("echo #{seq} of {len} bytes"))?;
            stats.record(len, rtt);
            seq += 1;
        }
    }
    println!(
        "echo sizes {} x {} each; send_len is the mean payload",
        a.sizes, a.ping
    );
    print!("{}", stats.report(max));
    say(
        "driver",
        &format!(
            "all {} echoes matched byte for byte ({} sizes)",
            stats.count,
            a.sizes.count()
        ),
    );
    let local = c.local();
    if a.shutdown {
        c.send_shutdown(&mut ol, t)?;
        say("driver", "sent the shutdown message");
        // The device destroys the channel and exits: nothing is left to
        // tell it.
        let destroyed = c.wait_channel_destroyed(&mut ol, t)?;
        say(
            "driver",
            if destroyed {
                "the device destroyed the channel (NS DESTROY)"
            } else {
                "the device exited without destroying the channel"
            },
        );
        return Ok(());
    }
    let taken = c.close(&mut ol, Duration::from_secs(2))?;
    say(
        "driver",
        &format!(
            "destroyed our endpoint {local:#x} (NS DESTROY sent{})",
            if taken {
                ", the device took it"
            } else {
                "; the device did not return the buffer before exiting"
            }
        ),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_sizes("1..=496").unwrap().count(), 496);
        assert_eq!(
            parse_sizes("1..4").unwrap().iter().collect::<Vec<_>>(),
            [1, 2, 3]
        );
        let s = parse_sizes("17,496,3..=4").unwrap();
        assert_eq!(s.iter().collect::<Vec<_>>(), [17, 496, 3, 4]);
        assert_eq!(s.max(), 496);
        assert_eq!(s.to_string(), "17,496,3..=4");
        assert!(parse_sizes("0..=4").is_err());
        assert!(parse_sizes("5..=4").is_err());
        assert!(parse_sizes("x").is_err());
        assert!(parse_sizes("3..1").is_err());
    }
}
