//! A small chat room over axum: every message a member sends goes to every member.
//!
//! ```text
//! cargo run -p duplex --features axum --example axum_chat            # 127.0.0.1:9004
//! cargo run -p duplex --features axum --example axum_chat -- 0.0.0.0:8080
//! ```
//!
//! Open <http://127.0.0.1:9004/> in two browser tabs and chat, or connect clients to
//! `ws://127.0.0.1:9004/ws?name=alice` (for instance `duplex connect
//! 'ws://127.0.0.1:9004/ws?name=alice'`). Each line a member sends reaches everyone as
//! `alice: line`; joins and leaves are announced. The server speaks the `chat` subprotocol
//! when offered and permessage-deflate when the client offers it.
//!
//! Every message is framed once as a `Prepared` frame and that frame is written to each
//! member from a tokio broadcast channel.

use std::net::SocketAddr;

use axum::{
    extract::State,
    response::{Html, Response},
    routing::get,
    Router,
};
use duplex::{
    axum::{UpgradedIo, WebSocketUpgrade},
    deflate::DeflateConfig,
    Config, Message, Prepared, WebSocket,
};
use tokio::sync::broadcast;

/// The room: a channel every member listens to.
#[derive(Clone)]
pub(crate) struct Room {
    frames: broadcast::Sender<Prepared>,
}

impl Room {
    fn say(&self, text: String) {
        // No member: nobody to tell.
        let _ = self.frames.send(Prepared::text(text));
    }
}

/// The app: the page at `/`, the room at `/ws`.
pub(crate) fn app() -> Router {
    let (frames, _) = broadcast::channel(256);
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/ws", get(join))
        .with_state(Room { frames })
}

async fn join(State(room): State<Room>, upgrade: WebSocketUpgrade) -> Response {
    let name = upgrade
        .request()
        .query()
        .unwrap_or_default()
        .split('&')
        .find_map(|pair| pair.strip_prefix("name="))
        .filter(|name| !name.is_empty() && name.len() <= 32)
        .unwrap_or("anonymous")
        .to_owned();
    upgrade
        .protocols(["chat"])
        .config(Config::default().deflate(Some(DeflateConfig::default())))
        .on_upgrade(move |ws| member(room, name, ws))
}

/// One member's connection: what it says goes to the room, what the room says comes here.
async fn member(room: Room, name: String, mut ws: WebSocket<UpgradedIo>) {
    let mut heard = room.frames.subscribe();
    room.say(format!("* {name} joined"));
    loop {
        tokio::select! {
            // Both are cancel-safe: whichever loses the race loses nothing.
            said = ws.recv() => match said {
                Some(Ok(Message::Text(text))) => room.say(format!("{name}: {}", text.as_str())),
                Some(Ok(Message::Binary(_))) => {}
                Some(Err(_)) | None => break,
            },
            frame = heard.recv() => match frame {
                Ok(frame) => {
                    if ws.send_prepared(&frame).await.is_err() {
                        break;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    let note = Message::text(format!("* {missed} messages missed"));
                    if ws.send(note).await.is_err() {
                        break;
                    }
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
        }
    }
    room.say(format!("* {name} left"));
}

const PAGE: &str = r#"<!doctype html>
<meta charset="utf-8">
<title>duplex chat</title>
<pre id="log"></pre>
<form id="form"><input id="line" autocomplete="off" autofocus> <button>send</button></form>
<script>
  const name = prompt("name?") || "anonymous";
  const ws = new WebSocket(`ws://${location.host}/ws?name=${encodeURIComponent(name)}`, "chat");
  const log = document.getElementById("log");
  ws.onmessage = (event) => { log.textContent += event.data + "\n"; };
  ws.onclose = () => { log.textContent += "* disconnected\n"; };
  document.getElementById("form").onsubmit = (event) => {
    event.preventDefault();
    const line = document.getElementById("line");
    if (line.value) ws.send(line.value);
    line.value = "";
  };
</script>
"#;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .as_deref()
        .unwrap_or("127.0.0.1:9004")
        .parse()?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("open http://{}/", listener.local_addr()?);
    axum::serve(listener, app()).await?;
    Ok(())
}
