//! Property tests over whole connections: the frame header round trip, independence from how
//! the input is split into reads, fragmentation checked against a model ("concatenate and
//! compare"), and survival of arbitrary input.

use bytes::{Bytes, BytesMut};
use proptest::{collection::vec, prelude::*, sample::Index};

use super::{
    frames,
    pair::{events, sent_frames, take_output},
};
use crate::{
    frame::{FrameHeader, OpCode},
    CloseCode, CloseError, Closed, Config, Connection, Event, Message, Role, Side, State,
};

fn opcode() -> impl Strategy<Value = OpCode> {
    prop::sample::select(vec![
        OpCode::Continuation,
        OpCode::Text,
        OpCode::Binary,
        OpCode::Close,
        OpCode::Ping,
        OpCode::Pong,
    ])
}

/// Lengths from each of the three encodings, edges included.
fn payload_len() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..=125,
        126u64..=0xFFFF,
        0x1_0000u64..(1 << 63),
        prop::sample::select(vec![125, 126, 0xFFFF, 0x1_0000, (1 << 63) - 1]),
    ]
}

prop_compose! {
    fn header()(fin: bool, rsv1: bool, rsv2: bool, rsv3: bool, opcode in opcode(),
                mask: Option<[u8; 4]>, payload_len in payload_len()) -> FrameHeader {
        FrameHeader { fin, rsv1, rsv2, rsv3, opcode, mask, payload_len }
    }
}

/// A control frame placed between the fragments of a message.
#[derive(Debug, Clone)]
enum Control {
    Ping(Vec<u8>),
    Pong(Vec<u8>),
}

fn control() -> impl Strategy<Value = Control> {
    prop_oneof![
        vec(any::<u8>(), 0..=125).prop_map(Control::Ping),
        vec(any::<u8>(), 0..=125).prop_map(Control::Pong),
    ]
}

/// A data message cut into fragments at arbitrary byte offsets (code points of a text message
/// included), with control frames after any fragment but the last.
#[derive(Debug, Clone)]
struct Fragmented {
    message: Message,
    cuts: Vec<usize>,
    controls: Vec<Vec<Control>>,
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        "\\PC{0,60}".prop_map(Message::text),
        vec(any::<u8>(), 0..200).prop_map(Message::binary),
        // Now and then one that needs the 16-bit length.
        vec(any::<u8>(), 126..400).prop_map(Message::binary),
    ]
}

prop_compose! {
    fn fragmented()(message in message(), cuts in vec(any::<Index>(), 0..6),
                    controls in vec(vec(control(), 0..3), 0..6)) -> Fragmented {
        let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(message.len() + 1)).collect();
        cuts.sort_unstable();
        let controls = controls.into_iter().take(cuts.len()).collect();
        Fragmented { message, cuts, controls }
    }
}

/// One thing a client does.
#[derive(Debug, Clone)]
enum Action {
    Send(Message),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Fragmented(Fragmented),
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        3 => message().prop_map(Action::Send),
        1 => vec(any::<u8>(), 0..=125).prop_map(Action::Ping),
        1 => vec(any::<u8>(), 0..=125).prop_map(Action::Pong),
        2 => fragmented().prop_map(Action::Fragmented),
    ]
}

/// What a server must report and answer for a control frame.
fn expect_control(c: &Control, events: &mut Vec<Event>, output: &mut Vec<u8>) {
    match c {
        Control::Ping(p) => {
            events.push(Event::Ping(Bytes::from(p.clone())));
            output.extend(frames::pong(p).bytes());
        }
        Control::Pong(p) => events.push(Event::Pong(Bytes::from(p.clone()))),
    }
}

