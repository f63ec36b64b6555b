//! Code-size example: what a Cortex-M4F remote core carries to talk rpmsg
//! with its master — remoteproc (instance, table adoption, command mailbox),
//! the remoteproc virtio transport, rpmsg-virtio (device role, 8-entry
//! vrings as in NuttX's tables), the rpmsg link and the ping service.
//!
//! Link-only: `scripts/code-size.sh` builds it for `thumbv7em-none-eabihf`
//! and reports its sections; it is complete enough that nothing the stack
//! needs is optimised away (a reset handler runs the doorbell loop), but it
//! has no start-up code (.data/.bss init) and is not meant to run.
//!
//! The board specifics are stand-ins: the shared memory is a fixed window,
//! the doorbell a mailbox register pair, the heap a bump allocator (the
//! rpmsg bus and the remoteproc instance need `alloc`).
#![no_std]
#![no_main]

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};

use rptun::remoteproc::addr::{AddrEnv, AddrEnvEntry, AddressMap, PhysMap};
use rptun::remoteproc::instance::Instance;
use rptun::remoteproc::platform::{
    Doorbell, LinkMap, Notify, Platform, PlatformError, RemoteCpuName, TableLocation,
};
use rptun::remoteproc::registry::{Registry, VirtioHandler};
use rptun::remoteproc::vdev::VdevDevice;
use rptun::rpmsg::services::ping;
use rptun::rpmsg::virtio::{RpmsgVirtioDevice, RpmsgVirtioOptions};
use rptun::rpmsg::{Link, LocalCpu, RemoteCpu};
use rptun::shm::Region;
use rptun::virtio::id;

extern crate alloc;
use alloc::boxed::Box;

// ---- board stand-ins ---------------------------------------------------------

/// Shared memory with the master (its "physical" address is the same).
const SHM_BASE: usize = 0x2004_0000;
const SHM_LEN: usize = 0x3_0000;
/// Where the master writes the resource table.
const RSC_OFFSET: usize = 0x18;
/// Mailbox: write a notify id to ring the master; read to see ours.
const MBOX_TX: *mut u32 = 0x4000_0000 as *mut u32;
const MBOX_RX: *const u32 = 0x4000_0004 as *const u32;

/// A bump allocator over a static arena: the stack allocates at start-up
/// (vdev slots, endpoint table), not per message.
struct Bump;

const HEAP_LEN: usize = 16 * 1024;
static mut HEAP: [u8; HEAP_LEN] = [0; HEAP_LEN];
static NEXT: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Bump {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let base = core::ptr::addr_of_mut!(HEAP) as *mut u8 as usize;
        let mut cur = NEXT.load(Ordering::Relaxed);
        loop {
            let start = (base + cur + layout.align() - 1) & !(layout.align() - 1);
            let end = start - base + layout.size();
            if end > HEAP_LEN {
                return core::ptr::null_mut();
            }
            match NEXT.compare_exchange_weak(cur, end, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return start as *mut u8,
                Err(c) => cur = c,
            }
        }
    }
    unsafe fn dealloc(&self, _ptr: *mut u8, _layout: Layout) {}
}

#[global_allocator]
static ALLOC: Bump = Bump;

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    loop {}
}

fn wait_for_interrupt() {
    // SAFETY: `wfi` only halts the core until the next interrupt.
    unsafe { core::arch::asm!("wfi") };
}

// ---- the platform --------------------------------------------------------------

#[derive(Clone)]
struct Mailbox;

impl Notify for Mailbox {
    fn notify(&self, target: Doorbell) -> Result<(), PlatformError> {
        // SAFETY: a device register of the (stand-in) board.
        unsafe { core::ptr::write_volatile(MBOX_TX, target.to_raw()) };
        Ok(())
    }
}

struct Board {
    region: Region,
}

impl Platform for Board {
    type Notifier = Mailbox;

