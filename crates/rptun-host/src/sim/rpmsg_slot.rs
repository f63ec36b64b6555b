//! The rpmsg link of a remoteproc vdev, as one long-lived bus link.
//!
//! The remoteproc [`Instance`](rptun::remoteproc::instance::Instance) creates
//! the rpmsg-virtio driver (or device) when the vdev comes up and removes it
//! when the vdev goes away (stop, crash, restart, a driver reset); the rpmsg
//! [`Bus`](rptun::rpmsg::Bus) wants one [`Link`](rptun::rpmsg::Link) per
//! remote cpu that stays put, so that `rpmsg dump proxy` answers "down"
//! rather than "no such link", and so that endpoints get their unbind
//! callbacks when the vdev goes away.
//!
//! [`SlotTransport`] is that link's transport: an [`RpmsgTransport`] with an
//! empty seat. The vdev's handler ([`SlotHandle`]) seats a fresh
//! rpmsg-virtio instance in it when the vdev comes up and takes it out in
//! `remove()`; while the seat is empty the link is down. Session numbers
//! carry an epoch, so a new instance is a new session even if its own
//! counter starts again at 1.
#![forbid(unsafe_code)]

use core::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use rptun::remoteproc::vdev::{VdevDevice, VdevDriver};
use rptun::rpmsg::transport::{
    BufferStats, RpmsgFeatures, RpmsgTransport, RxBuf, TransportError, TxBuf,
};
use rptun::rpmsg::virtio::{DownReason, RpmsgVirtioDevice, RpmsgVirtioDriver};
use rptun::rpmsg::{LocalCpu, RemoteCpu};
use rptun::shm::Region;

use super::layout::VRING_NUM;
use super::platform::SimBell;

/// Entries per vring the simulator's rpmsg-virtio instances handle.
pub const RING: usize = VRING_NUM as usize;

/// The server's rpmsg-virtio driver over a remoteproc vdev.
pub type SimRpmsgDriver = RpmsgVirtioDriver<VdevDriver<SimBell>, RING>;
/// The proxy's rpmsg-virtio device over a remoteproc vdev.
pub type SimRpmsgDevice = RpmsgVirtioDevice<VdevDevice<SimBell>, RING>;

/// What sits in the seat.
#[derive(Debug)]
pub enum Seated {
    /// The virtio driver role (the master by default).
    Driver(Box<SimRpmsgDriver>),
    /// The virtio device role.
    Device(Box<SimRpmsgDevice>),
}

macro_rules! both {
    ($s:expr, $t:ident => $e:expr) => {
        match $s {
            Seated::Driver($t) => $e,
            Seated::Device($t) => $e,
        }
    };
}

impl Seated {
    fn t(&self) -> &dyn RpmsgTransport {
        both!(self, t => &**t)
    }
    fn t_mut(&mut self) -> &mut dyn RpmsgTransport {
        both!(self, t => &mut **t)
    }
    /// Why the link is down, `None` while up.
    pub fn down_reason(&self) -> Option<DownReason> {
        both!(self, t => t.down_reason())
    }
    fn stop(&mut self) {
        both!(self, t => t.stop())
    }
}

#[derive(Debug, Default)]
struct Seat {
    t: Option<Seated>,
    epoch: u32,
}

/// The vdev side of the seat: seats and unseats the rpmsg-virtio instance.
#[derive(Debug, Clone)]
pub struct SlotHandle {
    seat: Arc<Mutex<Seat>>,
    /// Bumped (under the seat's lock) whenever the occupant changes: the
    /// transport's cached view is good while it has not moved.
    changes: Arc<AtomicU32>,
}

fn lock(m: &Mutex<Seat>) -> MutexGuard<'_, Seat> {
    // A panic while seated leaves the data consistent enough to go on.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl SlotHandle {
    /// Seats `t` (a new session of the link); an earlier occupant is stopped.
    pub fn install(&self, t: Seated) {
        let mut s = lock(&self.seat);
        if let Some(mut old) = s.t.take() {
            old.stop();
        }
        s.epoch = s.epoch.wrapping_add(1);
        s.t = Some(t);
        self.changes.fetch_add(1, Ordering::AcqRel);
    }

    /// Unseats and stops the occupant: the link goes down. The vdev is being
    /// removed, so its transport is not used after this.
    pub fn remove(&self) {
        let mut s = lock(&self.seat);
        if let Some(mut t) = s.t.take() {
            t.stop();
        }
        self.changes.fetch_add(1, Ordering::AcqRel);
    }

    /// True while an instance is seated.
    pub fn is_seated(&self) -> bool {
        lock(&self.seat).t.is_some()
    }
}

