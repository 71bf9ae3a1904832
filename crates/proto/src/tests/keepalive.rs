//! Timers, driven by a synthetic clock through `poll_timeout` and `handle_timeout`: the
//! closing handshake's timeout and the keepalive ping.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{
    frames,
    pair::{assert_close_sent, closed, events, sent_frames, take_output, Pair},
};
use crate::{frame::OpCode, CloseCode, CloseError, Config, Connection, Event, Role, Side, State};

const SECOND: Duration = Duration::from_secs(1);

fn keepalive() -> Config {
    Config::default()
        .ping_interval(Some(20 * SECOND))
        .pong_timeout(5 * SECOND)
}

#[test]
fn no_timer_runs_by_default() {
    let mut conn = Connection::new(Role::Server, Config::default());
    let now = Instant::now();
    assert_eq!(conn.poll_timeout(now), None);
    conn.handle_timeout(now + 3600 * SECOND);
    assert_eq!(conn.output_len(), 0);
    assert_eq!(conn.poll_event(), None);
}

#[test]
fn the_close_handshake_times_out() {
    let t0 = Instant::now();
    let mut conn = Connection::new(Role::Server, Config::default().close_timeout(3 * SECOND));
    conn.close(CloseCode::NORMAL, "").unwrap();
    let _ = take_output(&mut conn);
    let deadline = conn.poll_timeout(t0).expect("the close timer is armed");
    assert_eq!(deadline, t0 + 3 * SECOND);
    // Polling again does not push the deadline back.
    assert_eq!(conn.poll_timeout(t0 + SECOND), Some(deadline));

    conn.handle_timeout(deadline - Duration::from_millis(1));
    assert_eq!(conn.state(), State::Closing);
    assert_eq!(conn.poll_event(), None);

    conn.handle_timeout(deadline);
    let ev = events(&mut conn);
    let c = closed(&ev);
    assert_eq!(c.error, Some(CloseError::CloseTimeout));
    assert_eq!(c.code, CloseCode::ABNORMAL);
    assert_eq!(c.initiated_by, Side::Local);
    assert_eq!(conn.state(), State::Closed);
    assert!(
        take_output(&mut conn).is_empty(),
        "our Close was already sent"
    );
    assert_eq!(conn.poll_timeout(deadline), None);
}

#[test]
fn an_answered_close_disarms_the_timer() {
    let t0 = Instant::now();
    let mut conn = Connection::new(Role::Server, Config::default());
    conn.close(CloseCode::NORMAL, "").unwrap();
    assert!(conn.poll_timeout(t0).is_some());
    conn.receive_bytes(&frames::close(1000, "").masked().bytes());
    assert_eq!(conn.poll_timeout(t0), None);
    conn.handle_timeout(t0 + 3600 * SECOND);
    let ev = events(&mut conn);
    assert!(closed(&ev).is_clean(), "{ev:?}");
}

#[test]
fn an_idle_connection_is_pinged_and_fails_without_an_answer() {
    let t0 = Instant::now();
    let mut conn = Connection::new(Role::Server, keepalive());
    let ping_at = conn.poll_timeout(t0).unwrap();
    assert_eq!(ping_at, t0 + 20 * SECOND);
    conn.handle_timeout(ping_at - Duration::from_millis(1));
    assert_eq!(conn.output_len(), 0);

    conn.handle_timeout(ping_at);
    let sent = sent_frames(Role::Server, &take_output(&mut conn));
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].opcode(), OpCode::Ping);
    let pong_by = conn.poll_timeout(ping_at).unwrap();
    assert_eq!(pong_by, ping_at + 5 * SECOND);

    conn.handle_timeout(pong_by);
    assert_close_sent(Role::Server, &take_output(&mut conn), CloseCode::INTERNAL);
    let c = closed(&events(&mut conn)).clone();
    assert_eq!(c.error, Some(CloseError::KeepaliveTimeout));
    assert_eq!(c.initiated_by, Side::Local);
    assert_eq!(conn.state(), State::Closed);
    assert_eq!(conn.poll_timeout(pong_by), None);
}

#[test]
fn a_pong_keeps_the_connection_alive() {
    let t0 = Instant::now();
    let mut conn = Connection::new(Role::Client, keepalive());
    let ping_at = conn.poll_timeout(t0).unwrap();
    conn.handle_timeout(ping_at);
    let ping = sent_frames(Role::Client, &take_output(&mut conn));
    let t1 = ping_at + 2 * SECOND;
    conn.receive_bytes(&frames::pong(&ping[0].payload).bytes());
    assert_eq!(
        conn.poll_event(),
        Some(Event::Pong(Bytes::from(ping[0].payload.clone())))
    );
    // The pong deadline is gone and the next ping is an interval after the answer.
    let next = conn.poll_timeout(t1).unwrap();
    assert_eq!(next, t1 + 20 * SECOND);
    conn.handle_timeout(ping_at + 5 * SECOND);
    assert_eq!(conn.state(), State::Open);
    assert_eq!(conn.output_len(), 0);
}

#[test]
fn any_incoming_frame_pushes_the_ping_back() {
    let t0 = Instant::now();
    let mut conn = Connection::new(Role::Server, keepalive());
    assert_eq!(conn.poll_timeout(t0), Some(t0 + 20 * SECOND));
    let t1 = t0 + 15 * SECOND;
    conn.receive_bytes(&frames::text("still here").masked().bytes());
    assert_eq!(conn.poll_timeout(t1), Some(t1 + 20 * SECOND));
    // The old deadline no longer sends anything.
    conn.handle_timeout(t0 + 20 * SECOND);
    assert_eq!(conn.output_len(), 0);
}

#[test]
fn keepalive_stops_once_closing() {
    let t0 = Instant::now();
    let mut conn = Connection::new(Role::Server, keepalive().close_timeout(2 * SECOND));
    assert!(conn.poll_timeout(t0).is_some());
    conn.close(CloseCode::AWAY, "").unwrap();
    let _ = take_output(&mut conn);
    // Only the close deadline remains.
    assert_eq!(conn.poll_timeout(t0), Some(t0 + 2 * SECOND));
    conn.handle_timeout(t0 + 20 * SECOND);
    assert!(
        take_output(&mut conn).is_empty(),
        "no keepalive ping after our Close"
    );
    assert_eq!(
        closed(&events(&mut conn)).error,
        Some(CloseError::CloseTimeout)
    );
}

#[test]
fn a_pair_with_keepalive_on_both_sides_stays_up() {
    let mut pair = Pair::with_configs(keepalive(), keepalive());
    for _ in 0..10 {
        let c = pair.client.poll_timeout(pair.now).unwrap();
        let s = pair.server.poll_timeout(pair.now).unwrap();
        pair.now = c.min(s);
        pair.client.handle_timeout(pair.now);
        pair.server.handle_timeout(pair.now);
        pair.drive();
    }
    assert_eq!(pair.client.state(), State::Open);
    assert_eq!(pair.server.state(), State::Open);
    let pings = |ev: Vec<Event>| ev.iter().filter(|e| matches!(e, Event::Ping(_))).count();
    assert!(pings(pair.client_events()) + pings(pair.server_events()) >= 5);
}
