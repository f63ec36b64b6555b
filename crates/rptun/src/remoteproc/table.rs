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
//!   address must have been assigned by the master, except the vring entries
//!   of the vdevs this side is the device of (below).
//!
//! **Vring entries of a device-role vdev** belong to its driver until the
//! driver sets DRIVER_OK (the Linux remoteproc contract: NuttX's refactored
//! master writes each vdev's vring `da` only when it creates that vdev, after
//! `bootm = OK`). For such a vdev, start-up reads the vring entries only
//! provisionally (a missing or bad value is not a fault; the summary then
//! holds ANY notify ids for its vrings) and leaves them out of the change
//! check; at DRIVER_OK, [`LinkTable::bind_vrings`] reads and validates them
//! strictly (assigned, usable size and alignment, inside the shared memory,
//! notify ids unique), and from then on [`LinkTable::verify`] covers them
//! while the driver keeps DRIVER_OK. A driver that resets the device owns
//! them again ([`LinkTable::unbind_vrings`]).
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
use crate::remoteproc::vdev::driver_ready;
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
    /// No vdev has this ordinal.
    #[error("the resource table has no vdev {index}; use the ordinals of LinkTable::vdevs")]
    NoVdev {
        /// The ordinal asked for.
        index: usize,
    },
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
/// snapshot and bound every later access. For a vdev this side is the
/// device of, the vring notify ids are provisional (as found at start-up,
/// ANY if they were not usable yet) until [`LinkTable::bind_vrings`]
/// validated them at DRIVER_OK.
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
    /// Digest of the fields nobody may change after validation (without
    /// the vring entries of the deferred vdevs).
    digest: u64,
    /// Bit `i`: vdev `i` is a device-role vdev whose vring entries belong to
    /// its driver until DRIVER_OK.
    deferred: u8,
    /// Per deferred vdev bound at DRIVER_OK, the digest of its vring entries.
    bound: [Option<u64>; MAX_VDEVS],
    /// The address map the table was validated with.
    map: LinkMap,
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
    ///
    /// The vring entries of a vdev this side is the device of are covered
    /// only once [`bind_vrings`](Self::bind_vrings) validated them, and only
    /// while the vdev's status keeps DRIVER_OK (without FAILED): until then
    /// they are its driver's to write.
    pub fn verify(&self, region: &Region) -> Result<(), TableError> {
        match digest(region, self.location.offset, self.entries, self.deferred) {
            Ok(d) if d == self.digest => {}
            _ => return Err(TableError::ChangedAfterBoot),
        }
        for (slot, want) in self.vdevs.iter().zip(&self.bound) {
            let (Some(Ok(info)), Some(want)) = (slot, want) else {
                continue;
            };
            let status = region
                .read_u8(info.status_offset())
                .map_err(|_| TableError::ChangedAfterBoot)?;
            if !driver_ready(status) {
                continue;
            }
            let mut raw = [0u8; MAX_VRINGS * VRING_LEN];
            let raw = &mut raw[..usize::from(info.num_vrings) * VRING_LEN];
            region
                .read_bytes(info.offset + VDEV_LEN, raw)
                .map_err(|_| TableError::ChangedAfterBoot)?;
            if vrings_digest(raw) != *want {
                return Err(TableError::ChangedAfterBoot);
            }
        }
        Ok(())
    }

    /// True when vdev `index` is one this side is the device of, whose
    /// vring entries its driver writes until DRIVER_OK.
    pub fn is_deferred(&self, index: usize) -> bool {
        index < MAX_VDEVS && self.deferred & (1 << index) != 0
    }

    /// Reads and validates the vring entries (`da`, `align`, `num`, notify
    /// id) of vdev `index` once its driver set DRIVER_OK, and from then on
    /// covers them in [`verify`](Self::verify). Returns the vdev's summary
    /// with the vring notify ids now validated (also kept in the table).
    /// For a vdev this side drives (or faulty), nothing is read: its summary
    /// as validated at start-up (or its fault) is returned.
    ///
    /// Call it after reading the status (the status read is the acquire
    /// that makes the driver's vring writes visible).
    ///
    /// Errors: a vring whose address or notify id is still unassigned
    /// ([`TableError::Unassigned`]), whose `num`/`align` is unusable
    /// ([`TableError::BadVring`]), that lies outside the shared memory
    /// ([`TableError::VringUnmapped`]), or a notify id another vdev or vring
    /// uses ([`TableError::DuplicateNotifyId`]). The vdev is then unusable;
    /// the other vdevs are not affected.
    pub fn bind_vrings(&mut self, region: &Region, index: usize) -> Result<VdevInfo, TableError> {
        let info = match self.vdev(index) {
            Some(Ok(info)) => *info,
            Some(Err(fault)) => return Err(fault.error),
            None => return Err(TableError::NoVdev { index }),
        };
        if !self.is_deferred(index) {
            return Ok(info);
        }
        let n = usize::from(info.num_vrings);
        let mut raw = [0u8; MAX_VRINGS * VRING_LEN];
        let raw = &mut raw[..n * VRING_LEN];
        // One read: what is validated is what is digested.
        region.read_bytes(info.offset + VDEV_LEN, raw)?;
        let mut next = info;
        for k in 0..n {
            let at = k * VRING_LEN;
            let (da, align, num, id) = (
                le32(raw, at),
                le32(raw, at + 4),
                le32(raw, at + 8),
                le32(raw, at + 12),
            );
            let num = check_vring(index, k, num, align)?;
            if da == 0 || da == ANY {
                return Err(TableError::Unassigned {
                    vdev: index,
                    what: "vring address",
                });
            }
            if id == ANY {
                return Err(TableError::Unassigned {
                    vdev: index,
                    what: "vring notify id",
                });
            }
            let stride = vring_stride(num, align).ok_or(TableError::BadVring {
                vdev: index,
                vring: k,
                reason: "the ring size overflows",
            })?;
            let unmapped = |cause| TableError::VringUnmapped {
                vdev: index,
                vring: k,
                cause,
            };
            let pa = self.map.da_to_pa(u64::from(da), stride).map_err(unmapped)?;
            self.map.pa_to_offset(pa, stride).map_err(unmapped)?;
            if id == next.notifyid
                || next.vring_ids[..k].contains(&id)
                || self.id_used_elsewhere(index, id)
            {
                return Err(TableError::DuplicateNotifyId { id });
            }
            next.vring_ids[k] = id;
        }
        self.bound[index] = Some(vrings_digest(raw));
        self.vdevs[index] = Some(Ok(next));
        Ok(next)
    }

    /// The driver of vdev `index` reset it: its vring entries are the
    /// driver's to write again, and [`verify`](Self::verify) stops covering
    /// them until the next [`bind_vrings`](Self::bind_vrings).
    pub fn unbind_vrings(&mut self, index: usize) {
        if let Some(b) = self.bound.get_mut(index) {
            *b = None;
        }
    }

    /// True when a vdev other than `index` owns notify id `id` (its own id,
    /// or a vring id that is settled: validated at start-up or bound).
    fn id_used_elsewhere(&self, index: usize, id: u32) -> bool {
        self.vdevs[..self.count]
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != index)
            .any(|(j, slot)| match slot {
                Some(Ok(o)) => {
                    let settled = !self.is_deferred(j) || self.bound[j].is_some();
                    o.notifyid == id
                        || (settled && o.vring_ids[..usize::from(o.num_vrings)].contains(&id))
                }
                _ => false,
            })
    }
}

