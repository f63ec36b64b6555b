//! rpmsg syslog, as NuttX's `syslog_rpmsg` (client) and
//! `syslog_rpmsg_server` (server): the remote's log lines travel to the
//! master over the endpoint `"rpmsg-syslog"`.
//!
//! ```text
//! message (little-endian): u32 command, i32 result, i32 count, u8 data[count]
//! command 0 = TRANSFER (data = log text, lines end with '\n'),
//!         1 = TRANSFER_DONE, 2 = SUSPEND, 3 = RESUME
//! ```
//!
//! The client creates (announces) the endpoint when the link comes up; the
//! server binds to the announcement. Until the endpoint is bound, and again
//! after the link goes down, the client's lines are printed locally (the
//! [`SyslogQueue`]'s fallback), so nothing is lost or held back while the
//! link is down.
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rptun::rpmsg::{
    EndpointConfig, EndpointHandler, EndpointId, Link, LinkCtx, LinkId, Received, RpmsgError,
    RpmsgTransport, Service,
};

/// The endpoint name.
pub const SYSLOG_EPT_NAME: &str = "rpmsg-syslog";
/// Command: log text follows.
pub const SYSLOG_TRANSFER: u32 = 0;
/// Command: the server wrote `result` bytes (older NuttX servers send it).
pub const SYSLOG_TRANSFER_DONE: u32 = 1;
/// Bytes before the text of a TRANSFER message.
pub const SYSLOG_HEADER_LEN: usize = 12;
/// Longest partial line the server keeps while waiting for its end.
pub const MAX_LINE: usize = 4096;

/// Encodes a TRANSFER message carrying `text`.
pub fn encode_transfer(text: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SYSLOG_HEADER_LEN + text.len());
    m.extend_from_slice(&SYSLOG_TRANSFER.to_le_bytes());
    m.extend_from_slice(&0i32.to_le_bytes());
    m.extend_from_slice(&(text.len() as i32).to_le_bytes());
    m.extend_from_slice(text);
    m
}

/// The text of a TRANSFER message (`None` for other commands or a short
/// message). The count is clamped to what arrived.
pub fn decode_transfer(msg: &[u8]) -> Option<&[u8]> {
    if msg.len() < SYSLOG_HEADER_LEN {
        return None;
    }
    let cmd = u32::from_le_bytes(msg[0..4].try_into().ok()?);
    if cmd != SYSLOG_TRANSFER {
        return None;
    }
    let count = i32::from_le_bytes(msg[8..12].try_into().ok()?);
    let count = usize::try_from(count).unwrap_or(0);
    let data = &msg[SYSLOG_HEADER_LEN..];
    Some(&data[..count.min(data.len())])
}

type Fallback = Box<dyn Fn(&str) + Send + Sync>;

/// Log lines waiting to go over rpmsg, shared between a logger and the
/// [`SyslogClient`] service.
pub struct SyslogQueue {
    connected: AtomicBool,
    lines: Mutex<VecDeque<String>>,
    cap: usize,
    fallback: Fallback,
}

impl std::fmt::Debug for SyslogQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyslogQueue")
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

impl SyslogQueue {
    /// A queue of at most `cap` lines; `fallback` prints a line locally
    /// (while no server is bound, and for lines a lost link leaves behind).
    pub fn new(cap: usize, fallback: impl Fn(&str) + Send + Sync + 'static) -> Arc<SyslogQueue> {
        Arc::new(SyslogQueue {
            connected: AtomicBool::new(false),
            lines: Mutex::new(VecDeque::new()),
            cap: cap.max(1),
            fallback: Box::new(fallback),
        })
    }

    /// True while a server is bound: lines go over rpmsg.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// Logs one line: queued for the server while one is bound, printed by
    /// the fallback otherwise. A full queue drops its oldest line.
    pub fn log(&self, line: &str) {
        if self.is_connected() {
            let mut q = self.lines.lock().unwrap_or_else(|e| e.into_inner());
            if q.len() >= self.cap {
                q.pop_front();
            }
            q.push_back(line.to_string());
            return;
        }
        (self.fallback)(line);
    }

    /// Stops sending over rpmsg: queued lines and every later one go to the
    /// fallback (a process about to exit calls this so its last lines are
    /// not left in the queue).
    pub fn disconnect(&self) {
        self.set_connected(false);
    }

    fn set_connected(&self, on: bool) {
        self.connected.store(on, Ordering::Release);
        if !on {
            let left: Vec<String> = self
                .lines
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .drain(..)
                .collect();
            for l in left {
                (self.fallback)(&l);
            }
        }
    }

