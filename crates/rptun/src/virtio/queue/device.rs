//! Device ("vhost") side of a split virtqueue.
#![forbid(unsafe_code)]

use super::layout::QueueLayout;
use super::{
    vring_need_event, QueueError, QueueIndices, Window, DESC_SIZE, MAX_QUEUE_SIZE,
    VRING_AVAIL_F_NO_INTERRUPT, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
    VRING_USED_F_NO_NOTIFY,
};
use crate::shm::{fence_full, Region};

/// One buffer of a popped chain: validated and translated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Seg {
    /// Region offset of the buffer (inside the window, already checked).
    pub offset: usize,
    /// Length in bytes.
    pub len: u32,
    /// True when the device may write the buffer (otherwise it only reads
    /// it).
    pub writable: bool,
}

/// A validated copy of one descriptor chain, taken by [`DeviceQueue::pop`].
///
/// Holds up to `M` buffers: the device-readable ones first, then the
/// device-writable ones (the order the spec requires; chains breaking it are
/// rejected). The buffers' bytes stay in shared memory: the driver can still
/// change them, so validate what you read from them.
#[derive(Debug, Clone)]
pub struct Chain<const M: usize = 16> {
    head: u16,
    segs: [Seg; M],
    n: usize,
    n_readable: usize,
    readable_len: u64,
    writable_len: u64,
}

impl<const M: usize> Chain<M> {
    fn new(head: u16) -> Self {
        Chain {
            head,
            segs: [Seg::default(); M],
            n: 0,
            n_readable: 0,
            readable_len: 0,
            writable_len: 0,
        }
    }

    /// Head descriptor index: pass it to [`DeviceQueue::push_used`].
    pub fn head(&self) -> u16 {
        self.head
    }

    /// All buffers, readable ones first.
    pub fn segs(&self) -> &[Seg] {
        &self.segs[..self.n]
    }

    /// The device-readable buffers.
    pub fn readable(&self) -> &[Seg] {
        &self.segs[..self.n_readable]
    }

    /// The device-writable buffers.
    pub fn writable(&self) -> &[Seg] {
        &self.segs[self.n_readable..self.n]
    }

    /// Number of buffers.
    pub fn len(&self) -> usize {
        self.n
    }

    /// True for a chain without buffers (never returned by `pop`).
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Total bytes of the readable buffers.
    pub fn readable_len(&self) -> u64 {
        self.readable_len
    }

    /// Total bytes of the writable buffers.
    pub fn writable_len(&self) -> u64 {
        self.writable_len
    }

    /// Copies readable bytes, starting `pos` bytes into the readable part,
    /// into `dst`. Returns the number of bytes copied (less than `dst.len()`
    /// at the end of the readable part).
    pub fn read_at(&self, region: &Region, pos: u64, dst: &mut [u8]) -> Result<usize, QueueError> {
        let mut skip = pos;
        let mut done = 0;
        for s in self.readable() {
            if done == dst.len() {
                break;
            }
            let len = u64::from(s.len);
            if skip >= len {
                skip -= len;
                continue;
            }
            // skip < len <= u32::MAX, so these casts are lossless.
            let take = ((len - skip) as usize).min(dst.len() - done);
            region.read_bytes(s.offset + skip as usize, &mut dst[done..done + take])?;
            done += take;
            skip = 0;
        }
        Ok(done)
    }

    /// Copies `src` into the writable buffers, starting `pos` bytes into the
    /// writable part. Returns the number of bytes written (less than
    /// `src.len()` at the end of the writable part).
    pub fn write_at(&self, region: &Region, pos: u64, src: &[u8]) -> Result<usize, QueueError> {
        let mut skip = pos;
        let mut done = 0;
        for s in self.writable() {
            if done == src.len() {
                break;
            }
            let len = u64::from(s.len);
            if skip >= len {
                skip -= len;
                continue;
            }
            let take = ((len - skip) as usize).min(src.len() - done);
            region.write_bytes(s.offset + skip as usize, &src[done..done + take])?;
            done += take;
            skip = 0;
        }
        Ok(done)
    }
}