/// The little-endian word at `at` of `raw` (0 past its end).
fn le32(raw: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    if let Some(b) = raw.get(at..at + 4) {
        w.copy_from_slice(b);
    }
    u32::from_le_bytes(w)
}

const DIGEST_SEED: u64 = 0xcbf2_9ce4_8422_2325;

/// Digest of a vdev's vring entries, as bound.
fn vrings_digest(raw: &[u8]) -> u64 {
    let mut h = DIGEST_SEED;
    hash_bytes(&mut h, raw);
    h
}

/// Folds `bytes` into `h`, eight bytes at a time.
fn hash_bytes(h: &mut u64, bytes: &[u8]) {
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        let mut x = [0u8; 8];
        x.copy_from_slice(w);
        *h = (*h ^ u64::from_le_bytes(x)).wrapping_mul(0x0100_0000_01b3);
    }
    for &b in words.remainder() {
        *h = (*h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
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
        hash_bytes(h, chunk);
        done += n;
    }
    Ok(())
}

/// Digest of the immutable fields of the table at `base` with `entries`
/// entries, walking the live offset array (any change to the array changes
/// the digest, so following it is as good as following the validated one).
/// The vring entries of the vdevs whose bit is set in `deferred` (by vdev
/// ordinal) are left out. Bounded by `entries` and by the region.
fn digest(region: &Region, base: usize, entries: usize, deferred: u8) -> Result<u64, ShmError> {
    let mut h = DIGEST_SEED;
    let mut vdev = 0usize;
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
                if vdev >= MAX_VDEVS || deferred & (1 << vdev) == 0 {
                    hash_span(&mut h, region, at + VDEV_LEN, n * VRING_LEN)?;
                }
                vdev += 1;
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

    // The vdevs this side is the device of: their driver owns the vring
    // entries until DRIVER_OK (a master still places what is unassigned).
    let mut deferred: u8 = 0;
    for (i, v) in entries.iter().enumerate() {
        if let Some(v) = v {
            if vdev_role(master, v.reserved[0]) == Role::Device {
                deferred |= 1 << i;
            }
        }
    }
    let provisional = |i: usize| !master && deferred & (1 << i) != 0;

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
        if provisional(i) {
            // Checked when the driver sets DRIVER_OK (bind_vrings).
            continue;
        }
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
        deferred,
        bound: [None; MAX_VDEVS],
        map: *map,
    };
    for (i, v) in entries.iter().enumerate() {
        let Some(v) = v else { continue };
        let result = match faults[i] {
            Some(error) => Err(error),
            None => {
                let mode = if master {
                    VringMode::Place
                } else if provisional(i) {
                    VringMode::Provisional
                } else {
                    VringMode::Check
                };
                vdev_info(region, loc, map, mode, i, v, carveouts[i], ids)
            }
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
    out.digest = digest(region, loc.offset, out.entries, deferred)?;
    Ok(out)
}

/// How start-up treats a vdev's vring entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VringMode {
    /// Master: place the unassigned ones, validate all.
    Place,
    /// Remote driver: all must be assigned and valid.
    Check,
    /// Remote device: read as found; not a fault if unusable yet (the
    /// driver may write them until DRIVER_OK).
    Provisional,
}