    /// Takes lines totalling at most `max` bytes (each with its '\n'); a
    /// single longer line is cut.
    fn take(&self, max: usize) -> Vec<u8> {
        let mut q = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        while let Some(l) = q.front() {
            if out.len() + l.len() + 1 > max {
                if out.is_empty() {
                    let l = q.pop_front().unwrap_or_default();
                    let mut cut = max.saturating_sub(1).min(l.len());
                    while !l.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    out.extend_from_slice(&l.as_bytes()[..cut]);
                    out.push(b'\n');
                }
                break;
            }
            let l = q.pop_front().unwrap_or_default();
            out.extend_from_slice(l.as_bytes());
            out.push(b'\n');
        }
        out
    }

    fn put_back(&self, text: &[u8]) {
        let mut q = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        for l in String::from_utf8_lossy(text).lines().rev() {
            q.push_front(l.to_string());
        }
    }
}

struct ClientEpt {
    queue: Arc<SyslogQueue>,
}

impl<T: RpmsgTransport + 'static> EndpointHandler<T> for ClientEpt {
    fn on_message(&mut self, _ctx: &mut LinkCtx<'_, T>, _msg: Received<'_>) {
        // TRANSFER_DONE and flow-control commands: nothing to do.
    }
    fn on_bound(&mut self, _ctx: &mut LinkCtx<'_, T>, _dest: u32) {
        self.queue.set_connected(true);
    }
    fn on_unbind(&mut self, _ctx: &mut LinkCtx<'_, T>) {
        self.queue.set_connected(false);
    }
}

/// The client: announces `"rpmsg-syslog"` on every link (or on one, see
/// [`SyslogClient::only_on`]) and sends the queue's lines to the first bound
/// one.
#[derive(Debug)]
pub struct SyslogClient {
    queue: Arc<SyslogQueue>,
    epts: Vec<(LinkId, EndpointId)>,
    only: Option<LinkId>,
}

impl SyslogClient {
    /// A client sending `queue`'s lines.
    pub fn new(queue: Arc<SyslogQueue>) -> SyslogClient {
        SyslogClient {
            queue,
            epts: Vec::new(),
            only: None,
        }
    }

    /// Announces the endpoint on link `id` only (as NuttX's syslog_rpmsg
    /// talks to one configured server), so that every line takes one way.
    pub fn only_on(mut self, id: LinkId) -> SyslogClient {
        self.only = Some(id);
        self
    }
}

impl<T: RpmsgTransport + 'static> Service<T> for SyslogClient {
    fn device_created(&mut self, link: &mut Link<T>, id: LinkId) {
        if self.only.is_some_and(|o| o != id) {
            return;
        }
        let h = ClientEpt {
            queue: self.queue.clone(),
        };
        match link.create_endpoint(EndpointConfig::new(SYSLOG_EPT_NAME), h) {
            Ok(e) => self.epts.push((id, e)),
            Err(e) => log::warn!("rpmsg-syslog: cannot create the endpoint: {e}"),
        }
    }

    fn device_destroyed(&mut self, link: &mut Link<T>, id: LinkId) {
        self.epts.retain(|&(l, e)| {
            if l == id {
                let _ = link.destroy_endpoint(e);
            }
            l != id
        });
        if self.epts.is_empty() {
            self.queue.set_connected(false);
        }
    }

    fn poll(&mut self, link: &mut Link<T>, id: LinkId) {
        let Some(&(_, ept)) = self.epts.iter().find(|(l, _)| *l == id) else {
            return;
        };
        if !self.queue.is_connected() {
            return;
        }
        let room = link.max_payload().saturating_sub(SYSLOG_HEADER_LEN);
        if room == 0 {
            return;
        }
        // Bounded: at most the link's TX buffers' worth per poll.
        for _ in 0..64 {
            let text = self.queue.take(room);
            if text.is_empty() {
                return;
            }
            match link.trysend(ept, &encode_transfer(&text)) {
                Ok(()) => {}
                Err(RpmsgError::NoBuffer) => {
                    self.queue.put_back(&text);
                    return;
                }
                Err(_) => {
                    self.queue.put_back(&text);
                    return;
                }
            }
        }
    }
}

/// Where the server's lines go: `(remote cpu, line)`.
pub type SyslogSink = Arc<dyn Fn(&str, &str) + Send + Sync>;

struct ServerEpt {
    cpu: String,
    partial: Vec<u8>,
    sink: SyslogSink,
}

impl ServerEpt {
    fn flush(&mut self) {
        if !self.partial.is_empty() {
            let line = String::from_utf8_lossy(&self.partial).into_owned();
            (self.sink)(&self.cpu, &line);
            self.partial.clear();
        }
    }
}

