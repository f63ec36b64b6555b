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

#[test]
fn another_link_joins_the_node_and_is_serviced_when_woken() {
    use rptun::rpmsg::loopback::{Loopback, LoopbackConfig};
    use rptun::rpmsg::services::ping::{create_endpoint, ping};
    use rptun::rpmsg::wait::{Clock, Wait};
    use rptun::rpmsg::{Link, RpmsgTransport};

    let p = pair("extra");
    let (a, b) = Loopback::pair(LoopbackConfig {
        cpu_a: "server",
        cpu_b: "port",
        ..LoopbackConfig::default()
    })
    .unwrap();
    p.server
        .call(move |n| n.add_link(Link::new(Box::new(a) as Box<dyn RpmsgTransport + Send>)))
        .unwrap();
    assert!(p
        .server
        .call(|n| n.cpus())
        .unwrap()
        .contains(&"port".to_string()));
    // Our end of the new link, driven from this thread: the node's ping
    // service answers on it once the node looks at the link.
    let mut link = Link::new(b);
    link.poll().unwrap();
    let ept = create_endpoint(&mut link).unwrap();
    struct Woken {
        node: NodeHandle,
        start: std::time::Instant,
    }
    impl Clock for Woken {
        fn now_ns(&mut self) -> u64 {
            self.start.elapsed().as_nanos() as u64
        }
    }
    impl Wait for Woken {
        fn wait_until(&mut self, _deadline: u64) {
            self.node.wake();
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    let mut w = Woken {
        node: p.server.clone(),
        start: std::time::Instant::now(),
    };
    // bind (our CREATE, the node's CREATE_ACK), then ping
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while link.endpoint(ept).unwrap().dest == rptun::rpmsg::ADDR_ANY {
        assert!(std::time::Instant::now() < end, "never bound");
        w.wait_until(0);
        link.poll().unwrap();
    }
    let r = ping(&mut link, ept, &PingParams::new(3, 100).check(true), &mut w).unwrap();
    assert_eq!((r.times, r.send_len), (3, 100));
    // the node's own link is unaffected
    p.server
        .call(|n| n.ping("proxy", &PingParams::new(1, 17)))
        .unwrap()
        .unwrap();
    let dump = p
        .server
        .call(move |n| n.dump(Some("port")))
        .unwrap()
        .unwrap();
    assert!(dump.contains("remote port role loopback up"), "{dump}");
}

#[test]
fn a_too_small_object_is_refused_with_a_clear_error() {
    let name = format!("rptun-node-small-{}", std::process::id());
    let shm = ShmObject::open_or_create(&name, 4096).unwrap();
    let e = Node::new(NodeConfig::new(Role::Master), NodeHooks::default(), shm).unwrap_err();
    let _ = rptun_host::shm::unlink(&name);
    assert!(e.to_string().contains("4096 bytes"), "{e}");
    assert!(e.to_string().contains("197072"), "{e}");
}
