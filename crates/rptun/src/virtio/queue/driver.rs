//! Driver side of a split virtqueue.
#![forbid(unsafe_code)]

use super::layout::QueueLayout;
use super::{
    vring_need_event, Buf, QueueError, QueueIndices, Used, Window, DESC_SIZE,
    VRING_AVAIL_F_NO_INTERRUPT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VRING_USED_F_NO_NOTIFY,
};
use crate::shm::{fence_full, fence_release, Region};

/// The driver side of a split virtqueue.
///
/// `N` is the largest queue size this instance can drive: it sizes the local
/// shadow (about 10 bytes per descriptor). The ring's `num` must be a power
/// of two no larger than `N`.
///
/// Use: [`add`](Self::add) chains, [`publish`](Self::publish) them (and
/// notify the device when it returns `true`), later
/// [`pop_used`](Self::pop_used) completions. To wait for completions without
/// losing an interrupt: handle everything, then call
/// [`enable_interrupts`](Self::enable_interrupts); if it returns `true`,
/// more arrived meanwhile: handle them too.
///
/// The shadow holds every descriptor link and chain length the driver wrote,
/// so nothing the device scribbles over the descriptor table or the avail
/// ring can confuse the driver: it never reads them back.
pub struct DriverQueue<const N: usize> {
    region: Region,
    layout: QueueLayout,
    window: Window,
    event_idx: bool,
    num: u16,
    /// Free list and chain links (local, trusted).
    next: [u16; N],
    /// Per head: descriptors in its chain; 0 = not an outstanding head.
    chain_len: [u16; N],
    /// Per head: device-writable bytes posted (saturated at `u32::MAX`).
    writable: [u32; N],
    /// Per head: the avail index its ring entry was written at.
    avail_pos: [u16; N],
    free_head: u16,
    num_free: u16,
    /// Next avail index to fill (includes chains not yet published).
    avail_idx: u16,
    /// `avail.idx` as last stored.
    published: u16,
    /// Next used entry to consume.
    last_used: u16,
    /// `used.idx` as last loaded.
    used_seen: u16,
    /// Chains added and not yet returned.
    in_flight: u16,
    /// Shadow of `avail.flags`.
    avail_flags: u16,
    interrupts: bool,
    broken: bool,
}

impl<const N: usize> core::fmt::Debug for DriverQueue<N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DriverQueue")
            .field("layout", &self.layout)
            .field("window", &self.window)
            .field("event_idx", &self.event_idx)
            .field("num_free", &self.num_free)
            .field("indices", &self.indices())
            .finish()
    }
}

impl<const N: usize> DriverQueue<N> {
    /// Takes over the ring at `layout` in `region` as its driver: checks the
    /// layout and the window against the region, then zeroes the memory the
    /// driver owns: descriptor table, avail ring (`used_event` included) and
    /// used ring (`avail_event` only when `event_idx`, since OpenAMP-packed
    /// rings lend that field to the next ring). Indices start at 0 and
    /// interrupts are enabled.
    ///
    /// `event_idx`: `VIRTIO_RING_F_EVENT_IDX` was negotiated.
    pub fn new(
        region: Region,
        layout: QueueLayout,
        window: Window,
        event_idx: bool,
    ) -> Result<Self, QueueError> {
        let max = u32::try_from(N.min(usize::from(super::MAX_QUEUE_SIZE))).unwrap_or(0);
        layout.check(&region, max, event_idx)?;
        window.check(region.len())?;
        let n = usize::from(layout.num);
        region.fill(layout.desc, n * DESC_SIZE, 0)?;
        region.fill(layout.avail, 4 + 2 * n + 2, 0)?;
        region.fill(layout.used, 4 + 8 * n + if event_idx { 2 } else { 0 }, 0)?;
        fence_release();
        let mut next = [0u16; N];
        for (i, v) in next.iter_mut().enumerate() {
            // Truncation only for i >= 65535, beyond any usable `num`.
            *v = (i + 1) as u16;
        }
        Ok(DriverQueue {
            region,
            layout,
            window,
            event_idx,
            num: layout.num,
            next,
            chain_len: [0; N],
            writable: [0; N],
            avail_pos: [0; N],
            free_head: 0,
            num_free: layout.num,
            avail_idx: 0,
            published: 0,
            last_used: 0,
            used_seen: 0,
            in_flight: 0,
            avail_flags: 0,
            interrupts: true,
            broken: false,
        })
    }

    /// Queue size.
    pub fn num(&self) -> u16 {
        self.num
    }

    /// Free descriptors.
    pub fn num_free(&self) -> usize {
        usize::from(self.num_free)
    }

