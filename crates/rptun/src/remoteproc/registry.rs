//! virtio device factories, keyed by virtio device id and role.
//!
//! The application registers what to run on each kind of vdev ("for id 4 in
//! the device role, make an rng device over this transport"); an
//! [`Instance`](crate::remoteproc::instance::Instance) calls the factory for
//! each vdev of its table and keeps the returned [`VirtioHandler`]. A vdev
//! whose id has no factory for this side's role is skipped (with a log
//! line), without affecting the vdevs after it.
#![forbid(unsafe_code)]

use alloc::boxed::Box;
use alloc::vec::Vec;

use crate::remoteproc::vdev::{VdevDevice, VdevDriver};
use crate::virtio::{Role, VirtioError};

/// A running virtio driver or device on one vdev.
///
/// The instance calls it from its doorbell handling, so keep the calls
/// short (queue work elsewhere if processing takes long).
pub trait VirtioHandler: Send {
    /// A doorbell for queue `queue` arrived and the peer published new work
    /// on it (new avail entries for a device, new used entries for a
    /// driver). Handle everything that is there: the next call comes only
    /// with more work.
    fn notify(&mut self, queue: u16);

    /// Called on every "all" doorbell ([`Doorbell::All`](crate::remoteproc::platform::Doorbell::All))
    /// and on the vdev's own notify id: do local work (send what was queued,
    /// look at config space, retry what could not be done).
    fn poll(&mut self) {}

    /// The vdev is going away (stop, restart, crash, or the driver reset
    /// it). Release what the handler holds; the transport must not be used
    /// after this.
    fn remove(&mut self) {}
}

/// Builds the handler of a vdev in the driver role.
pub type DriverFactory<N> =
    Box<dyn FnMut(VdevDriver<N>) -> Result<Box<dyn VirtioHandler>, VirtioError> + Send>;

/// Builds the handler of a vdev in the device role (called once the driver
/// set DRIVER_OK).
pub type DeviceFactory<N> =
    Box<dyn FnMut(VdevDevice<N>) -> Result<Box<dyn VirtioHandler>, VirtioError> + Send>;

/// virtio factories for one link, keyed by device id and role. `N` is the
/// platform's doorbell handle ([`Platform::Notifier`](crate::remoteproc::platform::Platform::Notifier)).
pub struct Registry<N> {
    drivers: Vec<(u32, DriverFactory<N>)>,
    devices: Vec<(u32, DeviceFactory<N>)>,
}

impl<N> Default for Registry<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<N> core::fmt::Debug for Registry<N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Registry")
            .field(
                "drivers",
                &self.drivers.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            )
            .field(
                "devices",
                &self.devices.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl<N> Registry<N> {
    /// An empty registry.
    pub fn new() -> Self {
        Registry {
            drivers: Vec::new(),
            devices: Vec::new(),
        }
    }

    /// Runs `factory` on every vdev with device id `id` for which this side
    /// is the virtio driver. Replaces an earlier driver factory for `id`.
    pub fn register_driver(
        &mut self,
        id: u32,
        factory: impl FnMut(VdevDriver<N>) -> Result<Box<dyn VirtioHandler>, VirtioError>
            + Send
            + 'static,
    ) {
        self.drivers.retain(|(i, _)| *i != id);
        self.drivers.push((id, Box::new(factory)));
    }

    /// Runs `factory` on every vdev with device id `id` for which this side
    /// is the virtio device, once the driver set DRIVER_OK. Replaces an
    /// earlier device factory for `id`.
    pub fn register_device(
        &mut self,
        id: u32,
        factory: impl FnMut(VdevDevice<N>) -> Result<Box<dyn VirtioHandler>, VirtioError>
            + Send
            + 'static,
    ) {
        self.devices.retain(|(i, _)| *i != id);
        self.devices.push((id, Box::new(factory)));
    }

    /// Removes the factory for `id` in `role`; true if there was one.
    /// Running handlers are not affected.
    pub fn unregister(&mut self, id: u32, role: Role) -> bool {
        let before = self.drivers.len() + self.devices.len();
        match role {
            Role::Driver => self.drivers.retain(|(i, _)| *i != id),
            Role::Device => self.devices.retain(|(i, _)| *i != id),
        }
        before != self.drivers.len() + self.devices.len()
    }

    /// True when a factory for `id` in `role` is registered.
    pub fn is_registered(&self, id: u32, role: Role) -> bool {
        match role {
            Role::Driver => self.drivers.iter().any(|(i, _)| *i == id),
            Role::Device => self.devices.iter().any(|(i, _)| *i == id),
        }
    }

    /// Runs the driver factory for the transport's id; `None` when none is
    /// registered.
    pub fn create_driver(
        &mut self,
        t: VdevDriver<N>,
    ) -> Option<Result<Box<dyn VirtioHandler>, VirtioError>>
    where
        N: crate::remoteproc::platform::Notify,
    {
        let id = t.info().id;
        let (_, f) = self.drivers.iter_mut().find(|(i, _)| *i == id)?;
        Some(f(t))
    }

    /// Runs the device factory for the transport's id; `None` when none is
    /// registered.
    pub fn create_device(
        &mut self,
        t: VdevDevice<N>,
    ) -> Option<Result<Box<dyn VirtioHandler>, VirtioError>>
    where
        N: crate::remoteproc::platform::Notify,
    {
        let id = t.info().id;
        let (_, f) = self.devices.iter_mut().find(|(i, _)| *i == id)?;
        Some(f(t))
    }
}
