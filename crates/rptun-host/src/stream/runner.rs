//! Drives one rpmsg-port link over a host stream: waits for input (or the
//! 100 ms timer), feeds the transport, ticks the connection state machine,
//! polls the bus link.
//!
//! ```no_run
//! use std::time::Duration;
//! use rptun::rpmsg::port::{PortConfig, PortTransport};
//! use rptun::rpmsg::{services::ping, Link, LocalCpu, RemoteCpu};
//! use rptun_host::stream::{ConnectStream, PortLinkRunner};
//!
//! let stream = ConnectStream::new(&"unix:/tmp/rptun.sock".parse().unwrap());
//! let cfg = PortConfig::new(LocalCpu::new("host").unwrap(), RemoteCpu::new("proxy").unwrap());
//! let mut link = Link::new(PortTransport::with_heap(stream, cfg).unwrap());
//! ping::create_endpoint(&mut link).unwrap(); // answer the peer's pings
//! let mut runner = PortLinkRunner::new(link);
//! loop {
//!     let polled = runner.poll_once(Duration::from_secs(1)).unwrap();
//!     if polled.came_up {
//!         println!("link up");
//!     }
//! }
//! ```
#![forbid(unsafe_code)]

use std::io;
use std::time::{Duration, Instant};

use rptun::rpmsg::port::PortTransport;
use rptun::rpmsg::{Link, PollSummary, RpmsgError};

use super::{HostStream, StreamWaiter};

/// The CONNREQ / wake-request retry period (NuttX uses 100 ms).
pub const TICK_PERIOD: Duration = Duration::from_millis(100);

/// Most `Link::poll` rounds per [`PortLinkRunner::poll_once`].
const POLLS_PER_ROUND: usize = 64;

/// Why running a port link failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The bus or the transport failed.
    #[error(transparent)]
    Rpmsg(#[from] RpmsgError),
    /// Waiting on the stream failed.
    #[error("waiting on the byte stream failed: {0}")]
    Io(#[from] io::Error),
}

/// One rpmsg-port link and its timer.
pub struct PortLinkRunner<S: HostStream + 'static, const MAX: usize = 2048> {
    link: Link<PortTransport<S, MAX>>,
    tick: Duration,
    next_tick: Instant,
}

