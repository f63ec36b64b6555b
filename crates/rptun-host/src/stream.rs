//! Host byte streams for rpmsg-port links (NuttX `rpmsg_port_uart` over a
//! pty, a serial device, a TCP or a Unix socket), and a runner that drives a
//! bus [`Link`](rptun::rpmsg::Link) over one.
//!
//! Every stream is non-blocking and implements the core's
//! [`ByteIo`] plus [`HostStream`] (block until readable, with a timeout):
//!
//! - [`pty::PtyStream`]: the master side of a fresh pseudo-terminal in raw
//!   mode; the other process opens its slave path as a serial device;
//! - [`serial::SerialStream`]: a serial device (or a pty slave) in raw mode
//!   at a given baud rate;
//! - [`socket::ListenStream`] and [`socket::ConnectStream`]: a TCP or Unix
//!   stream socket, listening (one peer at a time; a new connection
//!   replaces the old one) or connecting (retrying until the listener is
//!   there).
//!
//! A stream whose peer goes away (end of file, hang-up, reset) reports
//! [`ByteIoError::Closed`] once, which takes the port link down; it then
//! keeps trying to get a peer back (accept, reconnect, reopen), and the
//! port's CONNREQ retries bring the link up again.
//!
//! [`runner::PortLinkRunner`] waits for input or the 100 ms timer, feeds the
//! transport and polls the link.
#![forbid(unsafe_code)]

pub mod pty;
pub mod runner;
pub mod serial;
pub mod socket;

use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};

use rptun::rpmsg::port::{ByteIo, ByteIoError};
use rptun::rpmsg::wait::{Clock, Wait};
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;

pub use pty::PtyStream;
pub use runner::PortLinkRunner;
pub use serial::SerialStream;
pub use socket::{ConnectStream, ListenStream};

/// A host byte stream: non-blocking [`ByteIo`] plus a way to sleep until it
/// has something to say.
pub trait HostStream: ByteIo + Send {
    /// Blocks until the stream may be readable (or a peer arrived or left),
    /// or, with `want_write`, may accept bytes; at most `timeout`. Returning
    /// early is allowed.
    fn wait(&mut self, timeout: Duration, want_write: bool) -> io::Result<()>;

    /// A handle that waits for input without borrowing the stream (for a
    /// [`Wait`] used while the link that owns the stream is busy, e.g. in a
    /// ping). It watches the stream as it is now; after a reconnection it
    /// degrades to short sleeps.
    fn waiter(&self) -> io::Result<StreamWaiter>;

    /// What the stream is, for logs and dumps (e.g. `unix:/tmp/p (connected)`).
    fn describe(&self) -> String;
}

impl<T: HostStream + ?Sized> HostStream for Box<T> {
    fn wait(&mut self, timeout: Duration, want_write: bool) -> io::Result<()> {
        (**self).wait(timeout, want_write)
    }
    fn waiter(&self) -> io::Result<StreamWaiter> {
        (**self).waiter()
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
}

/// Where a socket stream listens or connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamAddr {
    /// A Unix stream socket at this path (`unix:/path`).
    Unix(PathBuf),
    /// A TCP address `host:port` (`tcp:127.0.0.1:5000`).
    Tcp(String),
}

/// A stream address that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "bad stream address {0:?}: write unix:/path/to/socket or tcp:HOST:PORT \
     (e.g. tcp:127.0.0.1:5000)"
)]
pub struct StreamAddrError(pub String);

impl FromStr for StreamAddr {
    type Err = StreamAddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || StreamAddrError(s.to_string());
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(bad());
            }
            return Ok(StreamAddr::Unix(PathBuf::from(path)));
        }
        if let Some(addr) = s.strip_prefix("tcp:") {
            let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
            if host.is_empty() || port.parse::<u16>().is_err() {
                return Err(bad());
            }
            return Ok(StreamAddr::Tcp(addr.to_string()));
        }
        Err(bad())
    }
}

impl fmt::Display for StreamAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            StreamAddr::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

/// Maps an OS error of a read or write to the port's view of it.
fn map_errno(e: Errno) -> Result<usize, ByteIoError> {
    match e {
        Errno::AGAIN | Errno::INTR => Ok(0),
        // EIO: a pty whose other side is closed; the rest: a socket whose
        // peer went away.
        Errno::IO
        | Errno::PIPE
        | Errno::CONNRESET
        | Errno::CONNABORTED
        | Errno::NOTCONN
        | Errno::HOSTUNREACH
        | Errno::TIMEDOUT => Err(ByteIoError::Closed),
        e => Err(ByteIoError::Failed(e.raw_os_error())),
    }
}

/// Non-blocking read from `fd`: `Ok(0)` when nothing is there, `Closed` at
/// end of file.
pub(crate) fn read_fd(fd: BorrowedFd<'_>, buf: &mut [u8]) -> Result<usize, ByteIoError> {
    if buf.is_empty() {
        return Ok(0);
    }
    match rustix::io::read(fd, buf) {
        Ok(0) => Err(ByteIoError::Closed),
        Ok(n) => Ok(n),
        Err(e) => map_errno(e),
    }
}

/// Non-blocking write to a tty or pipe.
pub(crate) fn write_fd(fd: BorrowedFd<'_>, buf: &[u8]) -> Result<usize, ByteIoError> {
    match rustix::io::write(fd, buf) {
        Ok(n) => Ok(n),
        Err(e) => map_errno(e),
    }
}

/// Non-blocking send on a socket (no SIGPIPE when the peer is gone).
pub(crate) fn send_fd(fd: BorrowedFd<'_>, buf: &[u8]) -> Result<usize, ByteIoError> {
    match rustix::net::send(fd, buf, rustix::net::SendFlags::NOSIGNAL) {
        Ok(n) => Ok(n),
        Err(e) => map_errno(e),
    }
}

