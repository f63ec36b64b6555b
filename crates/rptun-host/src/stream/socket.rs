//! TCP and Unix stream sockets as port streams.
//!
//! [`ListenStream`] serves one peer at a time: it accepts the first
//! connection, and a newer one replaces it (the old peer is most likely
//! dead; on TCP a peer that lost power never says so). [`ConnectStream`]
//! connects, and after losing the connection (or before the listener
//! exists) retries every 200 ms. Both report [`ByteIoError::Closed`] when a
//! connection ends, and discard what is written while none is up.
#![forbid(unsafe_code)]

use std::io;
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rptun::rpmsg::port::{ByteIo, ByteIoError};
use rustix::event::PollFlags;
use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketFlags, SocketType};

use super::{poll_fds, read_fd, send_fd, wait_fds, HostStream, StreamAddr, StreamWaiter};

/// How long a connecting stream waits between attempts.
const RETRY_PERIOD: Duration = Duration::from_millis(200);
/// Longest a TCP connect attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// A connection, non-blocking, with Nagle off on TCP (port frames are small
/// and latency matters).
fn tcp_conn(s: TcpStream) -> io::Result<OwnedFd> {
    s.set_nonblocking(true)?;
    s.set_nodelay(true)?;
    Ok(OwnedFd::from(s))
}

fn unix_conn(s: UnixStream) -> io::Result<OwnedFd> {
    s.set_nonblocking(true)?;
    Ok(OwnedFd::from(s))
}

fn conn_read(conn: &mut Option<OwnedFd>, buf: &mut [u8]) -> Result<usize, ByteIoError> {
    let Some(fd) = conn else { return Ok(0) };
    match read_fd(fd.as_fd(), buf) {
        Err(ByteIoError::Closed) => {
            *conn = None;
            Err(ByteIoError::Closed)
        }
        r => r,
    }
}

fn conn_write(conn: &mut Option<OwnedFd>, buf: &[u8]) -> Result<usize, ByteIoError> {
    let Some(fd) = conn else {
        // Nobody connected: the bytes go nowhere, as on a UART.
        return Ok(buf.len());
    };
    match send_fd(fd.as_fd(), buf) {
        Err(ByteIoError::Closed) => {
            *conn = None;
            Err(ByteIoError::Closed)
        }
        r => r,
    }
}

#[derive(Debug)]
enum Listener {
    Unix(UnixListener, PathBuf),
    Tcp(TcpListener),
}

/// A listening socket serving one peer at a time.
#[derive(Debug)]
pub struct ListenStream {
    addr: StreamAddr,
    listener: Listener,
    conn: Option<OwnedFd>,
    /// The listener looked readable: accept before reading.
    pending: bool,
    /// A newer connection replaced the current one: report `Closed`.
    replaced: bool,
}

impl ListenStream {
    /// Listens on `addr`. A Unix socket file left behind by a process that
    /// died is removed first; any other file at that path is an error.
    pub fn bind(addr: &StreamAddr) -> io::Result<ListenStream> {
        let listener = match addr {
            StreamAddr::Unix(path) => {
                remove_stale_socket(path)?;
                let l = UnixListener::bind(path).map_err(|e| {
                    io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}"))
                })?;
                l.set_nonblocking(true)?;
                Listener::Unix(l, path.clone())
            }
            StreamAddr::Tcp(a) => {
                let l = TcpListener::bind(a.as_str()).map_err(|e| {
                    io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}"))
                })?;
                l.set_nonblocking(true)?;
                Listener::Tcp(l)
            }
        };
        Ok(ListenStream {
            addr: addr.clone(),
            listener,
            conn: None,
            pending: true,
            replaced: false,
        })
    }

    /// The address listened on (with the port the system chose for
    /// `tcp:HOST:0`).
    pub fn local_addr(&self) -> StreamAddr {
        match &self.listener {
            Listener::Unix(_, p) => StreamAddr::Unix(p.clone()),
            Listener::Tcp(l) => match l.local_addr() {
                Ok(a) => StreamAddr::Tcp(a.to_string()),
                Err(_) => self.addr.clone(),
            },
        }
    }

    /// Whether a peer is connected.
    pub fn is_connected(&self) -> bool {
        self.conn.is_some()
    }

    fn listener_fd(&self) -> BorrowedFd<'_> {
        match &self.listener {
            Listener::Unix(l, _) => l.as_fd(),
            Listener::Tcp(l) => l.as_fd(),
        }
    }

    /// Accepts every pending connection; the newest one stays.
    fn accept(&mut self) {
        if !self.pending && self.conn.is_some() {
            return;
        }
        self.pending = false;
        // Bounded: a flood of connections cannot keep us here.
        for _ in 0..16 {
            let got = match &self.listener {
                Listener::Unix(l, _) => l.accept().and_then(|(s, _)| unix_conn(s)),
                Listener::Tcp(l) => l.accept().and_then(|(s, _)| tcp_conn(s)),
            };
            match got {
                Ok(fd) => {
                    if self.conn.replace(fd).is_some() {
                        log::info!("{}: a new peer replaces the old one", self.addr);
                        self.replaced = true;
                    }
                }
                Err(_) => break,
            }
        }
    }
}

