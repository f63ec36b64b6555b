//! rpmsg-virtio over the remoteproc vdev transport: a resource table with
//! one rpmsg vdev and its carveout, assigned by the master (our driver) and
//! adopted by the remote (our device), in one heap region. The same
//! scenarios as over virtio-mmio run on top: rpmsg-virtio does not know
//! which transport carries it.

mod rpmsg_virtio_util;

use std::sync::{Arc, Mutex};

use rpmsg_virtio_util::{device_opts, driver_opts, pump, scenarios};
use rptun::remoteproc::addr::{AddrEnv, AddrEnvEntry, AddressMap, PhysMap};
use rptun::remoteproc::platform::{Doorbell, LinkMap, Notify, PlatformError, TableLocation};
use rptun::remoteproc::table::{adopt, assign, VdevInfo};
use rptun::remoteproc::vdev::{VdevDevice, VdevDriver, VdevLink};
use rptun::rpmsg::virtio::{RpmsgVirtioDevice, RpmsgVirtioDriver, RpmsgVirtioOptions};
use rptun::rpmsg::{Link, LocalCpu, RemoteCpu, RpmsgFeatures};
use rptun::shm::Region;
use rptun::virtio::Role;
use rptun::wire::rpmsg_config::{ConfigLayout, CpuName, RpmsgConfig};
use rptun::wire::rsc::{Carveout, Name, TableBuilder, Vdev, Vring, ANY};

const REGION_LEN: usize = 0x40000;
const BASE_PA: u64 = 0x8000_0000;
const RSC: usize = 0x18;
const RSC_MAX: usize = 0x400;

/// Records every doorbell rung (by notify id).
#[derive(Clone, Default)]
struct Bell(Arc<Mutex<Vec<u32>>>);

impl Notify for Bell {
    fn notify(&self, target: Doorbell) -> Result<(), PlatformError> {
        let id = match target {
            Doorbell::Id(id) => id,
            Doorbell::All => Doorbell::ALL_ID,
        };
        self.0.lock().unwrap().push(id);
        Ok(())
    }
}

type RDrv = RpmsgVirtioDriver<VdevDriver<Bell>, 256>;
type RDev = RpmsgVirtioDevice<VdevDevice<Bell>, 256>;

/// One rpmsg vdev (two vrings of `num`, align 8, placed by the master) and
/// its 128 KiB carveout.
fn table(dfeatures: u32, num: u32, config: &[u8]) -> Vec<u8> {
    let mut b = TableBuilder::new_vec(2).unwrap();
    let v = Vdev {
        id: rptun::virtio::id::RPMSG,
        notifyid: ANY,
        dfeatures,
        ..Vdev::default()
    };
    let ring = Vring {
        da: ANY,
        align: 8,
        num,
        notifyid: ANY,
        reserved: 0,
    };
    b.add_vdev(&v, &[ring, ring], config).unwrap();
    b.add_carveout(&Carveout {
        da: 0x1000,
        pa: ANY,
        len: 0x20000,
        name: Name::new("rpmsg0_shm").unwrap(),
        ..Carveout::default()
    })
    .unwrap();
    b.finish_vec().unwrap()
}

fn nuttx_config() -> [u8; 64] {
    RpmsgConfig {
        h2r_buf_size: 1536,
        r2h_buf_size: 1536,
        h2r_buf_addr: 0,
        r2h_buf_addr: 0,
        host_cpuname: CpuName::new("server").unwrap(),
        remote_cpuname: CpuName::new("proxy").unwrap(),
    }
    .to_bytes(ConfigLayout::Current)
    .unwrap()
}

fn map() -> LinkMap {
    let env = AddrEnv::from_entries(&[AddrEnvEntry {
        pa: BASE_PA,
        da: 0,
        size: REGION_LEN as u64,
    }])
    .unwrap();
    AddressMap::new(env, PhysMap::new(BASE_PA, REGION_LEN).unwrap())
}

struct Rig {
    region: Region,
    master_info: VdevInfo,
    bell: Bell,
}

