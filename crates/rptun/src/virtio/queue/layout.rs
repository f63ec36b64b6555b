//! Where the parts of a split ring sit in a region.
#![forbid(unsafe_code)]

use super::{QueueError, DESC_SIZE, MAX_QUEUE_SIZE};
use crate::shm::Region;

/// Region offsets of a split ring's three parts.
///
/// The legacy layout ([`QueueLayout::legacy`]) packs them one after the
/// other; a modern transport may place them anywhere, so the fields are
/// public. The queue constructors check every part against the region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLayout {
    /// Region offset of the descriptor table (`num` × 16 bytes).
    pub desc: usize,
    /// Region offset of the avail ring (`u16 flags, u16 idx, u16 ring[num],
    /// u16 used_event`).
    pub avail: usize,
    /// Region offset of the used ring (`u16 flags, u16 idx,
    /// {u32 id, u32 len}[num], u16 avail_event`).
    pub used: usize,
    /// Queue size: a power of two from 1 to 32768.
    pub num: u16,
}

/// Byte offsets of the legacy layout relative to the ring start.
struct Rel {
    avail: u64,
    used: u64,
    /// End of the used ring without `avail_event`.
    used_end: u64,
}

fn legacy_rel(pa: u64, num: u16, align: u32) -> Result<Rel, QueueError> {
    check_num(num, u32::from(MAX_QUEUE_SIZE))?;
    if !align.is_power_of_two() || align < 4 {
        return Err(QueueError::BadAlign { align });
    }
    let bad = QueueError::BadRingAddr { pa };
    if pa % 2 != 0 {
        return Err(bad);
    }
    let n = u64::from(num);
    let avail = n * DESC_SIZE as u64;
    // flags, idx, ring[num], used_event
    let avail_end = avail + 4 + 2 * n + 2;
    let a = u64::from(align);
    // Align the ABSOLUTE address of the used ring, as Linux's and OpenAMP's
    // vring_init do (the ring start itself need not be aligned).
    let used_pa = pa
        .checked_add(avail_end)
        .and_then(|e| e.checked_add(a - 1))
        .ok_or(bad)?
        & !(a - 1);
    let used = used_pa - pa;
    let used_end = used + 4 + 8 * n;
    // The ring, avail_event included, must not wrap the address space.
    pa.checked_add(used_end + 2).ok_or(bad)?;
    Ok(Rel {
        avail,
        used,
        used_end,
    })
}

pub(super) fn check_num(num: u16, max: u32) -> Result<(), QueueError> {
    if !num.is_power_of_two() || u32::from(num) > max {
        return Err(QueueError::BadSize {
            num: u32::from(num),
            max,
        });
    }
    Ok(())
}

fn to_usize(v: u64, pa: u64) -> Result<usize, QueueError> {
    usize::try_from(v).map_err(|_| QueueError::BadRingAddr { pa })
}

impl QueueLayout {
    /// Legacy layout of a ring that starts at region offset `offset`, whose
    /// absolute "physical" address is `pa`: the descriptor table, then the
    /// avail ring, then the used ring at the next multiple of `align` of the
    /// *physical* address (DESIGN.md §4).
    ///
    /// `num` must be a power of two up to 32768, `align` a power of two of at
    /// least 4, and `pa` even.
    pub fn legacy(offset: usize, pa: u64, num: u16, align: u32) -> Result<QueueLayout, QueueError> {
        let rel = legacy_rel(pa, num, align)?;
        let bad = QueueError::BadRingAddr { pa };
        let at = |r: u64| -> Result<usize, QueueError> {
            offset.checked_add(to_usize(r, pa)?).ok_or(bad)
        };
        // The end of the ring must be representable too.
        at(rel.used_end + 2)?;
        Ok(QueueLayout {
            desc: offset,
            avail: at(rel.avail)?,
            used: at(rel.used)?,
            num,
        })
    }

    /// Bytes from the ring start to the end of the used ring, `avail_event`
    /// included: what a legacy ring at `pa` occupies. Linux's `vring_size()`
    /// agrees when `pa` is aligned to `align`.
    pub fn legacy_size(pa: u64, num: u16, align: u32) -> Result<usize, QueueError> {
        let rel = legacy_rel(pa, num, align)?;
        to_usize(rel.used_end + 2, pa)
    }

    /// Bytes from the ring start to the end of the used ring *without* the
    /// trailing `avail_event`: what OpenAMP's (and so NuttX's) `vring_size()`
    /// reserves. Rings packed this way overlap the next ring's first bytes
    /// with `avail_event`, which is harmless only while EVENT_IDX is not
    /// negotiated (the NuttX simulator's rpmsg vring0 is such a ring). Use it
    /// to reproduce such a layout; allocate with [`QueueLayout::legacy_size`].
    pub fn legacy_size_without_avail_event(
        pa: u64,
        num: u16,
        align: u32,
    ) -> Result<usize, QueueError> {
        let rel = legacy_rel(pa, num, align)?;
        to_usize(rel.used_end, pa)
    }

    /// Region offset of descriptor `i`.
    pub fn desc_at(&self, i: u16) -> usize {
        self.desc.saturating_add(usize::from(i) * DESC_SIZE)
    }

    /// Region offset of `avail.flags`.
    pub fn avail_flags(&self) -> usize {
        self.avail
    }

    /// Region offset of `avail.idx`.
    pub fn avail_idx(&self) -> usize {
        self.avail.saturating_add(2)
    }

    /// Region offset of `avail.ring[slot]`.
    pub fn avail_ring(&self, slot: u16) -> usize {
        self.avail.saturating_add(4 + 2 * usize::from(slot))
    }

    /// Region offset of `used_event` (the avail ring's last field).
    pub fn used_event(&self) -> usize {
        self.avail.saturating_add(4 + 2 * usize::from(self.num))
    }

    /// Region offset of `used.flags`.
    pub fn used_flags(&self) -> usize {
        self.used
    }

    /// Region offset of `used.idx`.
    pub fn used_idx(&self) -> usize {
        self.used.saturating_add(2)
    }

    /// Region offset of `used.ring[slot]` (`u32 id, u32 len`).
    pub fn used_elem(&self, slot: u16) -> usize {
        self.used.saturating_add(4 + 8 * usize::from(slot))
    }

    /// Region offset of `avail_event` (the used ring's last field).
    pub fn avail_event(&self) -> usize {
        self.used.saturating_add(4 + 8 * usize::from(self.num))
    }

    /// Checks the layout against `region`: `num` a power of two up to `max`;
    /// descriptor table, avail ring (with `used_event`) and used ring (with
    /// `avail_event` only when `event_idx`) inside the region; the index and
    /// flag fields naturally aligned in memory.
    pub fn check(&self, region: &Region, max: u32, event_idx: bool) -> Result<(), QueueError> {
        check_num(self.num, max)?;
        let n = usize::from(self.num);
        region.check(self.desc, n * DESC_SIZE)?;
        region.check(self.avail, 4 + 2 * n + 2)?;
        region.check(self.used, 4 + 8 * n + if event_idx { 2 } else { 0 })?;
        // Alignment of the atomically accessed fields.
        region.atomic_u16(self.avail_flags())?;
        region.atomic_u16(self.used_flags())?;
        region.atomic_u16(self.used_event())?;
        if event_idx {
            region.atomic_u16(self.avail_event())?;
        }
        Ok(())
    }
}
