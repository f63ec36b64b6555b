//! Resource-table handling for a link: the master's assignment and the
//! remote's adoption.
//!
//! Both sides copy the table out of shared memory, parse the copy with the
//! validating parser ([`ResourceTable`]), and summarise each vdev in a
//! [`VdevInfo`]: where its live fields are in the region, its role on this
//! side, its notify ids and its buffer pool. Nothing here trusts the live
//! table after the copy: the transports re-read and re-validate the fields
//! the peer may write. [`LinkTable::verify`] tells whether the live table
//! still has the structure that was validated (a peer that rewrites vring
//! addresses, notify ids, entry offsets or carveouts after boot).
//!
//! - **Master** ([`assign`]): notify ids given as ANY are assigned
//!   sequentially in table order, a vdev before its vrings (lowest id that no
//!   entry claims, as OpenAMP does; NuttX's simulator table thus gets rng0
//!   vdev 0 / vring 1, rng1 2 / 3, rpmsg 4 / 5, 6). Vrings whose `da` is 0 or
//!   ANY are cut from the front of the vdev's carveout (the i-th vdev pairs
//!   with the i-th carveout), each taking
//!   `align_up(vring_size(num, align), align)` bytes with OpenAMP's
//!   `vring_size` (no trailing `avail_event`). The values are written back
//!   into the shared table.
//! - **Remote** ([`adopt`]): the same validation; every notify id and vring
//!   address must have been assigned by the master.
//!
//! Whatever follows the vrings in a vdev's carveout is that vdev's buffer
//! pool ([`VdevInfo::pool`]), used by the side that is the vdev's driver.
//!
//! Errors that make the whole table unusable (parse errors, duplicate notify
//! ids, too many vdevs) fail the call; a problem local to one vdev (a missing
//! or too small carveout, a bad vring) only marks that vdev as faulty, so the
//! others still come up.
#![forbid(unsafe_code)]

use crate::remoteproc::addr::AddrError;
use crate::remoteproc::platform::{LinkMap, TableLocation};
use crate::shm::{Region, ShmError};
use crate::virtio::queue::{QueueLayout, MAX_QUEUE_SIZE};
use crate::virtio::Role;
use crate::wire::rsc::{
    Carveout, Located, ParseOptions, ResourceTable, RscError, VdevEntry, ANY, CARVEOUT_LEN,
    RSC_CARVEOUT, RSC_DEVMEM, RSC_TRACE, RSC_VDEV, TRACE_LEN, VDEV_LEN, VRING_LEN,
};

/// Most vdevs a table may have.
pub const MAX_VDEVS: usize = 8;
/// Most vrings a vdev may have (more make that vdev faulty).
pub const MAX_VRINGS: usize = 8;

