//! An in-memory transport pair: two [`RpmsgTransport`]s connected back to
//! back over one heap [`Region`], with a fixed number of buffers per
//! direction. For tests (ours and users'), and as the smallest complete
//! example of a transport.
//!
//! It is a real transport: buffers live in the shared region, ownership moves
//! through single-producer/single-consumer rings of buffer indices with
//! acquire/release indices (a miniature virtqueue), and each side keeps its
//! own bookkeeping in local memory and validates what it reads from the
//! region. The two ends may run in two threads.
//!
//! ```text
//! region: alive[2] u32 | 4 rings {prod u32, cons u32, idx[n] u32}
//!         (A→B sent, A→B returned, B→A sent, B→A returned)
//!         | len[2][n] u32 | buffers A→B [n × size] | buffers B→A [n × size]
//! ```
//!
//! The link is up while both ends exist; dropping one (or calling
//! [`Loopback::shut_down`]) takes it down for good (no reconnection).
#![forbid(unsafe_code)]

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use crate::rpmsg::cpu::{LocalCpu, RemoteCpu};
use crate::rpmsg::transport::{
    BufferStats, RpmsgFeatures, RpmsgTransport, RxBuf, TransportError, TxBuf,
};
use crate::rpmsg::RpmsgError;
use crate::shm::Region;
use crate::wire::rpmsg::{RpmsgName, HEADER_LEN};

/// Shape of a loopback pair.
#[derive(Debug, Clone, Copy)]
pub struct LoopbackConfig {
    /// Buffers per direction (1..=4096).
    pub buffers: usize,
    /// Bytes per buffer, rpmsg header included (at least 16).
    pub buffer_size: usize,
    /// Features both ends report as negotiated.
    pub features: RpmsgFeatures,
    /// Cpu name of end A (end B's remote).
    pub cpu_a: &'static str,
    /// Cpu name of end B (end A's remote).
    pub cpu_b: &'static str,
}

impl Default for LoopbackConfig {
    /// 8 buffers of 512 bytes each way, NS with CREATE_ACK, "server"/"proxy".
    fn default() -> Self {
        LoopbackConfig {
            buffers: 8,
            buffer_size: 512,
            features: RpmsgFeatures::NUTTX,
            cpu_a: "server",
            cpu_b: "proxy",
        }
    }
}