/// Writes the table, lets the master assign it and starts our driver; the
/// remote adopts it and wraps our device (not yet polled).
fn rig(
    dfeatures: u32,
    num: u32,
    config: &[u8],
    dopts: RpmsgVirtioOptions,
    vopts: RpmsgVirtioOptions,
) -> (RDrv, RDev, Rig) {
    let region = Region::new_heap(REGION_LEN);
    region
        .write_bytes(RSC, &table(dfeatures, num, config))
        .unwrap();
    let loc = TableLocation {
        offset: RSC,
        max_len: RSC_MAX,
    };
    let mut scratch = vec![0u8; RSC_MAX];
    let m = assign(&region, loc, &map(), &mut scratch).unwrap();
    let master_info = *m.vdev(0).unwrap().as_ref().unwrap();
    assert_eq!(master_info.role, Role::Driver);
    let r = adopt(&region, loc, &map(), &mut scratch).unwrap();
    let remote_info = *r.vdev(0).unwrap().as_ref().unwrap();
    let bell = Bell::default();
    let drv_t = VdevDriver::new(VdevLink::new(
        region.clone(),
        map(),
        master_info,
        bell.clone(),
    ))
    .unwrap();
    let dev_t = VdevDevice::new(VdevLink::new(
        region.clone(),
        map(),
        remote_info,
        bell.clone(),
    ))
    .unwrap();
    let drv = RDrv::start_new(drv_t, dopts).map_err(|(e, _)| e).unwrap();
    let dev = RDev::new(dev_t, vopts);
    (
        drv,
        dev,
        Rig {
            region,
            master_info,
            bell,
        },
    )
}

fn links() -> (Link<RDrv>, Link<RDev>, Rig) {
    let (drv, dev, rig) = rig(0xf, 8, &nuttx_config(), driver_opts(), device_opts());
    let (mut a, mut b) = (Link::new(drv), Link::new(dev));
    pump(&mut a, &mut b);
    assert!(a.is_up() && b.is_up());
    (a, b, rig)
}

#[test]
fn link_comes_up_over_a_remoteproc_vdev() {
    let (a, b, rig) = links();
    let info = rig.master_info;
    let r = &rig.region;
    assert_eq!(r.read_u8(info.status_offset()).unwrap(), 7);
    assert_eq!(r.read_u32(info.gfeatures_offset()).unwrap(), 0xf);
    assert_eq!(a.features(), RpmsgFeatures::NUTTX);
    assert_eq!(b.features(), RpmsgFeatures::NUTTX);
    assert_eq!(a.remote_cpu().as_str(), "proxy");
    assert_eq!(b.remote_cpu().as_str(), "server");
    assert_eq!((a.max_payload(), b.max_payload()), (1520, 1520));
    // The RX buffers come from the vdev's pool (the carveout after the
    // vrings), and vring0's descriptors name them by physical address.
    let pool = info.pool.unwrap();
    let q0 = info.vring_offset(0).unwrap();
    let da = r.read_u32(q0).unwrap() as usize;
    for h in 0..8 {
        let addr = r.read_u64(da + 16 * h).unwrap();
        let off = (addr - BASE_PA) as usize;
        assert!(off >= pool.offset && off + 1536 <= pool.offset + pool.len);
        assert_eq!(r.read_u32(da + 16 * h + 8).unwrap(), 1536);
    }
    // The driver rang vring0's doorbell after DRIVER_OK.
    let vring0_id = info.vring_notifyid(0).unwrap();
    assert!(rig.bell.0.lock().unwrap().contains(&vring0_id));
}

#[test]
fn name_binding_both_orders_with_create_ack_and_destroy() {
    let (mut a, mut b, _rig) = links();
    scenarios::binding_device_first(&mut a, &mut b);
    let (mut a, mut b, _rig) = links();
    scenarios::binding_driver_first(&mut a, &mut b);
    let (mut a, mut b, _rig) = links();
    scenarios::destroy_unbinds(&mut a, &mut b);
}

#[test]
fn zero_copy_and_hold_release_both_ways() {
    let (mut a, mut b, _rig) = links();
    scenarios::zero_copy(&mut a, &mut b);
    let (mut a, mut b, _rig) = links();
    scenarios::driver_holds(&mut a, &mut b, 8);
    let (mut a, mut b, _rig) = links();
    scenarios::device_holds(&mut a, &mut b, 8);
}

#[test]
fn thousand_unacknowledged_trysends_exhaust_exactly_the_buffers() {
    let (mut a, mut b, _rig) = links();
    scenarios::exhaustion(&mut a, &mut b, 8);
}

