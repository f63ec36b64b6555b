//! Our rpmsg-virtio device attached to a copy of a real NuttX simulator link
//! (tests/vectors/after-boot.bin, decoded in after-boot.txt), through a
//! minimal remoteproc-style `DeviceTransport` written here: it finds the
//! rpmsg vdev in the resource table, its vrings and config space, and must
//! find the 8 RX buffers NuttX's driver (the master) posted.

use rptun::rpmsg::virtio::{RpmsgVirtioDevice, RpmsgVirtioOptions};
use rptun::rpmsg::{
    on_message, EndpointConfig, Link, LocalCpu, RemoteCpu, RpmsgFeatures, RpmsgTransport,
};
use rptun::shm::Region;
use rptun::virtio::queue::{QueueLayout, Window};
use rptun::virtio::{id, status, DeviceTransport, QueueMem, VirtioError};
use rptun::wire::rsc::{ParseOptions, ResourceTable};

static AFTER_BOOT: &[u8] = include_bytes!("vectors/after-boot.bin");

/// Where the resource table starts in the simulator's shm object.
const TABLE: usize = 0x18;

/// A remoteproc vdev as the device side sees it, over the shm object: the
/// live fields are read from and written to the region.
struct SimVdev {
    region: Region,
    base: u64,
    dfeatures: usize,
    gfeatures: usize,
    status: usize,
    config: usize,
    config_len: usize,
    /// (da, align, num) of each vring.
    vrings: Vec<(u32, u32, u32)>,
    notified: Vec<u16>,
}

impl SimVdev {
    fn attach(region: Region) -> SimVdev {
        let mut bytes = vec![0u8; region.len()];
        region.read_bytes(0, &mut bytes).unwrap();
        let base = u64::from_le_bytes(bytes[0..8].try_into().unwrap());
        let table = ResourceTable::parse(&bytes[TABLE..], &ParseOptions::default()).unwrap();
        let v = table.vdevs().find(|v| v.id == id::RPMSG).unwrap();
        SimVdev {
            base,
            dfeatures: TABLE + v.dfeatures_offset(),
            gfeatures: TABLE + v.gfeatures_offset(),
            status: TABLE + v.status_offset(),
            config: TABLE + v.config_offset(),
            config_len: v.config().len(),
            vrings: v.vrings().map(|r| (r.da, r.align, r.num)).collect(),
            notified: Vec::new(),
            region,
        }
    }
}

impl DeviceTransport for SimVdev {
    fn device_id(&self) -> u32 {
        id::RPMSG
    }
    fn device_features(&self) -> Result<u64, VirtioError> {
        Ok(u64::from(self.region.read_u32(self.dfeatures)?))
    }
    fn driver_features(&self) -> Result<u64, VirtioError> {
        Ok(u64::from(self.region.read_u32(self.gfeatures)?))
    }
    fn status(&self) -> Result<u8, VirtioError> {
        Ok(self.region.read_u8(self.status)?)
    }
    fn set_needs_reset(&mut self) -> Result<(), VirtioError> {
        let s = self.status()?;
        Ok(self
            .region
            .write_u8(self.status, s | status::DEVICE_NEEDS_RESET)?)
    }
    fn config_len(&self) -> usize {
        self.config_len
    }
    fn read_config(&self, offset: usize, buf: &mut [u8]) -> Result<(), VirtioError> {
        if offset + buf.len() > self.config_len {
            return Err(VirtioError::ConfigOutOfRange {
                offset,
                len: buf.len(),
                size: self.config_len,
            });
        }
        Ok(self.region.read_bytes(self.config + offset, buf)?)
    }
    fn write_config(&mut self, offset: usize, buf: &[u8]) -> Result<(), VirtioError> {
        if offset + buf.len() > self.config_len {
            return Err(VirtioError::ConfigOutOfRange {
                offset,
                len: buf.len(),
                size: self.config_len,
            });
        }
        Ok(self.region.write_bytes(self.config + offset, buf)?)
    }
    fn num_queues(&self) -> u16 {
        self.vrings.len() as u16
    }
    fn queue(&self, queue: u16) -> Result<QueueMem, VirtioError> {
        if self.status()? & status::DRIVER_OK == 0 {
            return Err(VirtioError::NotReady("no DRIVER_OK"));
        }
        let &(da, align, num) = self
            .vrings
            .get(usize::from(queue))
            .ok_or(VirtioError::NoQueue(queue))?;
        // In the simulator a vring's da is its offset in the object.
        let layout = QueueLayout::legacy(da as usize, self.base + u64::from(da), num as u16, align)
            .map_err(|_| VirtioError::Protocol("bad vring"))?;
        Ok(QueueMem {
            region: self.region.clone(),
            layout,
            window: Window::new(self.base, 0, self.region.len()),
        })
    }
    fn notify(&mut self, queue: u16) -> Result<(), VirtioError> {
        self.notified.push(queue);
        Ok(())
    }
    fn region(&self) -> &Region {
        &self.region
    }
}

