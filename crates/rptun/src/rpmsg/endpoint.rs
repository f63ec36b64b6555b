//! Endpoints: identities, configuration, receive handlers and the buffer
//! handles (received message, held RX buffer, TX payload) they work with.
#![forbid(unsafe_code)]

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::any::Any;
use core::fmt;
use core::marker::PhantomData;

use crate::rpmsg::link::LinkCtx;
use crate::rpmsg::transport::{RpmsgTransport, RxBuf, TxBuf};
use crate::shm::{Region, ShmError};
use crate::wire::rpmsg::{NameError, RpmsgName, ADDR_ANY};

/// Names one endpoint of one link. Stale ids (of a destroyed endpoint) are
/// detected, never confused with a newer endpoint in the same slot.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct EndpointId {
    pub(crate) slot: u32,
    pub(crate) gen: u32,
}

impl fmt::Debug for EndpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EndpointId({}.{})", self.slot, self.gen)
    }
}

/// How an endpoint got its destination address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    /// No destination yet (`dest` is ANY): waiting for the name service or
    /// for the peer's first message.
    Unbound,
    /// Given when the endpoint was created.
    Fixed,
    /// Learned from the peer's name service (CREATE or CREATE_ACK).
    NameService,
    /// Learned from the source address of the first message received.
    FirstMessage,
}

impl fmt::Display for Binding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Binding::Unbound => "unbound",
            Binding::Fixed => "bound (fixed)",
            Binding::NameService => "bound (ns)",
            Binding::FirstMessage => "bound (first message)",
        })
    }
}

/// What to create: name, local address and destination.
///
/// Defaults: local address ANY (the link allocates one from 1024 up) and
/// destination ANY (the name service binds it). A named endpoint with
/// destination ANY announces itself (NS CREATE) when the link has a name
/// service.
#[derive(Debug, Clone, Copy)]
pub struct EndpointConfig {
    pub(crate) name: Result<RpmsgName, NameError>,
    pub(crate) addr: u32,
    pub(crate) dest: u32,
}

impl EndpointConfig {
    /// A named endpoint (at most 31 bytes; an invalid name is reported by
    /// `create_endpoint`).
    pub fn new(name: &str) -> EndpointConfig {
        EndpointConfig {
            name: RpmsgName::new(name),
            addr: ADDR_ANY,
            dest: ADDR_ANY,
        }
    }

    /// An endpoint without name: never announced, bound only by a fixed
    /// destination or the peer's first message.
    pub fn unnamed() -> EndpointConfig {
        EndpointConfig {
            name: Ok(RpmsgName::empty()),
            addr: ADDR_ANY,
            dest: ADDR_ANY,
        }
    }

    /// A fixed local address (must be ≥ 1024 and free).
    pub fn addr(mut self, addr: u32) -> EndpointConfig {
        self.addr = addr;
        self
    }

    /// A fixed destination address (the endpoint is bound from the start).
    pub fn dest(mut self, dest: u32) -> EndpointConfig {
        self.dest = dest;
        self
    }
}

/// Upcasting to `Any`, so a link can hand back a handler's concrete type
/// ([`Link::handler_mut`](super::Link::handler_mut)). Implemented for every
/// `'static` type.
pub trait AsAny: Any {
    /// `self` as `&dyn Any`.
    fn as_any(&self) -> &dyn Any;
    /// `self` as `&mut dyn Any`.
    fn as_any_mut(&mut self) -> &mut dyn Any;
    /// A boxed `self` as `Box<dyn Any>`.
    fn into_any_box(self: Box<Self>) -> Box<dyn Any>;
}