/// The device ("vhost") side of a split virtqueue.
///
/// Use: [`pop`](Self::pop) chains, serve them, [`push_used`](Self::push_used)
/// each (in any order), then interrupt the driver if
/// [`should_notify`](Self::should_notify) says so. To wait for work without
/// losing a notification: handle everything, then call
/// [`enable_notifications`](Self::enable_notifications); if it returns
/// `true`, more arrived meanwhile.
///
/// The device keeps no per-descriptor state: each chain is walked once,
/// bounded by the queue size and by the caller's capacity `M`, and copied
/// into a [`Chain`].
///
/// Indirect descriptors are not supported: a chain using one fails with
/// [`QueueError::IndirectUnsupported`] (and breaks the queue), so a device
/// built on this must not offer `VIRTIO_RING_F_INDIRECT_DESC`.
#[derive(Debug)]
pub struct DeviceQueue {
    region: Region,
    layout: QueueLayout,
    window: Window,
    event_idx: bool,
    num: u16,
    /// Next avail entry to consume.
    last_avail: u16,
    /// `avail.idx` as last loaded.
    avail_seen: u16,
    /// `used.idx` as we published it.
    next_used: u16,
    /// `next_used` when `should_notify` last ran.
    signalled_used: u16,
    /// Shadow of `used.flags`.
    used_flags: u16,
    notifications: bool,
    broken: bool,
}

impl DeviceQueue {
    /// Attaches to the ring at `layout` in `region` as its device. Writes
    /// nothing: the driver owns the ring's initialisation.
    ///
    /// Starts from the ring's current state: `used.idx` as found is where
    /// both our used index and our next avail entry start, i.e. every chain
    /// the driver made available and no device returned yet is (again)
    /// available. For a fresh ring that is 0/0; for a device that restarts
    /// on a running ring, chains the previous instance popped but never
    /// returned are served again. Fails with [`QueueError::IndexJump`] if
    /// `avail.idx` is more than `num` ahead of `used.idx`.
    ///
    /// The suppression fields are left as found; call
    /// [`enable_notifications`](Self::enable_notifications) or
    /// [`disable_notifications`](Self::disable_notifications) to set them.
    ///
    /// `event_idx`: `VIRTIO_RING_F_EVENT_IDX` was negotiated.
    pub fn new(
        region: Region,
        layout: QueueLayout,
        window: Window,
        event_idx: bool,
    ) -> Result<Self, QueueError> {
        layout.check(&region, u32::from(MAX_QUEUE_SIZE), event_idx)?;
        window.check(region.len())?;
        let used = region.load_u16(layout.used_idx())?;
        let avail = region.load_u16(layout.avail_idx())?;
        if avail.wrapping_sub(used) > layout.num {
            return Err(QueueError::IndexJump {
                from: used,
                to: avail,
                max: layout.num,
            });
        }
        let used_flags = region.load_u16(layout.used_flags())?;
        Ok(DeviceQueue {
            region,
            layout,
            window,
            event_idx,
            num: layout.num,
            last_avail: used,
            avail_seen: avail,
            next_used: used,
            signalled_used: used,
            used_flags,
            notifications: event_idx || used_flags & VRING_USED_F_NO_NOTIFY == 0,
            broken: false,
        })
    }

    /// Queue size.
    pub fn num(&self) -> u16 {
        self.num
    }

    /// True once the driver broke the protocol; every call then fails with
    /// [`QueueError::Broken`].
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Chains popped and not yet pushed back.
    pub fn in_flight(&self) -> usize {
        usize::from(self.last_avail.wrapping_sub(self.next_used))
    }

    /// The ring's layout.
    pub fn layout(&self) -> &QueueLayout {
        &self.layout
    }

    /// The address window descriptors are translated through.
    pub fn window(&self) -> &Window {
        &self.window
    }

    /// The region holding the ring and the buffers.
    pub fn region(&self) -> &Region {
        &self.region
    }

    /// Local indices, for dumps.
    pub fn indices(&self) -> QueueIndices {
        QueueIndices {
            num: self.num,
            avail_idx: self.avail_seen,
            used_idx: self.next_used,
            last_avail: self.last_avail,
            last_used: self.next_used,
            in_flight: self.last_avail.wrapping_sub(self.next_used),
            broken: self.broken,
        }
    }

    fn check_broken(&self) -> Result<(), QueueError> {
        if self.broken {
            Err(QueueError::Broken)
        } else {
            Ok(())
        }
    }