fn proxy() -> RpmsgVirtioOptions {
    RpmsgVirtioOptions::new(
        LocalCpu::new("proxy").unwrap(),
        RemoteCpu::new("server").unwrap(),
    )
}

fn copy_of(bytes: &[u8]) -> Region {
    let r = Region::new_heap(bytes.len());
    r.write_bytes(0, bytes).unwrap();
    r
}

#[test]
fn device_attaches_to_nuttx_after_boot_and_finds_the_8_posted_rx_buffers() {
    let region = copy_of(AFTER_BOOT);
    let t = SimVdev::attach(region.clone());
    assert_eq!(t.vrings, vec![(131_532, 8, 8), (131_756, 8, 8)]);
    assert_eq!(t.config, 131_412);
    let mut dev = RpmsgVirtioDevice::<_, 8>::new(t, proxy());
    dev.poll().unwrap();
    assert!(dev.link_session().is_some());
    // gfeatures 0xf: NS|ACK|BUFSZ|CPUNAME; config: 1536/1536, "server"/"proxy".
    assert_eq!(dev.negotiated_features(), 0xf);
    assert_eq!(dev.features(), RpmsgFeatures::NUTTX);
    assert_eq!(dev.remote_cpu().as_str(), "server");
    assert_eq!((dev.tx_buffer_size(), dev.rx_buffer_size()), (1536, 1536));
    // vring0: avail.idx 30, used.idx 22: 8 buffers posted, the first at
    // slot 22 % 8 = 6 (desc[6], shm_off 141216).
    let mut got = Vec::new();
    while let Some(tb) = dev.get_tx().unwrap() {
        got.push((tb.offset, tb.size));
        assert!(got.len() <= 8);
    }
    assert_eq!(got[0], (141_216, 1536));
    got.sort_unstable();
    let want: Vec<(usize, usize)> = (0..8).map(|i| (132_000 + i * 1536, 1536)).collect();
    assert_eq!(got, want);
    // vring1: avail.idx = used.idx = 24: nothing for us to receive.
    assert_eq!(dev.recv().unwrap(), None);
}

#[test]
fn device_on_nuttx_after_boot_announces_into_nuttx_buffers() {
    let region = copy_of(AFTER_BOOT);
    let dev = RpmsgVirtioDevice::<_, 8>::new(SimVdev::attach(region.clone()), proxy());
    let mut link = Link::new(dev);
    link.poll().unwrap();
    assert!(link.is_up());
    link.create_endpoint(EndpointConfig::new("rpmsg-hello"), on_message(|_c, _m| {}))
        .unwrap();
    // The CREATE went into desc[6]'s buffer (shm_off 141216): rpmsg header
    // src 0x400, dst 0x35, len 40, then the name-service message.
    let mut hdr = [0u8; 16];
    region.read_bytes(141_216, &mut hdr).unwrap();
    assert_eq!(&hdr[0..8], &[0x00, 0x04, 0, 0, 0x35, 0, 0, 0]);
    assert_eq!(&hdr[12..14], &[40, 0]);
    let mut ns = [0u8; 40];
    region.read_bytes(141_216 + 16, &mut ns).unwrap();
    assert_eq!(&ns[..12], b"rpmsg-hello\0");
    assert_eq!(&ns[32..40], &[0x00, 0x04, 0, 0, 0, 0, 0, 0]);
    // vring0's used ring: after desc (8 x 16) and avail (4 + 2 x 8 + 2) it
    // ends at 131682, aligned up to 8 = 131688 (and ends right where vring1
    // starts, 131688 + 4 + 8 x 8 = 131756). Entry 22 % 8 = 6 is now
    // {id 6, len 56} and used.idx is 23.
    let used = 131_688;
    assert_eq!(region.load_u16(used + 2).unwrap(), 23);
    assert_eq!(region.read_u32(used + 4 + 6 * 8).unwrap(), 6);
    assert_eq!(region.read_u32(used + 4 + 6 * 8 + 4).unwrap(), 56);
    // vring0's avail.flags is 0 (NuttX's driver wants interrupts for RX):
    // the device notified vring0.
    assert_eq!(link.transport().transport().notified, vec![0]);
}

