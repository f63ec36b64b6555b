//! rpmsg over a byte stream: the UART side of NuttX's `rpmsg_port_uart`.
//!
//! This module is the I/O-free part of a byte-stream port (DESIGN.md §9):
//!
//! - [`header`]: the 8-byte port header `u16 crc, u16 cmd, u16 avail,
//!   u16 len` that precedes the rpmsg header in every port buffer, and the
//!   optional CRC-16/ARC over it;
//! - [`frame`]: the wire codec: `START 0x7f`, escaped bytes, `END 0x70`,
//!   with every byte in `0x70..=0x7f` inside a frame sent as `ESC 0x7c`
//!   followed by `byte ^ 0x20`, and unescaped single-byte [`Cmd`]s between
//!   (or inside) frames; a streaming [`Deframer`] that never allocates and
//!   never gives up on a corrupted stream;
//! - [`link`]: the connection state machine (CONNREQ/CONNACK handshake,
//!   POWEROFF, SUSPEND/RESUME, the alternating STAYWAKE handshake), fed with
//!   received commands and local events and answering with [`Action`]s;
//! - [`transport`]: [`PortTransport`], the rpmsg bus's transport over any
//!   non-blocking [`ByteIo`] stream, which glues the three together.
//!
//! A driver glues them to a stream: bytes read go to
//! [`Deframer::next_event`]; each [`Event::Command`] goes to
//! [`Link::on_command`]; each [`Event::Frame`] goes to the rpmsg bus when
//! [`Link::is_connected`]; every [`Action::Send`] is written as one raw
//! byte; queued buffers are sealed with [`seal_data_frame`] and written
//! with [`encode`] (or [`EncodeIter`]) while the link is up.
#![forbid(unsafe_code)]

pub mod frame;
pub mod header;
pub mod link;
pub mod transport;

pub use frame::{
    encode, encode_into, encoded_len, max_encoded_len, seal_data_frame, Cmd, CrcMode, Deframer,
    DeframerStats, EncodeIter, Event,
};
pub use header::{check_frame, crc16_arc, PortHeader};
pub use link::{Action, Actions, Link, LinkState, LinkStats, Queues, WakePhase};
pub use transport::{ByteIo, ByteIoError, PortConfig, PortSetupError, PortStats, PortTransport};

/// Errors of the byte-stream port codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    /// A buffer is shorter than the headers it must carry.
    #[error(
        "port buffer of {len} bytes is shorter than the {min} bytes of port and rpmsg \
         headers; the frame was truncated (drop it) or the buffer was never filled in"
    )]
    TooShort {
        /// Bytes available.
        len: usize,
        /// Bytes required.
        min: usize,
    },
    /// The header's `len` disagrees with the bytes available.
    #[error(
        "port header says the frame is {header} bytes but {actual} bytes are there; the \
         frame was cut or corrupted on the line (drop it), or `len` was not set before sending"
    )]
    LenMismatch {
        /// The header's `len` field.
        header: u16,
        /// Bytes received (or available in the buffer).
        actual: usize,
    },
    /// The frame's CRC does not match its contents.
    #[error(
        "port frame CRC {stored:#06x} does not match the computed {computed:#06x}; the frame \
         was corrupted on the line (drop it)"
    )]
    BadCrc {
        /// CRC carried in the header.
        stored: u16,
        /// CRC computed over the received bytes.
        computed: u16,
    },
    /// A payload does not fit in a frame.
    #[error(
        "a frame of {len} bytes does not fit the {max}-byte limit; send a shorter payload \
         or configure larger port buffers"
    )]
    TooLong {
        /// Frame length that was asked for.
        len: usize,
        /// Largest length allowed.
        max: usize,
    },
    /// The output buffer of an encoder is too small.
    #[error(
        "the encoded frame needs {need} bytes but the output buffer holds {have}; pass a \
         buffer of at least `max_encoded_len(len)` bytes"
    )]
    OutputTooSmall {
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
}

/// Two state machines wired back to back through the codec.
#[cfg(test)]
mod tests {
    use super::header::MIN_FRAME_LEN;
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;
    use std::vec::Vec;

    /// One side of a link: a [`Link`], a [`Deframer`], a TX queue of sealed
    /// buffers and the wire bytes not yet delivered to the peer.
    struct Side {
        link: Link,
        deframer: Deframer<2048>,
        crc: CrcMode,
        txq: VecDeque<Vec<u8>>,
        delivered: Vec<Vec<u8>>,
        out: Vec<u8>,
        up: bool,
        ups: u32,
        downs: u32,
        drops: Vec<Queues>,
        peer_awake: bool,
    }

