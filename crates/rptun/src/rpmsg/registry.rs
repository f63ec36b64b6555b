//! The bus: many links plus the service registry (what NuttX's
//! `rpmsg_register_callback` gives its drivers).
//!
//! A [`Service`] has four hooks: `device_created` / `device_destroyed`
//! (a link to a matching cpu came up / went down or was removed), and
//! `ns_match` / `ns_bind` (the peer announced a name that no local endpoint
//! took: does this service want it? then bind it, usually by creating an
//! endpoint with that name and the announced address as destination).
//!
//! Order does not matter: registering a service replays `device_created`
//! for links that are already up and offers it the announcements that
//! arrived before it; announcements nobody wants are kept per link (visible
//! in the dump) until a matching service registers or the peer destroys them.
//!
//! Cpu names: a service may be restricted to one remote cpu
//! ([`ServiceConfig::for_cpu`] takes a [`RemoteCpu`]). A service configured
//! for a cpu that no link reaches is reported (a `log` warning, naming the
//! likely mistake when it is this side's own name, and an `UNMATCHED` line
//! in the dump), never silently idle.
#![forbid(unsafe_code)]

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::any::Any;
use core::fmt;
use core::marker::PhantomData;

use crate::rpmsg::cpu::RemoteCpu;
use crate::rpmsg::dump::{BusDump, LinkDump, ServiceDump};
use crate::rpmsg::endpoint::AsAny;
use crate::rpmsg::link::{Link, PollSummary};
use crate::rpmsg::transport::RpmsgTransport;
use crate::rpmsg::RpmsgError;

/// Names a link on a [`Bus`]; stale ids are detected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LinkId {
    index: u32,
    gen: u32,
}

/// Names a registered service of type `S`; stale ids are detected.
pub struct ServiceId<S> {
    index: u32,
    gen: u32,
    _s: PhantomData<fn() -> S>,
}

impl<S> Clone for ServiceId<S> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<S> Copy for ServiceId<S> {}
impl<S> fmt::Debug for ServiceId<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServiceId({}.{})", self.index, self.gen)
    }
}

/// How a service is registered: a name for people (dumps, logs) and an
/// optional remote cpu it is restricted to.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    name: String,
    cpu: Option<RemoteCpu>,
}

impl ServiceConfig {
    /// A service for links to any cpu.
    pub fn any(name: &str) -> ServiceConfig {
        ServiceConfig {
            name: name.into(),
            cpu: None,
        }
    }

    /// A service only for the link whose **remote** cpu is `cpu`.
    pub fn for_cpu(name: &str, cpu: RemoteCpu) -> ServiceConfig {
        ServiceConfig {
            name: name.into(),
            cpu: Some(cpu),
        }
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The remote cpu it is restricted to.
    pub fn cpu(&self) -> Option<RemoteCpu> {
        self.cpu
    }

    fn matches<T: RpmsgTransport + 'static>(&self, link: &Link<T>) -> bool {
        match self.cpu {
            None => true,
            Some(c) => c == link.remote_cpu(),
        }
    }
}

/// A driver that attaches to links: the hooks of NuttX's
/// `rpmsg_register_callback`. Every hook has a do-nothing default.
///
/// Hooks run from [`Bus`] methods (never from inside a link's poll), with
/// the link lent mutably: they may create and destroy endpoints and send.
pub trait Service<T: RpmsgTransport + 'static>: AsAny + Send {
    /// A link to a matching cpu is up (also replayed at registration for
    /// links already up).
    fn device_created(&mut self, link: &mut Link<T>, id: LinkId) {
        let _ = (link, id);
    }

    /// That link went down or is being removed (or this service is being
    /// unregistered).
    fn device_destroyed(&mut self, link: &mut Link<T>, id: LinkId) {
        let _ = (link, id);
    }

    /// Does this service want the peer's announcement `name` at `addr`?
    fn ns_match(&mut self, link: &Link<T>, name: &str, addr: u32) -> bool {
        let _ = (link, name, addr);
        false
    }

    /// Bind the announcement `ns_match` accepted (typically:
    /// `link.create_endpoint(EndpointConfig::new(name).dest(addr), ..)`,
    /// which answers CREATE_ACK when ACK is negotiated).
    fn ns_bind(&mut self, link: &mut Link<T>, id: LinkId, name: &str, addr: u32) {
        let _ = (link, id, name, addr);
    }

    /// Called after every [`Bus::poll`] of a matching, up link: deferred work
    /// (releasing held buffers "later", retries).
    fn poll(&mut self, link: &mut Link<T>, id: LinkId) {
        let _ = (link, id);
    }
}

