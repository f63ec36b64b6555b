//! The resource table a NuttX simulator master writes (`sim_rptun.c`'s
//! `get_resource`): three vdevs, each followed by its carveout, the first two
//! carveouts' memory embedded in the table and the last one after it.
//!
//! Notify ids are ANY and vring addresses 0: the master's remoteproc layer
//! assigns them and writes them back, as NuttX does.

use super::layout::{CARVEOUT_SIZE, RPMSG_BUF_SIZE, RSC, SHM_SIZE, VRING_ALIGN, VRING_NUM};
use rptun::virtio::id;
use rptun::wire::rpmsg_config::ConfigError;
use rptun::wire::rpmsg_config::{
    ConfigLayout, CpuName, RpmsgConfig, VIRTIO_RPMSG_F_ACK, VIRTIO_RPMSG_F_BUFSZ,
    VIRTIO_RPMSG_F_CPUNAME, VIRTIO_RPMSG_F_NS,
};
use rptun::wire::rsc::{BuildError, Carveout, Name, TableBuilder, Vdev, Vring, ANY};

/// Why the simulator's table could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SimTableError {
    /// A table entry could not be written.
    #[error("building the simulator's resource table failed: {0}")]
    Build(#[from] BuildError),
    /// A cpu name does not fit the rpmsg config space.
    #[error("bad cpu name for the rpmsg config space: {0} (use at most 7 ASCII characters)")]
    Config(#[from] ConfigError),
}

/// Which config-space layout and cpu names the rpmsg vdev carries.
#[derive(Debug, Clone)]
pub struct SimTableConfig {
    /// The master's cpu name ("server").
    pub host: String,
    /// The remote's cpu name ("proxy").
    pub remote: String,
    /// rpmsg config-space layout (current NuttX or pre-March-2026).
    pub layout: ConfigLayout,
}

impl Default for SimTableConfig {
    fn default() -> Self {
        SimTableConfig {
            host: "server".into(),
            remote: "proxy".into(),
            layout: ConfigLayout::Current,
        }
    }
}

/// Builds the table bytes (to be written at [`RSC`] in the shm object).
///
/// Carveout `da`s are byte offsets in the shm object, as NuttX's master sets
/// them (its address environment maps da 0 to the object start).
pub fn build(cfg: &SimTableConfig) -> Result<Vec<u8>, SimTableError> {
    let mut b = TableBuilder::new_vec(6)?;
    let vring = Vring {
        da: 0,
        align: VRING_ALIGN,
        num: VRING_NUM,
        notifyid: ANY,
        reserved: 0,
    };
    let rng = Vdev {
        id: id::ENTROPY,
        notifyid: ANY,
        ..Vdev::default()
    };
    let carveout = |da: usize, name: &str| -> Result<Carveout, BuildError> {
        Ok(Carveout {
            da: (RSC + da) as u32,
            pa: ANY,
            len: CARVEOUT_SIZE,
            flags: 0,
            reserved: 0,
            name: Name::new(name)?,
        })
    };
    for name in ["rng0_shm", "rng1_shm"] {
        b.add_vdev(&rng, &[vring], &[])?;
        // The carveout's memory follows its entry, inside the table struct.
        let after_entry = b.position() + rptun::wire::rsc::CARVEOUT_LEN;
        b.add_carveout(&carveout(after_entry, name)?)?;
        b.reserve(CARVEOUT_SIZE as usize)?;
    }
    let rpmsg = Vdev {
        id: id::RPMSG,
        notifyid: ANY,
        dfeatures: (1 << VIRTIO_RPMSG_F_NS)
            | (1 << VIRTIO_RPMSG_F_ACK)
            | (1 << VIRTIO_RPMSG_F_BUFSZ)
            | (1 << VIRTIO_RPMSG_F_CPUNAME),
        ..Vdev::default()
    };
    let config = RpmsgConfig {
        h2r_buf_size: RPMSG_BUF_SIZE,
        r2h_buf_size: RPMSG_BUF_SIZE,
        h2r_buf_addr: 0,
        r2h_buf_addr: 0,
        host_cpuname: CpuName::new(&cfg.host)?,
        remote_cpuname: CpuName::new(&cfg.remote)?,
    }
    .to_bytes(cfg.layout)?;
    b.add_vdev(&rpmsg, &[vring, vring], &config)?;
    let after_entry = b.position() + rptun::wire::rsc::CARVEOUT_LEN;
    b.add_carveout(&carveout(after_entry, "rpmsg0_shm")?)?;
    let table = b.finish_vec()?;
    debug_assert!(RSC + table.len() + CARVEOUT_SIZE as usize <= SHM_SIZE);
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rptun::wire::rsc::{Entry, ParseOptions, ResourceTable};

    const SNAPSHOT: &[u8] = include_bytes!("../../../rptun/tests/vectors/after-boot.bin");

    #[test]
    fn matches_the_nuttx_simulator_table_before_assignment() {
        let t = build(&SimTableConfig::default()).unwrap();
        // The rpmsg carveout memory runs from the table's end to the object's
        // end, exactly filling NuttX's 197072-byte object.
        assert_eq!(RSC + t.len() + CARVEOUT_SIZE as usize, 197_068);
        assert_eq!(SHM_SIZE, 197_068 + 4); // the struct is padded to 8 bytes
        let ours = ResourceTable::parse(&t, &ParseOptions::default()).unwrap();
        let snap = ResourceTable::parse(&SNAPSHOT[RSC..], &ParseOptions::default()).unwrap();
        assert_eq!(ours.extent(), snap.extent());
        for (a, b) in ours.entries().zip(snap.entries()) {
            assert_eq!(a.offset(), b.offset());
            match (a, b) {
                (Entry::Carveout(a), Entry::Carveout(b)) => assert_eq!(*a, *b),
                (Entry::Vdev(a), Entry::Vdev(b)) => {
                    assert_eq!(a.value.id, b.value.id);
                    assert_eq!(a.value.dfeatures, b.value.dfeatures);
                    assert_eq!(a.value.reserved, b.value.reserved);
                    assert_eq!(a.config(), b.config());
                    assert_eq!(a.num_vrings(), b.num_vrings());
                    for (x, y) in a.vrings().zip(b.vrings()) {
                        assert_eq!((x.align, x.num), (y.align, y.num));
                    }
                }
                (a, b) => panic!("entry kinds differ: {a:?} vs {b:?}"),
            }
        }
    }
}
