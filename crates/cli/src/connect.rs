//! `duplex connect URL`: a WebSocket client for a terminal or a pipe, in the manner of wscat
//! and websocat.
//!
//! On a terminal, lines typed at the `> ` prompt are sent as text messages and incoming
//! messages are shown above it as `< ...`; slash commands ping and close. When stdin is not a
//! terminal, each line is sent as a text message (with `--binary`, each chunk of bytes as a
//! binary message) and each incoming message is written to stdout on its own line. How the
//! connection closed goes to stderr.

mod input;

use std::{
    io::{self, IsTerminal, Write},
    path::PathBuf,
    time::Duration,
};

use bytes::Bytes;
use duplex::{
    ClientBuilder, CloseCode, Closed, Config, Error, Event, MaybeTlsStream, Message, Side,
    TlsError, WsSink,
};
use tokio::sync::mpsc;

use self::input::Input;

/// Options of `duplex connect`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
On a terminal: type a line to send it; /ping [data], /close [code [reason]], /quit (or \
Ctrl-D), /help.
Otherwise each stdin line is sent as a text message, and each message received is printed on \
its own line; stdin's end closes the connection (with --oneshot: waits for the replies; \
with --max-messages N: waits for N messages).

Exit status: 0 after a clean close that we started, or that the server started with 1000, \
1001 or no code; 1 when connecting fails, the connection fails, or the server closes with \
another code; 2 for bad arguments.")]
pub(crate) struct Args {
    /// The ws:// or wss:// URL to connect to.
    url: String,
    /// Add a request header (repeatable).
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE", value_parser = parse_header)]
    headers: Vec<(String, String)>,
    /// Offer a subprotocol (repeatable, most preferred first).
    #[arg(short = 's', long = "subprotocol", value_name = "NAME")]
    subprotocols: Vec<String>,
    /// Send this Origin header.
    #[arg(short = 'o', long)]
    origin: Option<String>,
    /// Offer permessage-deflate compression.
    #[arg(long)]
    compress: bool,
    /// Open the WebSocket over HTTP/2 (RFC 8441 extended CONNECT): on wss:// TLS offers ALPN
    /// h2 then http/1.1; on ws:// HTTP/2 is spoken with prior knowledge (h2c). When the
    /// server picks http/1.1, does not enable extended CONNECT, or (ws://) does not speak
    /// HTTP/2, the usual HTTP/1.1 upgrade is used instead (on a new connection unless ALPN
    /// chose it), and a line on stderr says so.
    #[arg(long)]
    http2: bool,
    /// Do not verify the server's TLS certificate (self-signed test servers).
    #[arg(short = 'k', long)]
    insecure: bool,
    /// Trust the CA certificates in this PEM file instead of the bundled roots.
    #[arg(long, value_name = "FILE")]
    cacert: Option<PathBuf>,
    /// Trust the operating system's certificate store instead of the bundled roots.
    #[arg(long)]
    native_roots: bool,
    /// Tunnel through this HTTP proxy, `http://[user:password@]host:port`. Without it,
    /// http_proxy (ws://), https_proxy (wss://) and no_proxy are honoured.
    #[arg(long, value_name = "URL")]
    proxy: Option<String>,
    /// Ignore the proxy environment variables.
    #[arg(long, conflicts_with = "proxy")]
    no_proxy: bool,
    /// Follow redirects (301, 302, 303, 307, 308).
    #[arg(short = 'L', long)]
    location: bool,
    /// The most redirects -L follows.
    #[arg(long, value_name = "N", default_value_t = 10)]
    max_redirs: u32,
    /// Seconds allowed to connect (DNS, TCP, proxy), and again for TLS and the handshake.
    #[arg(long, value_name = "S", default_value = "10", value_parser = seconds)]
    connect_timeout: Duration,
    /// Send a Ping after S seconds without incoming traffic (keepalive).
    #[arg(long, value_name = "S", value_parser = seconds)]
    ping_interval: Option<Duration>,
    /// Give up when nothing arrives within S seconds of a keepalive Ping (default 10).
    #[arg(long, value_name = "S", value_parser = seconds, requires = "ping_interval")]
    ping_timeout: Option<Duration>,
    /// Show Pings and Pongs received (on stderr unless on a terminal).
    #[arg(long)]
    show_ping_pong: bool,
    /// Close after receiving N messages; the end of stdin waits for them.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_messages: Option<u64>,
    /// Send all of stdin, then print replies until the server closes or --max-messages
    /// arrive (default: as many as were sent).
    #[arg(short = '1', long)]
    oneshot: bool,
    /// Send stdin's bytes as binary messages (one per read) instead of lines as text.
    #[arg(long)]
    binary: bool,
    /// Print binary messages as hex instead of raw bytes.
    #[arg(long)]
    hex: bool,
    /// Largest message accepted, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 64 << 20)]
    max_message_size: usize,
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let code = runtime.block_on(session(args));
    let _ = io::stdout().flush();
    // A thread may still be blocked reading stdin, which cannot be interrupted: leave now
    // instead of waiting for it in the runtime's shutdown.
    std::process::exit(code)
}

