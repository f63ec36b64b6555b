//! The byte-stream link as `rptun bench` drives it: rpmsg-port (NuttX
//! `rpmsg_port_uart` framing) over a Unix stream socket between a server
//! (listening) and a proxy (connecting), each a [`PortLinkRunner`] as
//! `rptun port` runs it, with the same ping and bench endpoints as the
//! shared-memory link ([`BenchSink`]).
//!
//! The baseline is the same socket without rptun: [`socket_pingpong`] and
//! [`socket_oneway`] move the same payloads with plain reads and writes.

use crate::baseline::{Batcher, Side, Timed};
use crate::benchlink::{BenchLinkError, BenchSink, BENCH_EPT};
use crate::stream::{ConnectStream, HostStream, ListenStream, PortLinkRunner, StreamAddr};
use rptun::rpmsg::port::{PortConfig, PortTransport};
use rptun::rpmsg::services::ping::{self, PingParams};
use rptun::rpmsg::{EndpointConfig, EndpointId, Link, LocalCpu, RemoteCpu, RpmsgError, ADDR_ANY};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// One side of the port link.
pub struct PortNode<S: HostStream + 'static> {
    runner: PortLinkRunner<S>,
    ping_ept: EndpointId,
    bench_ept: EndpointId,
}

fn setup(e: impl std::fmt::Display) -> BenchLinkError {
    BenchLinkError::Setup(e.to_string())
}

fn node<S: HostStream + 'static>(
    io: S,
    local: &str,
    remote: &str,
    serve: bool,
) -> Result<PortNode<S>, BenchLinkError> {
    let cfg = PortConfig::new(
        LocalCpu::new(local).map_err(setup)?,
        RemoteCpu::new(remote).map_err(setup)?,
    );
    let mut link = Link::new(PortTransport::with_heap(io, cfg).map_err(setup)?);
    let ping_ept = ping::create_endpoint(&mut link)?;
    let bench_ept = link.create_endpoint(EndpointConfig::new(BENCH_EPT), BenchSink::new(serve))?;
    Ok(PortNode {
        runner: PortLinkRunner::new(link),
        ping_ept,
        bench_ept,
    })
}

impl PortNode<ListenStream> {
    /// The server: listens on `addr` and waits (up to `timeout`) until the
    /// proxy connected and both endpoints are bound.
    pub fn server(addr: &StreamAddr, timeout: Duration) -> Result<Self, BenchLinkError> {
        let listen = ListenStream::bind(addr).map_err(setup)?;
        let mut n = node(listen, "server", "proxy", false)?;
        let (p, b) = (n.ping_ept, n.bench_ept);
        let bound = |l: &Link<PortTransport<ListenStream>>, e: EndpointId| {
            l.endpoint(e).is_some_and(|i| i.dest != ADDR_ANY)
        };
        let ok = n
            .runner
            .run_until(timeout, |l, _| l.is_up() && bound(l, p) && bound(l, b))
            .map_err(setup)?;
        if !ok {
            return Err(BenchLinkError::Timeout(
                "the port link did not come up with both endpoints bound",
            ));
        }
        Ok(n)
    }

    /// One rpmsg-ping round trip of `len` bytes; returns nanoseconds.
    pub fn ping_once(&mut self, len: usize, timeout: Duration) -> Result<u64, BenchLinkError> {
        let params = PingParams::new(1, len).ack(true).timeout(timeout);
        let mut w = self.runner.waiter().map_err(setup)?;
        let report = ping::ping(self.runner.link_mut(), self.ping_ept, &params, &mut w)?;
        Ok(report.min_ns)
    }

    /// Sends `msgs` one-way messages of `len` bytes to the proxy's sink,
    /// written in place into TX buffers, serving the link whenever no
    /// buffer is free (as `rptun port` does), and waits for its answer.
    pub fn stream(
        &mut self,
        len: usize,
        msgs: u32,
        timeout: Duration,
    ) -> Result<Timed, BenchLinkError> {
        let ept = self.bench_ept;
        let mut data = vec![0x5au8; len.max(8)];
        data[4..8].copy_from_slice(&msgs.to_le_bytes());
        if let Some(h) = self.runner.link_mut().handler_mut::<BenchSink>(ept) {
            h.done = None;
        }
        let end = Instant::now() + timeout;
        let mut clock = Batcher::start();
        for i in 0..msgs {
            let tx = loop {
                match self.runner.link_mut().try_get_tx(ept) {
                    Ok(tx) => break tx,
                    Err(RpmsgError::NoBuffer) => {
                        if Instant::now() > end {
                            return Err(BenchLinkError::Timeout("no TX buffer came back"));
                        }
                        self.runner
                            .poll_once(Duration::from_millis(10))
                            .map_err(setup)?;
                    }
                    Err(e) => return Err(e.into()),
                }
            };
            data[..4].copy_from_slice(&i.to_le_bytes());
            let link = self.runner.link_mut();
            if let Err(e) = tx.write(0, &data[..len]) {
                link.release_tx(tx)?;
                return Err(RpmsgError::from(e).into());
            }
            link.send_nocopy(tx, len)?;
            clock.tick();
        }
        let done = self
            .runner
            .run_until(end.saturating_duration_since(Instant::now()), |l, _| {
                l.handler::<BenchSink>(ept)
                    .is_some_and(|h| h.done.is_some())
            })
            .map_err(setup)?;
        let timed = clock.finish();
        let answer = self
            .runner
            .link()
            .handler::<BenchSink>(ept)
            .and_then(|h| h.done);
        match (done, answer) {
            (true, Some((got, 0))) if got == msgs => Ok(timed),
            (true, Some((got, _))) => Err(BenchLinkError::Corrupt { got, want: msgs }),
            _ => Err(BenchLinkError::Timeout(
                "the proxy did not answer the stream",
            )),
        }
    }
}