struct LinkEntry<T: RpmsgTransport> {
    link: Link<T>,
    /// The session `device_created` was delivered for.
    created: Option<u32>,
}

struct ServiceEntry<T: RpmsgTransport + 'static> {
    cfg: ServiceConfig,
    svc: Box<dyn Service<T>>,
    warned: bool,
}

fn insert<V>(v: &mut Vec<(u32, Option<V>)>, x: V) -> (u32, u32) {
    if let Some(i) = v.iter().position(|(_, e)| e.is_none()) {
        v[i].1 = Some(x);
        return (i as u32, v[i].0);
    }
    v.push((0, Some(x)));
    ((v.len() - 1) as u32, 0)
}

fn get_mut<V>(v: &mut [(u32, Option<V>)], index: u32, gen: u32) -> Option<&mut V> {
    let (g, e) = v.get_mut(index as usize)?;
    if *g != gen {
        return None;
    }
    e.as_mut()
}

fn remove<V>(v: &mut [(u32, Option<V>)], index: u32, gen: u32) -> Option<V> {
    let (g, e) = v.get_mut(index as usize)?;
    if *g != gen {
        return None;
    }
    let x = e.take()?;
    *g = g.wrapping_add(1);
    Some(x)
}

/// Links and services. Single-threaded like [`Link`]: a host wraps the bus
/// in its own lock or thread.
pub struct Bus<T: RpmsgTransport + 'static> {
    links: Vec<(u32, Option<LinkEntry<T>>)>,
    services: Vec<(u32, Option<ServiceEntry<T>>)>,
}

impl<T: RpmsgTransport + 'static> Default for Bus<T> {
    fn default() -> Self {
        Bus::new()
    }
}

