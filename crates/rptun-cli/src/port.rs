//! `rptun port`: one rpmsg-port link (NuttX `rpmsg_port_uart`) over a byte
//! stream, with the ping responder on it.
//!
//! ```text
//! rptun port --listen unix:/tmp/p                 # serve; answer pings
//! rptun port --connect unix:/tmp/p --ping 10 1000 # ping the other end
//! rptun port --pty                                # prints "pty: /dev/pts/N"
//! rptun port --serial /dev/pts/N,115200 --name proxy2 --crc
//! ```
//!
//! Without `--ping` the command serves until killed, printing
//! `port: link up (session N)` and `port: link down` as the link comes and
//! goes. Set `RPTUN_LOG=info` (or debug) for the library's log on stderr.
#![forbid(unsafe_code)]

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rptun::rpmsg::port::{CrcMode, PortConfig, PortTransport};
use rptun::rpmsg::services::ping::{self, PingParams};
use rptun::rpmsg::{
    EndpointConfig, EndpointHandler, EndpointId, Link, LinkCtx, LocalCpu, Received, RemoteCpu,
    RpmsgError, RpmsgTransport, ADDR_ANY,
};
use rptun_host::stream::serial::parse_spec;
use rptun_host::stream::{
    ConnectStream, HostStream, ListenStream, PortLinkRunner, PtyStream, SerialStream, StreamAddr,
};

/// Options of `rptun port`.
#[derive(Debug, Clone, clap::Args)]
#[command(group(
    clap::ArgGroup::new("stream")
        .required(true)
        .args(["listen", "connect", "pty", "serial"])
))]
pub struct PortArgs {
    /// Wait for the peer on ADDR: unix:/path or tcp:HOST:PORT.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<StreamAddr>,
    /// Connect to the peer at ADDR (retrying until it listens).
    #[arg(long, value_name = "ADDR")]
    pub connect: Option<StreamAddr>,
    /// Open a new pseudo-terminal and print its path; the peer opens that
    /// path with --serial.
    #[arg(long)]
    pub pty: bool,
    /// Use a serial device (or a pty's path), optionally at a baud rate.
    #[arg(long, value_name = "DEVICE[,BAUD]")]
    pub serial: Option<String>,
    /// The cpu name of the other end.
    #[arg(long, default_value = "peer")]
    pub name: String,
    /// This side's cpu name.
    #[arg(long, default_value = "host")]
    pub local: String,
    /// Protect sent frames with a CRC-16 (received ones are checked either way).
    #[arg(long)]
    pub crc: bool,
    /// Ping the other end N times with LEN-byte messages (data checked by the
    /// responder), print the report and exit.
    #[arg(long, num_args = 2, value_names = ["N", "LEN"])]
    pub ping: Option<Vec<u64>>,
    /// Port buffers per direction.
    #[arg(long, default_value_t = 8)]
    pub buffers: usize,
    /// Bytes per port buffer, port header included.
    #[arg(long, default_value_t = 2048)]
    pub buffer_size: usize,
    /// Seconds to wait for the link, the peer's endpoints, each reply.
    #[arg(long, default_value_t = 10)]
    pub timeout: u64,
    /// (test) exchange N checked, numbered messages each way, print a summary
    /// and exit; the other side must run with the same option.
    #[arg(long, hide = true, value_name = "N")]
    pub count: Option<u32>,
}

/// The endpoint of the `--count` exchange.
const COUNT_EPT: &str = "rptun-count";
/// The last message of a `--count` exchange: "I have all of yours".
const COUNT_DONE: &[u8] = b"DONE";
/// Largest `--count` message.
const COUNT_MAX_LEN: usize = 512;

struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, meta: &log::Metadata<'_>) -> bool {
        meta.level() <= log::max_level()
    }
    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            eprintln!("{}: {}", record.level(), record.args());
        }
    }
    fn flush(&self) {}
}

fn init_log() {
    let level = std::env::var("RPTUN_LOG")
        .ok()
        .and_then(|s| s.parse::<log::LevelFilter>().ok())
        .unwrap_or(log::LevelFilter::Warn);
    if log::set_logger(&StderrLog).is_ok() {
        log::set_max_level(level);
    }
}