#[test]
fn hundred_thousand_messages_each_way_in_order_every_byte_checked() {
    let (mut a, mut b, _rig) = links();
    scenarios::exchange(&mut a, &mut b, if cfg!(miri) { 20 } else { 100_000 });
}

fn linux(local: &str, remote: &str) -> RpmsgVirtioOptions {
    RpmsgVirtioOptions::linux(
        LocalCpu::new(local).unwrap(),
        RemoteCpu::new(remote).unwrap(),
    )
}

#[test]
fn linux_compatible_link_over_a_vdev_without_config_space() {
    let (drv, dev, rig) = rig(
        0x1,
        16,
        &[],
        linux("host", "remote"),
        linux("remote", "host"),
    );
    let (mut a, mut b) = (Link::new(drv), Link::new(dev));
    pump(&mut a, &mut b);
    assert_eq!(a.features(), RpmsgFeatures::LINUX);
    assert_eq!((a.max_payload(), b.max_payload()), (496, 496));
    assert_eq!(a.transport().tx_buffers(), (16, 512));
    scenarios::exchange(&mut a, &mut b, if cfg!(miri) { 20 } else { 10_000 });
    // Whole-buffer lengths in vring1's descriptors and vring0's used ring.
    let info = rig.master_info;
    let r = &rig.region;
    let v1 = r.read_u32(info.vring_offset(1).unwrap()).unwrap() as usize;
    for h in 0..16 {
        assert_eq!(r.read_u32(v1 + 16 * h + 8).unwrap(), 512, "vring1 desc {h}");
    }
    let v0 = r.read_u32(info.vring_offset(0).unwrap()).unwrap() as usize;
    // used ring: after 16 descriptors and the avail ring (4 + 32 + 2),
    // aligned to 8 on the physical address (the base is page aligned).
    let used = (v0 + 16 * 16 + 38 + 7) & !7;
    for slot in 0..16 {
        assert_eq!(r.read_u32(used + 4 + 8 * slot + 4).unwrap(), 512);
    }
}

#[test]
fn driver_restart_over_a_vdev_brings_a_new_session() {
    let (mut a, mut b, rig) = links();
    let (ga, gb) = (scenarios::msgs(), scenarios::msgs());
    let (ea, eb) = scenarios::bind_svc(&mut a, &mut b, true, &ga, &gb);
    for i in 0..5u8 {
        a.trysend(ea, &[i]).unwrap();
        b.trysend(eb, &[i]).unwrap();
        pump(&mut a, &mut b);
    }
    let (sa, sb) = (a.session(), b.session());
    a.transport_mut().restart().unwrap();
    pump(&mut a, &mut b);
    assert!(a.is_up() && b.is_up());
    assert_ne!(a.session(), sa);
    assert_ne!(b.session(), sb);
    gb.lock().unwrap().clear();
    a.trysend(ea, b"again").unwrap();
    pump(&mut a, &mut b);
    assert_eq!(gb.lock().unwrap().len(), 1);
    // A stop resets the status byte; the device goes down.
    a.transport_mut().stop();
    assert_eq!(
        rig.region.read_u8(rig.master_info.status_offset()).unwrap(),
        0
    );
    pump(&mut a, &mut b);
    assert!(!a.is_up() && !b.is_up());
}

#[test]
fn a_driver_too_small_for_the_tables_vrings_says_so() {
    let region = Region::new_heap(REGION_LEN);
    region
        .write_bytes(RSC, &table(0xf, 16, &nuttx_config()))
        .unwrap();
    let loc = TableLocation {
        offset: RSC,
        max_len: RSC_MAX,
    };
    let mut scratch = vec![0u8; RSC_MAX];
    let m = assign(&region, loc, &map(), &mut scratch).unwrap();
    let info = *m.vdev(0).unwrap().as_ref().unwrap();
    let t = VdevDriver::new(VdevLink::new(region, map(), info, Bell::default())).unwrap();
    let (err, _t) = RpmsgVirtioDriver::<_, 8>::start_new(t, driver_opts()).unwrap_err();
    assert_eq!(
        err,
        rptun::rpmsg::virtio::RpmsgVirtioError::QueueTooLarge {
            queue: 0,
            num: 16,
            max: 8
        }
    );
}
