//! A serial device (a UART, a USB serial adapter, or the slave side of a
//! pty) in raw mode.
//!
//! When the device goes away (end of file or hang-up: the pty master
//! closed, the adapter was unplugged) the stream reports
//! [`ByteIoError::Closed`] once and then tries to open the path again every
//! half second; meanwhile writes are discarded and reads find nothing.
#![forbid(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rptun::rpmsg::port::{ByteIo, ByteIoError};
use rustix::event::PollFlags;
use rustix::fs::{Mode, OFlags};
use rustix::termios::{ControlModes, OptionalActions, QueueSelector, SpecialCodeIndex};

use super::{read_fd, wait_fds, write_fd, HostStream, StreamWaiter};

/// How long a lost device waits before the next open attempt.
const REOPEN_PERIOD: Duration = Duration::from_millis(500);

/// Puts a terminal in raw mode (8 data bits, no parity, receiver on, modem
/// lines ignored, no echo or translation) at `baud` if given.
pub(crate) fn make_raw(fd: BorrowedFd<'_>, baud: Option<u32>) -> io::Result<()> {
    let mut t = rustix::termios::tcgetattr(fd)?;
    t.make_raw();
    t.control_modes |= ControlModes::CLOCAL | ControlModes::CREAD;
    t.special_codes[SpecialCodeIndex::VMIN] = 1;
    t.special_codes[SpecialCodeIndex::VTIME] = 0;
    if let Some(baud) = baud {
        t.set_speed(baud)?;
    }
    rustix::termios::tcsetattr(fd, OptionalActions::Now, &t)?;
    Ok(())
}

/// Splits `DEVICE[,BAUD]` (e.g. `/dev/ttyUSB0,921600`).
pub fn parse_spec(spec: &str) -> Result<(PathBuf, Option<u32>), String> {
    match spec.rsplit_once(',') {
        Some((path, baud)) if !path.is_empty() => match baud.parse::<u32>() {
            Ok(b) if b > 0 => Ok((PathBuf::from(path), Some(b))),
            _ => Err(format!(
                "bad baud rate {baud:?} in {spec:?}: write DEVICE,BAUD, e.g. /dev/ttyUSB0,115200"
            )),
        },
        Some(_) => Err(format!("no device in {spec:?}: write DEVICE[,BAUD]")),
        None if spec.is_empty() => Err("empty serial device: write DEVICE[,BAUD]".to_string()),
        None => Ok((PathBuf::from(spec), None)),
    }
}

fn open_raw(path: &Path, baud: Option<u32>) -> io::Result<OwnedFd> {
    let fd = rustix::fs::open(
        path,
        OFlags::RDWR | OFlags::NOCTTY | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    make_raw(fd.as_fd(), baud)?;
    // Whatever a previous user left in the input queue is not ours.
    let _ = rustix::termios::tcflush(&fd, QueueSelector::IFlush);
    Ok(fd)
}

/// A serial device in raw mode, non-blocking.
#[derive(Debug)]
pub struct SerialStream {
    path: PathBuf,
    baud: Option<u32>,
    fd: Option<OwnedFd>,
    next_open: Instant,
}

impl SerialStream {
    /// Opens `path` in raw mode at `baud` (the device's current speed if
    /// `None`). Fails if the device cannot be opened now.
    pub fn open(path: impl AsRef<Path>, baud: Option<u32>) -> io::Result<SerialStream> {
        let path = path.as_ref().to_path_buf();
        let fd = open_raw(&path, baud).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot open serial device {}: {e}", path.display()),
            )
        })?;
        Ok(SerialStream {
            path,
            baud,
            fd: Some(fd),
            next_open: Instant::now(),
        })
    }

    /// The device path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the device is open now.
    pub fn is_open(&self) -> bool {
        self.fd.is_some()
    }

    fn try_reopen(&mut self) {
        if self.fd.is_none() && Instant::now() >= self.next_open {
            match open_raw(&self.path, self.baud) {
                Ok(fd) => {
                    log::info!("serial: {} is back", self.path.display());
                    self.fd = Some(fd);
                }
                Err(_) => self.next_open = Instant::now() + REOPEN_PERIOD,
            }
        }
    }

    fn lost(&mut self) -> ByteIoError {
        log::info!("serial: {} went away", self.path.display());
        self.fd = None;
        self.next_open = Instant::now() + REOPEN_PERIOD;
        ByteIoError::Closed
    }
}

impl ByteIo for SerialStream {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, ByteIoError> {
        self.try_reopen();
        let Some(fd) = &self.fd else { return Ok(0) };
        match read_fd(fd.as_fd(), buf) {
            Err(ByteIoError::Closed) => Err(self.lost()),
            r => r,
        }
    }

    fn write(&mut self, buf: &[u8]) -> Result<usize, ByteIoError> {
        let Some(fd) = &self.fd else {
            return Ok(buf.len());
        };
        match write_fd(fd.as_fd(), buf) {
            Err(ByteIoError::Closed) => Err(self.lost()),
            r => r,
        }
    }
}

impl HostStream for SerialStream {
    fn wait(&mut self, timeout: Duration, want_write: bool) -> io::Result<()> {
        match &self.fd {
            Some(fd) => {
                let ev = if want_write {
                    PollFlags::IN | PollFlags::OUT
                } else {
                    PollFlags::IN
                };
                wait_fds(&[(fd.as_fd(), ev)], timeout)?;
            }
            None => {
                let left = self.next_open.saturating_duration_since(Instant::now());
                std::thread::sleep(left.min(timeout));
                self.try_reopen();
            }
        }
        Ok(())
    }

    fn waiter(&self) -> io::Result<StreamWaiter> {
        match &self.fd {
            Some(fd) => StreamWaiter::new(&[fd.as_fd()]),
            None => StreamWaiter::new(&[]),
        }
    }

    fn describe(&self) -> String {
        format!(
            "serial {}{} ({})",
            self.path.display(),
            self.baud.map(|b| format!(",{b}")).unwrap_or_default(),
            if self.fd.is_some() { "open" } else { "gone" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        assert_eq!(
            parse_spec("/dev/ttyUSB0,921600").unwrap(),
            (PathBuf::from("/dev/ttyUSB0"), Some(921_600))
        );
        assert_eq!(
            parse_spec("/dev/pts/3").unwrap(),
            (PathBuf::from("/dev/pts/3"), None)
        );
        for bad in ["", ",9600", "/dev/x,fast", "/dev/x,0"] {
            assert!(parse_spec(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn missing_device_is_a_clear_error() {
        let e = SerialStream::open("/dev/does-not-exist-rptun", None).unwrap_err();
        assert!(e.to_string().contains("/dev/does-not-exist-rptun"), "{e}");
    }

    #[test]
    fn master_gone_is_closed_once_then_quiet() {
        let m = super::super::PtyStream::open().unwrap();
        let mut s = SerialStream::open(m.path(), Some(9600)).unwrap();
        drop(m);
        s.wait(Duration::from_millis(50), false).unwrap();
        let mut buf = [0u8; 4];
        assert_eq!(s.read(&mut buf), Err(ByteIoError::Closed));
        assert!(!s.is_open());
        assert_eq!(s.read(&mut buf), Ok(0));
        assert_eq!(s.write(b"void"), Ok(4));
        assert!(s.describe().ends_with("(gone)"));
    }
}
