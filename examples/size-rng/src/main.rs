//! Code-size example: the smallest useful rptun remote — virtio-rng device
//! only, without a heap. It adopts the master's resource table, finds the
//! entropy vdev, waits for the driver's DRIVER_OK, and serves random bytes
//! from a (stand-in) hardware TRNG, over the remoteproc virtio transport.
//!
//! Link-only: `scripts/code-size.sh` builds it for `thumbv7em-none-eabihf`
//! and reports its sections; it has no start-up code and is not meant to
//! run. No `alloc`: the remoteproc table, the vdev transport and the
//! virtqueue keep their state in fixed-size structures.
#![no_std]
#![no_main]

use core::ptr::NonNull;

use rptun::devices::rng::{EntropyError, RngDevice};
use rptun::remoteproc::addr::{AddrEnv, AddrEnvEntry, AddressMap, PhysMap};
use rptun::remoteproc::platform::{Doorbell, LinkMap, Notify, PlatformError, TableLocation};
use rptun::remoteproc::table::adopt;
use rptun::remoteproc::vdev::{driver_ready, VdevDevice, VdevLink};
use rptun::shm::Region;
use rptun::virtio::id;

// ---- board stand-ins ---------------------------------------------------------

const SHM_BASE: usize = 0x2004_0000;
const SHM_LEN: usize = 0x3_0000;
const RSC_OFFSET: usize = 0x18;
const MBOX_TX: *mut u32 = 0x4000_0000 as *mut u32;
const TRNG_DATA: *const u32 = 0x4000_1000 as *const u32;

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    loop {}
}

fn wait_for_interrupt() {
    // SAFETY: `wfi` only halts the core until the next interrupt.
    unsafe { core::arch::asm!("wfi") };
}

#[derive(Clone)]
struct Mailbox;

impl Notify for Mailbox {
    fn notify(&self, target: Doorbell) -> Result<(), PlatformError> {
        // SAFETY: a device register of the (stand-in) board.
        unsafe { core::ptr::write_volatile(MBOX_TX, target.to_raw()) };
        Ok(())
    }
}

fn map() -> Option<LinkMap> {
    let env = AddrEnv::from_entries(&[AddrEnvEntry {
        pa: SHM_BASE as u64,
        da: SHM_BASE as u64,
        size: SHM_LEN as u64,
    }])
    .ok()?;
    Some(AddressMap::new(env, PhysMap::new(SHM_BASE as u64, SHM_LEN).ok()?))
}

fn trng(buf: &mut [u8]) -> Result<(), EntropyError> {
    for chunk in buf.chunks_mut(4) {
        // SAFETY: a device register of the (stand-in) board.
        let w = unsafe { core::ptr::read_volatile(TRNG_DATA) }.to_le_bytes();
        chunk.copy_from_slice(&w[..chunk.len()]);
    }
    Ok(())
}

/// Adopts the table and returns the entropy vdev's transport.
fn entropy_vdev(region: &Region, map: LinkMap) -> Option<VdevDevice<Mailbox>> {
    let mut scratch = [0u8; 512];
    let loc = TableLocation {
        offset: RSC_OFFSET,
        max_len: scratch.len(),
    };
    let table = adopt(region, loc, &map, &mut scratch).ok()?;
    let info = table
        .vdevs()
        .filter_map(|v| v.as_ref().ok())
        .find(|v| v.id == id::ENTROPY)?;
    VdevDevice::new(VdevLink::new(region.clone(), map, *info, Mailbox)).ok()
}

#[no_mangle]
extern "C" fn reset() -> ! {
    // SAFETY: the board's shared-memory window, used only through the region.
    let region = unsafe {
        Region::from_raw_parts(NonNull::new_unchecked(SHM_BASE as *mut u8), SHM_LEN)
    };
    loop {
        let Some(map) = map() else { loop {} };
        let Some(dev) = entropy_vdev(&region, map) else {
            wait_for_interrupt();
            continue;
        };
        while !dev.link().status().is_ok_and(driver_ready) {
            wait_for_interrupt();
        }
        let Ok(mut rng) = RngDevice::new(dev, trng) else {
            continue;
        };
        // Serve until the driver goes away, then adopt the table again.
        while rng.poll().is_ok() {
            wait_for_interrupt();
        }
    }
}

#[link_section = ".vector_table.reset"]
#[no_mangle]
static RESET_VECTOR: extern "C" fn() -> ! = reset;
