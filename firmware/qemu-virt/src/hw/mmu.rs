//! Identity-mapped MMU at EL1 (4 KiB granule, 32-bit virtual address space).
//!
//! Why the MMU at all (DESIGN.md §11): with the MMU off every data access is
//! Device-nGnRnE. Unaligned accesses then fault, and exclusive load/store
//! (the atomics the rptun rings rely on) is only architecturally promised on
//! Normal memory: QEMU happens to allow it, a real Cortex-A53 does not. So RAM
//! and the ivshmem BAR are mapped as Normal, Write-Back cacheable, Inner
//! Shareable memory, and only real device registers as Device-nGnRnE.
//!
//! The map (virtual address == physical address, everything below 4 GiB, as
//! `-M virt,highmem=off` puts it):
//!
//! | range | what | attributes |
//! | --- | --- | --- |
//! | 0x0900_0000 + 4 KiB | PL011 UART | Device-nGnRnE, RW, XN |
//! | 0x0800_0000 + 4 KiB, 0x0801_0000 + 8 KiB | GICv2 distributor, CPU interface (`idle`) | Device-nGnRnE, RW, XN |
//! | 0x3f00_0000 + 16 MiB | PCIe ECAM (16 buses) | Device-nGnRnE, RW, XN |
//! | BARs placed in 0x1000_0000..0x3eff_0000 | PCI MMIO window | mapped on demand ([`map_shared`]; device BARs with `map(.., Kind::Device)`) |
//! | 0x4000_0000..0x4010_0000 | device tree QEMU put there | Normal, RO, XN |
//! | `.text` | code | Normal, RO, executable |
//! | `.rodata` | constants | Normal, RO, XN |
//! | `.data`, `.bss` | statics, page tables | Normal, RW, XN |
//! | one page below each stack | guard | unmapped |
//! | main stack, exception stack | stacks | Normal, RW, XN |
//!
//! Everything else is unmapped, so a stray pointer faults with a report (see
//! `exceptions`) instead of scribbling. The rest of RAM is left unmapped on
//! purpose: the heap is a static arena inside `.bss`, and mapping only what
//! the image uses makes it independent of `-m`.
//!
//! Shared memory (ivshmem BAR2) is Normal WB cacheable: QEMU's TCG guest
//! accesses go straight to the host mapping of the backing file, which is
//! coherent with the host process, so no cache maintenance is ever needed on
//! QEMU (on hardware with a non-coherent peer it would be). Ordering between
//! the firmware and the host comes only from the acquire/release atomics and
//! fences of `rptun::shm::Region`.
//!
//! Mapping only ever turns invalid entries into valid ones (never changes a
//! live mapping), so no break-before-make or TLB invalidation is needed after
//! [`init`]: invalid entries are never cached in the TLB.

use core::fmt;
use core::ptr::{addr_of, addr_of_mut};

use super::{pci, uart};

const PAGE: usize = 4096;
const BLOCK_2M: usize = 2 << 20;
const VA_LIMIT: usize = 1 << 32; // T0SZ = 32
const TABLES: usize = 12;

// Descriptor bits.
const VALID: u64 = 1 << 0;
const TABLE_OR_PAGE: u64 = 1 << 1;
const ATTR_DEVICE: u64 = 0 << 2; // MAIR index 0
const ATTR_NORMAL: u64 = 1 << 2; // MAIR index 1
const AP_RO: u64 = 1 << 7; // AP[2]: read-only (EL0 never has access: AP[1] = 0)
const SH_INNER: u64 = 3 << 8;
const AF: u64 = 1 << 10;
const PXN: u64 = 1 << 53;
const UXN: u64 = 1 << 54;
const ADDR_MASK: u64 = 0x0000_ffff_ffff_f000;

/// MAIR_EL1: attr0 = Device-nGnRnE (0x00), attr1 = Normal, Inner and Outer
/// Write-Back non-transient, read/write-allocate (0xff).
const MAIR: u64 = 0xff << 8;

