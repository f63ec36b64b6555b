//! Who is alive on a simulator link, without touching the shared memory
//! (whose layout is NuttX's, byte for byte).
//!
//! Each of our processes binds an abstract unix socket named
//! `rptun-sim/<shm name>/<role>` ([`Beacon`]). Abstract names need no
//! cleanup (the kernel drops them with the process) and are exclusive (a
//! second proxy on the same shm object is refused). A watcher
//! ([`watch`]) connects, reads the hello line with the peer's pid, then
//! blocks: the kernel closes the connection the moment the peer dies, even
//! by `kill -9`, so death is noticed at once and an idle link costs nothing.
//!
//! A NuttX peer has no beacon: it is simply never seen, and the boot words
//! (`NEED_RESET`) remain the only way to learn of its restarts.
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Errors of [`Beacon::bind`].
#[derive(Debug, thiserror::Error)]
pub enum BeaconError {
    /// Another process already holds the name.
    #[error(
        "another rptun {who} already runs on shm object `{shm}`{pid}; stop it first, or pick \
         another object with --shm NAME"
    )]
    InUse {
        /// The role.
        who: String,
        /// The shm name.
        shm: String,
        /// " (pid N)" when the holder said who it is.
        pid: String,
    },
    /// The socket could not be created.
    #[error("cannot create the liveness socket for {who} on `{shm}`: {err}")]
    Io {
        /// The role.
        who: String,
        /// The shm name.
        shm: String,
        /// OS error.
        err: std::io::Error,
    },
}

fn addr(shm: &str, who: &str) -> std::io::Result<SocketAddr> {
    SocketAddr::from_abstract_name(format!("rptun-sim/{shm}/{who}").as_bytes())
}

/// Reports what the beacon or a watcher learns about the peer.
pub type OnPresence = Box<dyn FnMut(Presence) + Send>;

/// This process's beacon: answers every connection with
/// `rptun <role> <pid>\n` and keeps it open until the peer closes it. A
/// peer that says hello back ([`attach`]) is reported as up, and as gone
/// when its connection closes.
#[derive(Debug)]
pub struct Beacon {
    _thread: JoinHandle<()>,
}

impl Beacon {
    /// Binds the beacon of `who` ("server" or "proxy") for shm object `shm`.
    pub fn bind(shm: &str, who: &str) -> Result<Beacon, BeaconError> {
        Self::bind_with(shm, who, None)
    }

    /// [`Beacon::bind`], reporting peers that [`attach`] to `on_peer`.
    pub fn bind_with(
        shm: &str,
        who: &str,
        on_peer: Option<OnPresence>,
    ) -> Result<Beacon, BeaconError> {
        let io = |err| BeaconError::Io {
            who: who.into(),
            shm: shm.into(),
            err,
        };
        let a = addr(shm, who).map_err(io)?;
        let listener = match UnixListener::bind_addr(&a) {
            Ok(l) => l,
            Err(e) if e.kind() == ErrorKind::AddrInUse => {
                return Err(BeaconError::InUse {
                    who: who.into(),
                    shm: shm.into(),
                    pid: probe(shm, who)
                        .map(|p| format!(" (pid {p})"))
                        .unwrap_or_default(),
                })
            }
            Err(e) => return Err(io(e)),
        };
        let hello = format!("rptun {who} {}\n", std::process::id());
        let on_peer = on_peer.map(|f| Arc::new(std::sync::Mutex::new(f)));
        let thread = std::thread::Builder::new()
            .name("rptun-beacon".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    let Ok(mut c) = conn else { continue };
                    if c.write_all(hello.as_bytes()).is_err() {
                        continue;
                    }
                    let on_peer = on_peer.clone();
                    // Hold the connection until the peer goes away.
                    let _ = std::thread::Builder::new()
                        .name("rptun-beacon".into())
                        .spawn(move || {
                            let mut r = BufReader::new(&c);
                            let mut line = String::new();
                            let pid = match r.read_line(&mut line) {
                                Ok(n) if n > 0 => parse_hello(&line),
                                _ => None,
                            };
                            let report = |p: Presence| {
                                if let Some(f) = &on_peer {
                                    let mut f = f.lock().unwrap_or_else(|e| e.into_inner());
                                    f(p);
                                }
                            };
                            if let Some(pid) = pid {
                                report(Presence::Up(pid));
                            }
                            let mut buf = [0u8; 64];
                            while matches!(r.read(&mut buf), Ok(n) if n > 0) {}
                            if let Some(pid) = pid {
                                report(Presence::Gone(pid));
                            }
                        });
                }
            })
            .map_err(io)?;
        Ok(Beacon { _thread: thread })
    }
}