impl<X: Any> AsAny for X {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
    fn into_any_box(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

/// What an endpoint does with what it receives.
///
/// The handler *is* the endpoint's private state (NuttX's `ept->priv`):
/// code outside the callbacks reaches it with
/// [`Link::handler_mut`](super::Link::handler_mut). Every callback gets a
/// [`LinkCtx`] that can send on the same link, hold the received buffer,
/// create and destroy endpoints — but not poll the link, so callbacks never
/// nest.
pub trait EndpointHandler<T: RpmsgTransport>: AsAny + Send {
    /// A message for this endpoint arrived. Drop `msg` to give the buffer
    /// back when the callback returns, or [`LinkCtx::hold`] it to keep it.
    fn on_message(&mut self, ctx: &mut LinkCtx<'_, T>, msg: Received<'_>);

    /// The name service gave this endpoint its destination `dest`.
    fn on_bound(&mut self, ctx: &mut LinkCtx<'_, T>, dest: u32) {
        let _ = (ctx, dest);
    }

    /// The peer destroyed the service this endpoint was bound to (NS
    /// DESTROY) or the link went down; the destination is ANY again unless
    /// it was fixed. Destroying the endpoint here is allowed.
    fn on_unbind(&mut self, ctx: &mut LinkCtx<'_, T>) {
        let _ = ctx;
    }
}

type UnbindFn<T> = Box<dyn for<'a> FnMut(&mut LinkCtx<'a, T>) + Send>;
type BoundFn<T> = Box<dyn for<'a> FnMut(&mut LinkCtx<'a, T>, u32) + Send>;

/// An [`EndpointHandler`] made of closures; build one with [`on_message`].
pub struct FnHandler<T: RpmsgTransport, F> {
    f: F,
    unbind: Option<UnbindFn<T>>,
    bound: Option<BoundFn<T>>,
    _t: PhantomData<fn(T)>,
}

/// A handler from a closure (the closure's argument types are inferred):
///
/// ```
/// # use rptun::rpmsg::{on_message, loopback::Loopback};
/// let h = on_message::<Loopback, _>(|ctx, msg| {
///     let _ = ctx.reply(&msg, b"pong");
/// })
/// .on_unbind(|_ctx| {});
/// # let _ = h;
/// ```
pub fn on_message<T, F>(f: F) -> FnHandler<T, F>
where
    T: RpmsgTransport + 'static,
    F: for<'a, 'b> FnMut(&mut LinkCtx<'a, T>, Received<'b>) + Send + 'static,
{
    FnHandler {
        f,
        unbind: None,
        bound: None,
        _t: PhantomData,
    }
}

impl<T: RpmsgTransport + 'static, F> FnHandler<T, F> {
    /// Adds an unbind callback.
    pub fn on_unbind(
        mut self,
        g: impl for<'a> FnMut(&mut LinkCtx<'a, T>) + Send + 'static,
    ) -> Self {
        self.unbind = Some(Box::new(g));
        self
    }

    /// Adds a bound callback (called with the new destination).
    pub fn on_bound(
        mut self,
        g: impl for<'a> FnMut(&mut LinkCtx<'a, T>, u32) + Send + 'static,
    ) -> Self {
        self.bound = Some(Box::new(g));
        self
    }

    /// The message closure (to reach state it captured).
    pub fn inner_mut(&mut self) -> &mut F {
        &mut self.f
    }
}

impl<T, F> EndpointHandler<T> for FnHandler<T, F>
where
    T: RpmsgTransport + 'static,
    F: for<'a, 'b> FnMut(&mut LinkCtx<'a, T>, Received<'b>) + Send + 'static,
{
    fn on_message(&mut self, ctx: &mut LinkCtx<'_, T>, msg: Received<'_>) {
        (self.f)(ctx, msg)
    }
    fn on_bound(&mut self, ctx: &mut LinkCtx<'_, T>, dest: u32) {
        if let Some(g) = &mut self.bound {
            g(ctx, dest)
        }
    }
    fn on_unbind(&mut self, ctx: &mut LinkCtx<'_, T>) {
        if let Some(g) = &mut self.unbind {
            g(ctx)
        }
    }
}

/// A message being delivered to an endpoint's callback.
///
/// The payload stays in the transport's RX buffer (zero copy); it is only
/// valid during the callback unless held with [`LinkCtx::hold`]. Header and
/// length were validated; the payload bytes are the peer's and untrusted.
pub struct Received<'a> {
    pub(crate) buf: RxBuf,
    pub(crate) src: u32,
    pub(crate) dst: u32,
    pub(crate) flags: u16,
    pub(crate) payload: Region,
    pub(crate) _cb: PhantomData<&'a mut ()>,
}

