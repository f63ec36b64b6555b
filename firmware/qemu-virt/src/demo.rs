//! The bring-up demo (feature `demo`): a few words exchanged with the host
//! through `rptun::shm::Region`, checked by `test.sh`. Not rptun's wire
//! format; the real firmware is `proxy`.
#![forbid(unsafe_code)]

use rptun::shm::Region;

use crate::hw::timer;
use crate::FwError;

/// Demo layout in the first bytes of the ivshmem BAR (not a wire format of
/// rptun; `test.sh` checks it). All words little-endian.
pub mod words {
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

/// The demo exchange with the host, through `Region` accessors only.
pub fn exchange(shm: &Region) -> Result<(), FwError> {
    // Read the host's words first (DESIGN.md §11: read the peer before
    // announcing ourselves).
    let host_magic = shm.load_u32(words::HOST_MAGIC_OFF)?;
    let host_counter = shm.load_u32(words::HOST_COUNTER_OFF)?;
    log::info!("host magic {host_magic:#010x} counter {host_counter}");
    if host_magic != words::HOST_MAGIC {
        log::warn!(
            "host magic is {host_magic:#010x}, expected {:#010x}: the host has not written \
             the shared memory",
            words::HOST_MAGIC
        );
    }

    // Atomics (exclusive load/store) on the Normal-memory mapping.
    shm.store_u32(words::FW_COUNTER_OFF, 0)?;
    for _ in 0..words::COUNT {
        shm.fetch_add_u32(words::FW_COUNTER_OFF, 1)?;
    }
    shm.store_u32(words::FW_ECHO_OFF, host_counter.wrapping_add(1))?;

    let t0 = timer::now();
    timer::delay_us(1000);
    log::info!("delay_us(1000) took {} us", timer::now().micros_since(t0));

    // Announce: the magic goes last, with release ordering.
    shm.store_u32(words::FW_MAGIC_OFF, words::FW_MAGIC)?;
    log::info!(
        "wrote firmware magic {:#010x} counter {} echo {}",
        shm.load_u32(words::FW_MAGIC_OFF)?,
        shm.load_u32(words::FW_COUNTER_OFF)?,
        shm.load_u32(words::FW_ECHO_OFF)?
    );
    Ok(())
}
