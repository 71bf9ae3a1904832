//! Replays every committed seed (and any crash reproducer saved next to them) through the fuzz
//! targets' bodies: a regression check that needs neither libFuzzer nor a nightly compiler.

use std::{fs, path::Path};

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("seeds")
        .join(target);
    let mut count = 0;
    for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("readable seed directory").path();
        let data = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        eprintln!("{target}: {}", path.display());
        run(&data);
        count += 1;
    }
    assert!(count > 0, "no seeds in {}", dir.display());
}

#[test]
fn frame_reader_seeds() {
    replay("frame_reader", duplex_proto_fuzz::frame_reader);
}

#[test]
fn handshake_server_seeds() {
    replay("handshake_server", duplex_proto_fuzz::handshake_server);
}

#[test]
fn handshake_client_seeds() {
    replay("handshake_client", duplex_proto_fuzz::handshake_client);
}

#[test]
fn inflate_seeds() {
    replay("inflate", duplex_proto_fuzz::inflate);
}

#[test]
fn hub_command_seeds() {
    replay("hub_command", duplex_proto_fuzz::hub_command);
}

#[test]
fn jwks_seeds() {
    replay("jwks", duplex_proto_fuzz::jwks);
}
