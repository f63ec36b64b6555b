//! Host entropy for the virtio-rng device: the operating system's random
//! number generator through `getrandom`.
#![forbid(unsafe_code)]

use rptun::devices::rng::{EntropyError, EntropySource};

/// An [`EntropySource`] backed by the operating system (`getrandom(2)` on
/// Linux), for serving a virtio-rng driver from a host process.
#[derive(Debug, Clone, Copy, Default)]
pub struct GetrandomSource;

impl GetrandomSource {
    /// The operating system's random number generator.
    pub fn new() -> GetrandomSource {
        GetrandomSource
    }
}

impl EntropySource for GetrandomSource {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), EntropyError> {
        getrandom::fill(buf).map_err(|e| {
            log::warn!("getrandom failed: {e}");
            EntropyError
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rptun::devices::rng::{RngDevice, RngDriver};
    use rptun::shm::Region;
    use rptun::virtio::id;
    use rptun::virtio::mmio::{MmioDevice, MmioDeviceInfo, MmioTransport, SharedMemory};
    use rptun::virtio::queue::Window;

    #[test]
    fn fills_differ() {
        let mut s = GetrandomSource::new();
        let (mut a, mut b) = ([0u8; 64], [0u8; 64]);
        s.fill(&mut a).unwrap();
        s.fill(&mut b).unwrap();
        assert_ne!(a, b, "two 64-byte draws from the OS RNG never agree");
    }

    #[test]
    fn a_virtio_rng_driver_gets_os_random_bytes_from_the_device() {
        let region = Region::new_heap(0x10000);
        let window = Window::new(0x4000_0000, 0, 0x10000);
        let info = MmioDeviceInfo {
            device_id: id::ENTROPY,
            vendor_id: 0,
            features: 0,
            queue_max: &[8],
            config: &[],
        };
        let dev = MmioDevice::new(info, region.clone(), window).unwrap();
        let t = MmioTransport::new(&dev, SharedMemory::whole_window(region, window), None).unwrap();
        let mut drv = RngDriver::new(t).unwrap();
        let mut device = RngDevice::new(&dev, GetrandomSource::new()).unwrap();
        let (mut a, mut b) = ([0u8; 1024], [0u8; 1024]);
        for out in [&mut a, &mut b] {
            drv.read(out, || device.poll().is_ok()).unwrap();
        }
        assert_ne!(a, b);
        assert_ne!(a, [0u8; 1024]);
    }
}
