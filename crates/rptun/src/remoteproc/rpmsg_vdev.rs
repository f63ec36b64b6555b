//! rpmsg on a remoteproc vdev: the one place that knows both (DESIGN.md §1).
//!
//! [`register_driver`] / [`register_device`] put an rpmsg-virtio factory for
//! virtio id 7 into a remoteproc [`Registry`]. When the instance creates the
//! vdev's handler, the factory builds the rpmsg-virtio driver (or device)
//! over the vdev transport and hands it to the application through a
//! [`LinkSink`] as [`LinkEvent::Up`]; when the instance removes the vdev
//! (stop, restart, crash, the driver resetting the device) the sink gets
//! [`LinkEvent::Down`]. The application moves `Up` transports onto its
//! [`Bus`](crate::rpmsg::Bus) (`bus.add_link(Link::new(t))`) and removes
//! the link on `Down`.
//!
//! Drain the sink after every call into the instance (`start`, `stop`,
//! `handle_doorbell`, ...) and before polling the bus again: after `Down`
//! the vdev's memory may be reused, so its link must not be polled.
//!
//! Neither rpmsg-virtio nor the vdev transport knows about the other; the
//! handler registered here does nothing on doorbells, because rpmsg-virtio
//! polls its rings itself when the bus polls the link. The same hand-off
//! ([`handoff_handler`]) serves any driver the application keeps itself.
#![forbid(unsafe_code)]

use alloc::boxed::Box;

use crate::remoteproc::platform::Notify;
use crate::remoteproc::registry::{Registry, VirtioHandler};
use crate::remoteproc::vdev::{VdevDevice, VdevDriver};
use crate::rpmsg::virtio::{
    RpmsgVirtioDevice, RpmsgVirtioDriver, RpmsgVirtioError, RpmsgVirtioOptions,
};
use crate::virtio::{id, VirtioError};

/// The rpmsg-virtio driver over a remoteproc vdev, with vrings of up to `Q`
/// entries.
pub type DriverLink<N, const Q: usize> = RpmsgVirtioDriver<VdevDriver<N>, Q>;
/// The rpmsg-virtio device over a remoteproc vdev, with vrings of up to `Q`
/// entries.
pub type DeviceLink<N, const Q: usize> = RpmsgVirtioDevice<VdevDevice<N>, Q>;

/// A change of an rpmsg vdev, for the application's bus.
#[derive(Debug)]
pub enum LinkEvent<T> {
    /// The vdev with this ordinal carries a fresh rpmsg transport: add a
    /// link for it.
    Up {
        /// vdev ordinal in the resource table.
        vdev: usize,
        /// The transport (not yet polled).
        transport: T,
    },
    /// The vdev went away: remove its link before polling the bus again.
    Down {
        /// vdev ordinal in the resource table.
        vdev: usize,
    },
}

/// Where rpmsg vdev handlers deliver [`LinkEvent`]s: a queue the
/// application drains (behind whatever lock its platform has).
pub trait LinkSink<T>: Send + 'static {
    /// Queues an event.
    fn push(&self, event: LinkEvent<T>);
}

struct HandoffHandler<S> {
    vdev: usize,
    sink: S,
    removed: bool,
}

impl<S: SinkDown> VirtioHandler for HandoffHandler<S> {
    fn notify(&mut self, _queue: u16) {}

    fn remove(&mut self) {
        if !self.removed {
            self.removed = true;
            self.sink.down(self.vdev);
        }
    }
}

/// Object-safe "down" half of a sink, so the handler does not carry the
/// transport type.
trait SinkDown: Send + 'static {
    fn down(&self, vdev: usize);
}

struct Down<S, T>(S, core::marker::PhantomData<fn() -> T>);

impl<S: LinkSink<T>, T: 'static> SinkDown for Down<S, T> {
    fn down(&self, vdev: usize) {
        self.0.push(LinkEvent::Down { vdev });
    }
}

/// A handler for a vdev whose driver or device the application keeps
/// itself (e.g. a virtio-rng driver a shell reads from): it does nothing on
/// doorbells and pushes [`LinkEvent::Down`] into `sink` when the vdev goes
/// away. The factory pushes the [`LinkEvent::Up`] with the object.
pub fn handoff_handler<T: 'static, S: LinkSink<T>>(vdev: usize, sink: S) -> Box<dyn VirtioHandler> {
    Box::new(HandoffHandler {
        vdev,
        sink: Down(sink, core::marker::PhantomData::<fn() -> T>),
        removed: false,
    })
}

fn setup_error(e: RpmsgVirtioError) -> VirtioError {
    match e {
        RpmsgVirtioError::Virtio(v) => v,
        RpmsgVirtioError::Shm(s) => VirtioError::Shm(s),
        _ => VirtioError::Protocol("rpmsg-virtio set-up failed (see the log)"),
    }
}

/// Registers the rpmsg-virtio **driver** for rpmsg vdevs this side drives
/// (usually the master): started at once (buffers posted, `DRIVER_OK`) and
/// delivered to `sink`.
pub fn register_driver<N, S, const Q: usize>(
    registry: &mut Registry<N>,
    options: RpmsgVirtioOptions,
    sink: S,
) where
    N: Notify + Clone + Send + 'static,
    S: LinkSink<DriverLink<N, Q>> + Clone,
{
    registry.register_driver(id::RPMSG, move |t: VdevDriver<N>| {
        let vdev = t.info().index;
        match DriverLink::<N, Q>::start_new(t, options) {
            Ok(d) => {
                sink.push(LinkEvent::Up { vdev, transport: d });
                Ok(handoff_handler(vdev, sink.clone()))
            }
            Err((e, _t)) => {
                log::warn!("rpmsg vdev {vdev}: the rpmsg-virtio driver did not start: {e}");
                Err(setup_error(e))
            }
        }
    });
}

/// Registers the rpmsg-virtio **device** for rpmsg vdevs this side serves
/// (usually the remote): created once the driver set `DRIVER_OK` and
/// delivered to `sink`; it attaches on its first poll.
pub fn register_device<N, S, const Q: usize>(
    registry: &mut Registry<N>,
    options: RpmsgVirtioOptions,
    sink: S,
) where
    N: Notify + Clone + Send + 'static,
    S: LinkSink<DeviceLink<N, Q>> + Clone,
{
    registry.register_device(id::RPMSG, move |t: VdevDevice<N>| {
        let vdev = t.info().index;
        sink.push(LinkEvent::Up {
            vdev,
            transport: DeviceLink::<N, Q>::new(t, options),
        });
        Ok(handoff_handler(vdev, sink.clone()))
    });
}
