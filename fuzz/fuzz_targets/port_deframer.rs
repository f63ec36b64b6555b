//! rpmsg-port UART framing: the streaming deframer over arbitrary bytes, and
//! the encoder/deframer round trip.
//!
//! Part 1, a raw byte stream (what a hostile or noisy UART delivers):
//! - the events do not depend on how the stream is chunked (byte by byte
//!   with `push`, with `next_event`, with `feed` in arbitrary pieces);
//! - every delivered frame passes `check_frame` (length field equals the
//!   bytes received, CRC right or zero) and fits the buffer;
//! - every delivered command is a command byte of the input, in order;
//! - the counters agree with the events.
//!
//! Part 2, frames built from arbitrary payloads, sealed with or without CRC,
//! encoded, with non-aborting commands and inter-frame garbage mixed in:
//! decoding yields exactly those frames and commands, in order, except the
//! frames too large for the deframer's buffer, which are counted as
//! oversized.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use rptun::rpmsg::port::frame::{
    encode, encode_into, encoded_len, max_encoded_len, seal_data_frame, Cmd, CrcMode, Deframer,
    EncodeIter, Event, START,
};
use rptun::rpmsg::port::header::{check_frame, PortHeader, MIN_FRAME_LEN};
use rptun::rpmsg::port::link::{Action, Actions, Link, LinkState};

const MAX: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Owned {
    Frame(Vec<u8>),
    Command(Cmd),
}

fn own(e: Event<'_>) -> Owned {
    match e {
        Event::Frame(f) => Owned::Frame(f.to_vec()),
        Event::Command(c) => Owned::Command(c),
    }
}

#[derive(Arbitrary, Debug)]
struct Piece {
    payload: Vec<u8>,
    crc: bool,
    /// Non-aborting command bytes inserted at these wire positions.
    cmds: Vec<(u16, u8)>,
    /// Garbage before the frame (bytes below 0x70).
    garbage: Vec<u8>,
}

/// Commands that do not abandon a frame in progress.
const NON_ABORTING: [Cmd; 8] = [
    Cmd::Suspend,
    Cmd::Resume,
    Cmd::StayWake1,
    Cmd::StayWakeAck1,
    Cmd::RelaxWake,
    Cmd::PowerOff,
    Cmd::StayWake2,
    Cmd::StayWakeAck2,
];

fn raw_stream(stream: &[u8], chunks: &[u8]) -> Vec<Owned> {
    // Byte by byte.
    let mut a = Deframer::<MAX>::new();
    let mut by_push = Vec::new();
    for &b in stream {
        if let Some(e) = a.push(b) {
            by_push.push(own(e));
        }
    }
    // next_event over arbitrary chunks.
    let mut b = Deframer::<MAX>::new();
    let mut by_next = Vec::new();
    let mut rest = stream;
    let mut k = 0;
    while !rest.is_empty() {
        let n = (usize::from(*chunks.get(k).unwrap_or(&255)) + 1).min(rest.len());
        k += 1;
        let (mut chunk, tail) = rest.split_at(n);
        rest = tail;
        while let Some(e) = b.next_event(&mut chunk) {
            by_next.push(own(e));
        }
        assert!(chunk.is_empty());
    }
    // feed in one go.
    let mut c = Deframer::<MAX>::new();
    let mut by_feed = Vec::new();
    c.feed(stream, |e| by_feed.push(own(e)));

    assert_eq!(by_push, by_next);
    assert_eq!(by_push, by_feed);
    assert_eq!(a.stats(), b.stats());
    assert_eq!(a.stats(), c.stats());
    assert_eq!(a.in_frame(), c.in_frame());

    let mut frames = 0u32;
    let mut cmds = Vec::new();
    for e in &by_push {
        match e {
            Owned::Frame(f) => {
                frames += 1;
                assert!(f.len() >= MIN_FRAME_LEN && f.len() <= MAX);
                let h = check_frame(f).expect("delivered frame fails check_frame");
                assert_eq!(usize::from(h.len), f.len());
            }
            Owned::Command(c) => cmds.push(c.byte()),
        }
    }
    let s = *a.stats();
    assert_eq!(s.frames_ok, frames);
    assert_eq!(s.commands as usize, cmds.len());
    // Commands are exactly the command bytes of the input, in order.
    let in_stream: Vec<u8> = stream
        .iter()
        .copied()
        .filter(|&b| Cmd::from_byte(b).is_some())
        .collect();
    assert_eq!(cmds, in_stream);
    // Every START begins a frame that is delivered or counted as dropped
    // (or is still in progress at the end, or was abandoned by CONNREQ /
    // CONNACK, also counted as truncated).
    let starts = stream.iter().filter(|&&b| b == START).count() as u32;
    let ended = s.frames_ok + s.frames_dropped() - s.truncated;
    assert!(ended <= starts);
    by_push
}

