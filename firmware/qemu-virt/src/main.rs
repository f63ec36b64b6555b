//! rptun firmware for QEMU's Cortex-A53 `virt` machine: the remote ("proxy")
//! side of rptun, talking to a host process over an ivshmem-plain PCI device.
//!
//! This is the bring-up demo: console, MMU, PCI, ivshmem, timer and power
//! off, with the shared memory wrapped in `rptun::shm::Region` (the core
//! links into the firmware). See `README.md` next to `Cargo.toml`.
//!
//! All `unsafe` lives in [`hw`]; everything else is safe code.
#![no_std]
#![no_main]
#![deny(unsafe_code)]

mod console;
mod hw;

use core::fmt;

use rptun::shm::{Region, ShmError};

use hw::{mmu, pci, psci, timer};

/// Demo layout in the first bytes of the ivshmem BAR (not a wire format of
/// rptun; `test.sh` checks it). All words little-endian.
mod demo {
    /// Firmware magic, stored (release) last, after the other firmware words.
    pub const FW_MAGIC_OFF: usize = 0x00;
    /// Firmware counter: reset to 0, then atomically incremented
    /// [`COUNT`] times.
    pub const FW_COUNTER_OFF: usize = 0x04;
    /// The host counter plus one, proving the firmware read the host's word.
    pub const FW_ECHO_OFF: usize = 0x08;
    /// Host magic, written by the host before boot.
    pub const HOST_MAGIC_OFF: usize = 0x40;
    /// Host counter, written by the host before boot.
    pub const HOST_COUNTER_OFF: usize = 0x44;

    /// What the firmware writes at [`FW_MAGIC_OFF`].
    pub const FW_MAGIC: u32 = 0x5052_5859; // bytes "YXRP"
    /// What the host is expected to write at [`HOST_MAGIC_OFF`].
    pub const HOST_MAGIC: u32 = 0x484f_5354; // bytes "TSOH"
    /// Atomic increments of the firmware counter.
    pub const COUNT: u32 = 1000;
}

/// Why the demo stopped.
#[derive(Debug, Clone, Copy)]
enum FwError {
    Pci(pci::PciError),
    Map(mmu::MapError),
    Shm(ShmError),
}

impl fmt::Display for FwError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FwError::Pci(e) => write!(f, "PCI: {e}"),
            FwError::Map(e) => write!(f, "MMU: {e}"),
            FwError::Shm(e) => write!(f, "shared memory: {e}"),
        }
    }
}

impl From<pci::PciError> for FwError {
    fn from(e: pci::PciError) -> Self {
        FwError::Pci(e)
    }
}

impl From<mmu::MapError> for FwError {
    fn from(e: mmu::MapError) -> Self {
        FwError::Map(e)
    }
}

impl From<ShmError> for FwError {
    fn from(e: ShmError) -> Self {
        FwError::Shm(e)
    }
}

/// Called by `hw::boot` once the console, MMU and logger are up.
#[cfg_attr(feature = "fault-selftest", allow(unreachable_code))]
fn main() -> ! {
    println!(
        "{} rptun proxy firmware {} (QEMU virt, Cortex-A53)",
        console::PREFIX,
        env!("CARGO_PKG_VERSION")
    );
    #[cfg(feature = "fault-selftest")]
    hw::exceptions::selftest_fault();
    match run() {
        Ok(()) => log::info!("demo done, powering off"),
        Err(e) => log::error!("{e}; powering off"),
    }
    psci::system_off()
}

fn run() -> Result<(), FwError> {
    log::info!(
        "EL{}, generic timer at {} Hz, uptime {} us",
        hw::current_el(),
        timer::frequency(),
        timer::now().as_micros()
    );

    pci::for_each_function(|f| {
        log::info!(
            "pci {f} {:04x}:{:04x} class {:06x}",
            f.vendor(),
            f.device(),
            f.class()
        );
    });

    let mut window = pci::MmioAllocator::new();
    let ivshmem = pci::setup_ivshmem(&mut window)?;
    log::info!(
        "ivshmem {} BAR2 at {:#x} size {:#x} ({}-bit{})",
        ivshmem.function,
        ivshmem.addr,
        ivshmem.size,
        if ivshmem.is_64 { 64 } else { 32 },
        if ivshmem.prefetchable {
            ", prefetchable"
        } else {
            ""
        }
    );
    let mapping = mmu::map_shared(ivshmem.addr, ivshmem.size)?;
    let shm = hw::shared_region(&mapping);
    exchange(&shm)
}

/// The demo exchange with the host, through `Region` accessors only.
fn exchange(shm: &Region) -> Result<(), FwError> {
    // Read the host's words first (DESIGN.md §11: read the peer before
    // announcing ourselves).
    let host_magic = shm.load_u32(demo::HOST_MAGIC_OFF)?;
    let host_counter = shm.load_u32(demo::HOST_COUNTER_OFF)?;
    log::info!("host magic {host_magic:#010x} counter {host_counter}");
    if host_magic != demo::HOST_MAGIC {
        log::warn!(
            "host magic is {host_magic:#010x}, expected {:#010x}: the host has not written \
             the shared memory",
            demo::HOST_MAGIC
        );
    }

    // Atomics (exclusive load/store) on the Normal-memory mapping.
    shm.store_u32(demo::FW_COUNTER_OFF, 0)?;
    for _ in 0..demo::COUNT {
        shm.fetch_add_u32(demo::FW_COUNTER_OFF, 1)?;
    }
    shm.store_u32(demo::FW_ECHO_OFF, host_counter.wrapping_add(1))?;

    let t0 = timer::now();
    timer::delay_us(1000);
    log::info!("delay_us(1000) took {} us", timer::now().micros_since(t0));

    // Announce: the magic goes last, with release ordering.
    shm.store_u32(demo::FW_MAGIC_OFF, demo::FW_MAGIC)?;
    log::info!(
        "wrote firmware magic {:#010x} counter {} echo {}",
        shm.load_u32(demo::FW_MAGIC_OFF)?,
        shm.load_u32(demo::FW_COUNTER_OFF)?,
        shm.load_u32(demo::FW_ECHO_OFF)?
    );
    Ok(())
}