/// The wire bytes of a client doing `actions` then maybe closing, and the events and output a
/// correct server produces for them: the model.
fn client_script(
    actions: &[Action],
    close: Option<&(u16, String)>,
    key: [u8; 4],
) -> (Vec<u8>, Vec<Event>, Vec<u8>) {
    let mut client = Connection::new(Role::Client, Config::default());
    let mut wire = BytesMut::new();
    let mut events = Vec::new();
    let mut output = Vec::new();
    for action in actions {
        match action {
            Action::Send(m) => {
                client.send(m.clone()).unwrap();
                events.push(Event::Message(m.clone()));
            }
            Action::Ping(p) => {
                client.ping(p).unwrap();
                expect_control(&Control::Ping(p.clone()), &mut events, &mut output);
            }
            Action::Pong(p) => {
                client.pong(p).unwrap();
                expect_control(&Control::Pong(p.clone()), &mut events, &mut output);
            }
            Action::Fragmented(f) => {
                client.poll_output(&mut wire);
                wire.extend(fragmented_wire(f, key));
                for c in f.controls.iter().flatten() {
                    expect_control(c, &mut events, &mut output);
                }
                events.push(Event::Message(f.message.clone()));
            }
        }
    }
    if let Some((code, reason)) = close {
        client.close(CloseCode(*code), reason).unwrap();
        events.push(Event::Closed(Closed {
            code: CloseCode(*code),
            reason: reason.clone().into(),
            initiated_by: Side::Peer,
            error: None,
        }));
        output.extend(frames::close(*code, "").bytes());
    }
    client.poll_output(&mut wire);
    (wire.to_vec(), events, output)
}

/// A client's frames for a fragmented message, masked with `key`.
fn fragmented_wire(f: &Fragmented, key: [u8; 4]) -> Vec<u8> {
    let data = f.message.as_bytes();
    let mut bounds = f.cuts.clone();
    bounds.push(data.len());
    let mut out = Vec::new();
    let mut start = 0;
    for (i, &end) in bounds.iter().enumerate() {
        let piece = &data[start..end];
        let frame = match (i, &f.message) {
            (0, Message::Text(_)) => frames::text(piece),
            (0, Message::Binary(_)) => frames::binary(piece),
            _ => frames::continuation(piece),
        };
        out.extend(frame.fin(i + 1 == bounds.len()).mask(key).bytes());
        for c in f.controls.get(i).into_iter().flatten() {
            let frame = match c {
                Control::Ping(p) => frames::ping(p),
                Control::Pong(p) => frames::pong(p),
            };
            out.extend(frame.mask(key).bytes());
        }
        start = end;
    }
    out
}

/// Split `data` at the given piece sizes (cycled; zero means an empty read).
fn chunks<'a>(data: &'a [u8], sizes: &'a [usize]) -> impl Iterator<Item = &'a [u8]> + 'a {
    // Only zeros would never make progress.
    let sizes: &[usize] = if sizes.iter().all(|&s| s == 0) {
        &[1]
    } else {
        sizes
    };
    let mut rest = data;
    let mut sizes = sizes.iter().cycle();
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let size = sizes.next().copied().unwrap_or(rest.len());
        let (piece, tail) = rest.split_at(size.min(rest.len()));
        rest = tail;
        Some(piece)
    })
}

