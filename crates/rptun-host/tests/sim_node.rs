//! The simulator's two sides as library users see them: a master node and a
//! remote node on one POSIX shm object, in one process (the CLI tests run
//! them as two processes).

use std::time::Duration;

use rptun::remoteproc::instance::State;
use rptun::remoteproc::Role;
use rptun::rpmsg::services::ping::PingParams;
use rptun_host::shm::ShmObject;
use rptun_host::sim::layout::{BOOTM, BOOTS, OK, SHM_SIZE};
use rptun_host::sim::node::{Node, NodeConfig, NodeHandle, NodeHooks};

struct Pair {
    name: String,
    server: NodeHandle,
    proxy: NodeHandle,
}

impl Drop for Pair {
    fn drop(&mut self) {
        self.server.shutdown();
        self.proxy.shutdown();
        let _ = rptun_host::shm::unlink(&self.name);
    }
}

fn node(name: &str, role: Role) -> NodeHandle {
    let shm = ShmObject::open_or_create(name, SHM_SIZE).unwrap();
    let mut n = Node::new(NodeConfig::new(role), NodeHooks::default(), shm).unwrap();
    if role == Role::Master {
        n.reset_boot_words(true);
    }
    NodeHandle::spawn(n).unwrap()
}

fn ready(h: &NodeHandle) -> bool {
    h.call(|n| n.wait_until(Duration::from_secs(10), |n| n.peer_ready()))
        .unwrap()
}

fn pair(test: &str) -> Pair {
    let name = format!("rptun-node-{test}-{}", std::process::id());
    let server = node(&name, Role::Master);
    let proxy = node(&name, Role::Remote);
    let p = Pair {
        name,
        server,
        proxy,
    };
    assert!(ready(&p.server), "server never saw the proxy");
    assert!(ready(&p.proxy), "proxy never saw the server");
    p
}

#[test]
fn the_link_comes_up_by_itself_and_both_sides_ping_and_read_entropy() {
    let p = pair("up");
    let r = p
        .server
        .call(|n| n.ping("proxy", &PingParams::new(4, 1520).check(true)))
        .unwrap()
        .unwrap();
    assert_eq!((r.times, r.buffer_len, r.send_len), (4, 1520, 1520));
    let r = p
        .proxy
        .call(|n| n.ping("server", &PingParams::new(2, 17)))
        .unwrap()
        .unwrap();
    assert_eq!(r.send_len, 17);
    // rng0 and rng1: the proxy's entropy, different every time
    let a = p.server.call(|n| n.read_random(1, 256)).unwrap().unwrap();
    let b = p.server.call(|n| n.read_random(1, 256)).unwrap().unwrap();
    let c = p.server.call(|n| n.read_random(0, 256)).unwrap().unwrap();
    assert!(a != b && b != c && a != vec![0; 256]);
    // the shared header says both sides are up
    let words = p
        .server
        .call(|n| {
            let r = n.shm().region();
            (r.load_u32(BOOTS).unwrap(), r.load_u32(BOOTM).unwrap())
        })
        .unwrap();
    assert_eq!(words, (OK, OK));
    // unknown cpus are named in the error
    let e = p
        .server
        .call(|n| n.ping("nobody", &PingParams::new(1, 17)))
        .unwrap()
        .unwrap_err();
    assert_eq!(e, "no link to cpu `nobody`; known: proxy");
}

#[test]
fn stop_then_start_and_a_remote_that_vanishes() {
    let p = pair("stop");
    assert!(p
        .server
        .call(|n| n.stop_link(Duration::from_secs(5)))
        .unwrap()
        .unwrap());
    assert!(p
        .proxy
        .call(|n| n.wait_until(Duration::from_secs(5), |n| n.state() == State::Stopped))
        .unwrap());
    let e = p
        .server
        .call(|n| n.ping("proxy", &PingParams::new(1, 17)))
        .unwrap()
        .unwrap_err();
    assert!(e.contains("`rptun start proxy`"), "{e}");
    p.server.call(|n| n.start_link()).unwrap().unwrap();
    assert!(ready(&p.server) && ready(&p.proxy));
    // The remote process "dies": the master marks the link crashed, the
    // rng vdevs are gone with it.
    assert!(p.server.call(|n| n.peer_gone()).unwrap());
    assert_eq!(p.server.call(|n| n.state()).unwrap(), State::Crashed);
    let e = p
        .server
        .call(|n| n.read_random(1, 16))
        .unwrap()
        .unwrap_err();
    assert!(e.contains("not running"), "{e}");
    // It was not really dead: starting again brings it back.
    p.server.call(|n| n.start_link()).unwrap().unwrap();
    assert!(ready(&p.server));
    p.server
        .call(|n| n.ping("proxy", &PingParams::new(1, 100)))
        .unwrap()
        .unwrap();
}