async fn session(args: Args) -> i32 {
    let builder = match client(&args) {
        Ok(builder) => builder,
        Err(e) => {
            eprintln!("duplex: {e}");
            return 2;
        }
    };
    let (ws, _response) = match builder.connect().await {
        Ok(connected) => connected,
        Err(e) => {
            eprintln!("duplex: {e}{}", hint(&e));
            return 1;
        }
    };
    let over_http2 = ws.get_ref().http2().is_some();
    if args.http2 && !over_http2 {
        eprintln!("duplex: the server does not take WebSockets over HTTP/2; using HTTP/1.1");
    }
    let subprotocol = ws.subprotocol().map(str::to_owned);
    let (inputs_tx, inputs) = mpsc::channel(64);
    let interactive = io::stdin().is_terminal() && !args.binary && !args.oneshot;
    let mut out = if interactive {
        let terminal = Terminal::save();
        let (printer_tx, printer_rx) = std::sync::mpsc::channel();
        input::spawn_prompt(inputs_tx, printer_tx);
        match printer_rx.recv() {
            Ok(Ok(printer)) => Output::Prompt { printer, terminal },
            Ok(Err(e)) => {
                eprintln!("duplex: cannot use the terminal: {e}");
                return 1;
            }
            Err(_) => {
                eprintln!("duplex: cannot use the terminal");
                return 1;
            }
        }
    } else {
        if args.binary {
            input::spawn_binary(inputs_tx);
        } else {
            input::spawn_lines(inputs_tx);
        }
        Output::Pipe { hex: args.hex }
    };
    if interactive {
        let chosen = subprotocol.map_or_else(String::new, |p| format!(", subprotocol {p}"));
        let version = if over_http2 { " over HTTP/2" } else { "" };
        out.note(&format!(
            "connected to {}{version}{chosen} (/help for commands, Ctrl-D to close)",
            args.url
        ));
    }
    let (code, last_line) = Session::new(&args, interactive)
        .run(ws, inputs, &mut out)
        .await;
    out.finish(&last_line);
    code
}

/// The client the arguments describe.
fn client(args: &Args) -> Result<ClientBuilder, String> {
    let mut config = Config::default()
        .max_message_size(args.max_message_size)
        .max_frame_size(args.max_message_size)
        .ping_interval(args.ping_interval);
    if let Some(timeout) = args.ping_timeout {
        config = config.pong_timeout(timeout);
    }
    let mut builder = ClientBuilder::new(&args.url)
        .config(config)
        .connect_timeout(args.connect_timeout)
        .handshake_timeout(args.connect_timeout)
        .insecure(args.insecure)
        .native_roots(args.native_roots)
        .http2(args.http2);
    for (name, value) in &args.headers {
        builder = builder.header(name, value);
    }
    if let Some(origin) = &args.origin {
        builder = builder.header("Origin", origin);
    }
    for protocol in &args.subprotocols {
        builder = builder.subprotocol(protocol);
    }
    if let Some(ca) = &args.cacert {
        builder = builder.ca_file(ca);
    }
    builder = match &args.proxy {
        Some(proxy) => builder.proxy(proxy),
        None => builder.proxy_from_env(!args.no_proxy),
    };
    if args.location {
        builder = builder.follow_redirects(args.max_redirs);
    }
    if args.compress {
        builder = offer_compression(builder)?;
    }
    Ok(builder)
}

/// Offer permessage-deflate (`--compress`).
fn offer_compression(builder: ClientBuilder) -> Result<ClientBuilder, String> {
    Ok(builder.deflate(Some(duplex::deflate::DeflateConfig::default())))
}

/// What to try next, for failures a flag can fix.
fn hint(e: &Error) -> &'static str {
    match e {
        Error::Tls(TlsError::UnknownIssuer) => {
            " (--cacert FILE trusts its CA; -k skips verification)"
        }
        Error::Tls(
            TlsError::NameMismatch { .. } | TlsError::Expired { .. } | TlsError::NotYetValid { .. },
        ) => " (-k skips verification)",
        Error::Redirected { .. } => " (-L follows redirects)",
        _ => "",
    }
}

