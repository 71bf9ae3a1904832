//! What `duplex connect` sends: lines or bytes from a pipe, or lines and slash commands typed
//! at a prompt. Each source runs on its own thread (stdin reads cannot be cancelled) and hands
//! [`Input`]s to the connection through a bounded channel, so a fast pipe waits for the
//! network instead of filling memory.

use std::io::{BufRead, Read};

use bytes::Bytes;
use duplex::CloseCode;
use tokio::sync::mpsc;

/// Largest binary message sent per read of stdin in `--binary` mode.
const BINARY_CHUNK: usize = 64 * 1024;

/// Something to do on the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Input {
    /// Send a text message.
    Text(String),
    /// Send a binary message.
    Binary(Bytes),
    /// Send a Ping.
    Ping(Bytes),
    /// Start the closing handshake.
    Close(CloseCode, String),
    /// Show this to the user (interactive mode only: command help and mistakes).
    Notice(String),
    /// Stdin ended.
    Eof,
    /// Stdin cannot be used; the text says why.
    Failed(String),
}

/// Read stdin line by line, each line (without its `\n` or `\r\n`) becoming a text message.
pub(super) fn spawn_lines(tx: mpsc::Sender<Input>) {
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut line = Vec::new();
        for number in 1.. {
            line.clear();
            let input = match stdin.read_until(b'\n', &mut line) {
                Ok(0) => Input::Eof,
                Ok(_) => {
                    let end = line.strip_suffix(b"\n").unwrap_or(&line);
                    let end = end.strip_suffix(b"\r").unwrap_or(end);
                    match std::str::from_utf8(end) {
                        Ok(text) => Input::Text(text.to_owned()),
                        Err(_) => Input::Failed(format!(
                            "line {number} of stdin is not valid UTF-8 (use --binary to send bytes)"
                        )),
                    }
                }
                Err(e) => Input::Failed(format!("cannot read stdin: {e}")),
            };
            let last = !matches!(input, Input::Text(_));
            if tx.blocking_send(input).is_err() || last {
                return;
            }
        }
    });
}

/// Read stdin in chunks as they come, each becoming a binary message.
pub(super) fn spawn_binary(tx: mpsc::Sender<Input>) {
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0; BINARY_CHUNK];
        loop {
            let input = match stdin.read(&mut buf) {
                Ok(0) => Input::Eof,
                Ok(n) => Input::Binary(Bytes::copy_from_slice(&buf[..n])),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => Input::Failed(format!("cannot read stdin: {e}")),
            };
            let last = !matches!(input, Input::Binary(_));
            if tx.blocking_send(input).is_err() || last {
                return;
            }
        }
    });
}

/// The help shown for `/help`.
pub(super) const HELP: &str = "\
commands:
  /ping [data]           send a Ping (the Pong is shown)
  /close [code [reason]] close with a code (default 1000) and reason
  /quit                  close with 1000 and leave (also Ctrl-D)
  //text                 send \"/text\"
anything else is sent as a text message";

/// What a typed line asks for.
pub(super) fn parse_line(line: &str) -> Input {
    if let Some(escaped) = line.strip_prefix("//") {
        return Input::Text(format!("/{escaped}"));
    }
    if !line.starts_with('/') {
        return Input::Text(line.to_owned());
    }
    let (command, rest) = line.split_once(' ').unwrap_or((line, ""));
    match command {
        "/ping" => {
            if rest.len() > 125 {
                Input::Notice(format!(
                    "a ping carries at most 125 bytes, not {}",
                    rest.len()
                ))
            } else {
                Input::Ping(Bytes::copy_from_slice(rest.as_bytes()))
            }
        }
        "/close" => {
            let rest = rest.trim_start();
            let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
            if code.is_empty() {
                return Input::Close(CloseCode::NORMAL, String::new());
            }
            match code.parse::<u16>().map(CloseCode::from) {
                Ok(code) if code.is_sendable() && reason.len() <= 123 => {
                    Input::Close(code, reason.to_owned())
                }
                Ok(code) if code.is_sendable() => {
                    Input::Notice("a close reason holds at most 123 bytes".into())
                }
                _ => Input::Notice(format!(
                    "{code:?} is not a close code that may be sent (1000-1003, 1007-1014, \
                     3000-4999)"
                )),
            }
        }
        "/quit" | "/exit" => Input::Close(CloseCode::NORMAL, String::new()),
        "/help" | "/?" => Input::Notice(HELP.into()),
        other => Input::Notice(format!("unknown command {other} (/help lists them)")),
    }
}

/// Read lines at a prompt with line editing and history; Ctrl-D and Ctrl-C close with 1000.
/// `printer` receives the editor's printer, which shows incoming messages above the prompt.
pub(super) fn spawn_prompt(
    tx: mpsc::Sender<Input>,
    printer: std::sync::mpsc::Sender<anyhow::Result<Box<dyn rustyline::ExternalPrinter + Send>>>,
) {
    std::thread::spawn(move || {
        let mut editor = match rustyline::DefaultEditor::new() {
            Ok(editor) => editor,
            Err(e) => {
                let _ = printer.send(Err(e.into()));
                return;
            }
        };
        match editor.create_external_printer() {
            Ok(p) => {
                let _ = printer.send(Ok(Box::new(p)));
            }
            Err(e) => {
                let _ = printer.send(Err(e.into()));
                return;
            }
        }
        loop {
            let input = match editor.readline("> ") {
                Ok(line) => {
                    let _ = editor.add_history_entry(line.as_str());
                    parse_line(&line)
                }
                Err(
                    rustyline::error::ReadlineError::Eof
                    | rustyline::error::ReadlineError::Interrupted,
                ) => Input::Close(CloseCode::NORMAL, String::new()),
                Err(e) => Input::Failed(format!("cannot read the terminal: {e}")),
            };
            let last = matches!(input, Input::Close(..) | Input::Failed(_));
            if tx.blocking_send(input).is_err() || last {
                return;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_commands() {
        let text = |s: &str| Input::Text(s.into());
        assert_eq!(parse_line("hello"), text("hello"));
        assert_eq!(parse_line(""), text(""));
        assert_eq!(parse_line("//ping"), text("/ping"));
        assert_eq!(parse_line("/ping"), Input::Ping(Bytes::new()));
        assert_eq!(parse_line("/ping a b"), Input::Ping(Bytes::from("a b")));
        assert!(matches!(
            parse_line(&format!("/ping {}", "x".repeat(126))),
            Input::Notice(_)
        ));
        let close = |c: u16, r: &str| Input::Close(CloseCode::from(c), r.into());
        assert_eq!(parse_line("/close"), close(1000, ""));
        assert_eq!(parse_line("/close 4000"), close(4000, ""));
        assert_eq!(
            parse_line("/close 1001 going  away"),
            close(1001, "going  away")
        );
        assert!(matches!(parse_line("/close 1006"), Input::Notice(_)));
        assert!(matches!(parse_line("/close abc"), Input::Notice(_)));
        assert_eq!(parse_line("/quit"), close(1000, ""));
        assert!(matches!(parse_line("/help"), Input::Notice(h) if h.contains("/ping")));
        assert!(matches!(parse_line("/nope"), Input::Notice(n) if n.contains("/nope")));
    }
}