impl<S: HostStream + 'static, const MAX: usize> PortLinkRunner<S, MAX> {
    /// Runs `link`, ticking every [`TICK_PERIOD`].
    pub fn new(link: Link<PortTransport<S, MAX>>) -> Self {
        PortLinkRunner {
            link,
            tick: TICK_PERIOD,
            next_tick: Instant::now() + TICK_PERIOD,
        }
    }

    /// Changes the tick period (keep it well above the link's round trip).
    pub fn set_tick_period(&mut self, period: Duration) {
        self.tick = period.max(Duration::from_millis(1));
        self.next_tick = Instant::now() + self.tick;
    }

    /// The link.
    pub fn link(&self) -> &Link<PortTransport<S, MAX>> {
        &self.link
    }

    /// The link, mutable (create endpoints, send...).
    pub fn link_mut(&mut self) -> &mut Link<PortTransport<S, MAX>> {
        &mut self.link
    }

    /// Gives the link back.
    pub fn into_link(self) -> Link<PortTransport<S, MAX>> {
        self.link
    }

    /// A [`Wait`](rptun::rpmsg::Wait) for blocking bus calls on this link
    /// (`Link::send`, ping): it sleeps until the stream has input.
    pub fn waiter(&self) -> io::Result<StreamWaiter> {
        self.link.transport().io().waiter()
    }

    /// Waits up to `timeout` for the stream (or less, until the next tick),
    /// runs the timer if due, then polls the link until it has nothing left
    /// to do right now. Returns what the polls did, merged.
    pub fn poll_once(&mut self, timeout: Duration) -> Result<PollSummary, RunError> {
        let t = self.link.transport();
        if !t.has_buffered_input() {
            let wait = timeout.min(self.next_tick.saturating_duration_since(Instant::now()));
            if !wait.is_zero() {
                let want_write = t.wants_write();
                self.link.transport_mut().io_mut().wait(wait, want_write)?;
            }
        }
        if Instant::now() >= self.next_tick {
            self.next_tick = Instant::now() + self.tick;
            self.link.transport_mut().tick().map_err(RpmsgError::from)?;
        }
        let mut total = PollSummary::default();
        for _ in 0..POLLS_PER_ROUND {
            let s = self.link.poll()?;
            total.received += s.received;
            total.came_up |= s.came_up;
            total.went_down |= s.went_down;
            total.more = s.more;
            let busy = s.more || s.received > 0 || self.link.transport().has_buffered_input();
            if !busy {
                break;
            }
        }
        Ok(total)
    }

    /// Serves the link for `duration`, calling `on_poll` after each round.
    pub fn run_for(
        &mut self,
        duration: Duration,
        mut on_poll: impl FnMut(&mut Link<PortTransport<S, MAX>>, PollSummary),
    ) -> Result<(), RunError> {
        let end = Instant::now() + duration;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            let s = self.poll_once(left)?;
            on_poll(&mut self.link, s);
        }
    }

    /// Serves the link until `done` holds (checked after every round), for
    /// at most `timeout`. Returns whether `done` held.
    pub fn run_until(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(&mut Link<PortTransport<S, MAX>>, PollSummary) -> bool,
    ) -> Result<bool, RunError> {
        let end = Instant::now() + timeout;
        if done(&mut self.link, PollSummary::default()) {
            return Ok(true);
        }
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            let s = self.poll_once(left.min(self.tick))?;
            if done(&mut self.link, s) {
                return Ok(true);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::{ConnectStream, ListenStream, StreamAddr};
    use rptun::rpmsg::port::PortConfig;
    use rptun::rpmsg::services::ping::{self, PingParams};
    use rptun::rpmsg::{LocalCpu, RemoteCpu, ADDR_ANY};

    fn runner<S: HostStream + 'static>(s: S, local: &str, remote: &str) -> PortLinkRunner<S> {
        let cfg = PortConfig::new(
            LocalCpu::new(local).unwrap(),
            RemoteCpu::new(remote).unwrap(),
        );
        let mut link = Link::new(PortTransport::with_heap(s, cfg).unwrap());
        ping::create_endpoint(&mut link).unwrap();
        PortLinkRunner::new(link)
    }

    #[test]
    fn two_threads_ping_over_a_unix_socket() {
        let path = std::env::temp_dir().join(format!("rptun-runner-{}.sock", std::process::id()));
        let addr = StreamAddr::Unix(path);
        let listen = ListenStream::bind(&addr).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        let responder = std::thread::spawn(move || {
            let mut r = runner(listen, "server", "proxy");
            while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                r.poll_once(Duration::from_millis(20)).unwrap();
            }
            r.link().transport().stats().frames_received
        });

        let mut r = runner(ConnectStream::new(&addr), "proxy", "server");
        let ept = r.link().find_endpoint(ping::PING_EPT_NAME).unwrap();
        let bound = r
            .run_until(Duration::from_secs(10), |l, _| {
                l.endpoint(ept).is_some_and(|e| e.dest != ADDR_ANY)
            })
            .unwrap();
        assert!(bound, "the ping endpoints never bound");
        let mut w = r.waiter().unwrap();
        let params = PingParams::new(20, 1000)
            .check(true)
            .timeout(Duration::from_secs(5));
        let report = ping::ping(r.link_mut(), ept, &params, &mut w).unwrap();
        assert_eq!(report.times, 20);
        assert_eq!(report.buffer_len, 2048 - 8 - 16);
        assert_eq!(report.send_len, 1000);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let received = responder.join().unwrap();
        // 20 pings plus the name-service messages.
        assert!(received >= 20, "{received}");
    }
}