/// `Name: value`, checked enough that the request stays well-formed.
fn parse_header(raw: &str) -> Result<(String, String), String> {
    let (name, value) = raw
        .split_once(':')
        .ok_or_else(|| format!("{raw:?} is not \"Name: value\""))?;
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(token) {
        return Err(format!("{name:?} is not a valid header name"));
    }
    let value = value.trim();
    if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
        return Err(format!("the value of {name} holds a line break or NUL"));
    }
    Ok((name.to_owned(), value.to_owned()))
}

/// A positive number of seconds, fractions allowed.
fn seconds(raw: &str) -> Result<Duration, String> {
    raw.parse::<f64>()
        .ok()
        .filter(|s| *s > 0.0)
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .ok_or_else(|| format!("{raw:?} is not a positive number of seconds"))
}

/// What the sending task tells the receiving loop.
#[derive(Debug)]
enum Report {
    /// Stdin ended after this many messages were sent.
    InputDone { sent: u64 },
    /// Stdin could not be used.
    InputFailed(String),
    /// A message for the user.
    Notice(String),
    /// A `/ping` went out.
    PingSent,
    /// Our Close frame went out with this code and reason.
    CloseSent(CloseCode, String),
}

/// The receiving side of a session: prints what arrives and decides when to close.
struct Session {
    oneshot: bool,
    /// On a terminal, Ctrl-D leaves at once.
    interactive: bool,
    show_ping_pong: bool,
    limit: Option<u64>,
    received: u64,
    pings_awaiting_pong: u32,
    closing: bool,
    /// The code and reason of the Close we sent.
    sent_close: Option<(CloseCode, String)>,
    failure: Option<String>,
}

impl Session {
    const fn new(args: &Args, interactive: bool) -> Self {
        Self {
            oneshot: args.oneshot,
            interactive,
            show_ping_pong: args.show_ping_pong,
            limit: args.max_messages,
            received: 0,
            pings_awaiting_pong: 0,
            closing: false,
            sent_close: None,
            failure: None,
        }
    }