/// What a mapping is for; decides the attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Executable code: Normal, read-only.
    Code,
    /// Constants and the device tree: Normal, read-only, never executable.
    ReadOnly,
    /// Statics, stacks and shared memory: Normal, read-write, never executable.
    ReadWrite,
    /// Device registers: Device-nGnRnE, read-write, never executable.
    Device,
}

impl Kind {
    fn bits(self) -> u64 {
        match self {
            Kind::Code => ATTR_NORMAL | SH_INNER | AF | AP_RO | UXN,
            Kind::ReadOnly => ATTR_NORMAL | SH_INNER | AF | AP_RO | UXN | PXN,
            Kind::ReadWrite => ATTR_NORMAL | SH_INNER | AF | UXN | PXN,
            Kind::Device => ATTR_DEVICE | AF | UXN | PXN,
        }
    }
}

/// Why a range could not be mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapError {
    /// Start or size is not a multiple of 4 KiB, or the size is 0.
    Unaligned {
        /// Start of the range.
        addr: usize,
        /// Size of the range.
        size: usize,
    },
    /// The range reaches above 4 GiB, outside the 32-bit address space.
    OutOfRange {
        /// Start of the range.
        addr: usize,
        /// Size of the range.
        size: usize,
    },
    /// Part of the range is mapped already (mappings are never changed).
    AlreadyMapped {
        /// The first address found mapped.
        addr: usize,
    },
    /// The static pool of translation tables is used up.
    OutOfTables,
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            MapError::Unaligned { addr, size } => write!(
                f,
                "cannot map {size:#x} bytes at {addr:#x}: start and size must be non-zero \
                 multiples of 4 KiB"
            ),
            MapError::OutOfRange { addr, size } => write!(
                f,
                "cannot map {size:#x} bytes at {addr:#x}: the firmware maps only the low 4 GiB; \
                 boot QEMU with -M virt,highmem=off"
            ),
            MapError::AlreadyMapped { addr } => write!(
                f,
                "address {addr:#x} is mapped already; mappings are never changed, map each \
                 range once"
            ),
            MapError::OutOfTables => write!(
                f,
                "the translation-table pool is used up; raise TABLES in hw/mmu.rs or map \
                 larger aligned ranges (2 MiB blocks need no table)"
            ),
        }
    }
}

#[repr(C, align(4096))]
struct Table([u64; 512]);

/// Table 0 is the level-1 root; the others are handed out on demand.
static mut POOL: [Table; TABLES] = [const { Table([0; 512]) }; TABLES];
static mut USED: usize = 1;

extern "C" {
    static __text_start: u8;
    static __text_end: u8;
    static __rodata_start: u8;
    static __rodata_end: u8;
    static __data_start: u8;
    static __data_end: u8;
    static __stack_guard: u8;
    static __stack_top: u8;
    static __exc_stack_guard: u8;
    static __exc_stack_top: u8;
}

fn sym(s: *const u8) -> usize {
    s as usize
}

struct Layout {
    text: (usize, usize),
    rodata: (usize, usize),
    data: (usize, usize),
    stack_guard: usize,
    stack_top: usize,
    exc_guard: usize,
    exc_top: usize,
}

fn layout() -> Layout {
    // Only the addresses of the linker symbols are taken, never their
    // (meaningless) contents.
    Layout {
        text: (sym(addr_of!(__text_start)), sym(addr_of!(__text_end))),
        rodata: (sym(addr_of!(__rodata_start)), sym(addr_of!(__rodata_end))),
        data: (sym(addr_of!(__data_start)), sym(addr_of!(__data_end))),
        stack_guard: sym(addr_of!(__stack_guard)),
        stack_top: sym(addr_of!(__stack_top)),
        exc_guard: sym(addr_of!(__exc_stack_guard)),
        exc_top: sym(addr_of!(__exc_stack_top)),
    }
}

/// Start of RAM, where QEMU places the device tree.
pub const RAM_BASE: usize = 0x4000_0000;