    fn track<T>(&mut self, r: Result<T, QueueError>) -> Result<T, QueueError> {
        if let Err(e) = &r {
            if e.breaks_queue() {
                self.broken = true;
            }
        }
        r
    }

    /// Loads `avail.idx` and checks the driver did not move it more than
    /// `num` ahead of what we consumed, nor more than `num` ahead of the
    /// oldest chain we have not returned: a driver has only `num`
    /// descriptors, and chains still in flight hold some of them.
    fn load_avail_idx(&mut self) -> Result<u16, QueueError> {
        let idx = self.region.load_u16(self.layout.avail_idx())?;
        if idx.wrapping_sub(self.last_avail) > self.num {
            return Err(QueueError::IndexJump {
                from: self.last_avail,
                to: idx,
                max: self.num,
            });
        }
        // (Found by the queue_device fuzz target: without this, a driver
        // could make `num` more chains available while some were in flight,
        // and the device held more than `num` chains.)
        if idx.wrapping_sub(self.next_used) > self.num {
            return Err(QueueError::IndexJump {
                from: self.next_used,
                to: idx,
                max: self.num,
            });
        }
        self.avail_seen = idx;
        Ok(idx)
    }

    /// True when the driver has made chains available that we have not
    /// popped.
    pub fn has_avail(&mut self) -> Result<bool, QueueError> {
        self.check_broken()?;
        let r = self.load_avail_idx();
        let idx = self.track(r)?;
        Ok(idx != self.last_avail)
    }

    /// Takes the next available chain, if any, as a validated copy of at
    /// most `M` buffers.
    ///
    /// The walk reads at most `min(num, M + 1)` descriptors. It fails (and
    /// breaks the queue) on: an avail index more than `num` ahead
    /// ([`QueueError::IndexJump`]), a head or `next` index out of range
    /// ([`QueueError::BadIndex`]), a chain longer than the queue
    /// ([`QueueError::ChainLoop`]) or than `M` ([`QueueError::ChainTooLong`]),
    /// a buffer outside the window ([`QueueError::AddrOutOfWindow`]), a
    /// readable buffer after a writable one
    /// ([`QueueError::ReadableAfterWritable`]), an indirect descriptor
    /// ([`QueueError::IndirectUnsupported`]).
    pub fn pop<const M: usize>(&mut self) -> Result<Option<Chain<M>>, QueueError> {
        self.check_broken()?;
        let r = self.pop_inner();
        self.track(r)
    }

