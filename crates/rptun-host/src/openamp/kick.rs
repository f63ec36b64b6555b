//! The kick channel of OpenAMP's Linux demos: one AF_UNIX stream socket.
//!
//! Each kick is the single byte `0x01`. It carries no queue id and means
//! "rescan every vring"; kicks may merge (the receiver reads whatever bytes
//! are there and rescans once). The process that writes the resource table
//! (the virtio device) is the socket server, the other one (the driver)
//! connects, retrying until the server is up.
//!
//! Sending never blocks: a full socket buffer means the peer has unread
//! kicks already, which is as good as one more.
#![forbid(unsafe_code)]

use std::io;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rptun::remoteproc::platform::{Doorbell, Notify, PlatformError};
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::net::{recv, send, RecvFlags, SendFlags};

/// The byte every kick consists of.
pub const KICK: u8 = 0x01;

/// How often [`KickChannel::connect`] retries while nobody listens.
pub const CONNECT_RETRY: Duration = Duration::from_millis(50);

/// What a wait on the kick socket ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woken {
    /// The peer kicked; the number of (merged) kick bytes read.
    Kicked(usize),
    /// Nothing arrived within the timeout.
    Timeout,
    /// The peer closed its end (it exited or crashed).
    PeerClosed,
}

/// Counters shared by a channel and its notifiers.
#[derive(Debug, Default)]
struct Counters {
    sent: AtomicU64,
    merged: AtomicU64,
    received: AtomicU64,
}

/// Kick counters of a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KickStats {
    /// Kick bytes written to the peer.
    pub sent: u64,
    /// Kicks not written because the socket buffer was full (the peer had
    /// unread kicks already).
    pub merged: u64,
    /// Kick bytes read from the peer.
    pub received: u64,
}

/// One connected end of the kick socket.
#[derive(Debug)]
pub struct KickChannel {
    stream: Arc<UnixStream>,
    counters: Arc<Counters>,
    closed: bool,
}

/// Rings the peer through a [`KickChannel`]: the platform's doorbell handle
/// for the vdev transports. The notify id is ignored (a kick names no
/// queue).
#[derive(Debug, Clone)]
pub struct KickNotifier {
    stream: Arc<UnixStream>,
    counters: Arc<Counters>,
}

