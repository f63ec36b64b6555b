//! rptun firmware for QEMU's Cortex-A53 `virt` machine: the remote ("proxy")
//! side of rptun, talking to a host process (the master, `rptun ivshmem`)
//! over an ivshmem-plain PCI device.
//!
//! Boot: console, MMU, heap (`hw`), then [`main`] finds the ivshmem device,
//! maps its BAR2 and runs the rptun remote over it ([`proxy`]): a remoteproc
//! instance on the ivshmem platform (`rptun::remoteproc::shmem`), rpmsg in
//! the device role with the ping and test services, and a virtio-rng device.
//! See `README.md` next to `Cargo.toml` and `docs/IVSHMEM.md`.
//!
//! With feature `demo` the bring-up demo runs instead of rptun (`test.sh`).
//!
//! All `unsafe` lives in [`hw`]; everything else is safe code.
#![no_std]
#![no_main]
#![deny(unsafe_code)]
// The demo image (boot test) uses only part of the hardware layer (no idle
// sleep, heap statistics or device mappings beyond the ivshmem BAR).
#![cfg_attr(feature = "demo", allow(dead_code))]

extern crate alloc;

mod console;
#[cfg(feature = "demo")]
mod demo;
#[cfg(not(feature = "demo"))]
mod entropy;
mod hw;
#[cfg(not(feature = "demo"))]
mod proxy;
#[cfg(not(feature = "demo"))]
mod rng;

use core::fmt;

use rptun::shm::{Region, ShmError};

use hw::{mmu, pci, psci, timer};

/// Why the firmware could not run.
#[derive(Debug, Clone, Copy)]
pub enum FwError {
    /// PCI set-up failed (no ivshmem device...).
    Pci(pci::PciError),
    /// The shared memory could not be mapped.
    Map(mmu::MapError),
    /// A shared-memory access failed.
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

/// Called by `hw::boot` once the console, MMU, logger and heap are up.
#[cfg_attr(feature = "fault-selftest", allow(unreachable_code))]
fn main() -> ! {
    println!(
        "{} rptun proxy firmware {} (QEMU virt, Cortex-A53)",
        console::PREFIX,
        env!("CARGO_PKG_VERSION")
    );
    #[cfg(feature = "fault-selftest")]
    hw::exceptions::selftest_fault();
    let shm = match setup() {
        Ok(shm) => shm,
        Err(e) => {
            log::error!("{e}; powering off");
            psci::system_off()
        }
    };
    #[cfg(feature = "demo")]
    {
        match demo::exchange(&shm) {
            Ok(()) => log::info!("demo done, powering off"),
            Err(e) => log::error!("{e}; powering off"),
        }
        psci::system_off()
    }
    #[cfg(not(feature = "demo"))]
    proxy::run(shm)
}

/// Finds the ivshmem device, places and maps its BAR2, and wraps it.
fn setup() -> Result<Region, FwError> {
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
    Ok(hw::shared_region(&mapping))
}