/// The rpmsg transport with a seat (see the module docs).
pub struct SlotTransport {
    seat: Arc<Mutex<Seat>>,
    v: View,
}

/// What the transport's `&self` methods report, copied from the occupant.
struct View {
    changes: Arc<AtomicU32>,
    /// `changes` when `session` was taken from the occupant (after this
    /// transport's last call into it); `None`: look under the lock.
    cached_at: Option<u32>,
    /// The link session as of `cached_at`.
    session: Option<u32>,
    /// The (epoch, occupant session) the reported regions, sizes and names
    /// were copied at: they change only with the session.
    viewed: Option<(u32, Option<u32>)>,
    role: &'static str,
    local: LocalCpu,
    remote: RemoteCpu,
    tx: Region,
    rx: Region,
    tx_size: usize,
    rx_size: usize,
}

impl fmt::Debug for SlotTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlotTransport")
            .field("role", &self.v.role)
            .field("local", &self.v.local)
            .field("remote", &self.v.remote)
            .finish_non_exhaustive()
    }
}

impl SlotTransport {
    /// An empty seat for the link `local` → `remote` (the platform's names;
    /// a seated instance's config-space names win). `role` is shown in dumps
    /// while the seat is empty; `region` is any region (reported while
    /// empty).
    pub fn new(
        role: &'static str,
        local: LocalCpu,
        remote: RemoteCpu,
        region: Region,
    ) -> (SlotTransport, SlotHandle) {
        let seat = Arc::new(Mutex::new(Seat::default()));
        let changes = Arc::new(AtomicU32::new(0));
        (
            SlotTransport {
                seat: seat.clone(),
                v: View {
                    changes: changes.clone(),
                    cached_at: None,
                    session: None,
                    viewed: None,
                    role,
                    local,
                    remote,
                    tx: region.clone(),
                    rx: region,
                    tx_size: 0,
                    rx_size: 0,
                },
            },
            SlotHandle { seat, changes },
        )
    }

    /// Copies the occupant's regions (only when they changed: this runs
    /// on every transport call).
    fn view(t: &dyn RpmsgTransport, tx: &mut Region, rx: &mut Region) {
        let same = |a: &Region, b: &Region| a.base_addr() == b.base_addr() && a.len() == b.len();
        if !same(tx, t.tx_region()) {
            *tx = t.tx_region().clone();
        }
        if !same(rx, t.rx_region()) {
            *rx = t.rx_region().clone();
        }
    }

    fn with<R>(
        &mut self,
        f: impl FnOnce(&mut dyn RpmsgTransport) -> Result<R, TransportError>,
    ) -> Result<R, TransportError> {
        // One lock for the call and the refresh. An occupant's session
        // (and with it what the view copies) changes in `poll` (status
        // changes, restarts) or in a call that fails (a broken ring takes
        // it down): a call that succeeded leaves the view as it was, unless
        // the handle swapped occupants since the view was taken.
        let mut s = lock(&self.seat);
        let r = match s.t.as_mut() {
            Some(t) => f(t.t_mut()),
            None => Err(TransportError::LinkDown),
        };
        if r.is_err() || self.v.cached_at != Some(self.v.changes.load(Ordering::Acquire)) {
            self.v.refresh(&s);
        }
        r
    }
}

impl View {
    /// Refreshes what `&self` methods report from the occupant, with the
    /// seat locked (`s`): the session every time (cheap); the regions, sizes
    /// and names when the session moved (an up occupant set them up when it
    /// came up: they stay until its session ends) or while it is down (not
    /// the hot path; it tears them down on its own time).
    fn refresh(&mut self, s: &Seat) {
        // Read under the lock: the handle bumps it under the lock too.
        let at = self.changes.load(Ordering::Acquire);
        let Some(t) = &s.t else {
            self.session = None;
            self.cached_at = Some(at);
            return;
        };
        let t = t.t();
        let inner = t.link_session();
        self.session = inner.map(|i| (s.epoch << 16) | (i & 0xffff));
        self.cached_at = Some(at);
        let key = Some((s.epoch, inner));
        if self.viewed != key || inner.is_none() {
            self.viewed = key;
            SlotTransport::view(t, &mut self.tx, &mut self.rx);
            self.tx_size = t.tx_buffer_size();
            self.rx_size = t.rx_buffer_size();
            self.remote = t.remote_cpu();
            self.local = t.local_cpu();
        }
    }
}