fn kick_on(stream: &UnixStream, counters: &Counters) -> io::Result<()> {
    match send(stream, &[KICK], SendFlags::NOSIGNAL | SendFlags::DONTWAIT) {
        Ok(_) => {
            counters.sent.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        Err(Errno::AGAIN) => {
            counters.merged.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

impl KickNotifier {
    /// Kicks the peer.
    pub fn kick(&self) -> io::Result<()> {
        kick_on(&self.stream, &self.counters)
    }
}

impl Notify for KickNotifier {
    fn notify(&self, _target: Doorbell) -> Result<(), PlatformError> {
        self.kick().map_err(|e| {
            log::warn!("openamp: kicking the peer failed: {e}");
            PlatformError::Failed("kick the peer over the unix socket (has it exited?)")
        })
    }
}

impl KickChannel {
    fn from_stream(stream: UnixStream) -> KickChannel {
        KickChannel {
            stream: Arc::new(stream),
            counters: Arc::new(Counters::default()),
            closed: false,
        }
    }

    /// Connects to the server at `path`, retrying every
    /// [`CONNECT_RETRY`] until `timeout` has passed. Returns the last
    /// connection error on timeout.
    pub fn connect(path: &Path, timeout: Duration) -> io::Result<KickChannel> {
        let start = Instant::now();
        loop {
            match UnixStream::connect(path) {
                Ok(s) => return Ok(KickChannel::from_stream(s)),
                Err(e) => {
                    let retry = matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                    );
                    if !retry || start.elapsed() >= timeout {
                        return Err(e);
                    }
                }
            }
            std::thread::sleep(CONNECT_RETRY.min(timeout.saturating_sub(start.elapsed())));
        }
    }

    /// A doorbell handle for the transports.
    pub fn notifier(&self) -> KickNotifier {
        KickNotifier {
            stream: self.stream.clone(),
            counters: self.counters.clone(),
        }
    }

    /// Kicks the peer.
    pub fn kick(&self) -> io::Result<()> {
        kick_on(&self.stream, &self.counters)
    }

    /// True once the peer closed its end.
    pub fn peer_closed(&self) -> bool {
        self.closed
    }

    /// Counters of this channel and its notifiers.
    pub fn stats(&self) -> KickStats {
        KickStats {
            sent: self.counters.sent.load(Ordering::Relaxed),
            merged: self.counters.merged.load(Ordering::Relaxed),
            received: self.counters.received.load(Ordering::Relaxed),
        }
    }

    /// Reads every kick byte that is there without waiting.
    pub fn drain(&mut self) -> io::Result<Woken> {
        let mut got = 0usize;
        let mut buf = [0u8; 64];
        // Bounded: each pass empties at most 64 bytes of a finite buffer;
        // stop after 1 MiB so a flooding peer cannot keep us here.
        for _ in 0..(1 << 14) {
            match recv(&*self.stream, &mut buf, RecvFlags::DONTWAIT) {
                // A peer that exits with our kicks unread resets the
                // connection instead of closing it.
                Ok((0, _)) | Err(Errno::CONNRESET) | Err(Errno::PIPE) => {
                    self.closed = true;
                    break;
                }
                Ok((n, _)) => {
                    // Any byte counts as a kick: the demos only send 0x01,
                    // and a stray value still means "look at the rings".
                    got += n;
                }
                Err(Errno::AGAIN) => break,
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        self.counters
            .received
            .fetch_add(got as u64, Ordering::Relaxed);
        Ok(if got > 0 {
            Woken::Kicked(got)
        } else if self.closed {
            Woken::PeerClosed
        } else {
            Woken::Timeout
        })
    }

    /// Waits up to `timeout` for a kick (or the peer closing), then reads
    /// every kick byte that is there.
    pub fn wait(&mut self, timeout: Duration) -> io::Result<Woken> {
        if self.closed {
            return Ok(Woken::PeerClosed);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ts = Timespec {
                tv_sec: left.as_secs().min(i64::MAX as u64) as i64,
                tv_nsec: i64::from(left.subsec_nanos()),
            };
            let mut fds = [PollFd::new(&*self.stream, PollFlags::IN)];
            match poll(&mut fds, Some(&ts)) {
                Ok(0) => return Ok(Woken::Timeout),
                Ok(_) => return self.drain(),
                Err(Errno::INTR) if !left.is_zero() => continue,
                Err(Errno::INTR) => return Ok(Woken::Timeout),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// The listening end (the virtio device's side).
///
/// The socket file is removed when the listener is dropped (after
/// [`KickListener::accept`], which also removes it: one driver per run, as
/// in OpenAMP's demos).
#[derive(Debug)]
pub struct KickListener {
    listener: Option<UnixListener>,
    path: PathBuf,
}

/// Why the socket could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// Another process serves this path.
    #[error(
        "another process is already listening on {0}; stop it (another OpenAMP device demo?) \
         or pick another socket path"
    )]
    InUse(PathBuf),
    /// The path exists and is not a socket.
    #[error("{0} exists and is not a unix socket; remove it or pick another socket path")]
    NotASocket(PathBuf),
    /// Binding failed.
    #[error("cannot listen on {path}: {err}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        #[source]
        err: io::Error,
    },
}

impl KickListener {
    /// Listens on `path`. A stale socket file (nobody accepts on it) is
    /// replaced; a live one is refused.
    pub fn bind(path: &Path) -> Result<KickListener, ListenError> {
        use std::os::unix::fs::FileTypeExt;
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(ListenError::NotASocket(path.into()));
            }
            if UnixStream::connect(path).is_ok() {
                return Err(ListenError::InUse(path.into()));
            }
            std::fs::remove_file(path).map_err(|err| ListenError::Io {
                path: path.into(),
                err,
            })?;
        }
        let listener = UnixListener::bind(path).map_err(|err| ListenError::Io {
            path: path.into(),
            err,
        })?;
        Ok(KickListener {
            listener: Some(listener),
            path: path.into(),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits up to `timeout` (forever with `None`) for the driver to
    /// connect; `Ok(None)` on timeout. On success the socket file is
    /// removed: nobody else can connect.
    pub fn accept(&mut self, timeout: Option<Duration>) -> io::Result<Option<KickChannel>> {
        let Some(listener) = self.listener.as_ref() else {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the kick listener has already accepted its driver",
            ));
        };
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let ts = deadline.map(|d| {
                let left = d.saturating_duration_since(Instant::now());
                Timespec {
                    tv_sec: left.as_secs().min(i64::MAX as u64) as i64,
                    tv_nsec: i64::from(left.subsec_nanos()),
                }
            });
            let mut fds = [PollFd::new(listener, PollFlags::IN)];
            match poll(&mut fds, ts.as_ref()) {
                Ok(0) => return Ok(None),
                Ok(_) => break,
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        let (stream, _) = listener.accept()?;
        self.listener = None;
        let _ = std::fs::remove_file(&self.path);
        Ok(Some(KickChannel::from_stream(stream)))
    }
}

impl Drop for KickListener {
    fn drop(&mut self) {
        if self.listener.take().is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_path(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("rptun-kick-{tag}-{}", std::process::id()))
    }

    #[test]
    fn kicks_merge_and_a_closed_peer_is_seen() {
        let path = temp_path("merge");
        let mut l = KickListener::bind(&path).unwrap();
        let c = std::thread::spawn({
            let path = path.clone();
            move || KickChannel::connect(&path, Duration::from_secs(10)).unwrap()
        });
        let mut server = l.accept(Some(Duration::from_secs(10))).unwrap().unwrap();
        assert!(
            !path.exists(),
            "the socket file is removed once a driver connected"
        );
        let mut client = c.join().unwrap();
        assert_eq!(
            server.wait(Duration::from_millis(1)).unwrap(),
            Woken::Timeout
        );
        let n = client.notifier();
        for _ in 0..3 {
            n.notify(Doorbell::Id(7)).unwrap();
        }
        assert_eq!(
            server.wait(Duration::from_secs(10)).unwrap(),
            Woken::Kicked(3)
        );
        assert_eq!(server.stats().received, 3);
        assert_eq!(client.stats().sent, 3);
        server.kick().unwrap();
        assert_eq!(
            client.wait(Duration::from_secs(10)).unwrap(),
            Woken::Kicked(1)
        );
        drop(n);
        drop(client);
        assert_eq!(
            server.wait(Duration::from_secs(10)).unwrap(),
            Woken::PeerClosed
        );
        assert!(server.peer_closed());
        assert!(server.kick().is_err(), "kicking a closed peer is an error");
    }

    #[test]
    fn connect_retries_until_the_server_is_up_and_gives_up_after_the_timeout() {
        let path = temp_path("late");
        let _ = std::fs::remove_file(&path);
        let e = KickChannel::connect(&path, Duration::from_millis(120)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        let p2 = path.clone();
        let t = std::thread::spawn(move || KickChannel::connect(&p2, Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(150));
        let mut l = KickListener::bind(&path).unwrap();
        let _server = l.accept(Some(Duration::from_secs(10))).unwrap().unwrap();
        assert!(t.join().unwrap().is_ok());
    }

    #[test]
    fn a_live_socket_is_not_stolen_but_a_stale_one_is_replaced() {
        let path = temp_path("live");
        let l = KickListener::bind(&path).unwrap();
        assert!(matches!(
            KickListener::bind(&path),
            Err(ListenError::InUse(_))
        ));
        // A stale socket file: bound, then the listener is gone without
        // removing it.
        let path2 = temp_path("stale");
        let _ = std::fs::remove_file(&path2);
        drop(UnixListener::bind(&path2).unwrap());
        assert!(path2.exists());
        let l2 = KickListener::bind(&path2).unwrap();
        drop(l2);
        assert!(
            !path2.exists(),
            "dropping an unused listener removes its file"
        );
        drop(l);
        let file = temp_path("file");
        std::fs::write(&file, b"x").unwrap();
        assert!(matches!(
            KickListener::bind(&file),
            Err(ListenError::NotASocket(_))
        ));
        std::fs::remove_file(&file).unwrap();
    }

    #[test]
    fn accept_times_out() {
        let path = temp_path("timeout");
        let mut l = KickListener::bind(&path).unwrap();
        assert!(l.accept(Some(Duration::from_millis(20))).unwrap().is_none());
    }
}