impl Received<'_> {
    /// Sender's address.
    pub fn src(&self) -> u32 {
        self.src
    }
    /// Our endpoint's address.
    pub fn dst(&self) -> u32 {
        self.dst
    }
    /// Header flags.
    pub fn flags(&self) -> u16 {
        self.flags
    }
    /// Payload length in bytes.
    pub fn len(&self) -> usize {
        self.payload.len()
    }
    /// True for an empty payload.
    pub fn is_empty(&self) -> bool {
        self.payload.is_empty()
    }
    /// The payload, in place in the RX buffer.
    pub fn payload(&self) -> &Region {
        &self.payload
    }
    /// Copies payload bytes from `offset` into `dst`.
    pub fn read(&self, offset: usize, dst: &mut [u8]) -> Result<(), ShmError> {
        self.payload.read_bytes(offset, dst)
    }
    /// Copies the whole payload into a vector.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = alloc::vec![0u8; self.payload.len()];
        // The payload region is exactly `len` bytes, so this cannot fail.
        let _ = self.payload.read_bytes(0, &mut v);
        v
    }
}

impl fmt::Debug for Received<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Received")
            .field("src", &self.src)
            .field("dst", &self.dst)
            .field("len", &self.payload.len())
            .finish()
    }
}

/// An RX buffer kept beyond its callback ([`LinkCtx::hold`]). Give it back
/// with `release_rx` on the link or a callback context; until then the peer
/// has one RX buffer less, and the link's dump lists it as held by its
/// endpoint. The payload may be read and rewritten in place.
#[must_use = "a held RX buffer is lost to the peer until released with release_rx"]
pub struct HeldRx {
    pub(crate) index: u32,
    pub(crate) gen: u32,
    pub(crate) src: u32,
    pub(crate) dst: u32,
    pub(crate) payload: Region,
}

impl HeldRx {
    /// Sender's address.
    pub fn src(&self) -> u32 {
        self.src
    }
    /// Our endpoint's address.
    pub fn dst(&self) -> u32 {
        self.dst
    }
    /// Payload length.
    pub fn len(&self) -> usize {
        self.payload.len()
    }
    /// True for an empty payload.
    pub fn is_empty(&self) -> bool {
        self.payload.is_empty()
    }
    /// The payload, in place.
    pub fn payload(&self) -> &Region {
        &self.payload
    }
}

impl fmt::Debug for HeldRx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeldRx")
            .field("src", &self.src)
            .field("dst", &self.dst)
            .field("len", &self.payload.len())
            .finish()
    }
}

/// A TX buffer lent to the application for zero-copy sending: write the
/// payload into [`TxPayload::payload`], then `send_nocopy` it, or
/// `release_tx` it unused.
#[must_use = "a TX buffer is lost until sent with send_nocopy or released with release_tx"]
pub struct TxPayload {
    pub(crate) index: u32,
    pub(crate) gen: u32,
    pub(crate) ept: EndpointId,
    pub(crate) payload: Region,
}

impl TxPayload {
    /// The endpoint this buffer will be sent from.
    pub fn endpoint(&self) -> EndpointId {
        self.ept
    }
    /// The payload area (its length is the payload capacity).
    pub fn payload(&self) -> &Region {
        &self.payload
    }
    /// Payload capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.payload.len()
    }
    /// Copies `src` into the payload at `offset`.
    pub fn write(&self, offset: usize, src: &[u8]) -> Result<(), ShmError> {
        self.payload.write_bytes(offset, src)
    }
}

impl fmt::Debug for TxPayload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TxPayload")
            .field("endpoint", &self.ept)
            .field("capacity", &self.payload.len())
            .finish()
    }
}

/// Bookkeeping of a lent TX buffer (local memory).
#[derive(Debug, Clone, Copy)]
pub(crate) struct TxLease {
    pub buf: TxBuf,
    pub ept: EndpointId,
    pub ept_addr: u32,
}

/// Bookkeeping of a held RX buffer (local memory).
#[derive(Debug, Clone, Copy)]
pub(crate) struct HeldEntry {
    pub buf: RxBuf,
    pub ept: EndpointId,
    pub ept_addr: u32,
}
