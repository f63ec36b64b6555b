//! The virtio-rng device on the master's entropy vdevs (virtio id 4, the
//! master is the driver): requests are filled from [`XorShift`], which is
//! NOT cryptographic (see `entropy`).
#![forbid(unsafe_code)]

use alloc::boxed::Box;

use rptun::devices::rng::{EntropyError, EntropySource, RngDevice};
use rptun::devices::DeviceError;
use rptun::remoteproc::registry::{Registry, VirtioHandler};
use rptun::remoteproc::shmem::SeqNotifier;
use rptun::remoteproc::vdev::VdevDevice;
use rptun::virtio::{id, VirtioError};

use crate::entropy::XorShift;

struct Source(XorShift);

impl EntropySource for Source {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), EntropyError> {
        self.0.fill(buf);
        Ok(())
    }
}

struct RngHandler(RngDevice<VdevDevice<SeqNotifier>, Source>);

impl RngHandler {
    fn serve(&mut self) {
        match self.0.poll() {
            Ok(0) => {}
            Ok(n) => log::debug!("virtio-rng: served {n} request(s)"),
            Err(DeviceError::Reset) => log::debug!("virtio-rng: reset by the driver"),
            Err(e) => log::warn!("virtio-rng: {e}"),
        }
    }
}

impl VirtioHandler for RngHandler {
    fn notify(&mut self, _queue: u16) {
        self.serve();
    }

    fn poll(&mut self) {
        self.serve();
    }
}

/// Registers the virtio-rng device for virtio id 4.
pub fn register(registry: &mut Registry<SeqNotifier>) {
    registry.register_device(id::ENTROPY, |t| {
        let vdev = t.info().index;
        match RngDevice::new(t, Source(XorShift::from_timer())) {
            Ok(d) => {
                log::info!("virtio-rng device on vdev {vdev} (xorshift, not cryptographic)");
                Ok(Box::new(RngHandler(d)) as Box<dyn VirtioHandler>)
            }
            Err(DeviceError::Virtio(e)) => Err(e),
            Err(e) => {
                log::warn!("virtio-rng on vdev {vdev}: {e}");
                Err(VirtioError::Protocol("virtio-rng device set-up failed"))
            }
        }
    });
}