mod through_the_remoteproc_vdev_transport {
    use super::*;
    use rptun::remoteproc::addr::{AddrEnv, AddrEnvEntry, AddressMap, PhysMap};
    use rptun::remoteproc::platform::{Doorbell, LinkMap, Notify, PlatformError, TableLocation};
    use rptun::remoteproc::table::adopt;
    use rptun::remoteproc::vdev::{VdevDevice, VdevLink};

    const BASE: u64 = 0xf3d5_c000;

    #[derive(Clone, Default)]
    struct Bells(std::sync::Arc<std::sync::Mutex<Vec<Doorbell>>>);

    impl Notify for Bells {
        fn notify(&self, target: Doorbell) -> Result<(), PlatformError> {
            self.0.lock().unwrap().push(target);
            Ok(())
        }
    }

    fn map(len: usize) -> LinkMap {
        let env = AddrEnv::from_entries(&[AddrEnvEntry {
            pa: BASE,
            da: 0,
            size: len as u64,
        }])
        .unwrap();
        AddressMap::new(env, PhysMap::new(BASE, len).unwrap())
    }

    #[test]
    #[cfg_attr(
        miri,
        ignore = "adopts the whole 197 KB snapshot region; over a minute under Miri (the table parser has its own Miri tests)"
    )]
    fn remote_adopting_the_nuttx_table_finds_the_8_posted_rx_buffers() {
        let region = copy_of(AFTER_BOOT);
        let loc = TableLocation {
            offset: TABLE,
            max_len: region.len() - TABLE,
        };
        let mut scratch = vec![0u8; loc.max_len];
        let table = adopt(&region, loc, &map(region.len()), &mut scratch).unwrap();
        // The third vdev is rpmsg (after the two entropy devices).
        let info = *table.vdev(2).unwrap().as_ref().unwrap();
        assert_eq!(info.id, id::RPMSG);
        let bells = Bells::default();
        let t = VdevDevice::new(VdevLink::new(
            region.clone(),
            map(region.len()),
            info,
            bells.clone(),
        ))
        .unwrap();
        let mut dev = RpmsgVirtioDevice::<_, 8>::new(t, proxy());
        dev.poll().unwrap();
        assert!(dev.link_session().is_some());
        assert_eq!(dev.remote_cpu().as_str(), "server");
        assert_eq!(dev.features(), RpmsgFeatures::NUTTX);
        let mut tokens = Vec::new();
        while let Some(tb) = dev.get_tx().unwrap() {
            tokens.push(tb);
            assert!(tokens.len() <= 8);
        }
        let mut got: Vec<(usize, usize)> = tokens.iter().map(|t| (t.offset, t.size)).collect();
        got.sort_unstable();
        let want: Vec<(usize, usize)> = (0..8).map(|i| (132_000 + i * 1536, 1536)).collect();
        assert_eq!(got, want);
        assert_eq!(dev.recv().unwrap(), None);
        // Sending one rings vring0's notify id (5 in NuttX's table): its
        // avail.flags asks for interrupts.
        assert!(bells.0.lock().unwrap().is_empty());
        dev.send(tokens[0], 16).unwrap();
        assert_eq!(*bells.0.lock().unwrap(), vec![Doorbell::Id(5)]);
    }
}