    /// True once the device broke the protocol; every call then fails with
    /// [`QueueError::Broken`].
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Chains added and not yet returned by the device.
    pub fn in_flight(&self) -> usize {
        usize::from(self.in_flight)
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
            avail_idx: self.published,
            used_idx: self.used_seen,
            last_avail: self.avail_idx,
            last_used: self.last_used,
            in_flight: self.in_flight,
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

    fn mask(&self) -> u16 {
        self.num - 1
    }

    /// Records `r`'s error, marking the queue broken if it is one that does.
    fn track<T>(&mut self, r: Result<T, QueueError>) -> Result<T, QueueError> {
        if let Err(e) = &r {
            if e.breaks_queue() {
                self.broken = true;
            }
        }
        r
    }

    /// Writes a chain of device-readable buffers followed by device-writable
    /// ones, and its avail ring entry. The device does not see it before
    /// [`publish`](Self::publish). Returns the chain's head, which
    /// [`pop_used`](Self::pop_used) reports when the device returns it.
    ///
    /// Every buffer must lie inside the window. Zero-length buffers are
    /// allowed. Fails without side effects on a full queue.
    pub fn add(&mut self, readable: &[Buf], writable: &[Buf]) -> Result<u16, QueueError> {
        self.check_broken()?;
        let total = readable.len() + writable.len();
        if total == 0 {
            return Err(QueueError::EmptyChain);
        }
        if total > usize::from(self.num) {
            return Err(QueueError::TooManyBufs {
                count: total,
                num: self.num,
            });
        }
        if total > usize::from(self.num_free) {
            return Err(QueueError::Full {
                needed: total,
                free: usize::from(self.num_free),
            });
        }
        let mut cap: u32 = 0;
        for b in readable {
            self.window.to_pa_range(b.offset, b.len as usize)?;
        }
        for b in writable {
            self.window.to_pa_range(b.offset, b.len as usize)?;
            cap = cap.saturating_add(b.len);
        }
        let r = self.write_chain(readable, writable, total, cap);
        self.track(r)
    }

    fn write_chain(
        &mut self,
        readable: &[Buf],
        writable: &[Buf],
        total: usize,
        cap: u32,
    ) -> Result<u16, QueueError> {
        let head = self.free_head;
        let mut idx = head;
        let bufs = readable
            .iter()
            .map(|b| (b, 0))
            .chain(writable.iter().map(|b| (b, VRING_DESC_F_WRITE)));
        for (i, (b, wflag)) in bufs.enumerate() {
            let last = i + 1 == total;
            let next = self.next[usize::from(idx)];
            let (flags, next_field) = if last {
                (wflag, 0)
            } else {
                (wflag | VRING_DESC_F_NEXT, next)
            };
            let pa = self.window.to_pa_range(b.offset, b.len as usize)?;
            let mut d = [0u8; DESC_SIZE];
            d[0..8].copy_from_slice(&pa.to_le_bytes());
            d[8..12].copy_from_slice(&b.len.to_le_bytes());
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            d[14..16].copy_from_slice(&next_field.to_le_bytes());
            self.region.write_bytes(self.layout.desc_at(idx), &d)?;
            if last {
                // The free list continues after the chain's last descriptor.
                self.free_head = next;
            } else {
                idx = next;
            }
        }
        let slot = self.avail_idx & self.mask();
        self.region.write_u16(self.layout.avail_ring(slot), head)?;
        let h = usize::from(head);
        // total <= num <= 32768 (checked by the caller).
        self.chain_len[h] = total as u16;
        self.writable[h] = cap;
        self.avail_pos[h] = self.avail_idx;
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.in_flight += 1;
        self.num_free -= total as u16;
        Ok(head)
    }

    /// Makes every chain added since the last publish visible to the device
    /// (stores `avail.idx` with release, then a full fence) and says whether
    /// the device wants a notification (`used.flags` NO_NOTIFY, or the
    /// `avail_event` index with EVENT_IDX). Returns `false` when there was
    /// nothing to publish.
    pub fn publish(&mut self) -> Result<bool, QueueError> {
        self.check_broken()?;
        let r = self.publish_inner();
        self.track(r)
    }

    fn publish_inner(&mut self) -> Result<bool, QueueError> {
        let old = self.published;
        let new = self.avail_idx;
        if old == new {
            return Ok(false);
        }
        self.region.store_u16(self.layout.avail_idx(), new)?;
        self.published = new;
        fence_full();
        if self.event_idx {
            let event = self.region.load_u16(self.layout.avail_event())?;
            Ok(vring_need_event(event, new, old))
        } else {
            let flags = self.region.load_u16(self.layout.used_flags())?;
            Ok(flags & VRING_USED_F_NO_NOTIFY == 0)
        }
    }

    /// Chains the device may legally hold: added and published.
    fn published_in_flight(&self) -> u16 {
        self.in_flight - self.avail_idx.wrapping_sub(self.published)
    }

    /// Loads `used.idx` and checks that the device did not return more
    /// chains than it holds.
    fn load_used_idx(&mut self) -> Result<u16, QueueError> {
        let idx = self.region.load_u16(self.layout.used_idx())?;
        let max = self.published_in_flight();
        if idx.wrapping_sub(self.last_used) > max {
            return Err(QueueError::IndexJump {
                from: self.last_used,
                to: idx,
                max,
            });
        }
        self.used_seen = idx;
        Ok(idx)
    }

    /// True when the device has returned chains not yet popped.
    pub fn has_used(&mut self) -> Result<bool, QueueError> {
        self.check_broken()?;
        let r = self.load_used_idx();
        let idx = self.track(r)?;
        Ok(idx != self.last_used)
    }

    /// Takes the next chain the device returned, if any.
    ///
    /// The used entry is validated: its id must be the head of a chain the
    /// device holds (added, published, not yet returned) and its length at
    /// most the chain's writable bytes. For chains without writable buffers
    /// the reported length is ignored and 0 is returned: OpenAMP and NuttX
    /// devices report the buffer size there.
    pub fn pop_used(&mut self) -> Result<Option<Used>, QueueError> {
        self.check_broken()?;
        let r = self.pop_used_inner();
        self.track(r)
    }

    fn pop_used_inner(&mut self) -> Result<Option<Used>, QueueError> {
        if self.last_used == self.used_seen && self.load_used_idx()? == self.last_used {
            return Ok(None);
        }
        let mut e = [0u8; 8];
        let slot = self.last_used & self.mask();
        self.region
            .read_bytes(self.layout.used_elem(slot), &mut e)?;
        let id = u32::from_le_bytes([e[0], e[1], e[2], e[3]]);
        let len = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
        if id >= u32::from(self.num) {
            return Err(QueueError::BadIndex {
                index: id,
                num: self.num,
            });
        }
        let head = id as u16;
        let h = usize::from(head);
        let unpublished = self.avail_idx.wrapping_sub(self.published);
        let pos_from_published = self.avail_pos[h].wrapping_sub(self.published);
        if self.chain_len[h] == 0 || pos_from_published < unpublished {
            return Err(QueueError::NotOutstanding { id: head });
        }
        let capacity = self.writable[h];
        let len = if capacity == 0 {
            0
        } else if len > capacity {
            return Err(QueueError::UsedLenTooLarge {
                head,
                len,
                capacity,
            });
        } else {
            len
        };
        // Return the chain to the free list, following our own links.
        let n = self.chain_len[h];
        let mut last = head;
        for _ in 1..n {
            last = self.next[usize::from(last)];
        }
        self.next[usize::from(last)] = self.free_head;
        self.free_head = head;
        self.num_free += n;
        self.chain_len[h] = 0;
        self.in_flight -= 1;
        self.last_used = self.last_used.wrapping_add(1);
        if self.event_idx && self.interrupts {
            self.region
                .store_u16(self.layout.used_event(), self.last_used)?;
        }
        Ok(Some(Used { head, len }))
    }

    /// Asks the device to interrupt on new used chains (clears
    /// `avail.flags` NO_INTERRUPT, or sets `used_event` to the next entry we
    /// expect), then returns whether chains are already waiting — if so,
    /// pop them: the device may not interrupt for those.
    pub fn enable_interrupts(&mut self) -> Result<bool, QueueError> {
        self.check_broken()?;
        let r = self.enable_inner();
        self.track(r)
    }

    fn enable_inner(&mut self) -> Result<bool, QueueError> {
        self.interrupts = true;
        if self.event_idx {
            self.region
                .store_u16(self.layout.used_event(), self.last_used)?;
        } else {
            self.avail_flags &= !VRING_AVAIL_F_NO_INTERRUPT;
            self.region
                .store_u16(self.layout.avail_flags(), self.avail_flags)?;
        }
        fence_full();
        Ok(self.load_used_idx()? != self.last_used)
    }

    /// Asks the device not to interrupt (sets `avail.flags` NO_INTERRUPT, or
    /// moves `used_event` out of reach). A hint: the device may still
    /// interrupt.
    pub fn disable_interrupts(&mut self) -> Result<(), QueueError> {
        self.check_broken()?;
        self.interrupts = false;
        let r = if self.event_idx {
            self.region.store_u16(
                self.layout.used_event(),
                self.last_used.wrapping_add(0x8000),
            )
        } else {
            self.avail_flags |= VRING_AVAIL_F_NO_INTERRUPT;
            self.region
                .store_u16(self.layout.avail_flags(), self.avail_flags)
        };
        self.track(r.map_err(QueueError::from))
    }
}