/// Announces this process (as `me`) to the `who` running on `shm`, if one
/// is alive: its beacon reports us up now and gone the moment we end. Keep
/// the returned connection for as long as this process runs.
pub fn attach(shm: &str, who: &str, me: &str) -> Option<UnixStream> {
    let mut c = UnixStream::connect_addr(&addr(shm, who).ok()?).ok()?;
    hello(&c)?;
    c.write_all(format!("rptun {me} {}\n", std::process::id()).as_bytes())
        .ok()?;
    Some(c)
}

fn parse_hello(line: &str) -> Option<u32> {
    let mut w = line.split_whitespace();
    if w.next()? != "rptun" {
        return None;
    }
    w.nth(1)?.parse().ok()
}

fn hello(c: &UnixStream) -> Option<u32> {
    c.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    let mut line = String::new();
    // Byte by byte: nothing after the line may be swallowed.
    let mut b = [0u8; 1];
    let mut r = c;
    while line.len() < 128 {
        match r.read(&mut b) {
            Ok(1) if b[0] == b'\n' => break,
            Ok(1) => line.push(char::from(b[0])),
            _ => return None,
        }
    }
    parse_hello(&line)
}

/// The pid of the `who` running on `shm`, if one is alive.
pub fn probe(shm: &str, who: &str) -> Option<u32> {
    let c = UnixStream::connect_addr(&addr(shm, who).ok()?).ok()?;
    hello(&c)
}

/// What a watcher saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// The peer (this pid) is alive.
    Up(u32),
    /// The peer (this pid) is gone: its process ended.
    Gone(u32),
}

/// Watches the `who` on `shm` from a thread: reports [`Presence::Up`] when
/// one appears (tries every `retry`) and [`Presence::Gone`] the moment its
/// process ends, over and over, until `stop` is set.
pub fn watch(
    shm: &str,
    who: &str,
    retry: Duration,
    stop: Arc<AtomicBool>,
    mut on: impl FnMut(Presence) + Send + 'static,
) -> std::io::Result<JoinHandle<()>> {
    let a = addr(shm, who)?;
    std::thread::Builder::new()
        .name("rptun-watch".into())
        .spawn(move || {
            while !stop.load(Ordering::Acquire) {
                let Ok(c) = UnixStream::connect_addr(&a) else {
                    std::thread::sleep(retry);
                    continue;
                };
                let Some(pid) = hello(&c) else {
                    std::thread::sleep(retry);
                    continue;
                };
                on(Presence::Up(pid));
                let _ = c.set_read_timeout(Some(Duration::from_millis(500)));
                let mut r = &c;
                let mut buf = [0u8; 64];
                loop {
                    match r.read(&mut buf) {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(e)
                            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                        {
                            if stop.load(Ordering::Acquire) {
                                return;
                            }
                        }
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(_) => break,
                    }
                }
                on(Presence::Gone(pid));
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;

    #[test]
    fn a_beacon_is_exclusive_and_seen_by_probe_and_watch() {
        let shm = format!("liveness-test-{}", std::process::id());
        assert_eq!(probe(&shm, "proxy"), None);
        let _b = Beacon::bind(&shm, "proxy").unwrap();
        assert_eq!(probe(&shm, "proxy"), Some(std::process::id()));
        let e = Beacon::bind(&shm, "proxy").unwrap_err();
        assert!(e.to_string().contains("already runs"), "{e}");
        assert!(
            e.to_string().contains(&std::process::id().to_string()),
            "{e}"
        );
        let (tx, rx) = channel();
        let stop = Arc::new(AtomicBool::new(false));
        let t = watch(
            &shm,
            "proxy",
            Duration::from_millis(20),
            stop.clone(),
            move |p| {
                let _ = tx.send(p);
            },
        )
        .unwrap();
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(10)).unwrap(),
            Presence::Up(std::process::id())
        );
        stop.store(true, Ordering::Release);
        t.join().unwrap();
    }

    #[test]
    fn a_peer_that_attaches_is_reported_up_then_gone() {
        let shm = format!("liveness-attach-{}", std::process::id());
        let (tx, rx) = channel();
        let _b = Beacon::bind_with(
            &shm,
            "server",
            Some(Box::new(move |p| {
                let _ = tx.send(p);
            })),
        )
        .unwrap();
        // a probe says nothing: not reported
        assert_eq!(probe(&shm, "server"), Some(std::process::id()));
        let c = attach(&shm, "server", "proxy").unwrap();
        let me = std::process::id();
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(10)).unwrap(),
            Presence::Up(me)
        );
        drop(c);
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(10)).unwrap(),
            Presence::Gone(me)
        );
        assert!(rx.try_recv().is_err());
        assert!(attach(&format!("{shm}-nobody"), "server", "proxy").is_none());
    }
}
