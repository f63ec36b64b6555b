//! Both sides sleep until the other notifies them: a lost notification
//! (a driver that forgets to kick, a device that forgets to interrupt, a
//! wrong suppression decision) makes a wait run out of patience and the test
//! fail instead of passing by polling.
#![cfg(all(feature = "rng", feature = "console", feature = "alloc"))]

mod devices_common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use devices_common::{mmio_link_with_bells, vdev_link, Bells, Link, Stream};
use rptun::devices::console::{ConsoleDevice, ConsoleDriver, CONFIG_LEN};
use rptun::devices::rng::{EntropyError, RngDevice, RngDriver};
use rptun::devices::DeviceError;
use rptun::virtio::{feature, id};

const PATIENCE: Duration = Duration::from_secs(5);
const TOTAL: Duration = Duration::from_secs(60);

/// Every link kind, each side's doorbell ringing the other's bell.
fn linked(device_id: u32, nq: usize, config: &[u8]) -> Vec<(&'static str, Link, Bells)> {
    let modern = 1 << feature::VERSION_1 | 1 << feature::RING_EVENT_IDX;
    let queue_max = vec![8; nq];
    let mut out = Vec::new();
    for (name, features) in [("virtio-mmio", 0), ("virtio-mmio+event-idx", modern)] {
        let (link, bells) = mmio_link_with_bells(device_id, features, &queue_max, config);
        out.push((name, link, bells));
    }
    for (name, features, master_drives) in [
        ("vdev/master-drives", 0, true),
        (
            "vdev/remote-drives+event-idx",
            1 << feature::RING_EVENT_IDX,
            false,
        ),
    ] {
        let bells = Bells::default();
        let (link, _) = vdev_link(device_id, features, nq, config, master_drives, Some(&bells));
        out.push((name, link, bells));
    }
    out
}

#[test]
fn console_streams_with_both_sides_sleeping_between_notifications() {
    for (name, (t, d), bells) in linked(id::CONSOLE, 2, &[0; CONFIG_LEN]) {
        const LEN: usize = 2 << 20;
        let dev_bell = bells.device.clone();
        // One direction at a time, so each side can only be woken by the
        // notifications of that direction: device -> driver (the driver
        // sleeps until data arrives, the device until buffers are posted),
        // then driver -> device (the device sleeps until data is kicked, the
        // driver until transmit buffers come back).
        let device = thread::spawn(move || -> Result<Vec<u8>, DeviceError> {
            let mut dev = ConsoleDevice::new(d)?;
            let mut wait = dev_bell.waiter(PATIENCE, TOTAL);
            dev.write_all(&Stream::new(9).bytes(LEN), &mut wait)?;
            let mut up = vec![0u8; LEN];
            dev.read_exact(&mut up, &mut wait)?;
            Ok(up)
        });
        let mut drv = ConsoleDriver::new(t).unwrap();
        let mut wait = bells.driver.waiter(PATIENCE, TOTAL);
        let mut down = vec![0u8; LEN];
        drv.read_exact(&mut down, &mut wait)
            .unwrap_or_else(|e| panic!("{name}: driver read: {e}"));
        assert!(
            down == Stream::new(9).bytes(LEN),
            "{name}: device -> driver differs"
        );
        let data = Stream::new(10).bytes(LEN);
        drv.write_all(&data, &mut wait)
            .unwrap_or_else(|e| panic!("{name}: driver write: {e}"));
        drv.flush(&mut wait).unwrap();
        let up = device
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("{name}: device: {e}"));
        assert!(up == data, "{name}: driver -> device differs");
    }
}

#[test]
fn rng_requests_with_both_sides_sleeping_between_notifications() {
    for (name, (t, d), bells) in linked(id::ENTROPY, 1, &[]) {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let dev_bell = bells.device.clone();
        let device = thread::spawn(move || {
            let mut s = Stream::new(1);
            let src = move |b: &mut [u8]| -> Result<(), EntropyError> {
                s.fill(b);
                Ok(())
            };
            let mut dev = RngDevice::new(d, src).unwrap();
            let mut wait = dev_bell.waiter(Duration::from_millis(100), TOTAL);
            while !stop2.load(Ordering::SeqCst) {
                if dev.poll().unwrap() == 0 {
                    wait();
                }
            }
        });
        let mut drv = RngDriver::new(t).unwrap();
        for len in [1, 1024, 5000, 20_000] {
            let mut out = vec![0u8; len];
            drv.read(&mut out, bells.driver.waiter(PATIENCE, TOTAL))
                .unwrap_or_else(|e| panic!("{name}: {len}: {e}"));
        }
        stop.store(true, Ordering::SeqCst);
        bells.device.ring();
        device.join().unwrap();
    }
}