impl<T: RpmsgTransport + 'static> EndpointHandler<T> for ServerEpt {
    fn on_message(&mut self, _ctx: &mut LinkCtx<'_, T>, msg: Received<'_>) {
        let bytes = msg.to_vec();
        let Some(text) = decode_transfer(&bytes) else {
            return;
        };
        for &b in text {
            if b == b'\n' {
                let line = String::from_utf8_lossy(&self.partial).into_owned();
                (self.sink)(&self.cpu, line.trim_end_matches('\r'));
                self.partial.clear();
            } else if self.partial.len() < MAX_LINE {
                self.partial.push(b);
            }
        }
    }
    fn on_unbind(&mut self, _ctx: &mut LinkCtx<'_, T>) {
        self.flush();
    }
}

/// The server: binds every `"rpmsg-syslog"` announcement and hands each
/// complete line to a sink.
pub struct SyslogServer {
    sink: SyslogSink,
    epts: Vec<(LinkId, EndpointId)>,
}

impl std::fmt::Debug for SyslogServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyslogServer")
            .field("endpoints", &self.epts.len())
            .finish_non_exhaustive()
    }
}

impl SyslogServer {
    /// A server printing through `sink`.
    pub fn new(sink: SyslogSink) -> SyslogServer {
        SyslogServer {
            sink,
            epts: Vec::new(),
        }
    }
}

impl<T: RpmsgTransport + 'static> Service<T> for SyslogServer {
    fn device_destroyed(&mut self, link: &mut Link<T>, id: LinkId) {
        self.epts.retain(|&(l, e)| {
            if l == id {
                let _ = link.destroy_endpoint(e);
            }
            l != id
        });
    }

    fn ns_match(&mut self, _link: &Link<T>, name: &str, _addr: u32) -> bool {
        name == SYSLOG_EPT_NAME
    }

    fn ns_bind(&mut self, link: &mut Link<T>, id: LinkId, name: &str, addr: u32) {
        let h = ServerEpt {
            cpu: link.remote_cpu().to_string(),
            partial: Vec::new(),
            sink: self.sink.clone(),
        };
        match link.create_endpoint(EndpointConfig::new(name).dest(addr), h) {
            Ok(e) => self.epts.push((id, e)),
            Err(e) => log::warn!("rpmsg-syslog: cannot bind {}: {e}", link.remote_cpu()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rptun::rpmsg::loopback::{Loopback, LoopbackConfig};
    use rptun::rpmsg::Bus;

    #[test]
    fn transfer_bytes_are_nuttx_s() {
        let m = encode_transfer(b"hi\n");
        assert_eq!(m, [0, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, b'h', b'i', b'\n']);
        assert_eq!(decode_transfer(&m), Some(&b"hi\n"[..]));
        // a count larger than what arrived is clamped; other commands ignored
        let mut big = m.clone();
        big[8] = 200;
        assert_eq!(decode_transfer(&big), Some(&b"hi\n"[..]));
        let mut done = m.clone();
        done[0] = 1;
        assert_eq!(decode_transfer(&done), None);
        assert_eq!(decode_transfer(&m[..5]), None);
    }

    #[test]
    fn lines_go_local_until_bound_then_over_the_link_then_local_again() {
        let local = Arc::new(Mutex::new(Vec::<String>::new()));
        let l2 = local.clone();
        let queue = SyslogQueue::new(16, move |s| l2.lock().unwrap().push(s.to_string()));
        let got = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
        let g2 = got.clone();
        let (a, b) = Loopback::pair(LoopbackConfig::default()).unwrap();
        let (mut server, mut client) = (Bus::new(), Bus::new());
        let sl = server.add_link(rptun::rpmsg::Link::new(a));
        let cl = client.add_link(rptun::rpmsg::Link::new(b));
        server.register(
            rptun::rpmsg::ServiceConfig::any("syslog"),
            SyslogServer::new(Arc::new(move |cpu: &str, l: &str| {
                g2.lock().unwrap().push((cpu.into(), l.into()))
            })),
        );
        client.register(
            rptun::rpmsg::ServiceConfig::any("syslog"),
            SyslogClient::new(queue.clone()),
        );
        queue.log("before");
        for _ in 0..4 {
            client.poll(cl).unwrap();
            server.poll(sl).unwrap();
        }
        assert!(queue.is_connected());
        queue.log("one");
        queue.log("two");
        for _ in 0..4 {
            client.poll(cl).unwrap();
            server.poll(sl).unwrap();
        }
        assert_eq!(*local.lock().unwrap(), vec!["before".to_string()]);
        assert_eq!(
            *got.lock().unwrap(),
            vec![
                ("proxy".to_string(), "one".to_string()),
                ("proxy".to_string(), "two".to_string())
            ]
        );
        // the link goes away: lines are printed locally again
        let link = client.remove_link(cl).unwrap();
        drop(link);
        queue.log("after");
        assert_eq!(local.lock().unwrap().last().unwrap(), "after");
    }
}