    impl Side {
        fn new(crc: CrcMode) -> Self {
            Side {
                link: Link::new(),
                deframer: Deframer::new(),
                crc,
                txq: VecDeque::new(),
                delivered: Vec::new(),
                out: Vec::new(),
                up: false,
                ups: 0,
                downs: 0,
                drops: Vec::new(),
                peer_awake: false,
            }
        }

        fn apply(&mut self, actions: Actions) {
            for action in actions {
                match action {
                    Action::Send(c) if c.aborts_frame() => self.out.push(c.byte()),
                    // Other commands jump the queue, so they land in the
                    // middle of a frame being sent (as NuttX's RX thread
                    // answers while its TX thread is mid-frame).
                    Action::Send(c) => self.out.insert(0, c.byte()),
                    Action::LinkUp => {
                        self.up = true;
                        self.ups += 1;
                    }
                    Action::LinkDown => {
                        self.up = false;
                        self.downs += 1;
                    }
                    Action::DropQueued(q) => {
                        self.txq.clear();
                        self.drops.push(q);
                    }
                    Action::PeerAwake => self.peer_awake = true,
                    _ => {}
                }
            }
        }

        fn buffer(&self, payload: &[u8]) -> Vec<u8> {
            let mut buf = std::vec![0u8; MIN_FRAME_LEN + payload.len()];
            PortHeader::for_payload(payload.len())
                .unwrap()
                .write_to(&mut buf)
                .unwrap();
            buf[MIN_FRAME_LEN..].copy_from_slice(payload);
            let n = seal_data_frame(&mut buf, self.crc).unwrap();
            assert_eq!(n, buf.len());
            buf
        }

        fn queue(&mut self, payload: &[u8]) -> Vec<u8> {
            let buf = self.buffer(payload);
            self.txq.push_back(buf.clone());
            buf
        }

        /// Sends every queued buffer while connected, each preceded by
        /// line noise.
        fn transmit(&mut self, noise: &[u8]) {
            if !self.link.is_connected() {
                return;
            }
            while let Some(frame) = self.txq.pop_front() {
                self.out.extend_from_slice(noise);
                encode(&frame, &mut |b| self.out.push(b));
            }
        }

        fn receive(&mut self, bytes: &[u8]) {
            let mut input = bytes;
            while let Some(event) = self.deframer.next_event(&mut input) {
                match event {
                    Event::Command(c) => {
                        let actions = self.link.on_command(c);
                        self.apply(actions);
                    }
                    Event::Frame(f) => {
                        if self.link.is_connected() {
                            self.delivered.push(f.to_vec());
                        }
                    }
                }
            }
        }
    }

    /// Moves bytes both ways, `chunk` at a time, until the line is quiet.
    fn pump(a: &mut Side, b: &mut Side, chunk: usize) {
        for _ in 0..1_000_000 {
            if a.out.is_empty() && b.out.is_empty() {
                return;
            }
            let n = chunk.min(a.out.len());
            let bytes: Vec<u8> = a.out.drain(..n).collect();
            b.receive(&bytes);
            let n = chunk.min(b.out.len());
            let bytes: Vec<u8> = b.out.drain(..n).collect();
            a.receive(&bytes);
        }
        panic!("the line never went quiet");
    }

    fn connect(a: &mut Side, b: &mut Side, order: u8, chunk: usize) {
        match order {
            0 => {
                let s = a.link.start();
                a.apply(s);
                pump(a, b, chunk); // B is not running: ignored
                let s = b.link.start();
                b.apply(s);
            }
            1 => {
                let s = b.link.start();
                b.apply(s);
                pump(a, b, chunk);
                let s = a.link.start();
                a.apply(s);
            }
            _ => {
                let s = a.link.start();
                a.apply(s);
                let s = b.link.start();
                b.apply(s);
            }
        }
        pump(a, b, chunk);
    }