impl PortNode<ConnectStream> {
    /// The proxy: connects to `addr` (retrying until the server listens).
    pub fn proxy(addr: &StreamAddr) -> Result<Self, BenchLinkError> {
        node(ConnectStream::new(addr), "proxy", "server", true)
    }

    /// Serves the link until it went down after having been up (the server
    /// closed the socket), or `timeout` passed without the link coming up.
    pub fn serve(&mut self, timeout: Duration) -> Result<(), BenchLinkError> {
        let start = Instant::now();
        let mut was_up = false;
        loop {
            self.runner
                .poll_once(Duration::from_millis(50))
                .map_err(setup)?;
            let up = self.runner.link().is_up();
            if was_up && !up {
                return Ok(());
            }
            was_up |= up;
            if !was_up && start.elapsed() > timeout {
                return Err(BenchLinkError::Timeout("the port link never came up"));
            }
        }
    }
}

// ------------------------------------------------------------- baselines

fn io(e: std::io::Error) -> String {
    format!("raw socket: {e}")
}

/// Raw Unix-socket ping-pong: `payload` bytes (at least 1) each way per
/// round trip, plain blocking `write` and `read`; the measuring side returns
/// each round trip in nanoseconds.
pub fn socket_pingpong(
    s: &mut UnixStream,
    side: Side,
    iters: u32,
    payload: usize,
) -> Result<Vec<u64>, String> {
    let mut buf = vec![0x5au8; payload.max(1)];
    let mut rtts = Vec::with_capacity(iters as usize);
    for _ in 0..iters {
        match side {
            Side::Measure => {
                let t = Instant::now();
                s.write_all(&buf).map_err(io)?;
                s.read_exact(&mut buf).map_err(io)?;
                rtts.push(t.elapsed().as_nanos() as u64);
            }
            Side::Answer => {
                s.read_exact(&mut buf).map_err(io)?;
                s.write_all(&buf).map_err(io)?;
            }
        }
    }
    Ok(rtts)
}

/// Raw Unix-socket one-way stream: the answering side writes `msgs`
/// messages of `payload` bytes (at least 4, numbered); the measuring side
/// reads and checks them and returns the timing from the first message's
/// arrival.
pub fn socket_oneway(
    s: &mut UnixStream,
    side: Side,
    payload: usize,
    msgs: u32,
) -> Result<Timed, String> {
    let mut buf = vec![0x5au8; payload.max(4)];
    let mut clock: Option<Batcher> = None;
    for i in 0..msgs {
        match side {
            Side::Answer => {
                buf[..4].copy_from_slice(&i.to_le_bytes());
                s.write_all(&buf).map_err(io)?;
            }
            Side::Measure => {
                s.read_exact(&mut buf).map_err(io)?;
                if buf[..4] != i.to_le_bytes() {
                    return Err(format!("raw socket message {i} arrived corrupted"));
                }
                match clock.as_mut() {
                    Some(c) => c.tick(),
                    None => clock = Some(Batcher::start()),
                }
            }
        }
    }
    Ok(clock.map(Batcher::finish).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_and_stream_over_a_unix_socket_port_link() {
        let path =
            std::env::temp_dir().join(format!("rptun-benchport-{}.sock", std::process::id()));
        let addr = StreamAddr::Unix(path);
        let a2 = addr.clone();
        let proxy = std::thread::spawn(move || {
            let mut p = PortNode::proxy(&a2).unwrap();
            p.serve(Duration::from_secs(20)).unwrap();
        });
        let mut s = PortNode::server(&addr, Duration::from_secs(20)).unwrap();
        for len in [17, 496, 1520] {
            assert!(s.ping_once(len, Duration::from_secs(10)).unwrap() > 0);
        }
        let t = s.stream(1520, 200, Duration::from_secs(20)).unwrap();
        assert_eq!(t.msgs, 200);
        drop(s); // closes the socket: the proxy sees the link go down
        proxy.join().unwrap();
    }

    #[test]
    fn raw_socket_baselines_move_the_payload() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            socket_pingpong(&mut b, Side::Answer, 100, 1520).unwrap();
            socket_oneway(&mut b, Side::Answer, 17, 3000).unwrap();
        });
        assert_eq!(
            socket_pingpong(&mut a, Side::Measure, 100, 1520)
                .unwrap()
                .len(),
            100
        );
        let timed = socket_oneway(&mut a, Side::Measure, 17, 3000).unwrap();
        assert_eq!(timed.msgs, 2999);
        assert_eq!(timed.batch_ns.len(), 2);
        t.join().unwrap();
    }
}