    fn remote_cpu(&self) -> RemoteCpuName {
        RemoteCpuName::new("ap").unwrap_or_else(|_| loop {})
    }
    fn is_master(&self) -> bool {
        false
    }
    fn region(&self) -> Region {
        self.region.clone()
    }
    fn resource_table(&mut self) -> Result<TableLocation, PlatformError> {
        Ok(TableLocation {
            offset: RSC_OFFSET,
            max_len: 0x1000,
        })
    }
    fn address_map(&self) -> Result<LinkMap, PlatformError> {
        let env = AddrEnv::from_entries(&[AddrEnvEntry {
            pa: SHM_BASE as u64,
            da: SHM_BASE as u64,
            size: SHM_LEN as u64,
        }])
        .map_err(|_| PlatformError::Failed("address environment"))?;
        let phys = PhysMap::new(SHM_BASE as u64, SHM_LEN)
            .map_err(|_| PlatformError::Failed("shared memory window"))?;
        Ok(AddressMap::new(env, phys))
    }
    fn start(&mut self) -> Result<(), PlatformError> {
        Ok(())
    }
    fn stop(&mut self) -> Result<(), PlatformError> {
        Ok(())
    }
    fn notifier(&self) -> Mailbox {
        Mailbox
    }
}

// ---- rpmsg on the vdev -----------------------------------------------------------

type Transport = RpmsgVirtioDevice<VdevDevice<Mailbox>, 8>;

/// The transport the vdev factory made, for the main loop to pick up.
static FRESH: AtomicPtr<Transport> = AtomicPtr::new(core::ptr::null_mut());
/// Set when the instance removed the vdev.
static GONE: AtomicBool = AtomicBool::new(false);

struct Handed;

impl VirtioHandler for Handed {
    fn notify(&mut self, _queue: u16) {}
    fn remove(&mut self) {
        GONE.store(true, Ordering::Release);
    }
}

fn registry() -> Registry<Mailbox> {
    let mut reg = Registry::new();
    reg.register_device(id::RPMSG, |t| {
        let opts = RpmsgVirtioOptions::new(
            LocalCpu::new("m4").unwrap_or_else(|_| loop {}),
            RemoteCpu::new("ap").unwrap_or_else(|_| loop {}),
        );
        let t = Box::new(Transport::new(t, opts));
        let old = FRESH.swap(Box::into_raw(t), Ordering::AcqRel);
        if !old.is_null() {
            // SAFETY: every pointer in FRESH came from Box::into_raw.
            drop(unsafe { Box::from_raw(old) });
        }
        Ok(Box::new(Handed) as Box<dyn VirtioHandler>)
    });
    reg
}

#[no_mangle]
extern "C" fn reset() -> ! {
    // SAFETY: the board's shared-memory window, used only through the region.
    let region = unsafe {
        Region::from_raw_parts(NonNull::new_unchecked(SHM_BASE as *mut u8), SHM_LEN)
    };
    let mut inst = Instance::new(Board { region }, registry());
    while inst.start().is_err() {
        wait_for_interrupt();
    }
    let mut link: Option<Link<Transport>> = None;
    loop {
        wait_for_interrupt();
        // SAFETY: a device register of the (stand-in) board.
        let id = unsafe { core::ptr::read_volatile(MBOX_RX) };
        inst.handle_doorbell(Doorbell::from_raw(id));
        if GONE.swap(false, Ordering::AcqRel) {
            link = None;
        }
        let fresh = FRESH.swap(core::ptr::null_mut(), Ordering::AcqRel);
        if !fresh.is_null() {
            // SAFETY: the pointer came from Box::into_raw in the factory.
            let t = unsafe { Box::from_raw(fresh) };
            let mut l = Link::new(*t);
            let _ = ping::create_endpoint(&mut l);
            link = Some(l);
        }
        if let Some(l) = link.as_mut() {
            let _ = l.poll();
        }
    }
}

#[link_section = ".vector_table.reset"]
#[no_mangle]
static RESET_VECTOR: extern "C" fn() -> ! = reset;