impl LoopbackConfig {
    /// Linux-compatible: NS without CREATE_ACK, 512-byte buffers.
    pub fn linux() -> Self {
        LoopbackConfig {
            features: RpmsgFeatures::LINUX,
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TxState {
    Free,
    Lent,
    InFlight,
}

const SENT: usize = 0;
const RETURNED: usize = 1;
const MAX_BUFFERS: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Layout {
    n: usize,
    size: usize,
    ring_bytes: usize,
    lens: usize,
    data: usize,
    total: usize,
}

impl Layout {
    fn new(n: usize, size: usize) -> Option<Layout> {
        let ring_bytes = 8 + 4 * n;
        let lens = 16 + 4 * ring_bytes;
        let data = (lens + 8 * n + 63) & !63;
        let total = data.checked_add(size.checked_mul(2 * n)?)?;
        Some(Layout {
            n,
            size,
            ring_bytes,
            lens,
            data,
            total,
        })
    }
    fn ring(&self, dir: usize, kind: usize) -> usize {
        16 + (dir * 2 + kind) * self.ring_bytes
    }
    fn entry(&self, dir: usize, kind: usize, pos: u32) -> usize {
        self.ring(dir, kind) + 8 + 4 * (pos as usize % self.n)
    }
    fn len_slot(&self, dir: usize, idx: usize) -> usize {
        self.lens + 4 * (dir * self.n + idx)
    }
    fn buffer(&self, dir: usize, idx: usize) -> usize {
        self.data + (dir * self.n + idx) * self.size
    }
}

/// One end of a loopback pair.
pub struct Loopback {
    region: Region,
    lay: Layout,
    side: usize,
    features: RpmsgFeatures,
    local: LocalCpu,
    remote: RemoteCpu,
    tx_state: Vec<TxState>,
    tx_free: Vec<u16>,
    rx_out: Vec<bool>,
    /// Our producer index on our TX "sent" ring.
    sent_prod: u32,
    /// Our consumer index on our TX "returned" ring.
    ret_cons: u32,
    /// Our consumer index on the peer's "sent" ring.
    recv_cons: u32,
    /// Our producer index on the peer's "returned" ring.
    ret_prod: u32,
    shut: bool,
}

impl Loopback {
    /// Creates two ends (A, B) connected back to back.
    pub fn pair(cfg: LoopbackConfig) -> Result<(Loopback, Loopback), RpmsgError> {
        let a = RpmsgName::new(cfg.cpu_a)?;
        let b = RpmsgName::new(cfg.cpu_b)?;
        if cfg.buffers == 0 || cfg.buffers > MAX_BUFFERS || cfg.buffer_size < HEADER_LEN {
            return Err(RpmsgError::Transport(TransportError::Backend(
                "a loopback needs 1..=4096 buffers per direction of at least 16 bytes",
            )));
        }
        let lay = Layout::new(cfg.buffers, cfg.buffer_size).ok_or(RpmsgError::Transport(
            TransportError::Backend("loopback buffers do not fit in memory"),
        ))?;
        let region = Region::new_heap(lay.total);
        region.store_u32(0, 1)?;
        region.store_u32(4, 1)?;
        let end = |side: usize, local: RpmsgName, remote: RpmsgName| Loopback {
            region: region.clone(),
            lay,
            side,
            features: cfg.features,
            local: LocalCpu::from_name(local),
            remote: RemoteCpu::from_name(remote),
            tx_state: vec![TxState::Free; lay.n],
            tx_free: (0..lay.n as u16).rev().collect(),
            rx_out: vec![false; lay.n],
            sent_prod: 0,
            ret_cons: 0,
            recv_cons: 0,
            ret_prod: 0,
            shut: false,
        };
        Ok((end(0, a, b), end(1, b, a)))
    }

    /// Takes the link down for both ends, for good (as if this end's core
    /// stopped).
    pub fn shut_down(&mut self) {
        self.shut = true;
        let _ = self.region.store_u32(4 * self.side, 0);
    }

    fn up(&self) -> bool {
        !self.shut
            && self.region.load_u32(0).unwrap_or(0) == 1
            && self.region.load_u32(4).unwrap_or(0) == 1
    }

    fn check_up(&self) -> Result<(), TransportError> {
        if self.up() {
            Ok(())
        } else {
            Err(TransportError::LinkDown)
        }
    }

    fn tx_dir(&self) -> usize {
        self.side
    }

    fn rx_dir(&self) -> usize {
        1 - self.side
    }

    /// Collects TX buffers the peer returned.
    fn reclaim(&mut self) -> Result<(), TransportError> {
        let (dir, n) = (self.tx_dir(), self.lay.n as u32);
        let ring = self.lay.ring(dir, RETURNED);
        let prod = self.region.load_u32(ring)?;
        let avail = prod.wrapping_sub(self.ret_cons);
        if avail > n {
            return Err(TransportError::Peer("returned-ring index jumped"));
        }
        for _ in 0..avail {
            let idx = self
                .region
                .read_u32(self.lay.entry(dir, RETURNED, self.ret_cons))?
                as usize;
            self.ret_cons = self.ret_cons.wrapping_add(1);
            self.region.store_u32(ring + 4, self.ret_cons)?;
            match self.tx_state.get(idx) {
                Some(TxState::InFlight) => {
                    self.tx_state[idx] = TxState::Free;
                    self.tx_free.push(idx as u16);
                }
                _ => {
                    return Err(TransportError::Peer(
                        "peer returned a TX buffer it did not have",
                    ))
                }
            }
        }
        Ok(())
    }

    fn own_tx(&self, buf: TxBuf) -> Result<usize, TransportError> {
        let idx = buf.index as usize;
        let ok = self.tx_state.get(idx) == Some(&TxState::Lent)
            && buf.offset == self.lay.buffer(self.tx_dir(), idx)
            && buf.size == self.lay.size;
        if ok {
            Ok(idx)
        } else {
            Err(TransportError::InvalidBuffer { index: buf.index })
        }
    }
}

impl Drop for Loopback {
    fn drop(&mut self) {
        self.shut_down();
    }
}

impl RpmsgTransport for Loopback {
    fn role(&self) -> &str {
        "loopback"
    }

    fn local_cpu(&self) -> LocalCpu {
        self.local
    }

    fn remote_cpu(&self) -> RemoteCpu {
        self.remote
    }

    fn features(&self) -> RpmsgFeatures {
        self.features
    }

    fn link_session(&self) -> Option<u32> {
        self.up().then_some(1)
    }

    fn tx_buffer_size(&self) -> usize {
        self.lay.size
    }

    fn rx_buffer_size(&self) -> usize {
        self.lay.size
    }

    fn tx_region(&self) -> &Region {
        &self.region
    }

    fn rx_region(&self) -> &Region {
        &self.region
    }

    fn poll(&mut self) -> Result<(), TransportError> {
        if self.up() {
            self.reclaim()
        } else {
            Ok(())
        }
    }

    fn get_tx(&mut self) -> Result<Option<TxBuf>, TransportError> {
        self.check_up()?;
        if self.tx_free.is_empty() {
            self.reclaim()?;
        }
        let Some(idx) = self.tx_free.pop() else {
            return Ok(None);
        };
        self.tx_state[idx as usize] = TxState::Lent;
        Ok(Some(TxBuf {
            index: idx,
            offset: self.lay.buffer(self.tx_dir(), idx as usize),
            size: self.lay.size,
        }))
    }

    fn send(&mut self, buf: TxBuf, len: usize) -> Result<(), TransportError> {
        self.check_up()?;
        let idx = self.own_tx(buf)?;
        if len > self.lay.size {
            return Err(TransportError::TooLong {
                index: buf.index,
                len,
                size: self.lay.size,
            });
        }
        let (dir, n) = (self.tx_dir(), self.lay.n as u32);
        let ring = self.lay.ring(dir, SENT);
        let cons = self.region.load_u32(ring + 4)?;
        if self.sent_prod.wrapping_sub(cons) >= n {
            return Err(TransportError::Peer(
                "sent ring full: peer consumer index is wrong",
            ));
        }
        self.region
            .store_u32(self.lay.len_slot(dir, idx), len as u32)?;
        self.region
            .write_u32(self.lay.entry(dir, SENT, self.sent_prod), idx as u32)?;
        self.sent_prod = self.sent_prod.wrapping_add(1);
        self.region.store_u32(ring, self.sent_prod)?;
        self.tx_state[idx] = TxState::InFlight;
        Ok(())
    }

    fn release_tx(&mut self, buf: TxBuf) -> Result<(), TransportError> {
        let idx = self.own_tx(buf)?;
        self.tx_state[idx] = TxState::Free;
        self.tx_free.push(idx as u16);
        Ok(())
    }

    fn recv(&mut self) -> Result<Option<RxBuf>, TransportError> {
        self.check_up()?;
        let (dir, n) = (self.rx_dir(), self.lay.n as u32);
        let ring = self.lay.ring(dir, SENT);
        let prod = self.region.load_u32(ring)?;
        let avail = prod.wrapping_sub(self.recv_cons);
        if avail > n {
            return Err(TransportError::Peer("sent-ring index jumped"));
        }
        if avail == 0 {
            return Ok(None);
        }
        let idx = self
            .region
            .read_u32(self.lay.entry(dir, SENT, self.recv_cons))? as usize;
        self.recv_cons = self.recv_cons.wrapping_add(1);
        self.region.store_u32(ring + 4, self.recv_cons)?;
        if idx >= self.lay.n || self.rx_out[idx] {
            return Err(TransportError::Peer(
                "peer sent a buffer index twice or out of range",
            ));
        }
        let len = self.region.load_u32(self.lay.len_slot(dir, idx))? as usize;
        self.rx_out[idx] = true;
        Ok(Some(RxBuf {
            index: idx as u16,
            offset: self.lay.buffer(dir, idx),
            capacity: self.lay.size,
            len,
        }))
    }

    fn release_rx(&mut self, buf: RxBuf) -> Result<(), TransportError> {
        let idx = buf.index as usize;
        if !self.rx_out.get(idx).copied().unwrap_or(false)
            || buf.offset != self.lay.buffer(self.rx_dir(), idx)
        {
            return Err(TransportError::InvalidBuffer { index: buf.index });
        }
        self.rx_out[idx] = false;
        let dir = self.rx_dir();
        self.region
            .write_u32(self.lay.entry(dir, RETURNED, self.ret_prod), idx as u32)?;
        self.ret_prod = self.ret_prod.wrapping_add(1);
        self.region
            .store_u32(self.lay.ring(dir, RETURNED), self.ret_prod)?;
        Ok(())
    }

    fn buffer_stats(&self) -> BufferStats {
        let returned = self
            .region
            .load_u32(self.lay.ring(self.tx_dir(), RETURNED))
            .map(|p| p.wrapping_sub(self.ret_cons) as usize)
            .unwrap_or(0)
            .min(self.lay.n);
        BufferStats {
            tx_total: self.lay.n,
            tx_free: self.tx_free.len() + returned,
            rx_total: self.lay.n,
        }
    }

    fn describe(&self, out: &mut dyn fmt::Write) -> fmt::Result {
        writeln!(
            out,
            "loopback end {}: tx sent {} returned {}, rx received {} returned {}, rx out {}",
            if self.side == 0 { 'A' } else { 'B' },
            self.sent_prod,
            self.ret_cons,
            self.recv_cons,
            self.ret_prod,
            self.rx_out.iter().filter(|&&o| o).count()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_travel_and_come_back() {
        let (mut a, mut b) = Loopback::pair(LoopbackConfig {
            buffers: 2,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(a.remote_cpu().as_str(), "proxy");
        assert_eq!(b.remote_cpu().as_str(), "server");
        let t1 = a.get_tx().unwrap().unwrap();
        let t2 = a.get_tx().unwrap().unwrap();
        assert_eq!(a.get_tx().unwrap(), None, "only two buffers");
        a.tx_region().write_bytes(t1.offset, b"hello").unwrap();
        a.send(t1, 5).unwrap();
        a.release_tx(t2).unwrap();
        assert!(a.release_tx(t2).is_err(), "double release refused");
        let r = b.recv().unwrap().unwrap();
        assert_eq!(r.len, 5);
        let mut got = [0u8; 5];
        b.rx_region().read_bytes(r.offset, &mut got).unwrap();
        assert_eq!(&got, b"hello");
        assert_eq!(b.recv().unwrap(), None);
        assert_eq!(a.buffer_stats().tx_free, 1);
        b.release_rx(r).unwrap();
        assert!(b.release_rx(r).is_err());
        assert_eq!(a.buffer_stats().tx_free, 2);
        assert!(a.get_tx().unwrap().is_some());
        assert!(
            a.get_tx().unwrap().is_some(),
            "the returned buffer is reused"
        );
    }

    #[test]
    fn corrupt_ring_index_is_a_peer_error_not_a_panic() {
        let (a, mut b) = Loopback::pair(LoopbackConfig::default()).unwrap();
        // A's "sent" producer index jumps by more than the ring size.
        a.region.store_u32(a.lay.ring(0, SENT), 1000).unwrap();
        assert!(matches!(b.recv(), Err(TransportError::Peer(_))));
        // An out-of-range buffer index.
        a.region.store_u32(a.lay.ring(0, SENT), 1).unwrap();
        a.region.write_u32(a.lay.entry(0, SENT, 0), 99).unwrap();
        b.recv_cons = 0;
        assert!(matches!(b.recv(), Err(TransportError::Peer(_))));
    }

    #[test]
    fn dropping_an_end_takes_the_link_down() {
        let (a, mut b) = Loopback::pair(LoopbackConfig::default()).unwrap();
        assert_eq!(b.link_session(), Some(1));
        drop(a);
        assert_eq!(b.link_session(), None);
        assert_eq!(b.get_tx(), Err(TransportError::LinkDown));
    }
}