    fn pop_inner<const M: usize>(&mut self) -> Result<Option<Chain<M>>, QueueError> {
        if self.last_avail == self.avail_seen && self.load_avail_idx()? == self.last_avail {
            return Ok(None);
        }
        let num = self.num;
        let slot = self.last_avail & (num - 1);
        let head = self.region.read_u16(self.layout.avail_ring(slot))?;
        if head >= num {
            return Err(QueueError::BadIndex {
                index: u32::from(head),
                num,
            });
        }
        let mut chain = Chain::<M>::new(head);
        let mut idx = head;
        let mut walked: u32 = 0;
        loop {
            if walked == u32::from(num) {
                return Err(QueueError::ChainLoop { head });
            }
            walked += 1;
            let mut d = [0u8; DESC_SIZE];
            self.region.read_bytes(self.layout.desc_at(idx), &mut d)?;
            let addr = u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]);
            let len = u32::from_le_bytes([d[8], d[9], d[10], d[11]]);
            let flags = u16::from_le_bytes([d[12], d[13]]);
            let next = u16::from_le_bytes([d[14], d[15]]);
            if flags & VRING_DESC_F_INDIRECT != 0 {
                return Err(QueueError::IndirectUnsupported { head });
            }
            let writable = flags & VRING_DESC_F_WRITE != 0;
            if !writable && chain.n > chain.n_readable {
                return Err(QueueError::ReadableAfterWritable { head });
            }
            let offset = self.window.to_offset(addr, len as usize)?;
            if chain.n == M {
                return Err(QueueError::ChainTooLong { head, max: M });
            }
            chain.segs[chain.n] = Seg {
                offset,
                len,
                writable,
            };
            chain.n += 1;
            if writable {
                chain.writable_len += u64::from(len);
            } else {
                chain.n_readable += 1;
                chain.readable_len += u64::from(len);
            }
            if flags & VRING_DESC_F_NEXT == 0 {
                break;
            }
            if next >= num {
                return Err(QueueError::BadIndex {
                    index: u32::from(next),
                    num,
                });
            }
            idx = next;
        }
        self.last_avail = self.last_avail.wrapping_add(1);
        if self.event_idx && self.notifications {
            self.region
                .store_u16(self.layout.avail_event(), self.last_avail)?;
        }
        Ok(Some(chain))
    }

    /// Returns chain `head` to the driver, reporting `written` bytes written
    /// into its writable buffers: writes the used entry, then stores
    /// `used.idx` with release. Chains may be returned in any order.
    ///
    /// `head` must be a chain popped and not yet returned; the device keeps
    /// no per-chain state, so only the range and the in-flight count are
    /// checked ([`QueueError::NotInFlight`], which does not break the queue).
    pub fn push_used(&mut self, head: u16, written: u32) -> Result<(), QueueError> {
        self.check_broken()?;
        if head >= self.num || self.next_used == self.last_avail {
            return Err(QueueError::NotInFlight { head });
        }
        let slot = self.next_used & (self.num - 1);
        let mut e = [0u8; 8];
        e[0..4].copy_from_slice(&u32::from(head).to_le_bytes());
        e[4..8].copy_from_slice(&written.to_le_bytes());
        let r = self
            .region
            .write_bytes(self.layout.used_elem(slot), &e)
            .and_then(|()| {
                self.region
                    .store_u16(self.layout.used_idx(), self.next_used.wrapping_add(1))
            });
        self.track(r.map_err(QueueError::from))?;
        self.next_used = self.next_used.wrapping_add(1);
        Ok(())
    }

    /// Whether to interrupt the driver for the chains pushed since the last
    /// call: never when none were pushed; otherwise unless the driver set
    /// `avail.flags` NO_INTERRUPT or, with EVENT_IDX, unless its `used_event`
    /// was not crossed. Issues the full fence that must separate the
    /// `used.idx` store from reading those fields.
    pub fn should_notify(&mut self) -> Result<bool, QueueError> {
        self.check_broken()?;
        let r = self.should_notify_inner();
        self.track(r)
    }

    fn should_notify_inner(&mut self) -> Result<bool, QueueError> {
        let old = self.signalled_used;
        let new = self.next_used;
        if old == new {
            return Ok(false);
        }
        fence_full();
        self.signalled_used = new;
        if self.event_idx {
            let event = self.region.load_u16(self.layout.used_event())?;
            Ok(vring_need_event(event, new, old))
        } else {
            let flags = self.region.load_u16(self.layout.avail_flags())?;
            Ok(flags & VRING_AVAIL_F_NO_INTERRUPT == 0)
        }
    }

    /// Asks the driver to notify on new available chains (clears
    /// `used.flags` NO_NOTIFY, or sets `avail_event` to the next entry we
    /// expect), then returns whether chains are already waiting — if so,
    /// pop them: the driver may not notify for those.
    pub fn enable_notifications(&mut self) -> Result<bool, QueueError> {
        self.check_broken()?;
        let r = self.enable_inner();
        self.track(r)
    }

    fn enable_inner(&mut self) -> Result<bool, QueueError> {
        self.notifications = true;
        if self.event_idx {
            self.region
                .store_u16(self.layout.avail_event(), self.last_avail)?;
        } else {
            self.used_flags &= !VRING_USED_F_NO_NOTIFY;
            self.region
                .store_u16(self.layout.used_flags(), self.used_flags)?;
        }
        fence_full();
        Ok(self.load_avail_idx()? != self.last_avail)
    }

    /// Asks the driver not to notify (sets `used.flags` NO_NOTIFY, or moves
    /// `avail_event` out of reach). A hint: the driver may still notify.
    pub fn disable_notifications(&mut self) -> Result<(), QueueError> {
        self.check_broken()?;
        self.notifications = false;
        let r = if self.event_idx {
            self.region.store_u16(
                self.layout.avail_event(),
                self.last_avail.wrapping_add(0x8000),
            )
        } else {
            self.used_flags |= VRING_USED_F_NO_NOTIFY;
            self.region
                .store_u16(self.layout.used_flags(), self.used_flags)
        };
        self.track(r.map_err(QueueError::from))
    }
}