/// Run `data` through a fresh connection, in one read or in the given pieces.
fn run(role: Role, config: &Config, data: &[u8], sizes: Option<&[usize]>) -> Outcome {
    let mut conn = Connection::new(role, config.clone());
    match sizes {
        None => conn.receive_bytes(data),
        Some(sizes) => {
            for piece in chunks(data, sizes) {
                conn.read_buf().extend_from_slice(piece);
                conn.receive();
            }
        }
    }
    Outcome {
        events: events(&mut conn),
        output: take_output(&mut conn),
        state: conn.state(),
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    events: Vec<Event>,
    output: Vec<u8>,
    state: State,
}

fn sizes() -> impl Strategy<Value = Vec<usize>> {
    vec(prop_oneof![0usize..4, 1usize..40, 1usize..2000], 1..8)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn header_round_trip(h in header()) {
        let mut bytes = Vec::new();
        h.encode(&mut bytes);
        prop_assert_eq!(bytes.len(), h.encoded_len());
        prop_assert_eq!(FrameHeader::parse(&bytes), Ok(Some((h, bytes.len()))));
        // Every strict prefix asks for more and consumes nothing.
        for cut in 0..bytes.len() {
            prop_assert_eq!(FrameHeader::parse(&bytes[..cut]), Ok(None));
        }
        // Trailing bytes are left alone.
        bytes.extend_from_slice(b"payload");
        prop_assert_eq!(FrameHeader::parse(&bytes), Ok(Some((h, h.encoded_len()))));
    }

    /// Whatever `parse` accepts, `encode` writes back in the same or fewer bytes (the minimal
    /// length encoding), and that parses to the same header.
    #[test]
    fn parse_then_encode(bytes in vec(any::<u8>(), 0..16)) {
        if let Ok(Some((h, used))) = FrameHeader::parse(&bytes) {
            prop_assert!(used <= bytes.len());
            let mut again = Vec::new();
            h.encode(&mut again);
            prop_assert!(again.len() <= used);
            prop_assert_eq!(FrameHeader::parse(&again), Ok(Some((h, again.len()))));
        }
    }

    /// Any split of the input into reads gives the same events, output and state as one read;
    /// and, for valid input, exactly what the model expects.
    #[test]
    fn rechunking_gives_the_same_events(
        actions in vec(action(), 0..8),
        close in prop::option::of((prop::sample::select(vec![1000u16, 1001, 1011, 3000, 4999]),
                                   "\\PC{0,20}")),
        key: [u8; 4],
        tail in prop::option::of(vec(any::<u8>(), 1..24)),
        sizes in sizes(),
    ) {
        let (mut wire, expected_events, expected_output) =
            client_script(&actions, close.as_ref(), key);
        if let Some(tail) = &tail {
            wire.extend_from_slice(tail);
        }
        let config = Config::default();
        let whole = run(Role::Server, &config, &wire, None);
        let pieces = run(Role::Server, &config, &wire, Some(&sizes));
        prop_assert_eq!(&pieces, &whole);
        if tail.is_none() || close.is_some() {
            prop_assert_eq!(whole.events, expected_events);
            prop_assert_eq!(whole.output, expected_output);
            let state = if close.is_some() { State::Closed } else { State::Open };
            prop_assert_eq!(whole.state, state);
        }
    }

    /// Model-based: fragmented messages with control frames between the fragments, delivered
    /// in arbitrary reads, come out as the concatenation of their fragments, with every control
    /// frame reported (and every ping answered) where it was.
    #[test]
    fn fragmented_messages_match_the_model(
        messages in vec(fragmented(), 1..6),
        key: [u8; 4],
        sizes in sizes(),
    ) {
        let actions: Vec<Action> = messages.into_iter().map(Action::Fragmented).collect();
        let (wire, expected_events, expected_output) = client_script(&actions, None, key);
        let got = run(Role::Server, &Config::default(), &wire, Some(&sizes));
        prop_assert_eq!(got.events, expected_events);
        prop_assert_eq!(got.output, expected_output);
        prop_assert_eq!(got.state, State::Open);
    }

    /// Arbitrary bytes, in arbitrary reads, with limits low enough to hit: no panic, at most one
    /// `Closed` event and nothing after it, only well-formed frames written, a Close frame only
    /// as the last one, and a 1006 close never sent.
    #[test]
    fn arbitrary_input_fails_cleanly(
        data in vec(any::<u8>(), 0..300),
        sizes in sizes(),
        server: bool,
        eof: bool,
    ) {
        let role = if server { Role::Server } else { Role::Client };
        let config = Config::default().max_frame_size(64).max_message_size(128);
        let mut conn = Connection::new(role, config);
        for piece in chunks(&data, &sizes) {
            conn.receive_bytes(piece);
        }
        if eof {
            conn.receive_eof();
        }
        let ev = events(&mut conn);
        let closed_at = ev.iter().position(|e| matches!(e, Event::Closed(_)));
        if let Some(i) = closed_at {
            prop_assert_eq!(i + 1, ev.len(), "events after Closed: {:?}", ev);
            prop_assert_eq!(conn.state(), State::Closed);
        } else {
            prop_assert!(!eof);
            prop_assert!(conn.state() != State::Closed);
        }
        let sent = sent_frames(role, &take_output(&mut conn));
        for (i, frame) in sent.iter().enumerate() {
            prop_assert!(frame.header.fin);
            if frame.opcode() == OpCode::Close {
                prop_assert_eq!(i + 1, sent.len(), "frames after our Close: {:?}", sent);
                if let Some((code, _)) = frame.close() {
                    prop_assert!(code.is_sendable(), "sent {:?}", code);
                }
            } else {
                prop_assert_eq!(frame.opcode(), OpCode::Pong);
            }
        }
        if let Some(Event::Closed(c)) = ev.last() {
            if matches!(c.error, Some(CloseError::Protocol(_))) {
                prop_assert_eq!(sent.last().map(super::pair::Sent::opcode), Some(OpCode::Close));
            }
        }
    }
}

/// Something a server queues, small or large enough to be queued by reference.
#[derive(Debug, Clone)]
enum Queued {
    Send(Message),
    Prepared(Message),
    Ping(Vec<u8>),
}

fn queued() -> impl Strategy<Value = Queued> {
    let large = vec(any::<u8>(), 4000..9000).prop_map(Message::binary);
    prop_oneof![
        2 => message().prop_map(Queued::Send),
        1 => large.clone().prop_map(Queued::Send),
        1 => message().prop_map(Queued::Prepared),
        1 => large.prop_map(Queued::Prepared),
        1 => vec(any::<u8>(), 0..=125).prop_map(Queued::Ping),
    ]
}

fn queue(conn: &mut Connection, q: &Queued) {
    match q {
        Queued::Send(m) => conn.send(m.clone()).unwrap(),
        Queued::Prepared(m) => conn.send_prepared(&crate::Prepared::new(m)).unwrap(),
        Queued::Ping(p) => conn.ping(p).unwrap(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Writing the output through `output_chunks`/`advance_output` in arbitrary partial writes,
    /// with more frames queued between writes, gives the same bytes as `poll_output`.
    #[test]
    fn partial_writes_give_the_same_bytes(
        rounds in vec((vec(queued(), 0..4), vec((1usize..5, 0usize..5000), 0..6)), 1..6),
    ) {
        let mut reference = Connection::new(Role::Server, Config::default());
        let mut expected = BytesMut::new();
        let mut conn = Connection::new(Role::Server, Config::default());
        let mut written = Vec::new();
        for (items, writes) in &rounds {
            for q in items {
                queue(&mut reference, q);
                queue(&mut conn, q);
            }
            reference.poll_output(&mut expected);
            for &(slices, max) in writes {
                let mut io = vec![std::io::IoSlice::new(&[]); slices];
                let n = conn.output_chunks(&mut io);
                // A writer that accepts at most `max` bytes, like a full socket buffer.
                let mut budget = max;
                for slice in &io[..n] {
                    let take = slice.len().min(budget);
                    written.extend_from_slice(&slice[..take]);
                    budget -= take;
                }
                let accepted = max - budget;
                let before = conn.output_len();
                conn.advance_output(accepted);
                prop_assert_eq!(conn.output_len(), before - accepted);
            }
        }
        // Flush what is left.
        while conn.output_len() > 0 {
            let mut io = [std::io::IoSlice::new(&[]); 4];
            let n = conn.output_chunks(&mut io);
            prop_assert!(n > 0);
            let accepted: usize = io[..n].iter().map(|s| s.len()).sum();
            for slice in &io[..n] {
                written.extend_from_slice(slice);
            }
            conn.advance_output(accepted);
        }
        prop_assert_eq!(&written[..], &expected[..]);
        let mut rest = BytesMut::new();
        conn.poll_output(&mut rest);
        prop_assert!(rest.is_empty());
    }
}