    /// Run until the connection closes; returns the exit status and the line that says how
    /// it ended.
    async fn run(
        mut self,
        ws: duplex::WebSocket<MaybeTlsStream>,
        inputs: mpsc::Receiver<Input>,
        out: &mut Output,
    ) -> (i32, String) {
        let (sink, mut stream) = ws.split();
        let (close_tx, close_rx) = mpsc::unbounded_channel();
        let (report_tx, mut reports) = mpsc::unbounded_channel();
        tokio::spawn(send(sink, inputs, close_rx, report_tx));
        let close = |this: &mut Self| {
            if !std::mem::replace(&mut this.closing, true) {
                let _ = close_tx.send(());
            }
        };
        loop {
            tokio::select! {
                event = stream.next_event() => match event {
                    Some(Ok(Event::Message(message))) => {
                        if self.limit.is_some_and(|l| self.received >= l) {
                            continue;
                        }
                        self.received += 1;
                        if out.message(&message).is_err() {
                            // Nobody reads stdout any more (`| head -1`): end politely.
                            close(&mut self);
                        }
                        if self.limit.is_some_and(|l| self.received >= l) {
                            close(&mut self);
                        }
                    }
                    Some(Ok(Event::Ping(payload))) => {
                        if self.show_ping_pong {
                            out.note(&format!("< ping{}", show_payload(&payload)));
                        }
                    }
                    Some(Ok(Event::Pong(payload))) => {
                        if self.show_ping_pong || self.pings_awaiting_pong > 0 {
                            self.pings_awaiting_pong = self.pings_awaiting_pong.saturating_sub(1);
                            out.note(&format!("< pong{}", show_payload(&payload)));
                        }
                    }
                    Some(Ok(Event::Closed(closed))) => {
                        let (line, code) = self.outcome(&closed);
                        return (code, line);
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return (1, format!("duplex: {e}")),
                    None => return (1, "duplex: connection ended".into()),
                },
                Some(report) = reports.recv() => match report {
                    Report::InputDone { sent } => {
                        if self.oneshot && self.limit.is_none() && sent > 0 {
                            self.limit = Some(sent);
                        }
                        // With a count of messages to wait for (--max-messages, or the
                        // replies of --oneshot), the end of piped stdin waits for them; with
                        // neither, it closes at once (--oneshot alone: the server closes).
                        if self.interactive
                            || self.limit.map_or(!self.oneshot, |l| self.received >= l)
                        {
                            close(&mut self);
                        }
                    }
                    Report::InputFailed(why) => {
                        self.failure = Some(why);
                        close(&mut self);
                    }
                    Report::Notice(text) => out.note(&text),
                    Report::PingSent => self.pings_awaiting_pong += 1,
                    Report::CloseSent(code, reason) => self.sent_close = Some((code, reason)),
                },
            }
        }
    }

    /// The line that says how the connection ended, and the exit status: 0 for a clean
    /// close we started, or one the server started with 1000, 1001 or no code.
    fn outcome(&self, closed: &Closed) -> (String, i32) {
        let (code, reason) = match (&self.sent_close, closed.initiated_by) {
            (Some((code, reason)), Side::Local) => (*code, reason.as_str()),
            _ => (closed.code, closed.reason.as_str()),
        };
        let described = format!(
            "{code} ({}){}",
            code_name(code),
            if reason.is_empty() {
                String::new()
            } else {
                format!(" {reason:?}")
            }
        );
        if let Some(failure) = &self.failure {
            return (format!("duplex: {failure} (closed: {described})"), 1);
        }
        match &closed.error {
            None if closed.initiated_by == Side::Local => (format!("closed: {described}"), 0),
            None if matches!(code.into(), 1000 | 1001 | 1005) => {
                (format!("closed by the server: {described}"), 0)
            }
            None => (format!("duplex: closed by the server: {described}"), 1),
            Some(duplex::proto::CloseError::Protocol(e)) => (
                format!("duplex: the server broke the protocol: {e} (closed: {described})"),
                1,
            ),
            Some(duplex::proto::CloseError::UnexpectedEof) => (
                "duplex: connection lost without a close frame (1006)".into(),
                1,
            ),
            Some(duplex::proto::CloseError::CloseTimeout) => (
                "duplex: the server did not answer the close frame in time".into(),
                1,
            ),
            Some(duplex::proto::CloseError::KeepaliveTimeout) => (
                "duplex: no answer to a keepalive ping in time; connection dropped".into(),
                1,
            ),
            Some(other) => (format!("duplex: connection failed: {other}"), 1),
        }
    }
}

/// The sending task: carries out inputs, and closes when the receiving loop asks.
async fn send(
    mut sink: WsSink<MaybeTlsStream>,
    mut inputs: mpsc::Receiver<Input>,
    mut close: mpsc::UnboundedReceiver<()>,
    reports: mpsc::UnboundedSender<Report>,
) {
    let mut sent = 0;
    let mut reading = true;
    let mut close_sent = false;
    loop {
        let input = tokio::select! {
            biased;
            Some(()) = close.recv() => Input::Close(CloseCode::NORMAL, String::new()),
            input = inputs.recv(), if reading => input.unwrap_or(Input::Eof),
            else => return,
        };
        // Send errors mean the connection is closing or failed: the receiving loop reports
        // that, from the Closed event.
        let _ = match input {
            Input::Text(text) => {
                sent += 1;
                sink.send(Message::text(text)).await
            }
            Input::Binary(bytes) => {
                sent += 1;
                sink.send(Message::binary(bytes)).await
            }
            Input::Ping(payload) => {
                let _ = reports.send(Report::PingSent);
                sink.ping(payload).await
            }
            Input::Close(..) if close_sent => Ok(()),
            Input::Close(code, reason) => {
                close_sent = true;
                // Reported first, so it is known before the server's answer arrives.
                let _ = reports.send(Report::CloseSent(code, reason.clone()));
                sink.close(code, &reason).await
            }
            Input::Notice(text) => {
                let _ = reports.send(Report::Notice(text));
                Ok(())
            }
            Input::Eof => {
                reading = false;
                let _ = reports.send(Report::InputDone { sent });
                Ok(())
            }
            Input::Failed(why) => {
                reading = false;
                let _ = reports.send(Report::InputFailed(why));
                Ok(())
            }
        };
    }
}

/// Where messages and notes go.
enum Output {
    /// stdout for messages, stderr for notes.
    Pipe { hex: bool },
    /// The terminal, above the prompt.
    Prompt {
        printer: Box<dyn rustyline::ExternalPrinter + Send>,
        terminal: Terminal,
    },
}

impl Output {
    /// Show a message: in a pipe as it is (binary raw or in hex) on its own line.
    fn message(&mut self, message: &Message) -> io::Result<()> {
        match self {
            Self::Pipe { hex } => {
                let mut stdout = io::stdout().lock();
                match message {
                    Message::Binary(bytes) if *hex => stdout.write_all(to_hex(bytes).as_bytes())?,
                    other => stdout.write_all(other.as_bytes())?,
                }
                stdout.write_all(b"\n")?;
                stdout.flush()
            }
            Self::Prompt { printer, .. } => {
                let line = match message {
                    Message::Text(text) => format!("< {text}\n"),
                    Message::Binary(bytes) => {
                        format!("< [{} bytes] {}\n", bytes.len(), to_hex(bytes))
                    }
                };
                printer.print(line).map_err(io::Error::other)
            }
        }
    }