/// Builds the boot map (see the module docs) and turns the MMU and caches on.
///
/// Called once, from `boot`, with the MMU off.
pub fn init() -> Result<(), MapError> {
    let l = layout();
    map(RAM_BASE, l.text.0 - RAM_BASE, Kind::ReadOnly)?;
    map(l.text.0, l.text.1 - l.text.0, Kind::Code)?;
    map(l.rodata.0, l.rodata.1 - l.rodata.0, Kind::ReadOnly)?;
    map(l.data.0, l.data.1 - l.data.0, Kind::ReadWrite)?;
    map(
        l.stack_guard + PAGE,
        l.stack_top - l.stack_guard - PAGE,
        Kind::ReadWrite,
    )?;
    map(
        l.exc_guard + PAGE,
        l.exc_top - l.exc_guard - PAGE,
        Kind::ReadWrite,
    )?;
    map(uart::BASE, uart::SIZE, Kind::Device)?;
    map(pci::ECAM_BASE, pci::ECAM_SIZE, Kind::Device)?;
    enable();
    Ok(())
}

/// A shared-memory window that [`map_shared`] mapped as Normal memory; turn it
/// into a `Region` with [`super::shared_region`].
#[derive(Debug)]
pub struct SharedMapping {
    addr: usize,
    size: usize,
}

impl SharedMapping {
    /// Start address (physical == virtual).
    pub fn addr(&self) -> usize {
        self.addr
    }

    /// Size in bytes.
    pub fn size(&self) -> usize {
        self.size
    }
}

/// Maps shared memory (an ivshmem BAR) as Normal, Write-Back cacheable, Inner
/// Shareable, read-write, never executable: atomics (exclusives) and
/// unaligned accesses work there. The mapping is never removed.
pub fn map_shared(addr: usize, size: usize) -> Result<SharedMapping, MapError> {
    map(addr, size, Kind::ReadWrite)?;
    Ok(SharedMapping { addr, size })
}

/// Maps device registers (Device-nGnRnE, read-write, never executable).
/// The mapping is never removed.
pub fn map_device(addr: usize, size: usize) -> Result<(), MapError> {
    map(addr, size, Kind::Device)
}

/// " (stack guard page: stack overflow)" when `addr` is in a guard page.
pub fn guard_page_note(addr: usize) -> &'static str {
    let l = layout();
    if (l.stack_guard..l.stack_guard + PAGE).contains(&addr) {
        " (main stack guard page: stack overflow)"
    } else if (l.exc_guard..l.exc_guard + PAGE).contains(&addr) {
        " (exception stack guard page: exception stack overflow)"
    } else {
        ""
    }
}

fn table_ptr(i: usize) -> *mut u64 {
    // SAFETY: `i < TABLES` (callers check); only a raw pointer is formed.
    unsafe { addr_of_mut!(POOL[i]).cast::<u64>() }
}

fn read_entry(table: *mut u64, idx: usize) -> u64 {
    // SAFETY: `table` is a pool table (512 entries) and `idx < 512`.
    unsafe { table.add(idx).read_volatile() }
}

fn write_entry(table: *mut u64, idx: usize, v: u64) {
    // SAFETY: as in `read_entry`; single core, no interrupts, so nothing else
    // writes the tables concurrently, and the walker sees the new entry after
    // the barriers in `map`.
    unsafe { table.add(idx).write_volatile(v) }
}

/// The next-level table behind `table[idx]`, allocated if the entry is
/// invalid; `None` if it is a block mapping.
fn next_table(table: *mut u64, idx: usize) -> Result<Option<*mut u64>, MapError> {
    let e = read_entry(table, idx);
    if e & VALID == 0 {
        // SAFETY: single core, no interrupts: nothing else touches USED.
        let used = unsafe { addr_of_mut!(USED).read() };
        if used >= TABLES {
            return Err(MapError::OutOfTables);
        }
        // SAFETY: as above.
        unsafe { addr_of_mut!(USED).write(used + 1) };
        let t = table_ptr(used);
        // Pool tables are zero (in .bss) and handed out once: all invalid.
        write_entry(table, idx, t as u64 | TABLE_OR_PAGE | VALID);
        return Ok(Some(t));
    }
    if e & TABLE_OR_PAGE == 0 {
        return Ok(None);
    }
    Ok(Some((e & ADDR_MASK) as usize as *mut u64))
}

