//! The master side of a pseudo-terminal: a serial line to another process
//! on this machine, which opens the slave path ([`PtyStream::path`]) as a
//! serial device (`rptun port --serial /dev/pts/N`, or a NuttX simulator's
//! UART).
//!
//! Linux reports a pty master whose slave is not open as hung up (poll
//! says `POLLHUP`, read fails with `EIO`), and keeps what the master writes
//! meanwhile for whoever opens the slave next. This stream therefore tracks
//! whether a peer is attached: while none is, writes are discarded (as a
//! UART with nobody listening), reads find nothing, and waits sleep in short
//! slices; when the peer closes the slave, the next read reports
//! [`ByteIoError::Closed`] once.
#![forbid(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rptun::rpmsg::port::{ByteIo, ByteIoError};
use rustix::event::PollFlags;
use rustix::fs::{Mode, OFlags};
use rustix::pty::OpenptFlags;

use super::serial::make_raw;
use super::{hung_up, poll_fds, read_fd, wait_fds, write_fd, HostStream, StreamWaiter};

/// The master side of a fresh pseudo-terminal, in raw mode, non-blocking.
#[derive(Debug)]
pub struct PtyStream {
    master: OwnedFd,
    path: PathBuf,
    /// A process has the slave open (as far as we saw).
    peer: bool,
}

impl PtyStream {
    /// Opens a new pty pair (`posix_openpt`, `grantpt`, `unlockpt`,
    /// `ptsname`) and puts the line in raw mode (no echo, no line editing,
    /// no newline translation, 8-bit clean).
    pub fn open() -> io::Result<PtyStream> {
        let master =
            rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
        rustix::pty::grantpt(&master)?;
        rustix::pty::unlockpt(&master)?;
        let name = rustix::pty::ptsname(&master, Vec::new())?;
        let path = PathBuf::from(name.to_string_lossy().into_owned());
        // The line settings live with the pty pair: set them through the
        // slave once, before anybody else opens it.
        let slave = rustix::fs::open(
            name.as_c_str(),
            OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        make_raw(slave.as_fd(), None)?;
        drop(slave);
        rustix::io::ioctl_fionbio(&master, true)?;
        Ok(PtyStream {
            master,
            path,
            peer: false,
        })
    }

    /// The slave device the peer opens, e.g. `/dev/pts/3`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether a process has the slave side open (as last seen).
    pub fn peer_attached(&self) -> bool {
        self.peer
    }

    /// Looks whether the slave side is open now.
    fn check_peer(&mut self) {
        if let Ok(got) = poll_fds(&[(self.master.as_fd(), PollFlags::IN)], Duration::ZERO) {
            self.peer = !got.iter().any(|f| hung_up(*f));
        }
    }

    fn closed(&mut self) -> Result<usize, ByteIoError> {
        if std::mem::take(&mut self.peer) {
            Err(ByteIoError::Closed)
        } else {
            Ok(0)
        }
    }
}

impl ByteIo for PtyStream {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, ByteIoError> {
        match read_fd(self.master.as_fd(), buf) {
            Ok(n) => {
                if n > 0 {
                    self.peer = true;
                }
                Ok(n)
            }
            Err(ByteIoError::Closed) => self.closed(),
            Err(e) => Err(e),
        }
    }

    fn write(&mut self, buf: &[u8]) -> Result<usize, ByteIoError> {
        if !self.peer {
            self.check_peer();
            if !self.peer {
                // Nobody listening: the bytes go nowhere, as on a UART.
                return Ok(buf.len());
            }
        }
        match write_fd(self.master.as_fd(), buf) {
            Err(ByteIoError::Closed) => self.closed(),
            r => r,
        }
    }
}

impl HostStream for PtyStream {
    fn wait(&mut self, timeout: Duration, want_write: bool) -> io::Result<()> {
        let mut ev = PollFlags::IN;
        if want_write && self.peer {
            ev |= PollFlags::OUT;
        }
        let got = wait_fds(&[(self.master.as_fd(), ev)], timeout)?;
        if !self.peer && !got.iter().any(|f| hung_up(*f)) {
            self.peer = true;
        }
        Ok(())
    }

    fn waiter(&self) -> io::Result<StreamWaiter> {
        StreamWaiter::new(&[self.master.as_fd()])
    }

    fn describe(&self) -> String {
        format!(
            "pty {} ({})",
            self.path.display(),
            if self.peer {
                "peer attached"
            } else {
                "no peer"
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::SerialStream;

    fn read_all(s: &mut impl HostStream, want: usize) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        for _ in 0..100 {
            if got.len() >= want {
                break;
            }
            s.wait(Duration::from_millis(50), false).unwrap();
            let n = s.read(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        got
    }

    #[test]
    fn bytes_cross_a_raw_pty_both_ways_and_hangup_is_reported_once() {
        let mut m = PtyStream::open().unwrap();
        assert!(m.path().starts_with("/dev/pts"), "{:?}", m.path());
        // Nobody attached: writes vanish, reads find nothing.
        assert_eq!(m.write(b"lost"), Ok(4));
        assert_eq!(m.read(&mut [0u8; 8]), Ok(0));
        assert!(!m.peer_attached());

        let mut s = SerialStream::open(m.path(), None).unwrap();
        // Every byte value, including the ones a cooked tty would eat.
        let all: Vec<u8> = (0..=255u8).collect();
        assert_eq!(s.write(&all), Ok(256));
        assert_eq!(read_all(&mut m, 256), all);
        assert!(m.peer_attached());
        assert_eq!(m.write(&all), Ok(256));
        assert_eq!(
            read_all(&mut s, 256),
            all,
            "nothing written before attaching"
        );

        drop(s);
        m.wait(Duration::from_millis(50), false).unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(m.read(&mut buf), Err(ByteIoError::Closed));
        assert_eq!(m.read(&mut buf), Ok(0), "reported once");
        assert!(!m.peer_attached());

        // A new peer on the same path is heard again.
        let mut s = SerialStream::open(m.path(), Some(115_200)).unwrap();
        assert_eq!(s.write(b"again"), Ok(5));
        assert_eq!(read_all(&mut m, 5), b"again");
        assert!(m.describe().contains("peer attached"));
    }
}