/// Applies one input's actions to our view of the session and checks the
/// state machine's promises: LinkUp only when down, LinkDown only when up,
/// `is_connected` agrees.
fn apply(link: &Link, acts: &Actions, up: &mut bool) {
    assert!(acts.len() <= Actions::CAPACITY);
    for a in acts {
        match a {
            Action::LinkUp => {
                assert!(!*up, "LinkUp while up");
                *up = true;
            }
            Action::LinkDown => {
                assert!(*up, "LinkDown while down");
                *up = false;
            }
            _ => {}
        }
    }
    assert_eq!(link.is_connected(), *up);
    assert_eq!(link.state() == LinkState::Connected, *up);
    if link.state() == LinkState::Off {
        assert!(!*up);
    }
}

/// The port connection state machine fed with the commands of the stream,
/// local events taken from the data bytes, and ticks.
fn port_link(events: &[Owned], data: &[u8]) {
    let mut link = Link::new();
    let mut up = false;
    let acts = link.start();
    apply(&link, &acts, &mut up);
    for (i, e) in events.iter().enumerate() {
        if let Owned::Command(c) = e {
            let acts = link.on_command(*c);
            apply(&link, &acts, &mut up);
        }
        let acts = match data.get(i).map(|b| b % 16) {
            Some(0) => link.tick(),
            Some(1) => link.suspend(),
            Some(2) => link.resume(),
            Some(3) => link.wake_peer(),
            Some(4) => link.relax_peer(),
            Some(5) => link.poweroff(),
            Some(6) => link.start(),
            _ => continue,
        };
        apply(&link, &acts, &mut up);
    }
    let _ = format!("{:?}", link.stats());
}

fn round_trip(pieces: &[Piece]) {
    let mut wire = Vec::new();
    let mut want = Vec::new();
    let mut oversized = 0u32;
    for p in pieces.iter().take(16) {
        // A sealed data frame: port header, rpmsg header (zeros), payload.
        let payload = &p.payload[..p.payload.len().min(600)];
        let mut buf = vec![0u8; MIN_FRAME_LEN + payload.len()];
        PortHeader::for_payload(payload.len())
            .unwrap()
            .write_to(&mut buf)
            .unwrap();
        buf[MIN_FRAME_LEN..].copy_from_slice(payload);
        let mode = if p.crc { CrcMode::On } else { CrcMode::Off };
        let n = seal_data_frame(&mut buf, mode).unwrap();
        assert_eq!(n, buf.len());
        check_frame(&buf).unwrap();

        // The three encoders agree.
        let mut enc = Vec::new();
        encode(&buf, &mut |b| enc.push(b));
        let it = EncodeIter::new(&buf);
        assert_eq!(it.len(), enc.len());
        assert!(it.eq(enc.iter().copied()));
        assert_eq!(encoded_len(&buf), enc.len());
        assert!(enc.len() <= max_encoded_len(buf.len()));
        let mut out = vec![0u8; enc.len()];
        assert_eq!(encode_into(&buf, &mut out), Ok(enc.len()));
        assert_eq!(out, enc);
        if !enc.is_empty() {
            assert!(encode_into(&buf, &mut out[..enc.len() - 1]).is_err());
        }
        // Only START and END are unescaped frame-range bytes.
        assert_eq!(enc[0], START);
        assert!(enc[1..enc.len() - 1]
            .iter()
            .all(|&b| !(0x70..=0x7f).contains(&b) || b == 0x7c));

        // Garbage between frames, then the frame with commands mixed in.
        for &g in p.garbage.iter().take(8) {
            wire.push(g % 0x70);
        }
        let mut cmds: Vec<(usize, Cmd)> = p
            .cmds
            .iter()
            .take(4)
            .map(|&(at, c)| {
                (
                    usize::from(at) % (enc.len() + 1),
                    NON_ABORTING[usize::from(c) % 8],
                )
            })
            .collect();
        cmds.sort_by_key(|&(at, _)| at);
        let mut ci = 0;
        for (i, &b) in enc.iter().enumerate() {
            while ci < cmds.len() && cmds[ci].0 == i {
                wire.push(cmds[ci].1.byte());
                want.push(Owned::Command(cmds[ci].1));
                ci += 1;
            }
            wire.push(b);
        }
        // Commands after END (positions == len).
        let frame_event = if buf.len() <= MAX {
            Some(Owned::Frame(buf.clone()))
        } else {
            oversized += 1;
            None
        };
        want.extend(frame_event);
        for &(_, c) in &cmds[ci..] {
            wire.push(c.byte());
            want.push(Owned::Command(c));
        }
    }
    let mut d = Deframer::<MAX>::new();
    let mut got = Vec::new();
    d.feed(&wire, |e| got.push(own(e)));
    assert_eq!(got, want);
    assert_eq!(d.stats().oversized, oversized);
    assert_eq!(d.stats().frames_dropped(), oversized);
    assert!(!d.in_frame());
}

fuzz_target!(|data: &[u8]| {
    // The input is the wire stream itself (seeds are real encoded traffic);
    // its bytes double as chunk sizes, and, read as structured data, as the
    // frames of the round trip.
    let events = raw_stream(data, data);
    port_link(&events, data);
    if let Ok(pieces) = Vec::<Piece>::arbitrary_take_rest(Unstructured::new(data)) {
        round_trip(&pieces);
    }
});