fn map(addr: usize, size: usize, kind: Kind) -> Result<(), MapError> {
    if size == 0 || addr % PAGE != 0 || size % PAGE != 0 {
        return Err(MapError::Unaligned { addr, size });
    }
    let end = match addr.checked_add(size) {
        Some(end) if end <= VA_LIMIT => end,
        _ => return Err(MapError::OutOfRange { addr, size }),
    };
    let bits = kind.bits();
    let root = table_ptr(0);
    let mut va = addr;
    while va < end {
        let l2 = next_table(root, (va >> 30) & 511)?.ok_or(MapError::AlreadyMapped { addr: va })?;
        let i2 = (va >> 21) & 511;
        if va % BLOCK_2M == 0 && end - va >= BLOCK_2M && read_entry(l2, i2) & VALID == 0 {
            write_entry(l2, i2, va as u64 | bits | VALID);
            va += BLOCK_2M;
            continue;
        }
        let l3 = next_table(l2, i2)?.ok_or(MapError::AlreadyMapped { addr: va })?;
        let i3 = (va >> 12) & 511;
        if read_entry(l3, i3) & VALID != 0 {
            return Err(MapError::AlreadyMapped { addr: va });
        }
        write_entry(l3, i3, va as u64 | bits | TABLE_OR_PAGE | VALID);
        va += PAGE;
    }
    // SAFETY: barriers only: make the table writes visible to the walker
    // before any access through the new mappings.
    unsafe { core::arch::asm!("dsb ishst", "isb", options(nostack, preserves_flags)) };
    Ok(())
}

fn enable() {
    let mut pa_range: u64;
    // SAFETY: reading an ID register has no side effect.
    unsafe {
        core::arch::asm!("mrs {}, id_aa64mmfr0_el1", out(reg) pa_range, options(nomem, nostack, preserves_flags))
    };
    pa_range = (pa_range & 0xf).min(0b101);
    let tcr: u64 = 32            // T0SZ: 4 GiB, walks start at level 1
        | (0b01 << 8)            // IRGN0: inner WB RA WA
        | (0b01 << 10)           // ORGN0: outer WB RA WA
        | (0b11 << 12)           // SH0: inner shareable
        // TG0 = 0b00: 4 KiB granule
        | (1 << 23)              // EPD1: no TTBR1 walks
        | (pa_range << 32); // IPS: what the CPU supports
    let root = table_ptr(0) as u64;
    // SAFETY: the tables map every address this program touches from here on
    // (code, data, stacks, UART, ECAM) identically to their physical address,
    // so turning translation on changes no address. The TLB is invalidated
    // before enabling. Alignment checking stays off (A = 0) so unaligned
    // accesses to Normal memory work. On QEMU caches are not modelled; on
    // hardware the caches would have to be invalidated first (firmware
    // before us normally does it).
    unsafe {
        core::arch::asm!(
            "msr mair_el1, {mair}",
            "msr tcr_el1, {tcr}",
            "msr ttbr0_el1, {root}",
            "dsb ish",
            "isb",
            "tlbi vmalle1",
            "dsb ish",
            "isb",
            "mrs {tmp}, sctlr_el1",
            "orr {tmp}, {tmp}, #(1 << 0)",   // M: MMU on
            "orr {tmp}, {tmp}, #(1 << 2)",   // C: data cache on
            "orr {tmp}, {tmp}, #(1 << 12)",  // I: instruction cache on
            "bic {tmp}, {tmp}, #(1 << 1)",   // A: no alignment checking
            "bic {tmp}, {tmp}, #(1 << 19)",  // WXN: off (text is RO+X already)
            "msr sctlr_el1, {tmp}",
            "isb",
            mair = in(reg) MAIR,
            tcr = in(reg) tcr,
            root = in(reg) root,
            tmp = out(reg) _,
            options(nostack)
        );
    }
}