/// Errors of resource-table handling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    /// The table's bytes could not be read.
    #[error("reading the resource table failed: {0}")]
    Shm(#[from] ShmError),
    /// The table is malformed.
    #[error("the resource table is invalid: {0}")]
    Rsc(#[from] RscError),
    /// The table does not start on a 4-byte boundary of the region.
    #[error(
        "the resource table at region offset {offset:#x} is not 4-byte aligned; place it on a \
         word boundary (its header words are the command mailbox)"
    )]
    Misaligned {
        /// Region offset of the table.
        offset: usize,
    },
    /// More vdevs than this build supports.
    #[error("the resource table has {count} vdevs, more than the {max} supported")]
    TooManyVdevs {
        /// vdevs in the table.
        count: usize,
        /// The limit ([`MAX_VDEVS`]).
        max: usize,
    },
    /// Two entries claim the same notify id.
    #[error(
        "notify id {id} is used twice in the resource table; give every vdev and vring its own \
         id, or ANY (0xffffffff) to let the master assign them"
    )]
    DuplicateNotifyId {
        /// The id.
        id: u32,
    },
    /// A vdev has more vrings than supported.
    #[error("vdev {vdev} has {count} vrings, more than the {max} supported")]
    TooManyVrings {
        /// vdev ordinal.
        vdev: usize,
        /// `num_of_vrings`.
        count: usize,
        /// The limit ([`MAX_VRINGS`]).
        max: usize,
    },
    /// A vdev needs a carveout (for its vrings) and has none.
    #[error(
        "vdev {vdev} has vrings to place but no carveout (the i-th vdev uses the i-th \
         carveout); add a carveout entry or give the vrings fixed addresses"
    )]
    NoCarveout {
        /// vdev ordinal.
        vdev: usize,
    },
    /// A carveout has neither a device nor a physical address.
    #[error(
        "carveout {carveout} has neither da nor pa (both ANY); give it an address in the \
         shared memory"
    )]
    CarveoutUnplaced {
        /// carveout ordinal.
        carveout: usize,
    },
    /// A carveout is not inside the shared memory.
    #[error("carveout {carveout} is not inside the shared memory: {cause}")]
    CarveoutUnmapped {
        /// carveout ordinal.
        carveout: usize,
        /// Why translation failed.
        cause: AddrError,
    },
    /// A carveout is too small for the vrings cut from it.
    #[error(
        "vdev {vdev}'s carveout holds {have} bytes but its vrings need {need}; enlarge the \
         carveout or shrink the vrings"
    )]
    CarveoutTooSmall {
        /// vdev ordinal.
        vdev: usize,
        /// Bytes needed.
        need: u64,
        /// Carveout length.
        have: u32,
    },
    /// A vring's size or alignment is unusable.
    #[error("vdev {vdev} vring {vring}: {reason}")]
    BadVring {
        /// vdev ordinal.
        vdev: usize,
        /// vring index.
        vring: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// A vring is not inside the shared memory.
    #[error("vdev {vdev} vring {vring} is not inside the shared memory: {cause}")]
    VringUnmapped {
        /// vdev ordinal.
        vdev: usize,
        /// vring index.
        vring: usize,
        /// Why translation failed.
        cause: AddrError,
    },
    /// The table changed after it was validated.
    #[error(
        "the resource table changed after it was validated (entry offsets, vring addresses or \
         sizes, notify ids or carveouts were rewritten); the link is unusable: restart it"
    )]
    ChangedAfterBoot,
    /// The master left a value for the remote unassigned.
    #[error(
        "vdev {vdev}: the master did not assign its {what}; the table is not ready (or the \
         master is not a remoteproc master)"
    )]
    Unassigned {
        /// vdev ordinal.
        vdev: usize,
        /// What is missing.
        what: &'static str,
    },
}

/// The part of a carveout a vdev's driver allocates buffers from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolRange {
    /// Region offset of the first byte.
    pub offset: usize,
    /// Length in bytes.
    pub len: usize,
    /// Physical address of the first byte.
    pub pa: u64,
}

/// One usable vdev of a link, as this side sees it.
///
/// Offsets are region offsets of the live fields in the shared table; the
/// counts (`num_vrings`, `config_len`) and notify ids are the validated
/// snapshot and bound every later access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VdevInfo {
    /// Ordinal among the table's vdevs.
    pub index: usize,
    /// Position of the entry in the table's offset array.
    pub entry: usize,
    /// Region offset of the vdev entry (its type word).
    pub offset: usize,
    /// virtio device id.
    pub id: u32,
    /// The vdev's own notify id (config changes).
    pub notifyid: u32,
    /// This side's role for the vdev.
    pub role: Role,
    /// Config-space length in bytes.
    pub config_len: usize,
    /// Buffer pool (what follows the vrings in the vdev's carveout).
    pub pool: Option<PoolRange>,
    num_vrings: u8,
    vring_ids: [u32; MAX_VRINGS],
}

impl VdevInfo {
    /// Number of vrings.
    pub fn num_vrings(&self) -> u16 {
        u16::from(self.num_vrings)
    }

    /// The notify id of vring `q`.
    pub fn vring_notifyid(&self, q: u16) -> Option<u32> {
        if q >= self.num_vrings() {
            return None;
        }
        self.vring_ids.get(usize::from(q)).copied()
    }

    /// The queue whose vring has notify id `id`.
    pub fn queue_of(&self, id: u32) -> Option<u16> {
        (0..self.num_vrings()).find(|&q| self.vring_notifyid(q) == Some(id))
    }

    /// Region offset of `dfeatures`.
    pub fn dfeatures_offset(&self) -> usize {
        self.offset + 12
    }

    /// Region offset of `gfeatures`.
    pub fn gfeatures_offset(&self) -> usize {
        self.offset + 16
    }

    /// Region offset of the status byte.
    pub fn status_offset(&self) -> usize {
        self.offset + 24
    }

    /// Region offset of vring entry `q` (its `da` field), if `q` exists.
    pub fn vring_offset(&self, q: u16) -> Option<usize> {
        (q < self.num_vrings()).then(|| self.offset + VDEV_LEN + usize::from(q) * VRING_LEN)
    }