fn timespec(d: Duration) -> Timespec {
    Timespec::try_from(d).unwrap_or(Timespec {
        tv_sec: i64::MAX,
        tv_nsec: 0,
    })
}

/// Polls `fds` (each with the events wanted) for at most `timeout` and
/// returns what happened to each.
pub(crate) fn poll_fds(
    fds: &[(BorrowedFd<'_>, PollFlags)],
    timeout: Duration,
) -> io::Result<Vec<PollFlags>> {
    let mut pfds: Vec<PollFd<'_>> = fds
        .iter()
        .map(|(fd, ev)| PollFd::from_borrowed_fd(*fd, *ev))
        .collect();
    let ts = timespec(timeout);
    match rustix::event::poll(&mut pfds, Some(&ts)) {
        Ok(_) | Err(Errno::INTR) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(pfds.iter().map(|p| p.revents()).collect())
}

/// Trouble flags: the fd is hung up or broken, so polling it for input
/// returns at once.
pub(crate) fn hung_up(flags: PollFlags) -> bool {
    flags.intersects(PollFlags::HUP | PollFlags::ERR | PollFlags::NVAL)
}

/// Longest a wait on a hung-up stream sleeps before looking again.
pub(crate) const HUNG_UP_SLEEP: Duration = Duration::from_millis(20);

/// Waits on a set of fds: sleeps `timeout` when there is none, and in short
/// slices when one is hung up (which would wake `poll` at once, forever).
pub(crate) fn wait_fds(
    fds: &[(BorrowedFd<'_>, PollFlags)],
    timeout: Duration,
) -> io::Result<Vec<PollFlags>> {
    if fds.is_empty() {
        std::thread::sleep(timeout.min(HUNG_UP_SLEEP * 5));
        return Ok(Vec::new());
    }
    let got = poll_fds(fds, timeout)?;
    let readable = got
        .iter()
        .any(|f| f.intersects(PollFlags::IN | PollFlags::OUT));
    if !readable && got.iter().any(|f| hung_up(*f)) {
        std::thread::sleep(timeout.min(HUNG_UP_SLEEP));
    }
    Ok(got)
}

/// A monotonic clock in nanoseconds since it was created.
#[derive(Debug, Clone, Copy)]
pub struct MonotonicClock {
    origin: Instant,
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl MonotonicClock {
    /// A clock starting at 0 now.
    pub fn new() -> MonotonicClock {
        MonotonicClock {
            origin: Instant::now(),
        }
    }
}

impl Clock for MonotonicClock {
    fn now_ns(&mut self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// Waits for input on a stream without borrowing it: a [`Wait`] for the
/// bus's blocking calls (send with timeout, ping) on a port link.
///
/// Holds duplicates of the stream's file descriptors as they were when it
/// was made.
#[derive(Debug)]
pub struct StreamWaiter {
    fds: Vec<OwnedFd>,
    clock: MonotonicClock,
}

impl StreamWaiter {
    /// A waiter on duplicates of `fds`.
    pub fn new(fds: &[BorrowedFd<'_>]) -> io::Result<StreamWaiter> {
        let fds = fds
            .iter()
            .map(|fd| fd.try_clone_to_owned())
            .collect::<io::Result<Vec<_>>>()?;
        Ok(StreamWaiter {
            fds,
            clock: MonotonicClock::new(),
        })
    }

    /// Blocks until one of the fds may be readable, for at most `timeout`.
    pub fn wait_for(&mut self, timeout: Duration) {
        let fds: Vec<(BorrowedFd<'_>, PollFlags)> = self
            .fds
            .iter()
            .map(|fd| (fd.as_fd(), PollFlags::IN))
            .collect();
        if wait_fds(&fds, timeout).is_err() {
            std::thread::sleep(timeout.min(HUNG_UP_SLEEP));
        }
    }
}

impl Clock for StreamWaiter {
    fn now_ns(&mut self) -> u64 {
        self.clock.now_ns()
    }
}

impl Wait for StreamWaiter {
    fn wait_until(&mut self, deadline_ns: u64) {
        let now = self.clock.now_ns();
        if deadline_ns > now {
            self.wait_for(Duration::from_nanos(deadline_ns - now));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_and_print() {
        assert_eq!(
            "unix:/tmp/p".parse::<StreamAddr>().unwrap(),
            StreamAddr::Unix("/tmp/p".into())
        );
        let tcp: StreamAddr = "tcp:127.0.0.1:5000".parse().unwrap();
        assert_eq!(tcp, StreamAddr::Tcp("127.0.0.1:5000".into()));
        assert_eq!(tcp.to_string(), "tcp:127.0.0.1:5000");
        assert_eq!(
            "tcp:[::1]:7".parse::<StreamAddr>().unwrap(),
            StreamAddr::Tcp("[::1]:7".into())
        );
        for bad in [
            "",
            "unix:",
            "tcp:host",
            "tcp::5",
            "tcp:h:99999",
            "udp:x:1",
            "/tmp/p",
        ] {
            let e = bad.parse::<StreamAddr>().unwrap_err();
            assert!(e.to_string().contains("unix:/path"), "{e}");
        }
    }

    #[test]
    fn eof_and_hangups_are_closed_and_again_is_nothing() {
        assert_eq!(map_errno(Errno::AGAIN), Ok(0));
        assert_eq!(map_errno(Errno::IO), Err(ByteIoError::Closed));
        assert_eq!(map_errno(Errno::CONNRESET), Err(ByteIoError::Closed));
        assert_eq!(
            map_errno(Errno::BADF),
            Err(ByteIoError::Failed(Errno::BADF.raw_os_error()))
        );
    }
}
