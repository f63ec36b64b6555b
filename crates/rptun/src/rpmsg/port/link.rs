//! The connection state machine of a byte-stream port (no I/O).
//!
//! Inputs are the [`Cmd`]s the deframer found, local events ([`Link::start`]
//! at boot or restart, [`Link::poweroff`], [`Link::suspend`],
//! [`Link::resume`], [`Link::wake_peer`], [`Link::relax_peer`]) and a
//! periodic [`Link::tick`] from the caller's timer. Every input returns the
//! [`Actions`] to carry out, in order: command bytes to write and events for
//! the upper layer.
//!
//! Protocol (NuttX `rpmsg_port_uart`, DESIGN.md §9):
//!
//! - A side that is not connected sends CONNREQ (at start, then on every
//!   tick until connected). On CONNREQ a receiver drops its queued packets,
//!   answers CONNACK and (re)registers the link, so a peer that reboots
//!   re-runs the handshake and the survivor starts a fresh session. On
//!   CONNACK a side that is not yet connected drops its queues and
//!   registers. Either side may boot first, and crossing CONNREQs connect
//!   too.
//! - POWEROFF takes the link down (queued TX packets are dropped); the
//!   survivor goes back to sending CONNREQ on ticks and reconnects when
//!   the peer is back.
//! - SUSPEND/RESUME clear and set the peer's "running" signal.
//! - Wake handshake: before transmitting, a sender asks the receiver to
//!   stay awake with STAYWAKE1 or STAYWAKE2 (repeated on ticks until
//!   acknowledged) and waits for the matching STAYWAKEACK; when done it
//!   sends RELAXWAKE. The phase alternates after every relax, so a late
//!   ACK of the previous round is not taken for a fresh one. Every side
//!   answers STAYWAKE whether connected or not (a NuttX peer waits for that
//!   ACK before it sends its CONNREQ).
//!
//! The tick period is the caller's choice: NuttX retries its wake request
//! every 100 ms. Keep it well above the round trip of the link: a CONNREQ
//! repeated while the peer's CONNACK is on its way makes the peer start its
//! session again (harmless, but its queued packets are dropped).
#![forbid(unsafe_code)]

use super::frame::Cmd;

/// Where the connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Not started, or powered off locally: silent, ignores the peer.
    Off,
    /// Started, no session: sends CONNREQ on every tick.
    Connecting,
    /// Session established: data frames flow.
    Connected,
}

/// Phase of the alternating wake handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WakePhase {
    /// STAYWAKE1 / STAYWAKEACK1.
    One,
    /// STAYWAKE2 / STAYWAKEACK2.
    Two,
}

impl WakePhase {
    /// The request of this phase.
    pub const fn request(self) -> Cmd {
        match self {
            WakePhase::One => Cmd::StayWake1,
            WakePhase::Two => Cmd::StayWake2,
        }
    }

    /// The acknowledge of this phase.
    pub const fn ack(self) -> Cmd {
        match self {
            WakePhase::One => Cmd::StayWakeAck1,
            WakePhase::Two => Cmd::StayWakeAck2,
        }
    }

    /// The other phase.
    pub const fn next(self) -> WakePhase {
        match self {
            WakePhase::One => WakePhase::Two,
            WakePhase::Two => WakePhase::One,
        }
    }
}

/// Which packet queues to empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queues {
    /// Packets waiting to be sent (NuttX `RPMSG_PORT_DROP_TXQ`).
    Tx,
    /// Packets waiting to be sent and received packets not yet delivered
    /// (NuttX `RPMSG_PORT_DROP_ALL`).
    All,
}