#[allow(clippy::too_many_arguments)]
fn vdev_info(
    region: &Region,
    loc: TableLocation,
    map: &LinkMap,
    mode: VringMode,
    index: usize,
    v: &VdevEntry<'_>,
    carveout: Option<Located<Carveout>>,
    ids: &[IdSlot],
) -> Result<VdevInfo, TableError> {
    let master = mode == VringMode::Place;
    let mut vring_ids = [0u32; MAX_VRINGS];
    let mut notifyid = v.notifyid;
    for s in ids.iter().filter(|s| s.vdev == index) {
        match s.vring {
            None => notifyid = s.value,
            Some(k) => vring_ids[k] = s.value,
        }
    }
    if mode == VringMode::Provisional {
        for (k, r) in v.vrings().enumerate() {
            vring_ids[k] = r.notifyid;
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
    let mut place = || -> Result<(), TableError> {
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
        Ok(())
    };
    match place() {
        Ok(()) => {}
        // Not usable yet: the driver may still write them (bind_vrings).
        Err(_) if mode == VringMode::Provisional => {
            vring_ids = [ANY; MAX_VRINGS];
            cursor = u64::MAX;
        }
        Err(e) => return Err(e),
    }

    let pool = co.and_then(|(_, offset, pa, len)| {
        // u64::MAX (vrings not usable yet): no pool.
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
    use crate::virtio::status;
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

    /// `small_table`, with vdev `driven` having `reserved[0] = 1` (the
    /// master is its device, so the remote drives it).
    fn table_with_reserved(vdevs: &[(u32, u32, Vring)], driven: usize) -> Vec<u8> {
        let mut b = TableBuilder::new_vec((2 * vdevs.len()) as u32).unwrap();
        for (i, (id, notifyid, ring)) in vdevs.iter().enumerate() {
            let v = Vdev {
                id: *id,
                notifyid: *notifyid,
                reserved: [u8::from(i == driven), 0],
                ..Vdev::default()
            };
            b.add_vdev(&v, &[*ring], &[]).unwrap();
        }
        for i in 0..vdevs.len() {
            b.add_carveout(&carveout(0x1000 * (i as u32 + 1), 0x1000))
                .unwrap();
        }
        b.finish_vec().unwrap()
    }

    #[test]
    fn remote_refuses_unassigned_values() {
        // vdev 0: its own notify id unassigned; vdev 1 (remote is device):
        // vring da 0, which its driver may still write; vdev 2 (remote is
        // driver): vring da 0, which the master had to assign at boot.
        let t = table_with_reserved(
            &[
                (4, ANY, ring(0x1000, 8, 1)),
                (4, 2, ring(0, 8, 3)),
                (4, 4, ring(0, 8, 5)),
            ],
            2,
        );
        let mut lt = run(&t, false).unwrap();
        let v: Vec<_> = lt.vdevs().copied().collect();
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
        let dev = v[1].unwrap();
        assert_eq!(dev.role, Role::Device);
        assert!(lt.is_deferred(1) && !lt.is_deferred(2));
        assert!(matches!(
            v[2],
            Err(VdevFault {
                error: TableError::Unassigned {
                    what: "vring address",
                    ..
                },
                ..
            })
        ));
        // Still unassigned when its driver sets DRIVER_OK: now it is an error.
        let r = Region::new_heap(0x4000);
        r.write_bytes(0, &t).unwrap();
        assert_eq!(
            lt.bind_vrings(&r, 1),
            Err(TableError::Unassigned {
                vdev: 1,
                what: "vring address"
            })
        );
        assert_eq!(
            lt.bind_vrings(&r, 0),
            Err(TableError::Unassigned {
                vdev: 0,
                what: "notify id"
            })
        );
        assert_eq!(lt.bind_vrings(&r, 3), Err(TableError::NoVdev { index: 3 }));
    }

    /// A remote's table as NuttX's refactored master leaves it at
    /// `bootm = OK`: notify ids assigned, every vring `da` still 0 (it is
    /// written when the master creates the vdev). Two rpmsg-like vdevs, the
    /// remote is the device of both.
    fn late_vrings() -> (Region, LinkTable) {
        let t = small_table(
            &[(7, 0, ring(0, 8, 1)), (7, 2, ring(0, 8, 3))],
            &[carveout(0x1000, 0x1000), carveout(0x2000, 0x1000)],
        );
        let r = Region::new_heap(0x4000);
        r.write_bytes(0, &t).unwrap();
        let loc = TableLocation {
            offset: 0,
            max_len: 0x400,
        };
        let mut scratch = vec![0u8; 0x400];
        let lt = adopt(&r, loc, &map_for(0x4000, 0x1000_0000), &mut scratch).unwrap();
        (r, lt)
    }

    fn info(lt: &LinkTable, i: usize) -> VdevInfo {
        *lt.vdev(i).unwrap().as_ref().unwrap()
    }

    #[test]
    fn device_vrings_written_before_driver_ok_come_up_and_are_then_guarded() {
        let (r, mut lt) = late_vrings();
        let v0 = info(&lt, 0);
        assert_eq!(v0.role, Role::Device);
        // Not usable yet: no fault, no vring notify id to route.
        assert_eq!(v0.vring_notifyid(0), Some(ANY));
        lt.verify(&r).unwrap();
        let ring0 = v0.vring_offset(0).unwrap();
        // The master places the vring and sets DRIVER_OK: not a change.
        r.write_u32(ring0, 0x1000).unwrap();
        lt.verify(&r).unwrap();
        r.write_u8(v0.status_offset(), status::DRIVER_OK).unwrap();
        lt.verify(&r).unwrap();
        let bound = lt.bind_vrings(&r, 0).unwrap();
        assert_eq!(bound.vring_notifyid(0), Some(1));
        assert_eq!(bound.queue_of(1), Some(0));
        assert_eq!(info(&lt, 0), bound);
        lt.verify(&r).unwrap();
        // The other vdev's driver is not ready: its vrings still move freely.
        let ring1 = info(&lt, 1).vring_offset(0).unwrap();
        r.write_u32(ring1, 0x2000).unwrap();
        lt.verify(&r).unwrap();

        // After DRIVER_OK every vring field is guarded: da, align, num,
        // notify id, reserved.
        for (field, value) in [(0, 0x1100), (4, 32), (8, 16), (12, 9), (16, 1)] {
            let old = r.read_u32(ring0 + field).unwrap();
            r.write_u32(ring0 + field, value).unwrap();
            assert_eq!(
                lt.verify(&r),
                Err(TableError::ChangedAfterBoot),
                "field +{field}"
            );
            r.write_u32(ring0 + field, old).unwrap();
            lt.verify(&r).unwrap();
        }
        // So is everything else (here the vdev's own notify id).
        r.write_u32(v0.offset + 8, 5).unwrap();
        assert_eq!(lt.verify(&r), Err(TableError::ChangedAfterBoot));
        r.write_u32(v0.offset + 8, 0).unwrap();

        // A driver that reset the device owns its vrings again.
        r.write_u8(v0.status_offset(), 0).unwrap();
        lt.unbind_vrings(0);
        r.write_u32(ring0, 0x1200).unwrap();
        lt.verify(&r).unwrap();
        r.write_u8(v0.status_offset(), status::DRIVER_OK).unwrap();
        lt.bind_vrings(&r, 0).unwrap();
        lt.verify(&r).unwrap();
        r.write_u32(ring0, 0x1000).unwrap();
        assert_eq!(lt.verify(&r), Err(TableError::ChangedAfterBoot));
    }

    #[test]
    fn device_vrings_still_bad_at_driver_ok_fail_only_that_vdev() {
        let (r, mut lt) = late_vrings();
        let ring0 = info(&lt, 0).vring_offset(0).unwrap();
        let ring1 = info(&lt, 1).vring_offset(0).unwrap();
        let cases: [(usize, u32, TableError); 5] = [
            (
                0,
                0x8000,
                TableError::VringUnmapped {
                    vdev: 0,
                    vring: 0,
                    cause: AddrError::Unmapped {
                        addr: 0x8000,
                        len: vring_stride(8, 16).unwrap(),
                    },
                },
            ),
            (
                8,
                6,
                TableError::BadVring {
                    vdev: 0,
                    vring: 0,
                    reason: "num must be a power of two from 1 to 32768",
                },
            ),
            (
                4,
                2,
                TableError::BadVring {
                    vdev: 0,
                    vring: 0,
                    reason: "align must be a power of two of at least 4",
                },
            ),
            (
                12,
                ANY,
                TableError::Unassigned {
                    vdev: 0,
                    what: "vring notify id",
                },
            ),
            // vdev 1's own notify id.
            (12, 2, TableError::DuplicateNotifyId { id: 2 }),
        ];
        r.write_u32(ring0, 0x1000).unwrap();
        for (field, value, want) in cases {
            let old = r.read_u32(ring0 + field).unwrap();
            r.write_u32(ring0 + field, value).unwrap();
            assert_eq!(lt.bind_vrings(&r, 0), Err(want), "field +{field}");
            r.write_u32(ring0 + field, old).unwrap();
        }
        // Nothing got bound: the vrings are still free to change.
        r.write_u32(ring0, 0x1100).unwrap();
        lt.verify(&r).unwrap();
        // vdev 1 binds on its own; then its vring id is taken.
        r.write_u32(ring1, 0x2000).unwrap();
        assert_eq!(lt.bind_vrings(&r, 1).unwrap().vring_notifyid(0), Some(3));
        r.write_u32(ring0 + 12, 3).unwrap();
        assert_eq!(
            lt.bind_vrings(&r, 0),
            Err(TableError::DuplicateNotifyId { id: 3 })
        );
        r.write_u32(ring0 + 12, 1).unwrap();
        assert_eq!(lt.bind_vrings(&r, 0).unwrap().vring_notifyid(0), Some(1));
        lt.verify(&r).unwrap();
    }

    #[test]
    fn a_vdev_this_side_drives_is_not_deferred() {
        let t = small_table(&[(7, ANY, ring(0, 8, ANY))], &[carveout(0x1000, 0x1000)]);
        let mut lt = run(&t, true).unwrap();
        let before = info(&lt, 0);
        assert_eq!(before.role, Role::Driver);
        assert!(!lt.is_deferred(0));
        let r = Region::new_heap(0x4000);
        assert_eq!(lt.bind_vrings(&r, 0), Ok(before));
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