    /// Region offset of the config space.
    pub fn config_offset(&self) -> usize {
        self.offset + VDEV_LEN + usize::from(self.num_vrings) * VRING_LEN
    }
}

/// A vdev that cannot be used, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VdevFault {
    /// Ordinal among the table's vdevs.
    pub index: usize,
    /// virtio device id.
    pub id: u32,
    /// What is wrong.
    pub error: TableError,
}

/// A validated resource table: its vdevs, usable or faulty.
#[derive(Debug, Clone)]
pub struct LinkTable {
    /// Where the table is.
    pub location: TableLocation,
    /// Bytes the table spans (header, offsets and entries).
    pub extent: usize,
    count: usize,
    vdevs: [Option<Result<VdevInfo, VdevFault>>; MAX_VDEVS],
    /// Entries in the offset array, as validated.
    entries: usize,
    /// Digest of the fields nobody may change after validation.
    digest: u64,
}

impl LinkTable {
    /// Number of vdevs (usable and faulty).
    pub fn len(&self) -> usize {
        self.count
    }

    /// True when the table has no vdev.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The vdevs in table order.
    pub fn vdevs(&self) -> impl Iterator<Item = &Result<VdevInfo, VdevFault>> + '_ {
        self.vdevs[..self.count].iter().flatten()
    }

    /// Vdev `index`.
    pub fn vdev(&self, index: usize) -> Option<&Result<VdevInfo, VdevFault>> {
        self.vdevs.get(index)?.as_ref()
    }

    /// Checks that the live table still has the structure that was
    /// validated: header (`ver`, `num`), the offset array, every entry's type
    /// and, for carveouts, devmem and trace entries, all their fields; for
    /// vdevs everything but the fields the two sides write at run time
    /// (`gfeatures`, `status`, config space). The header's reserved words
    /// (the command mailbox) are not covered.
    ///
    /// A peer that rewrites any of these after boot (vring addresses, sizes
    /// or notify ids, entry offsets, the entry count, carveouts) gets
    /// [`TableError::ChangedAfterBoot`]: the transports work from the
    /// validated copy, so the change cannot mislead them, but the two sides
    /// no longer agree on the link and it must be restarted.
    pub fn verify(&self, region: &Region) -> Result<(), TableError> {
        match digest(region, self.location.offset, self.entries) {
            Ok(d) if d == self.digest => Ok(()),
            _ => Err(TableError::ChangedAfterBoot),
        }
    }
}