    /// Show a line about the connection (not a message).
    fn note(&mut self, line: &str) {
        match self {
            Self::Pipe { .. } => eprintln!("{line}"),
            Self::Prompt { printer, .. } => {
                if printer.print(format!("{line}\n")).is_err() {
                    eprintln!("{line}");
                }
            }
        }
    }

    /// Leave the terminal as it was found, and say how the connection ended (on stderr).
    fn finish(&mut self, last_line: &str) {
        if let Self::Prompt { terminal, .. } = self {
            // The editor's thread prints what it was handed on its own time; give it a moment
            // to show the last messages before the prompt is taken down.
            std::thread::sleep(Duration::from_millis(50));
            terminal.restore();
        }
        eprintln!("{last_line}");
    }
}

/// The terminal's settings before the line editor changed them. The editor's thread may
/// still be waiting for a key when the server closes, so they are put back here before the
/// process exits rather than by the editor.
struct Terminal {
    #[cfg(unix)]
    saved: Option<nix::sys::termios::Termios>,
}

impl Terminal {
    fn save() -> Self {
        Self {
            #[cfg(unix)]
            saved: nix::sys::termios::tcgetattr(io::stdin()).ok(),
        }
    }

    fn restore(&self) {
        #[cfg(unix)]
        if let Some(saved) = &self.saved {
            let _ = nix::sys::termios::tcsetattr(
                io::stdin(),
                nix::sys::termios::SetArg::TCSADRAIN,
                saved,
            );
        }
        // Erase the prompt the editor left on the last line.
        let mut stdout = io::stdout();
        let _ = stdout.write_all(b"\r\x1b[K");
        let _ = stdout.flush();
    }
}

fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// A control frame's payload for display: as text when it is UTF-8, else in hex.
fn show_payload(payload: &Bytes) -> String {
    if payload.is_empty() {
        String::new()
    } else {
        std::str::from_utf8(payload)
            .map_or_else(|_| format!(" {}", to_hex(payload)), |t| format!(" {t}"))
    }
}

/// RFC 6455 §7.4.1 and the IANA registry's names for close codes.
fn code_name(code: CloseCode) -> &'static str {
    match u16::from(code) {
        1000 => "normal closure",
        1001 => "going away",
        1002 => "protocol error",
        1003 => "unsupported data",
        1005 => "no status code",
        1006 => "abnormal closure",
        1007 => "invalid payload data",
        1008 => "policy violation",
        1009 => "message too big",
        1010 => "mandatory extension",
        1011 => "internal error",
        1012 => "service restart",
        1013 => "try again later",
        1014 => "bad gateway",
        1015 => "TLS handshake",
        3000..=3999 => "registered",
        4000..=4999 => "private use",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_and_durations() {
        assert_eq!(
            parse_header("X-Token:  a: b "),
            Ok(("X-Token".into(), "a: b".into()))
        );
        assert!(parse_header("no colon").is_err());
        assert!(parse_header("bad name: x").is_err());
        assert!(parse_header(": x").is_err());
        assert_eq!(seconds("1.5"), Ok(Duration::from_millis(1500)));
        assert!(seconds("0").is_err());
        assert!(seconds("-1").is_err());
        assert!(seconds("soon").is_err());
        assert!(seconds("inf").is_err());
    }

    #[test]
    fn payloads_and_codes() {
        assert_eq!(to_hex(&[0, 0xab, 0x10]), "00ab10");
        assert_eq!(show_payload(&Bytes::from("hi")), " hi");
        assert_eq!(show_payload(&Bytes::from_static(&[0xff])), " ff");
        assert_eq!(code_name(CloseCode::NORMAL), "normal closure");
        assert_eq!(code_name(CloseCode::from(4001)), "private use");
    }
}