    fn escape_heavy() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(prop_oneof![0x70u8..=0x7f, any::<u8>()], 0..300)
    }

    fn noise() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            any::<u8>().prop_filter("no START, no command", |&b| {
                b != frame::START && Cmd::from_byte(b).is_none()
            }),
            0..8,
        )
    }

    fn crc_mode() -> impl Strategy<Value = CrcMode> {
        prop_oneof![Just(CrcMode::Off), Just(CrcMode::On)]
    }

    proptest! {
        #[test]
        fn back_to_back_nothing_lost_either_way(
            a_payloads in proptest::collection::vec(escape_heavy(), 0..8),
            b_payloads in proptest::collection::vec(escape_heavy(), 0..8),
            order in 0u8..3,
            chunk in 1usize..64,
            crc_a in crc_mode(),
            crc_b in crc_mode(),
            wake in any::<bool>(),
            noise_a in noise(),
            noise_b in noise(),
        ) {
            let mut a = Side::new(crc_a);
            let mut b = Side::new(crc_b);
            connect(&mut a, &mut b, order, chunk);
            prop_assert!(a.up && b.up);
            prop_assert_eq!((a.ups, a.downs, b.ups, b.downs), (1, 0, 1, 0));

            if wake {
                let w = a.link.wake_peer();
                a.apply(w);
                let w = b.link.wake_peer();
                b.apply(w);
            }
            let sent_a: Vec<Vec<u8>> = a_payloads.iter().map(|p| a.queue(p)).collect();
            let sent_b: Vec<Vec<u8>> = b_payloads.iter().map(|p| b.queue(p)).collect();
            a.transmit(&noise_a);
            b.transmit(&noise_b);
            pump(&mut a, &mut b, chunk);

            prop_assert_eq!(&b.delivered, &sent_a);
            prop_assert_eq!(&a.delivered, &sent_b);
            // Handshake bytes seen: the side that started first got only
            // the CONNREQ; the other also saw the first one's lost CONNREQ
            // or the crossing CONNACK. The wake round adds a request and an
            // ACK each way.
            let handshake = |first: bool| if order == 2 || !first { 2 } else { 1 };
            for (side, first) in [(&a, order == 0), (&b, order == 1)] {
                let st = side.deframer.stats();
                prop_assert_eq!(st.frames_dropped(), 0);
                prop_assert_eq!(st.commands, handshake(first) + if wake { 2 } else { 0 });
            }
            if wake {
                prop_assert!(a.peer_awake && b.peer_awake);
                prop_assert!(a.link.holding_awake() && b.link.holding_awake());
                let r = a.link.relax_peer();
                a.apply(r);
                pump(&mut a, &mut b, chunk);
                prop_assert!(!b.link.holding_awake());
                prop_assert!(a.link.holding_awake());
            }
        }
    }

    #[test]
    fn restart_reconnects_and_drops_the_survivors_queue() {
        let mut a = Side::new(CrcMode::On);
        let mut b = Side::new(CrcMode::Off);
        connect(&mut a, &mut b, 0, 7);
        // A queued packets for the old session; B reboots before they go.
        for i in 0..3u8 {
            a.queue(&[i, 0x7f, 0x70]);
        }
        // Half a frame of B's is on the line when it dies.
        b.queue(b"from the old session");
        b.transmit(&[]);
        b.out.truncate(b.out.len() / 2);
        pump(&mut a, &mut b, 5);
        let mut b = Side::new(CrcMode::Off);
        let s = b.link.start();
        b.apply(s);
        pump(&mut a, &mut b, 5);

        assert!(a.up && b.up);
        assert_eq!((a.ups, a.downs), (2, 1));
        assert!(
            a.txq.is_empty(),
            "queued packets of the old session dropped"
        );
        assert_eq!(a.drops, [Queues::All, Queues::All]);
        assert!(a.delivered.is_empty());
        assert_eq!(a.deframer.stats().truncated, 1, "B's half frame");

        // The new session carries traffic both ways.
        let fa = a.queue(b"new from A");
        let fb = b.queue(&[0x7c; 10]);
        a.transmit(&[]);
        b.transmit(&[]);
        pump(&mut a, &mut b, 3);
        assert_eq!(b.delivered, [fa]);
        assert_eq!(a.delivered, [fb]);
    }

    #[test]
    fn poweroff_and_return() {
        let mut a = Side::new(CrcMode::On);
        let mut b = Side::new(CrcMode::On);
        connect(&mut a, &mut b, 2, 16);
        let p = a.link.poweroff();
        a.apply(p);
        pump(&mut a, &mut b, 16);
        assert!(!a.up && !b.up);
        assert_eq!(b.link.state(), LinkState::Connecting);

        // B keeps asking for a session; A is off and stays silent. B's
        // packets wait (they are not sent while down).
        b.queue(b"while down");
        b.transmit(&[]);
        let t = b.link.tick();
        b.apply(t);
        pump(&mut a, &mut b, 16);
        assert!(!a.up && !b.up);
        assert!(a.delivered.is_empty());

        // A boots again: a fresh session, B's stale packet dropped.
        let mut a = Side::new(CrcMode::On);
        let s = a.link.start();
        a.apply(s);
        pump(&mut a, &mut b, 16);
        assert!(a.up && b.up);
        assert!(b.txq.is_empty());
        assert_eq!(b.drops, [Queues::All, Queues::Tx, Queues::All]);
        let f = b.queue(b"after");
        b.transmit(&[]);
        pump(&mut a, &mut b, 16);
        assert_eq!(a.delivered, [f]);
    }
}