/// Something the caller must do, in the order given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Write this command byte to the stream, raw (unescaped). It may go
    /// between two bytes of a frame being sent, except CONNREQ/CONNACK
    /// ([`Cmd::aborts_frame`]), which the peer takes as the end of any
    /// frame in progress.
    Send(Cmd),
    /// A session started: register the port with the rpmsg bus (name
    /// service, endpoints); deliver received frames from now on. The peer
    /// counts as running and its wake requests as not held.
    LinkUp,
    /// The session ended: unregister the port from the rpmsg bus; stop
    /// sending and delivering frames.
    LinkDown,
    /// Drop these queued packets: they belong to a session that is gone.
    DropQueued(Queues),
    /// The peer announced it is suspending (rpmsg RUNNING signal off).
    PeerSuspended,
    /// The peer announced it resumed (rpmsg RUNNING signal on).
    PeerResumed,
    /// Our wake request was acknowledged: the peer is awake to receive.
    PeerAwake,
    /// The peer asked us to stay awake: hold the receive wake lock.
    StayAwake,
    /// The peer no longer needs us awake: release the receive wake lock.
    MaySleep,
}

/// The actions produced by one input (at most [`Actions::CAPACITY`]).
#[derive(Debug, Clone, Copy)]
pub struct Actions {
    items: [Action; Actions::CAPACITY],
    len: usize,
}

impl Actions {
    /// Most actions a single input can produce.
    pub const CAPACITY: usize = 6;

    const fn new() -> Self {
        Actions {
            items: [Action::LinkDown; Actions::CAPACITY],
            len: 0,
        }
    }

    fn push(&mut self, action: Action) {
        // No input produces more than CAPACITY actions (tests cover every
        // path); a surplus would be a bug, dropped rather than panicking.
        if let Some(slot) = self.items.get_mut(self.len) {
            *slot = action;
            self.len += 1;
        }
    }

    /// The actions, in order.
    pub fn as_slice(&self) -> &[Action] {
        &self.items[..self.len]
    }

    /// Iterates over the actions in order.
    pub fn iter(&self) -> core::slice::Iter<'_, Action> {
        self.as_slice().iter()
    }

    /// Number of actions.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `action` is among the actions.
    pub fn contains(&self, action: &Action) -> bool {
        self.as_slice().contains(action)
    }
}

impl PartialEq for Actions {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Actions {}

impl<'a> IntoIterator for &'a Actions {
    type Item = &'a Action;
    type IntoIter = core::slice::Iter<'a, Action>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl IntoIterator for Actions {
    type Item = Action;
    type IntoIter = core::iter::Take<core::array::IntoIter<Action, { Actions::CAPACITY }>>;

    fn into_iter(self) -> Self::IntoIter {
        self.items.into_iter().take(self.len)
    }
}

/// Counters of a [`Link`]. Counters wrap around on overflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LinkStats {
    /// Sessions started ([`Action::LinkUp`]).
    pub link_ups: u32,
    /// Sessions ended ([`Action::LinkDown`]).
    pub link_downs: u32,
    /// CONNREQ bytes sent (start and retries).
    pub connreqs_sent: u32,
    /// Wake acknowledges that matched no pending request (stale or
    /// duplicated).
    pub stale_acks: u32,
    /// Commands ignored because the link is off, or CONNACKs that arrived
    /// while already connected.
    pub ignored: u32,
}

/// Our side of the wake handshake (we are the sender).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TxWake {
    /// No request outstanding.
    Asleep,
    /// Request sent, waiting for the ACK of the current phase.
    Waking,
    /// ACK received: the peer stays awake until we relax.
    Awake,
}

/// The connection state machine of one byte-stream port.
#[derive(Debug, Clone)]
pub struct Link {
    state: LinkState,
    tx_wake: TxWake,
    phase: WakePhase,
    /// The peer asked us to stay awake and has not relaxed yet.
    rx_held: bool,
    /// The peer's RUNNING signal (SUSPEND clears, RESUME sets).
    peer_running: bool,
    stats: LinkStats,
}

impl Default for Link {
    fn default() -> Self {
        Self::new()
    }
}

fn bump(counter: &mut u32) {
    *counter = counter.wrapping_add(1);
}

impl Link {
    /// A link that has not started ([`LinkState::Off`]).
    pub const fn new() -> Self {
        Link {
            state: LinkState::Off,
            tx_wake: TxWake::Asleep,
            phase: WakePhase::One,
            rx_held: false,
            peer_running: true,
            stats: LinkStats {
                link_ups: 0,
                link_downs: 0,
                connreqs_sent: 0,
                stale_acks: 0,
                ignored: 0,
            },
        }
    }