/// FNV-1a style hash over `len` bytes of `region` at `offset`, eight
/// bytes at a time (a change detector, not a cryptographic check: the peer
/// could only aim a collision at itself).
fn hash_span(h: &mut u64, region: &Region, offset: usize, len: usize) -> Result<(), ShmError> {
    let mut buf = [0u8; 128];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(buf.len());
        let chunk = &mut buf[..n];
        region.read_bytes(offset + done, chunk)?;
        let mut words = chunk.chunks_exact(8);
        for w in &mut words {
            let mut x = [0u8; 8];
            x.copy_from_slice(w);
            *h = (*h ^ u64::from_le_bytes(x)).wrapping_mul(0x0100_0000_01b3);
        }
        for &b in words.remainder() {
            *h = (*h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        done += n;
    }
    Ok(())
}

/// Digest of the immutable fields of the table at `base` with `entries`
/// entries, walking the live offset array (any change to the array changes
/// the digest, so following it is as good as following the validated one).
/// Bounded by `entries` and by the region.
fn digest(region: &Region, base: usize, entries: usize) -> Result<u64, ShmError> {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    // ver, num (the reserved words are the mailbox).
    hash_span(&mut h, region, base, 8)?;
    hash_span(&mut h, region, base + 16, 4 * entries)?;
    for i in 0..entries {
        let off = region.read_u32(base + 16 + 4 * i)? as usize;
        let at = base.checked_add(off).ok_or(ShmError::OutOfBounds {
            offset: base,
            len: off,
            size: region.len(),
        })?;
        let ty = region.read_u32(at)?;
        match ty {
            RSC_CARVEOUT | RSC_DEVMEM => hash_span(&mut h, region, at, CARVEOUT_LEN)?,
            RSC_TRACE => hash_span(&mut h, region, at, TRACE_LEN)?,
            RSC_VDEV => {
                // type, id, notifyid, dfeatures | config_len |
                // num_of_vrings, reserved[2] | the vrings.
                hash_span(&mut h, region, at, 16)?;
                hash_span(&mut h, region, at + 20, 4)?;
                hash_span(&mut h, region, at + 25, 3)?;
                let n = usize::from(region.read_u8(at + 25)?);
                hash_span(&mut h, region, at + VDEV_LEN, n * VRING_LEN)?;
            }
            _ => hash_span(&mut h, region, at, 4)?,
        }
    }
    Ok(h)
}

/// This side's role for a vdev: `is_master XOR (reserved[0] == 0)`, where
/// `false` is the driver (DESIGN.md §3).
pub fn vdev_role(is_master: bool, reserved0: u8) -> Role {
    if is_master ^ (reserved0 == 0) {
        Role::Device
    } else {
        Role::Driver
    }
}

/// Bytes a vring takes from the front of a carveout, as NuttX/OpenAMP cut
/// them: `align_up(vring_size(num, align), align)`, where `vring_size`
/// assumes an aligned start and ends at the used ring's last element.
pub fn vring_stride(num: u16, align: u32) -> Option<u64> {
    let size = QueueLayout::legacy_size_without_avail_event(0, num, align).ok()? as u64;
    let a = u64::from(align);
    Some(size.checked_add(a - 1)? & !(a - 1))
}

/// Checks a vring's `num` and `align` from the table.
fn check_vring(vdev: usize, vring: usize, num: u32, align: u32) -> Result<u16, TableError> {
    let bad = |reason| TableError::BadVring {
        vdev,
        vring,
        reason,
    };
    let n = u16::try_from(num).map_err(|_| bad("num is larger than 32768"))?;
    if n == 0 || !n.is_power_of_two() || n > MAX_QUEUE_SIZE {
        return Err(bad("num must be a power of two from 1 to 32768"));
    }
    if !align.is_power_of_two() || align < 4 {
        return Err(bad("align must be a power of two of at least 4"));
    }
    Ok(n)
}

/// Assigns the master's values (notify ids, vring addresses) in the table at
/// `loc` and returns its summary. `scratch` receives the copy that is parsed:
/// it should hold the whole table (a shorter buffer parses a prefix).
pub fn assign(
    region: &Region,
    loc: TableLocation,
    map: &LinkMap,
    scratch: &mut [u8],
) -> Result<LinkTable, TableError> {
    process(region, loc, map, scratch, true)
}

/// Adopts the master's table at `loc` (remote side): validates it as
/// [`assign`] does and checks that every value was assigned.
pub fn adopt(
    region: &Region,
    loc: TableLocation,
    map: &LinkMap,
    scratch: &mut [u8],
) -> Result<LinkTable, TableError> {
    process(region, loc, map, scratch, false)
}

/// A notify-id field: the owning vdev, its table offset and value.
#[derive(Debug, Clone, Copy, Default)]
struct IdSlot {
    vdev: usize,
    /// `None` for the vdev's own id.
    vring: Option<usize>,
    field: usize,
    value: u32,
}

const MAX_IDS: usize = MAX_VDEVS * (1 + MAX_VRINGS);

fn process(
    region: &Region,
    loc: TableLocation,
    map: &LinkMap,
    scratch: &mut [u8],
    master: bool,
) -> Result<LinkTable, TableError> {
    if loc.offset % 4 != 0 {
        return Err(TableError::Misaligned { offset: loc.offset });
    }
    region.check(loc.offset, loc.max_len)?;
    let n = loc.max_len.min(scratch.len());
    let bytes = &mut scratch[..n];
    region.read_bytes(loc.offset, bytes)?;
    let table = ResourceTable::parse(bytes, &ParseOptions::default())?;

    let count = table.vdevs().count();
    if count > MAX_VDEVS {
        return Err(TableError::TooManyVdevs {
            count,
            max: MAX_VDEVS,
        });
    }
    let mut entries: [Option<VdevEntry<'_>>; MAX_VDEVS] = [None; MAX_VDEVS];
    for (slot, v) in entries.iter_mut().zip(table.vdevs()) {
        *slot = Some(v);
    }
    let entry_index = |v: &VdevEntry<'_>| {
        table
            .entries()
            .position(|e| e.offset() == v.offset)
            .unwrap_or(0)
    };
    let mut carveouts: [Option<Located<Carveout>>; MAX_VDEVS] = [None; MAX_VDEVS];
    for (slot, c) in carveouts.iter_mut().zip(table.carveouts()) {
        *slot = Some(c);
    }

    // Per-vdev faults found so far.
    let mut faults: [Option<TableError>; MAX_VDEVS] = [None; MAX_VDEVS];

    // Notify ids: gather, check uniqueness of the explicit ones, assign ANY.
    let mut ids = [IdSlot::default(); MAX_IDS];
    let mut nids = 0;
    for (i, v) in entries.iter().enumerate() {
        let Some(v) = v else { continue };
        if v.num_vrings() > MAX_VRINGS {
            faults[i] = Some(TableError::TooManyVrings {
                vdev: i,
                count: v.num_vrings(),
                max: MAX_VRINGS,
            });
            continue;
        }
        ids[nids] = IdSlot {
            vdev: i,
            vring: None,
            field: v.notifyid_offset(),
            value: v.notifyid,
        };
        nids += 1;
        for (k, r) in v.vrings().enumerate() {
            ids[nids] = IdSlot {
                vdev: i,
                vring: Some(k),
                field: r.notifyid_offset(),
                value: r.notifyid,
            };
            nids += 1;
        }
    }
    let ids = &mut ids[..nids];
    for (a, slot) in ids.iter().enumerate() {
        if slot.value != ANY && ids[..a].iter().any(|o| o.value == slot.value) {
            return Err(TableError::DuplicateNotifyId { id: slot.value });
        }
    }
    let mut next: u32 = 0;
    for a in 0..ids.len() {
        if ids[a].value != ANY {
            continue;
        }
        if !master {
            let v = ids[a].vdev;
            faults[v].get_or_insert(TableError::Unassigned {
                vdev: v,
                what: if ids[a].vring.is_some() {
                    "vring notify id"
                } else {
                    "notify id"
                },
            });
            continue;
        }
        // At most MAX_IDS explicit ids can be skipped over.
        while ids.iter().any(|o| o.value == next) {
            next += 1;
        }
        ids[a].value = next;
        region.write_u32(loc.offset + ids[a].field, next)?;
        next += 1;
    }

    let mut out = LinkTable {
        location: loc,
        extent: table.extent(),
        count,
        vdevs: [None; MAX_VDEVS],
        entries: table.num_entries(),
        digest: 0,
    };
    for (i, v) in entries.iter().enumerate() {
        let Some(v) = v else { continue };
        let result = match faults[i] {
            Some(error) => Err(error),
            None => vdev_info(region, loc, map, master, i, v, carveouts[i], ids),
        };
        out.vdevs[i] = Some(match result {
            Ok(mut info) => {
                info.entry = entry_index(v);
                Ok(info)
            }
            Err(error) => Err(VdevFault {
                index: i,
                id: v.id,
                error,
            }),
        });
    }
    // Last: the master's assignments are part of what must not change.
    out.digest = digest(region, loc.offset, out.entries)?;
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn vdev_info(
    region: &Region,
    loc: TableLocation,
    map: &LinkMap,
    master: bool,
    index: usize,
    v: &VdevEntry<'_>,
    carveout: Option<Located<Carveout>>,
    ids: &[IdSlot],
) -> Result<VdevInfo, TableError> {
    let mut vring_ids = [0u32; MAX_VRINGS];
    let mut notifyid = v.notifyid;
    for s in ids.iter().filter(|s| s.vdev == index) {
        match s.vring {
            None => notifyid = s.value,
            Some(k) => vring_ids[k] = s.value,
        }
    }

    // The carveout: (da, region offset, pa, len).
    let co = match carveout {
        None => None,
        Some(c) => {
            let len = u64::from(c.len);
            let unmapped = |cause| TableError::CarveoutUnmapped {
                carveout: index,
                cause,
            };
            let (da, pa) = if c.da != ANY {
                (
                    u64::from(c.da),
                    map.da_to_pa(u64::from(c.da), len).map_err(unmapped)?,
                )
            } else if c.pa != ANY {
                let pa = u64::from(c.pa);
                (map.pa_to_da(pa, len).map_err(unmapped)?, pa)
            } else {
                return Err(TableError::CarveoutUnplaced { carveout: index });
            };
            let offset = map.pa_to_offset(pa, len).map_err(unmapped)?;
            Some((da, offset, pa, c.len))
        }
    };

    // Vrings: validate; place those without an address (master).
    let mut cursor: u64 = 0;
    for (k, r) in v.vrings().enumerate() {
        let num = check_vring(index, k, r.num, r.align)?;
        let stride = vring_stride(num, r.align).ok_or(TableError::BadVring {
            vdev: index,
            vring: k,
            reason: "the ring size overflows",
        })?;
        let da = if r.da == 0 || r.da == ANY {
            if !master {
                return Err(TableError::Unassigned {
                    vdev: index,
                    what: "vring address",
                });
            }
            let (co_da, _, _, co_len) = co.ok_or(TableError::NoCarveout { vdev: index })?;
            let end = cursor + stride;
            if end > u64::from(co_len) {
                return Err(TableError::CarveoutTooSmall {
                    vdev: index,
                    need: end,
                    have: co_len,
                });
            }
            let da = co_da + cursor;
            let da32 = u32::try_from(da).map_err(|_| TableError::VringUnmapped {
                vdev: index,
                vring: k,
                cause: AddrError::Unmapped {
                    addr: da,
                    len: stride,
                },
            })?;
            region.write_u32(loc.offset + r.da_offset(), da32)?;
            cursor = end;
            da
        } else {
            let da = u64::from(r.da);
            // A fixed ring at the front of the carveout is not buffer space.
            if let Some((co_da, _, _, co_len)) = co {
                if da >= co_da && da < co_da + u64::from(co_len) {
                    cursor = cursor.max((da - co_da + stride).min(u64::from(co_len)));
                }
            }
            da
        };
        let unmapped = |cause| TableError::VringUnmapped {
            vdev: index,
            vring: k,
            cause,
        };
        let pa = map.da_to_pa(da, stride).map_err(unmapped)?;
        map.pa_to_offset(pa, stride).map_err(unmapped)?;
    }

    let pool = co.and_then(|(_, offset, pa, len)| {
        let used = usize::try_from(cursor).ok()?;
        let len = usize::try_from(len).ok()?.checked_sub(used)?;
        (len > 0).then_some(PoolRange {
            offset: offset + used,
            len,
            pa: pa + cursor,
        })
    });

    Ok(VdevInfo {
        index,
        entry: 0,
        offset: loc.offset + v.offset,
        id: v.id,
        notifyid,
        role: vdev_role(master, v.reserved[0]),
        config_len: v.config().len(),
        pool,
        // checked against MAX_VRINGS (<= 255) by the caller
        num_vrings: v.num_vrings() as u8,
        vring_ids,
    })
}

#[cfg(all(test, feature = "alloc"))]
mod tests {
    use super::*;
    use crate::remoteproc::addr::{AddrEnv, AddrEnvEntry, AddressMap, PhysMap};
    use crate::wire::rsc::{Name, TableBuilder, Vdev, Vring, ANY};

    const BOOT: &[u8] = include_bytes!("../../tests/vectors/after-boot.bin");
    const RSC: usize = 0x18;

    fn map_for(len: usize, base: u64) -> LinkMap {
        let env = AddrEnv::from_entries(&[AddrEnvEntry {
            pa: base,
            da: 0,
            size: len as u64,
        }])
        .unwrap();
        AddressMap::new(env, PhysMap::new(base, len).unwrap())
    }

    fn region_with(bytes: &[u8]) -> Region {
        let r = Region::new_heap(bytes.len());
        r.write_bytes(0, bytes).unwrap();
        r
    }

    /// Offsets (from the object start) of the fields the master assigns in
    /// the NuttX simulator table: (notify id fields, vring da fields).
    fn sim_assigned_fields(r: &Region) -> (Vec<usize>, Vec<usize>) {
        let mut buf = vec![0u8; r.len() - RSC];
        r.read_bytes(RSC, &mut buf).unwrap();
        let t = ResourceTable::parse(&buf, &ParseOptions::default()).unwrap();
        let mut ids = Vec::new();
        let mut das = Vec::new();
        for v in t.vdevs() {
            ids.push(RSC + v.notifyid_offset());
            for ring in v.vrings() {
                ids.push(RSC + ring.notifyid_offset());
                das.push(RSC + ring.da_offset());
            }
        }
        (ids, das)
    }

    #[test]
    fn master_assignment_reproduces_the_nuttx_simulator_snapshot() {
        let r = region_with(BOOT);
        let (ids, das) = sim_assigned_fields(&r);
        // Undo what NuttX's master assigned: ANY notify ids, vring da 0.
        for &f in &ids {
            r.write_u32(f, ANY).unwrap();
        }
        for &f in &das {
            r.write_u32(f, 0).unwrap();
        }
        let loc = TableLocation {
            offset: RSC,
            max_len: BOOT.len() - RSC,
        };
        let map = map_for(BOOT.len(), 0xf3d5_c000);
        let mut scratch = vec![0u8; loc.max_len];
        let t = assign(&r, loc, &map, &mut scratch).unwrap();
        // Every byte of the object is as NuttX left it (status etc. untouched).
        let mut now = vec![0u8; BOOT.len()];
        r.read_bytes(0, &mut now).unwrap();
        assert!(
            now == BOOT,
            "assigned table differs from the NuttX snapshot"
        );

        let infos: Vec<VdevInfo> = t.vdevs().map(|v| *v.as_ref().unwrap()).collect();
        assert_eq!(infos.len(), 3);
        assert_eq!(
            infos
                .iter()
                .map(|i| (i.id, i.notifyid, i.vring_notifyid(0), i.vring_notifyid(1)))
                .collect::<Vec<_>>(),
            vec![
                (4, 0, Some(1), None),
                (4, 2, Some(3), None),
                (7, 4, Some(5), Some(6))
            ]
        );
        assert!(infos.iter().all(|i| i.role == Role::Driver));
        assert_eq!(infos[2].config_len, 64);
        assert_eq!(infos[2].entry, 4);
        // rpmsg pool: carveout 0x201cc + 2 * 0xe0
        let pool = infos[2].pool.unwrap();
        assert_eq!(pool.offset, 0x201cc + 0x1c0);
        assert_eq!(pool.len, 0x10000 - 0x1c0);
        assert_eq!(pool.pa, 0xf3d5_c000 + 0x201cc + 0x1c0);
        assert_eq!(vring_stride(8, 8), Some(0xe0));
    }

    #[test]
    fn remote_adopts_the_snapshot_as_device() {
        let r = region_with(BOOT);
        let loc = TableLocation {
            offset: RSC,
            max_len: BOOT.len() - RSC,
        };
        let map = map_for(BOOT.len(), 0xf3d5_c000);
        let mut scratch = vec![0u8; loc.max_len];
        let t = adopt(&r, loc, &map, &mut scratch).unwrap();
        let infos: Vec<VdevInfo> = t.vdevs().map(|v| *v.as_ref().unwrap()).collect();
        assert!(infos.iter().all(|i| i.role == Role::Device));
        assert_eq!(infos[2].vring_notifyid(1), Some(6));
        assert_eq!(infos[2].queue_of(5), Some(0));
        assert_eq!(infos[0].vring_offset(0), Some(64 + 28));
        assert_eq!(infos[2].config_offset(), 131412);
        // nothing was written
        let mut now = vec![0u8; BOOT.len()];
        r.read_bytes(0, &mut now).unwrap();
        assert!(now == BOOT);
    }

    #[test]
    fn roles_follow_reserved0_and_the_side() {
        assert_eq!(vdev_role(true, 0), Role::Driver);
        assert_eq!(vdev_role(false, 0), Role::Device);
        assert_eq!(vdev_role(true, 1), Role::Device);
        assert_eq!(vdev_role(false, 1), Role::Driver);
    }

    fn small_table(vdevs: &[(u32, u32, Vring)], carveouts: &[Carveout]) -> Vec<u8> {
        let mut b = TableBuilder::new_vec((vdevs.len() + carveouts.len()) as u32).unwrap();
        for (id, notifyid, ring) in vdevs {
            let v = Vdev {
                id: *id,
                notifyid: *notifyid,
                ..Vdev::default()
            };
            b.add_vdev(&v, &[*ring], &[]).unwrap();
        }
        for c in carveouts {
            b.add_carveout(c).unwrap();
        }
        b.finish_vec().unwrap()
    }

    fn ring(da: u32, num: u32, notifyid: u32) -> Vring {
        Vring {
            da,
            align: 16,
            num,
            notifyid,
            reserved: 0,
        }
    }

    fn carveout(da: u32, len: u32) -> Carveout {
        Carveout {
            da,
            pa: ANY,
            len,
            name: Name::new("shm").unwrap(),
            ..Carveout::default()
        }
    }

    fn run(bytes: &[u8], master: bool) -> Result<LinkTable, TableError> {
        let r = Region::new_heap(0x4000);
        r.write_bytes(0, bytes).unwrap();
        let loc = TableLocation {
            offset: 0,
            max_len: 0x400,
        };
        let mut scratch = vec![0u8; 0x400];
        process(&r, loc, &map_for(0x4000, 0x1000_0000), &mut scratch, master)
    }

    #[test]
    fn explicit_ids_are_kept_and_skipped_by_assignment() {
        let t = small_table(
            &[(4, 1, ring(0, 8, ANY)), (4, ANY, ring(0, 8, 0))],
            &[carveout(0x1000, 0x1000), carveout(0x2000, 0x1000)],
        );
        let lt = run(&t, true).unwrap();
        let ids: Vec<_> = lt
            .vdevs()
            .map(|v| {
                let v = v.as_ref().unwrap();
                (v.notifyid, v.vring_notifyid(0).unwrap())
            })
            .collect();
        assert_eq!(ids, vec![(1, 2), (3, 0)]);
    }

    #[test]
    fn duplicate_ids_refuse_the_table() {
        let t = small_table(&[(4, 3, ring(0, 8, 3))], &[carveout(0x1000, 0x1000)]);
        assert_eq!(
            run(&t, true).unwrap_err(),
            TableError::DuplicateNotifyId { id: 3 }
        );
    }

    #[test]
    fn per_vdev_problems_fault_only_that_vdev() {
        // vdev 0: num 6 (not a power of two); vdev 1: fine; vdev 2: carveout
        // too small; vdev 3: no carveout at all.
        let t = small_table(
            &[
                (4, ANY, ring(0, 6, ANY)),
                (4, ANY, ring(0, 8, ANY)),
                (4, ANY, ring(0, 256, ANY)),
                (4, ANY, ring(ANY, 8, ANY)),
            ],
            &[
                carveout(0x1000, 0x1000),
                carveout(0x2000, 0x1000),
                carveout(0x3000, 0x100),
            ],
        );
        let lt = run(&t, true).unwrap();
        let v: Vec<_> = lt.vdevs().collect();
        assert!(matches!(
            v[0],
            Err(VdevFault {
                error: TableError::BadVring { vdev: 0, .. },
                ..
            })
        ));
        let ok = v[1].as_ref().unwrap();
        assert_eq!(
            ok.pool.unwrap().offset,
            0x2000 + vring_stride(8, 16).unwrap() as usize
        );
        assert!(matches!(
            v[2],
            Err(VdevFault {
                error: TableError::CarveoutTooSmall { vdev: 2, .. },
                ..
            })
        ));
        assert!(matches!(
            v[3],
            Err(VdevFault {
                error: TableError::NoCarveout { vdev: 3 },
                ..
            })
        ));
    }

    #[test]
    fn remote_refuses_unassigned_values() {
        let t = small_table(
            &[(4, ANY, ring(0x1000, 8, 1)), (4, 2, ring(0, 8, 3))],
            &[carveout(0x1000, 0x1000), carveout(0x2000, 0x1000)],
        );
        let lt = run(&t, false).unwrap();
        let v: Vec<_> = lt.vdevs().collect();
        assert!(matches!(
            v[0],
            Err(VdevFault {
                error: TableError::Unassigned {
                    what: "notify id",
                    ..
                },
                ..
            })
        ));
        assert!(matches!(
            v[1],
            Err(VdevFault {
                error: TableError::Unassigned {
                    what: "vring address",
                    ..
                },
                ..
            })
        ));
    }

    #[test]
    fn structural_errors_and_misplacement_refuse_the_table() {
        let mut t = small_table(&[(4, ANY, ring(0, 8, ANY))], &[carveout(0x1000, 0x1000)]);
        // num = 1000
        t[4..8].copy_from_slice(&1000u32.to_le_bytes());
        assert!(matches!(run(&t, true), Err(TableError::Rsc(_))));
        let r = Region::new_heap(0x100);
        let map = map_for(0x100, 0);
        let mut s = [0u8; 64];
        let bad = TableLocation {
            offset: 2,
            max_len: 16,
        };
        assert_eq!(
            assign(&r, bad, &map, &mut s).unwrap_err(),
            TableError::Misaligned { offset: 2 }
        );
        let outside = TableLocation {
            offset: 0xf0,
            max_len: 0x20,
        };
        assert!(matches!(
            assign(&r, outside, &map, &mut s),
            Err(TableError::Shm(_))
        ));
        // a carveout outside the shared memory
        let t = small_table(&[(4, ANY, ring(0, 8, ANY))], &[carveout(0x8000, 0x1000)]);
        let lt = run(&t, true).unwrap();
        assert!(matches!(
            lt.vdev(0),
            Some(Err(VdevFault {
                error: TableError::CarveoutUnmapped { .. },
                ..
            }))
        ));
    }
}
