//! Shared set-up for the rpmsg-virtio tests: an rpmsg virtio device behind
//! an emulated virtio-mmio window, our driver on one side and our device on
//! the other, both in this process over one heap region.
#![allow(dead_code)]

pub mod scenarios;

use std::sync::Arc;

use rptun::rpmsg::virtio::{RpmsgVirtioDevice, RpmsgVirtioDriver, RpmsgVirtioOptions};
use rptun::rpmsg::{Link, LocalCpu, RemoteCpu, RpmsgTransport};
use rptun::shm::Region;
use rptun::virtio::mmio::{MmioDevice, MmioDeviceInfo, MmioTransport, SharedMemory};
use rptun::virtio::queue::Window;
use rptun::wire::rpmsg_config::{ConfigLayout, CpuName, RpmsgConfig};

/// Physical address of the shared window's start.
pub const PA: u64 = 0x4000_0000;

/// The emulated device, shared by both sides.
pub type Dev = Arc<MmioDevice>;
/// Our driver over the MMIO transport.
pub type Drv = RpmsgVirtioDriver<MmioTransport<Dev>, 256>;
/// Our device over the emulated MMIO device.
pub type Vdev = RpmsgVirtioDevice<Dev, 256>;

/// What the rpmsg virtio device offers and how big its queues are.
#[derive(Clone, Copy)]
pub struct Setup {
    pub features: u64,
    pub config: [u8; 64],
    pub queue_max: u16,
    pub region_len: usize,
    pub ring_align: u32,
}

impl Setup {
    /// NuttX-like: NS|ACK|BUFSZ|CPUNAME, 1536-byte buffers both ways, names
    /// "server" (driver) / "proxy" (device), 8-entry vrings.
    pub fn nuttx() -> Setup {
        Setup {
            features: 0xf,
            config: config(1536, 1536, "server", "proxy", ConfigLayout::Current),
            queue_max: 8,
            region_len: 1 << 20,
            ring_align: 8,
        }
    }

    /// Linux-like device: only NS offered, no config space values.
    pub fn linux(queue_max: u16) -> Setup {
        Setup {
            features: 0x1,
            config: [0; 64],
            queue_max,
            region_len: 1 << 20,
            ring_align: 4096,
        }
    }
}

/// A 64-byte config space.
pub fn config(h2r: u32, r2h: u32, host: &str, remote: &str, layout: ConfigLayout) -> [u8; 64] {
    RpmsgConfig {
        h2r_buf_size: h2r,
        r2h_buf_size: r2h,
        h2r_buf_addr: 0,
        r2h_buf_addr: 0,
        host_cpuname: CpuName::new(host).unwrap(),
        remote_cpuname: CpuName::new(remote).unwrap(),
    }
    .to_bytes(layout)
    .unwrap()
}

pub fn driver_opts() -> RpmsgVirtioOptions {
    RpmsgVirtioOptions::new(
        LocalCpu::new("server").unwrap(),
        RemoteCpu::new("proxy").unwrap(),
    )
}

pub fn device_opts() -> RpmsgVirtioOptions {
    RpmsgVirtioOptions::new(
        LocalCpu::new("proxy").unwrap(),
        RemoteCpu::new("server").unwrap(),
    )
}

/// The emulated MMIO device and the region it lives in.
pub fn mmio_device(s: &Setup) -> (Dev, Region) {
    let region = Region::new_heap(s.region_len);
    let window = Window::new(PA, 0, region.len());
    let dev = MmioDevice::new(
        MmioDeviceInfo {
            device_id: rptun::virtio::id::RPMSG,
            vendor_id: 0x5254_5455,
            features: s.features,
            queue_max: &[s.queue_max, s.queue_max],
            config: &s.config,
        },
        region.clone(),
        window,
    )
    .unwrap();
    (Arc::new(dev), region)
}

/// The driver's MMIO transport onto `dev`.
pub fn mmio_transport(s: &Setup, dev: &Dev, region: &Region) -> MmioTransport<Dev> {
    let window = Window::new(PA, 0, region.len());
    let mem = SharedMemory {
        region: region.clone(),
        window,
        pool: 0..region.len(),
        ring_align: s.ring_align,
    };
    MmioTransport::new(dev.clone(), mem, Some(64)).unwrap()
}

/// Driver (started) and device (not yet polled) over one MMIO device.
pub fn pair(s: &Setup, dopts: RpmsgVirtioOptions, vopts: RpmsgVirtioOptions) -> (Drv, Vdev, Dev) {
    let (dev, region) = mmio_device(s);
    let t = mmio_transport(s, &dev, &region);
    let drv = Drv::start_new(t, dopts).map_err(|(e, _)| e).unwrap();
    let vdev = Vdev::new(dev.clone(), vopts);
    (drv, vdev, dev)
}

/// Two links over a NuttX-like MMIO rpmsg device, both up.
pub fn links(s: &Setup) -> (Link<Drv>, Link<Vdev>, Dev) {
    let (drv, vdev, dev) = pair(s, driver_opts(), device_opts());
    let mut a = Link::new(drv);
    let mut b = Link::new(vdev);
    pump(&mut a, &mut b);
    assert!(a.is_up() && b.is_up(), "both ends up");
    (a, b, dev)
}

/// Polls both links until neither receives anything (bounded).
pub fn pump<A: RpmsgTransport + 'static, B: RpmsgTransport + 'static>(
    a: &mut Link<A>,
    b: &mut Link<B>,
) {
    let mut quiet = 0;
    for _ in 0..1000 {
        let sa = a.poll().unwrap();
        let sb = b.poll().unwrap();
        if sa.received == 0 && sb.received == 0 && !sa.more && !sb.more {
            quiet += 1;
            if quiet == 2 {
                return;
            }
        } else {
            quiet = 0;
        }
    }
    panic!("links never went quiet");
}