    /// Where the connection stands.
    pub fn state(&self) -> LinkState {
        self.state
    }

    /// Whether a session is up: data frames may be sent, and received
    /// frames must be delivered (frames received otherwise are dropped).
    pub fn is_connected(&self) -> bool {
        self.state == LinkState::Connected
    }

    /// Whether our wake request has been acknowledged.
    pub fn peer_awake(&self) -> bool {
        self.tx_wake == TxWake::Awake
    }

    /// Whether a wake request is waiting for its acknowledge.
    pub fn wake_pending(&self) -> bool {
        self.tx_wake == TxWake::Waking
    }

    /// The phase the next (or current) wake request uses.
    pub fn wake_phase(&self) -> WakePhase {
        self.phase
    }

    /// Whether the peer holds us awake (between its STAYWAKE and RELAXWAKE).
    pub fn holding_awake(&self) -> bool {
        self.rx_held
    }

    /// The peer's RUNNING signal: false between its SUSPEND and RESUME.
    pub fn peer_running(&self) -> bool {
        self.peer_running
    }

    /// Counters.
    pub fn stats(&self) -> &LinkStats {
        &self.stats
    }

    fn send_connreq(&mut self, out: &mut Actions) {
        bump(&mut self.stats.connreqs_sent);
        out.push(Action::Send(Cmd::ConnReq));
    }

    fn link_up(&mut self, out: &mut Actions) {
        self.state = LinkState::Connected;
        self.peer_running = true;
        bump(&mut self.stats.link_ups);
        out.push(Action::LinkUp);
    }

    fn link_down(&mut self, out: &mut Actions) {
        bump(&mut self.stats.link_downs);
        out.push(Action::LinkDown);
    }

    fn release_rx(&mut self, out: &mut Actions) {
        if self.rx_held {
            self.rx_held = false;
            out.push(Action::MaySleep);
        }
    }

    /// Ends our wake round (if any) and moves to the other phase.
    fn end_wake_round(&mut self) {
        self.tx_wake = TxWake::Asleep;
        self.phase = self.phase.next();
    }

    /// Boot, or restart of this side: forget any session (dropping every
    /// queued packet) and send CONNREQ.
    pub fn start(&mut self) -> Actions {
        let mut out = Actions::new();
        if self.state == LinkState::Connected {
            self.link_down(&mut out);
            out.push(Action::DropQueued(Queues::All));
        }
        self.release_rx(&mut out);
        self.state = LinkState::Connecting;
        self.tx_wake = TxWake::Asleep;
        self.phase = WakePhase::One;
        self.peer_running = true;
        self.send_connreq(&mut out);
        out
    }

    /// This side powers off or reboots: tell a connected peer (POWEROFF),
    /// end the session and go silent until [`Link::start`].
    pub fn poweroff(&mut self) -> Actions {
        let mut out = Actions::new();
        if self.state == LinkState::Connected {
            out.push(Action::Send(Cmd::PowerOff));
            self.link_down(&mut out);
            out.push(Action::DropQueued(Queues::Tx));
        }
        self.release_rx(&mut out);
        self.state = LinkState::Off;
        self.tx_wake = TxWake::Asleep;
        out
    }

    /// The caller's periodic timer: repeats CONNREQ while not connected
    /// and the wake request while it is not acknowledged.
    pub fn tick(&mut self) -> Actions {
        let mut out = Actions::new();
        if self.state == LinkState::Off {
            return out;
        }
        if self.state == LinkState::Connecting {
            self.send_connreq(&mut out);
        }
        if self.tx_wake == TxWake::Waking {
            out.push(Action::Send(self.phase.request()));
        }
        out
    }

    /// Tell the peer we are suspending (it clears our RUNNING signal).
    pub fn suspend(&mut self) -> Actions {
        let mut out = Actions::new();
        if self.state != LinkState::Off {
            out.push(Action::Send(Cmd::Suspend));
        }
        out
    }

    /// Tell the peer we resumed.
    pub fn resume(&mut self) -> Actions {
        let mut out = Actions::new();
        if self.state != LinkState::Off {
            out.push(Action::Send(Cmd::Resume));
        }
        out
    }