fn say(line: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn open_stream(a: &PortArgs) -> Result<Box<dyn HostStream>> {
    if let Some(addr) = &a.listen {
        let l = ListenStream::bind(addr)?;
        say(format_args!("listening: {}", l.local_addr()));
        return Ok(Box::new(l));
    }
    if let Some(addr) = &a.connect {
        say(format_args!("connecting: {addr}"));
        return Ok(Box::new(ConnectStream::new(addr)));
    }
    if a.pty {
        let p = PtyStream::open().context("cannot open a pseudo-terminal")?;
        say(format_args!("pty: {}", p.path().display()));
        return Ok(Box::new(p));
    }
    if let Some(spec) = &a.serial {
        let (path, baud) = parse_spec(spec).map_err(anyhow::Error::msg)?;
        let s = SerialStream::open(&path, baud)?;
        say(format_args!("serial: {}", s.describe()));
        return Ok(Box::new(s));
    }
    bail!("choose a stream: --listen, --connect, --pty or --serial")
}

type PortLink = Link<PortTransport<Box<dyn HostStream>>>;
type Runner = PortLinkRunner<Box<dyn HostStream>>;

/// Prints link up/down as the session changes.
struct Events {
    session: Option<u32>,
}

impl Events {
    fn check(&mut self, link: &PortLink) {
        let now = link.session();
        if now == self.session {
            return;
        }
        if self.session.is_some() {
            say(format_args!("port: link down"));
        }
        if let Some(s) = now {
            say(format_args!(
                "port: link up (session {s}) to {}",
                link.remote_cpu()
            ));
        }
        self.session = now;
    }
}

fn bound(link: &PortLink, id: EndpointId) -> bool {
    link.endpoint(id).is_some_and(|e| e.dest != ADDR_ANY)
}

/// Serves until `ept` is bound to the peer's endpoint of the same name.
fn wait_bound(r: &mut Runner, ev: &mut Events, ept: EndpointId, timeout: Duration) -> Result<()> {
    let ok = r.run_until(timeout, |l, _| {
        ev.check(l);
        l.is_up() && bound(l, ept)
    })?;
    if !ok {
        let what = r
            .link()
            .endpoint(ept)
            .map(|e| e.name.as_str().to_string())
            .unwrap_or_default();
        if r.link().is_up() {
            bail!(
                "the link is up but the other end has no {what:?} endpoint after {}s",
                timeout.as_secs()
            );
        }
        bail!(
            "no link after {}s: is the other end running on the same stream? ({})",
            timeout.as_secs(),
            r.link().transport().io().describe()
        );
    }
    Ok(())
}

/// Runs `rptun port`.
pub fn run(a: &PortArgs) -> Result<()> {
    init_log();
    let timeout = Duration::from_secs(a.timeout.max(1));
    let stream = open_stream(a)?;
    let cfg = PortConfig::new(LocalCpu::new(&a.local)?, RemoteCpu::new(&a.name)?)
        .buffers(a.buffers)
        .buffer_size(a.buffer_size)
        .crc(if a.crc { CrcMode::On } else { CrcMode::Off });
    let mut link: PortLink = Link::new(PortTransport::with_heap(stream, cfg)?);
    let ping_ept = ping::create_endpoint(&mut link)?;
    let count_ept = match a.count {
        Some(_) => Some(link.create_endpoint(EndpointConfig::new(COUNT_EPT), CountRx::default())?),
        None => None,
    };
    let mut r = PortLinkRunner::new(link);
    let mut ev = Events { session: None };

    if let Some(p) = &a.ping {
        let (times, len) = (p[0], p[1]);
        let times = u32::try_from(times).context("ping count too large")?;
        wait_bound(&mut r, &mut ev, ping_ept, timeout)?;
        let params = PingParams::new(times, len as usize)
            .check(true)
            .timeout(timeout);
        let mut w = r.waiter()?;
        let report = ping::ping(r.link_mut(), ping_ept, &params, &mut w)?;
        print!("{report}");
        std::io::stdout().flush()?;
        return Ok(());
    }
    if let (Some(n), Some(ept)) = (a.count, count_ept) {
        wait_bound(&mut r, &mut ev, ept, timeout)?;
        return count(&mut r, &mut ev, ept, n, timeout);
    }
    loop {
        r.poll_once(Duration::from_secs(1))?;
        ev.check(r.link());
    }
}

/// FNV-1a, continued over `data`.
fn fnv(mut h: u32, data: &[u8]) -> u32 {
    for &b in data {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    h
}

const FNV_START: u32 = 0x811c_9dc5;

/// Message `seq` of a `--count` exchange: `u32 seq`, `u32 len`, then bytes
/// that depend on both (and hit every escape case), at most `max` long.
fn count_message(seq: u32, max: usize) -> Vec<u8> {
    let max = max.clamp(8, COUNT_MAX_LEN);
    let len = 8 + (seq as usize).wrapping_mul(37) % (max - 7);
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&seq.to_le_bytes());
    m.extend_from_slice(&(len as u32).to_le_bytes());
    m.extend((8..len).map(|j| (seq as usize * 31 + j * 7) as u8));
    m
}

/// The receiving half of `--count`: checks order and content.
#[derive(Debug, Default)]
struct CountRx {
    next: u32,
    received: u32,
    errors: u32,
    checksum: Option<u32>,
    peer_done: bool,
}

impl<T: RpmsgTransport + 'static> EndpointHandler<T> for CountRx {
    fn on_message(&mut self, ctx: &mut LinkCtx<'_, T>, msg: Received<'_>) {
        let data = msg.to_vec();
        if data == COUNT_DONE {
            self.peer_done = true;
            return;
        }
        let seq = data
            .get(..4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .unwrap_or(u32::MAX);
        if seq != self.next || data != count_message(seq, ctx.rx_max_payload()) {
            self.errors += 1;
        }
        self.next = seq.wrapping_add(1);
        self.received += 1;
        self.checksum = Some(fnv(self.checksum.unwrap_or(FNV_START), &data));
    }
}

/// Sends `n` numbered messages while receiving the peer's, then tells the
/// peer it has everything and waits to hear the same.
fn count(r: &mut Runner, ev: &mut Events, ept: EndpointId, n: u32, stall: Duration) -> Result<()> {
    let max = r.link().max_payload();
    let (mut sent, mut sum) = (0u32, FNV_START);
    let mut done_sent = false;
    let mut last_progress = (Instant::now(), 0u64);
    let state = |l: &PortLink| l.handler::<CountRx>(ept).map(|c| (c.received, c.peer_done));
    loop {
        let (received, peer_done) = state(r.link()).context("count endpoint vanished")?;
        if sent == n && done_sent && received >= n && peer_done {
            break;
        }
        while sent < n {
            let m = count_message(sent, max);
            match r.link_mut().trysend(ept, &m) {
                Ok(()) => {
                    sum = fnv(sum, &m);
                    sent += 1;
                }
                Err(RpmsgError::NoBuffer | RpmsgError::LinkDown | RpmsgError::NotBound) => break,
                Err(e) => return Err(e.into()),
            }
        }
        if sent == n && !done_sent && received >= n {
            done_sent = r.link_mut().trysend(ept, COUNT_DONE).is_ok();
        }
        let progress = u64::from(sent) + u64::from(received) + u64::from(done_sent);
        if progress != last_progress.1 {
            last_progress = (Instant::now(), progress);
        } else if last_progress.0.elapsed() > stall {
            bail!(
                "count: stalled after sending {sent} and receiving {received} of {n} ({})",
                r.link().transport().io().describe()
            );
        }
        r.poll_once(Duration::from_millis(50))?;
        ev.check(r.link());
    }
    // Everything is staged: write it out, then stay a moment so the peer
    // can read our last bytes before the stream closes.
    r.run_until(stall, |l, _| !l.transport().wants_write())?;
    r.run_for(Duration::from_millis(300), |_, _| {})?;
    let c = r
        .link()
        .handler::<CountRx>(ept)
        .context("count endpoint vanished")?;
    say(format_args!(
        "count: sent {sent} checksum {sum:#010x}, received {} checksum {:#010x}, errors {}",
        c.received,
        c.checksum.unwrap_or(FNV_START),
        c.errors
    ));
    if c.errors > 0 || c.received != n {
        bail!("count: {} errors, {} of {n} received", c.errors, c.received);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_messages_are_distinct_and_bounded() {
        let a = count_message(0, 2024);
        assert_eq!(a.len(), 8);
        assert_eq!(&a[..4], &[0, 0, 0, 0]);
        let b = count_message(7, 2024);
        assert_eq!(b.len(), 8 + 7 * 37);
        assert_eq!(&b[4..8], &(b.len() as u32).to_le_bytes());
        assert!((0..2000).all(|i| count_message(i, 2024).len() <= COUNT_MAX_LEN));
        assert!((0..2000).all(|i| count_message(i, 40).len() <= 40));
        assert_ne!(fnv(FNV_START, &a), fnv(FNV_START, &b));
    }
}