impl<T: RpmsgTransport + 'static> Bus<T> {
    /// An empty bus.
    pub fn new() -> Bus<T> {
        Bus {
            links: Vec::new(),
            services: Vec::new(),
        }
    }

    // ---------------------------------------------------------------- links

    /// Adds a link. Services see it (`device_created`) once a poll finds it
    /// up.
    pub fn add_link(&mut self, link: Link<T>) -> LinkId {
        let remote = link.remote_cpu();
        if self.link_by_cpu(&remote).is_some() {
            // Legitimate (a shared-memory link and a byte-stream link to
            // the same cpu, as the simulator's proxy has), so not a warning.
            log::info!(
                "rpmsg: another link to cpu {remote} was added; lookups by cpu name find \
                 the first one, reach this one by its link id"
            );
        }
        let (index, gen) = insert(
            &mut self.links,
            LinkEntry {
                link,
                created: None,
            },
        );
        let id = LinkId { index, gen };
        self.sync(id);
        self.check_unmatched();
        id
    }

    /// Removes a link (services get `device_destroyed` first) and returns it.
    pub fn remove_link(&mut self, id: LinkId) -> Option<Link<T>> {
        let entry = get_mut(&mut self.links, id.index, id.gen)?;
        if entry.created.take().is_some() {
            for (_, s) in self.services.iter_mut() {
                if let Some(s) = s {
                    if s.cfg.matches(&entry.link) {
                        s.svc.device_destroyed(&mut entry.link, id);
                    }
                }
            }
        }
        let e = remove(&mut self.links, id.index, id.gen)?;
        self.check_unmatched();
        Some(e.link)
    }

    /// A link.
    pub fn link(&self, id: LinkId) -> Option<&Link<T>> {
        let (g, e) = self.links.get(id.index as usize)?;
        if *g != id.gen {
            return None;
        }
        e.as_ref().map(|e| &e.link)
    }

    /// A link, mutable.
    pub fn link_mut(&mut self, id: LinkId) -> Option<&mut Link<T>> {
        get_mut(&mut self.links, id.index, id.gen).map(|e| &mut e.link)
    }

    /// The link whose remote cpu is `cpu`.
    pub fn link_by_cpu(&self, cpu: &RemoteCpu) -> Option<LinkId> {
        self.link_ids()
            .into_iter()
            .find(|&id| self.link(id).is_some_and(|l| l.remote_cpu() == *cpu))
    }

    /// Every link.
    pub fn link_ids(&self) -> Vec<LinkId> {
        self.links
            .iter()
            .enumerate()
            .filter(|(_, (_, e))| e.is_some())
            .map(|(i, (g, _))| LinkId {
                index: i as u32,
                gen: *g,
            })
            .collect()
    }

    /// [`link_ids`](Self::link_ids) into `out` (cleared first), for a loop
    /// that runs on every doorbell and keeps its vector: no allocation once
    /// `out` has room.
    pub fn link_ids_into(&self, out: &mut Vec<LinkId>) {
        out.clear();
        out.extend(
            self.links
                .iter()
                .enumerate()
                .filter(|(_, (_, e))| e.is_some())
                .map(|(i, (g, _))| LinkId {
                    index: i as u32,
                    gen: *g,
                }),
        );
    }

    /// Polls one link, then tells services what changed (link up/down, new
    /// announcements), then runs their `poll` hooks.
    pub fn poll(&mut self, id: LinkId) -> Result<PollSummary, RpmsgError> {
        let entry = get_mut(&mut self.links, id.index, id.gen).ok_or(RpmsgError::NoLink)?;
        let r = entry.link.poll();
        self.sync(id);
        if let Some(entry) = get_mut(&mut self.links, id.index, id.gen) {
            if entry.created.is_some() {
                for (_, s) in self.services.iter_mut() {
                    if let Some(s) = s {
                        if s.cfg.matches(&entry.link) {
                            s.svc.poll(&mut entry.link, id);
                        }
                    }
                }
            }
        }
        r
    }

    /// Polls every link; returns the first error after polling them all.
    pub fn poll_all(&mut self) -> Result<(), RpmsgError> {
        let mut first = Ok(());
        for id in self.link_ids() {
            if let Err(e) = self.poll(id) {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }

    /// Delivers `device_created` / `device_destroyed` for session changes
    /// and offers new announcements to services.
    fn sync(&mut self, id: LinkId) {
        let Some(entry) = get_mut(&mut self.links, id.index, id.gen) else {
            return;
        };
        let now = entry.link.session();
        if entry.created.is_some() && entry.created != now {
            entry.created = None;
            for s in self.services.iter_mut().filter_map(|(_, s)| s.as_mut()) {
                if s.cfg.matches(&entry.link) {
                    s.svc.device_destroyed(&mut entry.link, id);
                }
            }
        }
        if entry.created.is_none() && now.is_some() {
            entry.created = now;
            for s in self.services.iter_mut().filter_map(|(_, s)| s.as_mut()) {
                if s.cfg.matches(&entry.link) {
                    s.svc.device_created(&mut entry.link, id);
                }
            }
        }
        if entry.created.is_none() {
            return;
        }
        for ann in entry.link.unoffered() {
            let name = ann.name;
            for s in self.services.iter_mut().filter_map(|(_, s)| s.as_mut()) {
                if !s.cfg.matches(&entry.link) {
                    continue;
                }
                if s.svc.ns_match(&entry.link, name.as_str(), ann.addr) {
                    entry.link.take_announcement(name.as_str(), ann.addr);
                    s.svc.ns_bind(&mut entry.link, id, name.as_str(), ann.addr);
                    break;
                }
            }
        }
    }

    // ------------------------------------------------------------- services

    /// Registers a service: `device_created` is replayed for every matching
    /// link that is up, then every pending announcement on those links is
    /// offered to it.
    pub fn register<S: Service<T>>(&mut self, cfg: ServiceConfig, svc: S) -> ServiceId<S> {
        let mut s = ServiceEntry {
            cfg,
            svc: Box::new(svc),
            warned: false,
        };
        for (i, (g, e)) in self.links.iter_mut().enumerate() {
            let Some(entry) = e else { continue };
            if entry.created.is_none() || !s.cfg.matches(&entry.link) {
                continue;
            }
            let id = LinkId {
                index: i as u32,
                gen: *g,
            };
            s.svc.device_created(&mut entry.link, id);
            let anns: Vec<_> = entry.link.pending_announcements().collect();
            for ann in anns {
                if s.svc.ns_match(&entry.link, ann.name.as_str(), ann.addr) {
                    entry.link.take_announcement(ann.name.as_str(), ann.addr);
                    s.svc
                        .ns_bind(&mut entry.link, id, ann.name.as_str(), ann.addr);
                }
            }
        }
        let (index, gen) = insert(&mut self.services, s);
        self.check_unmatched();
        ServiceId {
            index,
            gen,
            _s: PhantomData,
        }
    }

    /// Unregisters a service (`device_destroyed` for every link it was on)
    /// and hands it back.
    pub fn unregister<S: Service<T>>(&mut self, id: ServiceId<S>) -> Option<S> {
        let mut s = remove(&mut self.services, id.index, id.gen)?;
        for (i, (g, e)) in self.links.iter_mut().enumerate() {
            let Some(entry) = e else { continue };
            if entry.created.is_some() && s.cfg.matches(&entry.link) {
                let lid = LinkId {
                    index: i as u32,
                    gen: *g,
                };
                s.svc.device_destroyed(&mut entry.link, lid);
            }
        }
        let any: Box<dyn Any> = s.svc.into_any_box();
        any.downcast::<S>().ok().map(|b| *b)
    }

    /// A registered service as its concrete type.
    pub fn service_mut<S: Service<T>>(&mut self, id: &ServiceId<S>) -> Option<&mut S> {
        get_mut(&mut self.services, id.index, id.gen)?
            .svc
            .as_mut()
            .as_any_mut()
            .downcast_mut::<S>()
    }

    /// A registered service and one link at once (e.g. to use a service's
    /// endpoint on that link).
    pub fn service_and_link_mut<S: Service<T>>(
        &mut self,
        sid: &ServiceId<S>,
        lid: LinkId,
    ) -> Option<(&mut S, &mut Link<T>)> {
        let s = get_mut(&mut self.services, sid.index, sid.gen)?
            .svc
            .as_mut()
            .as_any_mut()
            .downcast_mut::<S>()?;
        let l = get_mut(&mut self.links, lid.index, lid.gen)?;
        Some((s, &mut l.link))
    }

    fn check_unmatched(&mut self) {
        let links: Vec<(RemoteCpu, String)> = self
            .links
            .iter()
            .filter_map(|(_, e)| e.as_ref())
            .map(|e| {
                (
                    e.link.remote_cpu(),
                    String::from(e.link.local_cpu().as_str()),
                )
            })
            .collect();
        for s in self.services.iter_mut().filter_map(|(_, s)| s.as_mut()) {
            let Some(cpu) = s.cfg.cpu else { continue };
            let matched = links.iter().any(|(r, _)| *r == cpu);
            if matched {
                s.warned = false;
                continue;
            }
            if s.warned {
                continue;
            }
            s.warned = true;
            if links.iter().any(|(_, l)| l.as_str() == cpu.as_str()) {
                log::warn!(
                    "rpmsg service {:?} is configured for cpu {cpu}, which is THIS side's own \
                     name; services take the REMOTE cpu name. It will not run.",
                    s.cfg.name
                );
            } else {
                log::warn!(
                    "rpmsg service {:?} is configured for cpu {cpu}, but no link goes to {cpu}; \
                     it will not run until such a link is added",
                    s.cfg.name
                );
            }
        }
    }

    /// Services configured for a cpu no link reaches.
    pub fn unmatched_services(&self) -> Vec<String> {
        self.dump_services()
            .into_iter()
            .filter(|s| s.unmatched)
            .map(|s| s.name)
            .collect()
    }

    fn dump_services(&self) -> Vec<ServiceDump> {
        let links: Vec<&LinkEntry<T>> = self.links.iter().filter_map(|(_, e)| e.as_ref()).collect();
        self.services
            .iter()
            .filter_map(|(_, s)| s.as_ref())
            .map(|s| ServiceDump {
                name: s.cfg.name.clone(),
                cpu: s.cfg.cpu,
                links: links
                    .iter()
                    .filter(|e| e.created.is_some() && s.cfg.matches(&e.link))
                    .count(),
                unmatched: s
                    .cfg
                    .cpu
                    .is_some_and(|c| !links.iter().any(|e| e.link.remote_cpu() == c)),
            })
            .collect()
    }

    /// Every link and service.
    pub fn dump(&self) -> BusDump {
        BusDump {
            links: self
                .links
                .iter()
                .filter_map(|(_, e)| e.as_ref())
                .map(|e| e.link.dump())
                .collect(),
            services: self.dump_services(),
        }
    }

    /// The link to one remote cpu.
    pub fn dump_cpu(&self, cpu: &RemoteCpu) -> Option<LinkDump> {
        self.link(self.link_by_cpu(cpu)?).map(|l| l.dump())
    }
}