    /// Ask the peer to stay awake before transmitting. Yields
    /// [`Action::PeerAwake`] at once if it already is; otherwise sends the
    /// request of the current phase ([`Link::tick`] repeats it) and
    /// [`Action::PeerAwake`] follows from [`Link::on_command`] when the
    /// matching ACK arrives.
    pub fn wake_peer(&mut self) -> Actions {
        let mut out = Actions::new();
        match (self.state, self.tx_wake) {
            (LinkState::Off, _) | (_, TxWake::Waking) => {}
            (_, TxWake::Awake) => out.push(Action::PeerAwake),
            (_, TxWake::Asleep) => {
                self.tx_wake = TxWake::Waking;
                out.push(Action::Send(self.phase.request()));
            }
        }
        out
    }

    /// Done transmitting: let the peer sleep (RELAXWAKE) and switch to the
    /// other wake phase.
    pub fn relax_peer(&mut self) -> Actions {
        let mut out = Actions::new();
        if self.tx_wake != TxWake::Asleep && self.state != LinkState::Off {
            out.push(Action::Send(Cmd::RelaxWake));
        }
        self.end_wake_round();
        out
    }

    /// A command received from the peer.
    pub fn on_command(&mut self, cmd: Cmd) -> Actions {
        let mut out = Actions::new();
        if self.state == LinkState::Off {
            bump(&mut self.stats.ignored);
            return out;
        }
        match cmd {
            Cmd::ConnReq => {
                // The peer (re)started: whatever we had belongs to the old
                // session.
                if self.state == LinkState::Connected {
                    self.link_down(&mut out);
                }
                out.push(Action::DropQueued(Queues::All));
                out.push(Action::Send(Cmd::ConnAck));
                self.link_up(&mut out);
            }
            Cmd::ConnAck => {
                if self.state == LinkState::Connected {
                    bump(&mut self.stats.ignored);
                } else {
                    out.push(Action::DropQueued(Queues::All));
                    self.link_up(&mut out);
                }
            }
            Cmd::PowerOff => {
                if self.state == LinkState::Connected {
                    self.link_down(&mut out);
                    out.push(Action::DropQueued(Queues::Tx));
                    self.state = LinkState::Connecting;
                }
                if self.tx_wake != TxWake::Asleep {
                    // Nobody will acknowledge or needs a relax.
                    self.end_wake_round();
                }
                self.release_rx(&mut out);
            }
            Cmd::Suspend => {
                if self.peer_running {
                    self.peer_running = false;
                    out.push(Action::PeerSuspended);
                }
            }
            Cmd::Resume => {
                if !self.peer_running {
                    self.peer_running = true;
                    out.push(Action::PeerResumed);
                }
            }
            Cmd::StayWake1 | Cmd::StayWake2 => {
                if !self.rx_held {
                    self.rx_held = true;
                    out.push(Action::StayAwake);
                }
                let ack = if cmd == Cmd::StayWake1 {
                    Cmd::StayWakeAck1
                } else {
                    Cmd::StayWakeAck2
                };
                out.push(Action::Send(ack));
            }
            Cmd::RelaxWake => self.release_rx(&mut out),
            Cmd::StayWakeAck1 | Cmd::StayWakeAck2 => {
                if self.tx_wake == TxWake::Waking && cmd == self.phase.ack() {
                    self.tx_wake = TxWake::Awake;
                    out.push(Action::PeerAwake);
                } else {
                    bump(&mut self.stats.stale_acks);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use Action::*;

    fn acts(a: Actions) -> std::vec::Vec<Action> {
        a.into_iter().collect()
    }

    /// Delivers every command `from` wants to send to `to`, returning the
    /// other actions of `from` and everything `to` did.
    fn deliver(sent: &Actions, to: &mut Link) -> std::vec::Vec<Action> {
        let mut out = std::vec::Vec::new();
        for a in sent {
            if let Send(c) = a {
                out.extend(acts(to.on_command(*c)));
            }
        }
        out
    }

    #[test]
    fn peer_starting_second_connects() {
        let mut a = Link::new();
        let mut b = Link::new();
        let a_start = a.start();
        assert_eq!(acts(a_start), [Send(Cmd::ConnReq)]);
        assert_eq!(a.state(), LinkState::Connecting);
        // B is not running yet: the CONNREQ is lost (ignored when Off).
        assert!(deliver(&a_start, &mut b).is_empty());
        assert_eq!(b.stats().ignored, 1);

        let b_start = b.start();
        let a_reply = a.on_command(Cmd::ConnReq);
        assert_eq!(
            acts(a_reply),
            [DropQueued(Queues::All), Send(Cmd::ConnAck), LinkUp]
        );
        assert!(a.is_connected());
        assert_eq!(acts(b_start), [Send(Cmd::ConnReq)]);
        assert_eq!(deliver(&a_reply, &mut b), [DropQueued(Queues::All), LinkUp]);
        assert!(b.is_connected());
        // Connected sides stop retrying.
        assert!(a.tick().is_empty());
        assert!(b.tick().is_empty());
    }

    #[test]
    fn retry_reaches_a_peer_that_missed_the_first_connreq() {
        let mut a = Link::new();
        let mut b = Link::new();
        let _lost = a.start();
        // B started, but its own CONNREQ was lost on the line too.
        let _lost_too = b.start();
        let retry = a.tick();
        assert_eq!(acts(retry), [Send(Cmd::ConnReq)]);
        let b_reply = b.on_command(Cmd::ConnReq);
        assert!(b.is_connected());
        assert_eq!(deliver(&b_reply, &mut a), [DropQueued(Queues::All), LinkUp]);
        assert!(a.is_connected());
        assert_eq!(a.stats().connreqs_sent, 2);
    }

    #[test]
    fn crossing_connreqs_connect_once_each() {
        let mut a = Link::new();
        let mut b = Link::new();
        let sa = a.start();
        let sb = b.start();
        let ra = deliver(&sb, &mut a);
        let rb = deliver(&sa, &mut b);
        assert_eq!(ra, [DropQueued(Queues::All), Send(Cmd::ConnAck), LinkUp]);
        assert_eq!(rb, [DropQueued(Queues::All), Send(Cmd::ConnAck), LinkUp]);
        // The CONNACKs find both sides connected and change nothing.
        assert!(a.on_command(Cmd::ConnAck).is_empty());
        assert!(b.on_command(Cmd::ConnAck).is_empty());
        assert_eq!(a.stats().link_ups, 1);
        assert_eq!(b.stats().link_ups, 1);
        assert!(a.is_connected() && b.is_connected());
    }

    fn connected_pair() -> (Link, Link) {
        let mut a = Link::new();
        let mut b = Link::new();
        let _ = a.start();
        let sb = b.start();
        let ra = a.on_command(Cmd::ConnReq);
        let _ = sb;
        let _ = deliver(&ra, &mut b);
        assert!(a.is_connected() && b.is_connected());
        (a, b)
    }

    #[test]
    fn restart_of_one_side_reconnects_and_drops_queued_packets() {
        let (mut a, mut b) = connected_pair();
        // B reboots with the same state machine...
        let sb = b.start();
        assert_eq!(
            acts(sb),
            [LinkDown, DropQueued(Queues::All), Send(Cmd::ConnReq)]
        );
        assert_eq!(b.state(), LinkState::Connecting);
        // ...and A starts a fresh session: old packets go, a new
        // registration follows.
        let ra = a.on_command(Cmd::ConnReq);
        assert_eq!(
            acts(ra),
            [
                LinkDown,
                DropQueued(Queues::All),
                Send(Cmd::ConnAck),
                LinkUp
            ]
        );
        assert_eq!(deliver(&ra, &mut b), [DropQueued(Queues::All), LinkUp]);
        assert_eq!(a.stats().link_ups, 2);
        assert_eq!(a.stats().link_downs, 1);

        // A reboot with a brand-new state machine works the same way.
        let mut b = Link::new();
        let sb = b.start();
        assert_eq!(acts(sb), [Send(Cmd::ConnReq)]);
        let ra = deliver(&sb, &mut a);
        assert_eq!(ra[0], LinkDown);
        assert_eq!(ra[1], DropQueued(Queues::All));
        assert!(b.on_command(Cmd::ConnAck).contains(&LinkUp));
    }

    #[test]
    fn poweroff_takes_the_link_down() {
        let (mut a, mut b) = connected_pair();
        let pa = a.poweroff();
        assert_eq!(
            acts(pa),
            [Send(Cmd::PowerOff), LinkDown, DropQueued(Queues::Tx)]
        );
        assert_eq!(a.state(), LinkState::Off);
        assert_eq!(deliver(&pa, &mut b), [LinkDown, DropQueued(Queues::Tx)]);
        assert_eq!(b.state(), LinkState::Connecting);
        // B keeps asking; A is off and ignores it.
        let tb = b.tick();
        assert_eq!(acts(tb), [Send(Cmd::ConnReq)]);
        assert!(deliver(&tb, &mut a).is_empty());
        assert!(a.tick().is_empty());
        // A second POWEROFF changes nothing.
        assert!(b.on_command(Cmd::PowerOff).is_empty());
        // A comes back.
        let sa = a.start();
        let rb = deliver(&sa, &mut b);
        assert!(rb.contains(&LinkUp));
        assert!(b.is_connected());
        // Powering off while only connecting sends nothing.
        let mut c = Link::new();
        let _ = c.start();
        assert!(c.poweroff().is_empty());
        assert_eq!(c.state(), LinkState::Off);
    }

    #[test]
    fn wake_handshake_alternates_and_ignores_stale_acks() {
        let (mut a, mut b) = connected_pair();
        // Round 1.
        let w = a.wake_peer();
        assert_eq!(acts(w), [Send(Cmd::StayWake1)]);
        assert!(a.wake_pending());
        assert!(a.wake_peer().is_empty(), "one request at a time");
        assert_eq!(acts(a.tick()), [Send(Cmd::StayWake1)], "repeated on tick");
        let rb = deliver(&w, &mut b);
        assert_eq!(rb, [StayAwake, Send(Cmd::StayWakeAck1)]);
        assert!(b.holding_awake());
        // The repeated request is acknowledged again without a second hold.
        assert_eq!(
            acts(b.on_command(Cmd::StayWake1)),
            [Send(Cmd::StayWakeAck1)]
        );
        assert_eq!(acts(a.on_command(Cmd::StayWakeAck1)), [PeerAwake]);
        assert!(a.peer_awake());
        // The duplicate ACK of the repeated request is stale.
        assert!(a.on_command(Cmd::StayWakeAck1).is_empty());
        assert_eq!(acts(a.wake_peer()), [PeerAwake], "already awake");
        let r = a.relax_peer();
        assert_eq!(acts(r), [Send(Cmd::RelaxWake)]);
        assert_eq!(deliver(&r, &mut b), [MaySleep]);
        assert!(!b.holding_awake());
        assert!(b.on_command(Cmd::RelaxWake).is_empty());

        // Round 2 uses the other phase; a late ACK1 is not taken for it.
        assert_eq!(a.wake_phase(), WakePhase::Two);
        assert_eq!(acts(a.wake_peer()), [Send(Cmd::StayWake2)]);
        assert!(a.on_command(Cmd::StayWakeAck1).is_empty());
        assert!(a.wake_pending());
        assert_eq!(a.stats().stale_acks, 2);
        assert_eq!(acts(a.on_command(Cmd::StayWakeAck2)), [PeerAwake]);
        let _ = a.relax_peer();
        // Round 3 is phase one again.
        assert_eq!(acts(a.wake_peer()), [Send(Cmd::StayWake1)]);
        assert!(a.on_command(Cmd::StayWakeAck2).is_empty());
        assert_eq!(
            acts(b.on_command(Cmd::StayWake2)),
            [StayAwake, Send(Cmd::StayWakeAck2)]
        );
    }

    #[test]
    fn staywake_is_answered_before_connecting() {
        // A NuttX peer waits for the ACK before sending its CONNREQ.
        let mut b = Link::new();
        let _ = b.start();
        assert_eq!(
            acts(b.on_command(Cmd::StayWake1)),
            [StayAwake, Send(Cmd::StayWakeAck1)]
        );
        // Waking before connecting works too; the tick repeats both.
        let mut a = Link::new();
        assert!(a.wake_peer().is_empty(), "off: nothing");
        let _ = a.start();
        assert_eq!(acts(a.wake_peer()), [Send(Cmd::StayWake1)]);
        assert_eq!(acts(a.tick()), [Send(Cmd::ConnReq), Send(Cmd::StayWake1)]);
    }

    #[test]
    fn poweroff_releases_wake_state() {
        let (mut a, mut b) = connected_pair();
        let _ = b.on_command(Cmd::StayWake1);
        let _ = a.wake_peer();
        // B holds A awake and A waits for an ACK when B powers off.
        let _ = a.on_command(Cmd::StayWake2);
        assert_eq!(
            acts(a.on_command(Cmd::PowerOff)),
            [LinkDown, DropQueued(Queues::Tx), MaySleep]
        );
        assert!(!a.wake_pending() && !a.holding_awake());
        // The cancelled phase-1 request's ACK can no longer count.
        assert_eq!(a.wake_phase(), WakePhase::Two);
        // Local poweroff releases a held wake lock too.
        assert_eq!(
            acts(b.poweroff()),
            [
                Send(Cmd::PowerOff),
                LinkDown,
                DropQueued(Queues::Tx),
                MaySleep
            ]
        );
    }

    #[test]
    fn suspend_and_resume() {
        let (mut a, mut b) = connected_pair();
        let s = a.suspend();
        assert_eq!(acts(s), [Send(Cmd::Suspend)]);
        assert_eq!(deliver(&s, &mut b), [PeerSuspended]);
        assert!(!b.peer_running());
        assert!(b.on_command(Cmd::Suspend).is_empty());
        let r = a.resume();
        assert_eq!(deliver(&r, &mut b), [PeerResumed]);
        assert!(b.peer_running());
        assert!(b.on_command(Cmd::Resume).is_empty());
        // A session restart resets the signal.
        let _ = b.on_command(Cmd::Suspend);
        let _ = b.on_command(Cmd::ConnReq);
        assert!(b.peer_running());
        assert!(Link::new().suspend().is_empty());
    }

    fn input() -> impl Strategy<Value = u8> {
        0u8..17
    }

    proptest! {
        /// Whatever arrives, in whatever order, the events stay coherent:
        /// LinkUp and LinkDown alternate and match `is_connected`, every
        /// LinkUp is preceded by a drop of the old queues, StayAwake and
        /// MaySleep alternate, PeerAwake only follows a pending request.
        #[test]
        #[cfg_attr(miri, ignore = "pure state machine without shared memory, ~20 s under Miri; fuzzed by port_deframer")]
        fn events_stay_coherent(inputs in proptest::collection::vec(input(), 0..200)) {
            let mut l = Link::new();
            let mut up = false;
            let mut held = false;
            for i in inputs {
                let pending = l.wake_pending();
                let awake = l.peer_awake();
                let out = match i {
                    0 => l.start(),
                    1 => l.poweroff(),
                    2 => l.tick(),
                    3 => l.wake_peer(),
                    4 => l.relax_peer(),
                    5 => l.suspend(),
                    6 => l.resume(),
                    n => l.on_command(Cmd::ALL[usize::from(n - 7)]),
                };
                prop_assert!(out.len() <= Actions::CAPACITY);
                let mut dropped_all = false;
                for a in &out {
                    match a {
                        LinkUp => { prop_assert!(!up); prop_assert!(dropped_all); up = true; }
                        LinkDown => { prop_assert!(up); up = false; }
                        DropQueued(Queues::All) => dropped_all = true,
                        StayAwake => { prop_assert!(!held); held = true; }
                        MaySleep => { prop_assert!(held); held = false; }
                        PeerAwake => prop_assert!(pending || awake),
                        _ => {}
                    }
                }
                prop_assert_eq!(up, l.is_connected());
                prop_assert_eq!(held, l.holding_awake());
                prop_assert!(!(l.wake_pending() && l.peer_awake()));
                if l.state() == LinkState::Off {
                    prop_assert!(l.tick().is_empty());
                }
            }
        }
    }
}