impl RpmsgTransport for SlotTransport {
    fn role(&self) -> &str {
        self.v.role
    }

    fn local_cpu(&self) -> LocalCpu {
        self.v.local
    }

    fn remote_cpu(&self) -> RemoteCpu {
        self.v.remote
    }

    fn features(&self) -> RpmsgFeatures {
        lock(&self.seat)
            .t
            .as_ref()
            .map(|t| t.t().features())
            .unwrap_or_default()
    }

    fn link_session(&self) -> Option<u32> {
        // The occupant's session changes only in calls through this
        // transport (which cache it) or when the handle swaps occupants.
        if self.v.cached_at == Some(self.v.changes.load(Ordering::Acquire)) {
            return self.v.session;
        }
        let s = lock(&self.seat);
        let inner = s.t.as_ref()?.t().link_session()?;
        Some((s.epoch << 16) | (inner & 0xffff))
    }

    fn tx_buffer_size(&self) -> usize {
        self.v.tx_size
    }

    fn rx_buffer_size(&self) -> usize {
        self.v.rx_size
    }

    fn tx_region(&self) -> &Region {
        &self.v.tx
    }

    fn rx_region(&self) -> &Region {
        &self.v.rx
    }

    fn poll(&mut self) -> Result<(), TransportError> {
        let mut s = lock(&self.seat);
        let r = {
            match s.t.as_mut() {
                None => Ok(()),
                Some(seated) => {
                    let r = seated.t_mut().poll();
                    // The device asked for a reset or broke a ring: the driver
                    // starts a new session by itself.
                    if let Seated::Driver(d) = seated {
                        if matches!(
                            d.down_reason(),
                            Some(DownReason::NeedsReset | DownReason::Broken(_))
                        ) {
                            log::warn!(
                                "rpmsg-virtio: the link to {} broke ({}); restarting it",
                                d.remote_cpu(),
                                d.down_reason().map(|r| r.to_string()).unwrap_or_default()
                            );
                            if let Err(e) = d.restart() {
                                log::warn!("rpmsg-virtio: restart failed: {e}");
                            }
                        }
                    }
                    r
                }
            }
        };
        self.v.refresh(&s);
        r
    }

    fn get_tx(&mut self) -> Result<Option<TxBuf>, TransportError> {
        self.with(|t| t.get_tx())
    }

    fn send(&mut self, buf: TxBuf, len: usize) -> Result<(), TransportError> {
        self.with(|t| t.send(buf, len))
    }

    fn release_tx(&mut self, buf: TxBuf) -> Result<(), TransportError> {
        self.with(|t| t.release_tx(buf))
    }

    fn recv(&mut self) -> Result<Option<RxBuf>, TransportError> {
        self.with(|t| t.recv())
    }

    fn release_rx(&mut self, buf: RxBuf) -> Result<(), TransportError> {
        self.with(|t| t.release_rx(buf))
    }

    fn buffer_stats(&self) -> BufferStats {
        lock(&self.seat)
            .t
            .as_ref()
            .map(|t| t.t().buffer_stats())
            .unwrap_or_default()
    }

    fn describe(&self, out: &mut dyn fmt::Write) -> fmt::Result {
        let s = lock(&self.seat);
        match &s.t {
            Some(t) => t.t().describe(out),
            None => writeln!(
                out,
                "rpmsg-virtio: no vdev (the remoteproc link is not running)"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_seat_is_a_down_link_with_the_platform_names() {
        let (t, h) = SlotTransport::new(
            "virtio driver",
            LocalCpu::new("server").unwrap(),
            RemoteCpu::new("proxy").unwrap(),
            Region::new_heap(16),
        );
        assert!(!h.is_seated());
        let mut link = rptun::rpmsg::Link::new(t);
        link.poll().unwrap();
        assert!(!link.is_up());
        assert_eq!(link.remote_cpu().as_str(), "proxy");
        let d = link.dump().to_string();
        assert!(d.contains("remote proxy role virtio driver down"), "{d}");
        assert!(d.contains("no vdev"), "{d}");
        h.remove();
    }
}