fn remove_stale_socket(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} exists and is not a socket; choose another path",
                path.display()
            ),
        )),
        Err(_) => Ok(()),
    }
}

impl Drop for ListenStream {
    fn drop(&mut self) {
        if let Listener::Unix(_, path) = &self.listener {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl ByteIo for ListenStream {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, ByteIoError> {
        self.accept();
        if std::mem::take(&mut self.replaced) {
            return Err(ByteIoError::Closed);
        }
        conn_read(&mut self.conn, buf)
    }

    fn write(&mut self, buf: &[u8]) -> Result<usize, ByteIoError> {
        conn_write(&mut self.conn, buf)
    }
}

impl HostStream for ListenStream {
    fn wait(&mut self, timeout: Duration, want_write: bool) -> io::Result<()> {
        let mut fds = vec![(self.listener_fd(), PollFlags::IN)];
        if let Some(c) = &self.conn {
            let ev = if want_write {
                PollFlags::IN | PollFlags::OUT
            } else {
                PollFlags::IN
            };
            fds.push((c.as_fd(), ev));
        }
        let got = wait_fds(&fds, timeout)?;
        if got.first().is_some_and(|f| f.contains(PollFlags::IN)) {
            self.pending = true;
        }
        Ok(())
    }

    fn waiter(&self) -> io::Result<StreamWaiter> {
        // Only the connection: a newcomer waiting on the listener would wake
        // the waiter at once, forever, since nothing accepts it meanwhile.
        match &self.conn {
            Some(c) => StreamWaiter::new(&[c.as_fd()]),
            None => StreamWaiter::new(&[self.listener_fd()]),
        }
    }

    fn describe(&self) -> String {
        format!(
            "{} (listening, {})",
            self.local_addr(),
            if self.conn.is_some() {
                "peer connected"
            } else {
                "no peer"
            }
        )
    }
}

/// A socket that connects to a listener, and reconnects after losing it.
///
/// Connecting never blocks: a TCP connection in progress is finished by
/// later reads and waits (only resolving a host name may block).
#[derive(Debug)]
pub struct ConnectStream {
    addr: StreamAddr,
    conn: Option<OwnedFd>,
    /// A TCP connect in progress, and when it started.
    pending: Option<(OwnedFd, Instant)>,
    next_try: Instant,
    attempts: usize,
    connects: u32,
}

impl ConnectStream {
    /// A stream to `addr`. The first attempt happens now; if the listener
    /// is not there yet, later reads and waits retry every 200 ms.
    pub fn new(addr: &StreamAddr) -> ConnectStream {
        let mut s = ConnectStream {
            addr: addr.clone(),
            conn: None,
            pending: None,
            next_try: Instant::now(),
            attempts: 0,
            connects: 0,
        };
        s.try_connect();
        s
    }

    /// Whether connected now.
    pub fn is_connected(&self) -> bool {
        self.conn.is_some()
    }

    /// Connections made so far.
    pub fn connects(&self) -> u32 {
        self.connects
    }

    fn connected(&mut self, fd: OwnedFd) {
        log::info!("{}: connected", self.addr);
        self.conn = Some(fd);
        self.connects += 1;
    }

    fn retry_later(&mut self, why: &dyn std::fmt::Display) {
        log::debug!("{}: {why}; retrying", self.addr);
        self.pending = None;
        self.next_try = Instant::now() + RETRY_PERIOD;
    }

    /// Starts a TCP connect without blocking.
    fn start_tcp(&mut self, a: &str) -> io::Result<()> {
        let addrs: Vec<_> = a.to_socket_addrs()?.collect();
        let Some(sa) = addrs.get(self.attempts % addrs.len().max(1)).copied() else {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no such host"));
        };
        self.attempts += 1;
        let family = match sa {
            std::net::SocketAddr::V4(_) => AddressFamily::INET,
            std::net::SocketAddr::V6(_) => AddressFamily::INET6,
        };
        let fd = rustix::net::socket_with(
            family,
            SocketType::STREAM,
            SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
            None,
        )?;
        match rustix::net::connect(&fd, &sa) {
            Ok(()) => {
                rustix::net::sockopt::set_tcp_nodelay(&fd, true)?;
                self.connected(fd);
            }
            Err(Errno::INPROGRESS) | Err(Errno::INTR) => {
                self.pending = Some((fd, Instant::now()));
            }
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }

    /// Finishes a TCP connect in progress if it is done.
    fn finish_tcp(&mut self) {
        let Some((fd, since)) = &self.pending else {
            return;
        };
        let ready = poll_fds(&[(fd.as_fd(), PollFlags::OUT)], Duration::ZERO)
            .map(|f| !f.is_empty() && !f[0].is_empty())
            .unwrap_or(true);
        if !ready {
            if since.elapsed() > CONNECT_TIMEOUT {
                self.retry_later(&"connect timed out");
            }
            return;
        }
        let (fd, _) = self.pending.take().expect("checked above");
        match rustix::net::sockopt::socket_error(&fd) {
            Ok(Ok(())) => {
                let _ = rustix::net::sockopt::set_tcp_nodelay(&fd, true);
                self.connected(fd);
            }
            Ok(Err(e)) => self.retry_later(&io::Error::from(e)),
            Err(e) => self.retry_later(&io::Error::from(e)),
        }
    }

    fn try_connect(&mut self) {
        if self.conn.is_some() {
            return;
        }
        if self.pending.is_some() {
            self.finish_tcp();
            return;
        }
        if Instant::now() < self.next_try {
            return;
        }
        let r = match self.addr.clone() {
            StreamAddr::Unix(p) => UnixStream::connect(&p)
                .and_then(unix_conn)
                .map(|fd| self.connected(fd)),
            StreamAddr::Tcp(a) => self.start_tcp(&a),
        };
        if let Err(e) = r {
            self.retry_later(&e);
        }
    }
}

impl ByteIo for ConnectStream {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, ByteIoError> {
        self.try_connect();
        let r = conn_read(&mut self.conn, buf);
        if r == Err(ByteIoError::Closed) {
            self.next_try = Instant::now() + RETRY_PERIOD;
        }
        r
    }

    fn write(&mut self, buf: &[u8]) -> Result<usize, ByteIoError> {
        let r = conn_write(&mut self.conn, buf);
        if r == Err(ByteIoError::Closed) {
            self.next_try = Instant::now() + RETRY_PERIOD;
        }
        r
    }
}

impl HostStream for ConnectStream {
    fn wait(&mut self, timeout: Duration, want_write: bool) -> io::Result<()> {
        match &self.conn {
            Some(c) => {
                let ev = if want_write {
                    PollFlags::IN | PollFlags::OUT
                } else {
                    PollFlags::IN
                };
                wait_fds(&[(c.as_fd(), ev)], timeout)?;
            }
            None => match &self.pending {
                Some((fd, _)) => {
                    wait_fds(
                        &[(fd.as_fd(), PollFlags::OUT)],
                        timeout.min(CONNECT_TIMEOUT),
                    )?;
                    self.try_connect();
                }
                None => {
                    let left = self.next_try.saturating_duration_since(Instant::now());
                    std::thread::sleep(left.min(timeout));
                    self.try_connect();
                }
            },
        }
        Ok(())
    }

    fn waiter(&self) -> io::Result<StreamWaiter> {
        match &self.conn {
            Some(c) => StreamWaiter::new(&[c.as_fd()]),
            None => StreamWaiter::new(&[]),
        }
    }

    fn describe(&self) -> String {
        format!(
            "{} ({})",
            self.addr,
            if self.conn.is_some() {
                "connected"
            } else {
                "connecting"
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_some(s: &mut impl HostStream) -> Result<Vec<u8>, ByteIoError> {
        let mut buf = [0u8; 64];
        for _ in 0..100 {
            s.wait(Duration::from_millis(20), false).unwrap();
            let n = s.read(&mut buf)?;
            if n > 0 {
                return Ok(buf[..n].to_vec());
            }
        }
        Ok(Vec::new())
    }

    fn temp_sock(tag: &str) -> StreamAddr {
        let p = std::env::temp_dir().join(format!("rptun-{tag}-{}.sock", std::process::id()));
        StreamAddr::Unix(p)
    }

    fn exchange(l: &mut ListenStream, c: &mut ConnectStream) {
        // The connector says hello first (accepting happens on read).
        for _ in 0..100 {
            if c.is_connected() {
                break;
            }
            c.wait(Duration::from_millis(20), false).unwrap();
        }
        assert_eq!(c.write(b"ping"), Ok(4));
        assert_eq!(read_some(l).unwrap(), b"ping");
        assert_eq!(l.write(b"pong"), Ok(4));
        assert_eq!(read_some(c).unwrap(), b"pong");
    }

    #[test]
    fn unix_peer_loss_is_closed_and_reconnects() {
        let addr = temp_sock("sock");
        let mut l = ListenStream::bind(&addr).unwrap();
        let mut c = ConnectStream::new(&addr);
        exchange(&mut l, &mut c);
        assert!(l.describe().contains("peer connected"));

        // The connector dies: the listener sees Closed, then waits for the
        // next one.
        drop(c);
        assert_eq!(read_some(&mut l), Err(ByteIoError::Closed));
        assert_eq!(l.write(b"void"), Ok(4));
        let mut c = ConnectStream::new(&addr);
        exchange(&mut l, &mut c);

        // The listener dies: the connector sees Closed and reconnects to a
        // new one (which removes the stale socket file).
        drop(l);
        assert_eq!(read_some(&mut c), Err(ByteIoError::Closed));
        let path = match &addr {
            StreamAddr::Unix(p) => p.clone(),
            _ => unreachable!(),
        };
        std::os::unix::net::UnixListener::bind(&path).unwrap(); // a stale file
        let mut l = ListenStream::bind(&addr).unwrap();
        exchange(&mut l, &mut c);
        assert_eq!(c.connects(), 2);
    }

    #[test]
    fn a_newer_connection_replaces_the_old_one() {
        let addr = temp_sock("replace");
        let mut l = ListenStream::bind(&addr).unwrap();
        let mut c1 = ConnectStream::new(&addr);
        exchange(&mut l, &mut c1);
        let mut c2 = ConnectStream::new(&addr);
        assert!(c2.is_connected());
        assert_eq!(read_some(&mut l), Err(ByteIoError::Closed));
        exchange(&mut l, &mut c2);
        // The replaced peer is hung up on.
        assert_eq!(read_some(&mut c1), Err(ByteIoError::Closed));
    }

    #[test]
    fn tcp_round_trip_on_a_chosen_port() {
        let mut l = ListenStream::bind(&"tcp:127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = l.local_addr();
        assert!(matches!(&addr, StreamAddr::Tcp(a) if !a.ends_with(":0")));
        let mut c = ConnectStream::new(&addr);
        exchange(&mut l, &mut c);
        drop(c);
        assert_eq!(read_some(&mut l), Err(ByteIoError::Closed));
    }

    #[test]
    fn tcp_connector_waits_for_a_late_listener() {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = StreamAddr::Tcp(probe.local_addr().unwrap().to_string());
        drop(probe);
        let mut c = ConnectStream::new(&addr);
        let mut buf = [0u8; 8];
        for _ in 0..3 {
            assert_eq!(c.read(&mut buf), Ok(0));
            assert_eq!(c.write(b"void"), Ok(4), "discarded while unconnected");
        }
        assert!(!c.is_connected());
        let mut l = ListenStream::bind(&addr).unwrap();
        exchange(&mut l, &mut c);
        assert!(c.describe().ends_with("(connected)"));
    }

    #[test]
    fn a_regular_file_is_not_removed() {
        let p = std::env::temp_dir().join(format!("rptun-notsock-{}", std::process::id()));
        std::fs::write(&p, b"keep").unwrap();
        let e = ListenStream::bind(&StreamAddr::Unix(p.clone())).unwrap_err();
        assert!(e.to_string().contains("not a socket"), "{e}");
        assert_eq!(std::fs::read(&p).unwrap(), b"keep");
        std::fs::remove_file(&p).unwrap();
    }
}
