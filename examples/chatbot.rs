//! A multi-client chat room with a bot. Shows a long-lived, line-oriented
//! protocol on a `TcpServer` with a pool, fan-out to every client that never
//! waits on a slow one, bounded input, and a goodbye to everyone on Ctrl-C.
//!
//! Run it and poke it (two terminals, or more):
//!
//! ```text
//! cargo run --example chatbot -- --bind 127.0.0.1:7777
//! nc 127.0.0.1 7777                 # or: cargo run --example chat_client
//! WELCOME to the chat room, guest1! ...
//! /nick alice
//! OK nick alice
//! hello everyone
//! BOT Hello, alice!                 # the others see: [alice] hello everyone
//! /who
//! USERS alice,guest2
//! /quit
//! BYE
//! ```
//!
//! # The protocol
//!
//! UTF-8 lines ending in `\n` (`\r\n` is accepted); every line the server
//! sends ends in `\n`.
//!
//! - On connect the server sends one line starting with `WELCOME`.
//! - `/nick NAME` → `OK nick NAME`. NAME is 1 to 32 ASCII letters, digits,
//!   `_` or `-`, and not the name of someone connected (guests included);
//!   otherwise a line starting with `ERR`. Names are case-sensitive.
//! - `/who` → `USERS ` and the sorted, comma-separated names of everyone
//!   connected; a client without a nick is `guestN`.
//! - `/quit` → `BYE`, then the server closes the connection.
//! - Any other line is said to the room: every *other* client gets
//!   `[NAME] text`, and the sender gets exactly one line starting with `BOT `
//!   (it answers `hello`/`hi`/`hey`, `你好`, `time`/`时间`, `help`/`帮助`, and
//!   anything else with a hint).
//! - A line over 4096 bytes (not counting `\r\n`), or one that is not valid
//!   UTF-8, gets a line starting with `ERR` and the connection is closed;
//!   nobody else sees anything.
//! - The room never waits for a client: each client has an outbox of 256
//!   lines drained by its own writer thread, and a client whose outbox
//!   overflows (it stopped reading) or whose socket takes longer than 10 s
//!   to accept a write is dropped, with a log line.
//! - On Ctrl-C or SIGTERM every client gets `BYE server shutting down` and
//!   is closed; the process exits with status 0 within `--drain-secs` even
//!   if clients stay connected.
//!
//! # Threads
//!
//! Each connected client holds one pool worker (the reader, running the
//! handler) and one writer thread for its whole session, so `--workers`
//! (default 256) is the most clients connected at once. A client arriving
//! when every worker is busy gets `ERR server full, try again later` and is
//! closed (the pool's reject policy and busy hook).
//!
//! The code is in three parts: `room` (the protocol: members, nicks, `/who`,
//! fan-out, outboxes; no sockets), `bot` (the replies) and `line` (bounded
//! line framing), then the socket plumbing (`ChatHandler`: a reader loop and
//! a writer thread per client). A message-oriented, thread-less connection
//! mode would keep the first three and replace only the plumbing.
//!
//! The first line on stdout is exactly `listening on tcp://HOST:PORT`; logs
//! go to stderr.

use std::io::{self, BufRead, BufWriter, IsTerminal, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::thread;
use std::time::Duration;

use clap::Parser;
use simplelog::{ColorChoice, ConfigBuilder, LevelFilter, TermLogger, TerminalMode};
use socketserver::{Overflow, Pool, RequestHandler, TcpRequest, TcpServer};

/// The longest line a client may send, in bytes, not counting `\r\n`.
const MAX_LINE: usize = 4096;
/// How many lines may wait for one client before it counts as too slow.
const OUTBOX_LINES: usize = 256;
/// How long one write to a client may block before it counts as stuck.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// The kernel send buffer per client. Fixing it (instead of letting Linux
/// grow it to megabytes) keeps what a stalled client can hold bounded:
/// this plus its outbox.
const SEND_BUFFER: usize = 64 * 1024;
/// After the server decides to close a connection (`/quit`, `ERR`), it reads
/// and discards what the client still sends, for up to this long between
/// reads and [`LINGER_BYTES`] in all. Closing a TCP socket with unread input
/// sends a reset instead of a FIN (RFC 2525, section 2.17), and the kernel
/// drops whatever it has not sent yet — possibly the last reply. This is the
/// "lingering close" of Apache's `ap_lingering_close`.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: u64 = 1024 * 1024;

/// A multi-client chat room with a bot.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on (host:port; port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7777")]
    bind: String,
    /// The most clients connected at once (one pool worker each).
    #[arg(long, default_value_t = 256)]
    workers: usize,
    /// Seconds a graceful shutdown waits for connections to close before
    /// cutting them off.
    #[arg(long, value_name = "S", default_value_t = 2.0)]
    drain_secs: f64,
    /// Log level: off, error, warn, info, debug, trace.
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    log_level: LevelFilter,
}

/// Bounded line framing: never buffers more than one maximal line.
mod line {
    use std::io::{self, BufRead, Read};

    /// What [`read`] found.
    #[derive(Debug, PartialEq, Eq)]
    pub(crate) enum Frame {
        /// A line, without its `\n` or `\r\n`, is in the buffer. (A last
        /// line cut short by end-of-file counts as a line.)
        Line,
        /// The line is longer than the limit; the buffer holds its start.
        TooLong,
        /// End of input.
        Eof,
    }

    /// Reads one line of at most `max` bytes (plus `\r\n`) into `buf`.
    pub(crate) fn read(
        reader: &mut impl BufRead,
        buf: &mut Vec<u8>,
        max: usize,
    ) -> io::Result<Frame> {
        buf.clear();
        let limit = max as u64 + 2;
        let n = reader.take(limit).read_until(b'\n', buf)?;
        if n == 0 {
            return Ok(Frame::Eof);
        }
        if buf.last() == Some(&b'\n') {
            buf.pop();
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
        } else if n as u64 == limit {
            return Ok(Frame::TooLong);
        }
        Ok(if buf.len() > max {
            Frame::TooLong
        } else {
            Frame::Line
        })
    }
}

/// The bot: one reply line for every chat line.
mod bot {
    use std::time::{SystemTime, UNIX_EPOCH};

    /// The sender's reply, starting with `BOT `, without the newline.
    pub(crate) fn reply(name: &str, text: &str, now: SystemTime) -> String {
        let lower = text.to_lowercase();
        let words: Vec<&str> = lower
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .collect();
        let said = |w: &str| words.contains(&w);
        if said("help") || text.contains("帮助") {
            "BOT I answer hello, hi, 你好, time and help. Commands: /nick NAME, /who, /quit; \
             any other line goes to everyone."
                .to_owned()
        } else if said("time") || text.contains("时间") {
            format!("BOT It is {} UTC.", clock(now))
        } else if text.contains("你好") {
            format!("BOT 你好，{name}！")
        } else if said("hello") || said("hi") || said("hey") {
            format!("BOT Hello, {name}!")
        } else {
            format!("BOT Sorry {name}, I don't follow. Type help to see what I understand.")
        }
    }

    /// `HH:MM:SS` of `now`, in UTC.
    fn clock(now: SystemTime) -> String {
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) % 86_400;
        format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
    }
}

/// The chat protocol: who is connected, under which name, and what each of
/// them is sent. Knows nothing of sockets: each member is an outbox (a
/// bounded queue of lines some writer drains) and a [`Link`] to close it.
mod room {
    use std::collections::BTreeMap;
    use std::fmt;
    use std::sync::mpsc::{SyncSender, TrySendError};
    use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
    use std::time::SystemTime;

    use super::bot;

    /// One line to send, newline included; shared by every recipient of a
    /// broadcast.
    pub(crate) type Line = Arc<str>;

    /// A member's identity in the room, for as long as it is connected.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
    pub(crate) struct MemberId(u64);

    impl fmt::Display for MemberId {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "#{}", self.0)
        }
    }

    /// How the room closes a member's connection. Neither call may block.
    pub(crate) trait Link: Send + Sync {
        /// Stop reading from the client (its reader sees end-of-file); what
        /// is queued for it is still delivered. Used at shutdown.
        fn stop_reading(&self);
        /// Cut the connection off in both directions now: the client is too
        /// slow, or its connection failed.
        fn cut_off(&self);
    }

    /// What the connection should do after a line.
    #[derive(Debug, PartialEq, Eq)]
    pub(crate) enum After {
        /// Read the next line.
        Continue,
        /// The member has left the room: deliver what is queued, then close.
        Close,
    }

    struct Member {
        name: String,
        peer: String,
        outbox: SyncSender<Line>,
        link: Arc<dyn Link>,
    }

    #[derive(Default)]
    struct State {
        members: BTreeMap<MemberId, Member>,
        next_id: u64,
        next_guest: u64,
        closed: bool,
    }

    impl State {
        fn name_taken(&self, name: &str) -> bool {
            self.members.values().any(|m| m.name == name)
        }

        /// Queues `line` for `id`. A full outbox means the member stopped
        /// reading: it is dropped, and `false` returned.
        fn send(&mut self, id: MemberId, line: Line) -> bool {
            let Some(member) = self.members.get(&id) else {
                return false;
            };
            match member.outbox.try_send(line) {
                Ok(()) => true,
                // Its writer is gone: the connection is closing anyway.
                Err(TrySendError::Disconnected(_)) => false,
                Err(TrySendError::Full(_)) => {
                    self.drop_member(id, "too slow: its outbox is full");
                    false
                }
            }
        }

        /// Removes a member and cuts its connection off, with a log line.
        fn drop_member(&mut self, id: MemberId, why: &str) {
            if let Some(member) = self.members.remove(&id) {
                log::warn!("dropping {} ({}): {why}", member.name, member.peer);
                member.link.cut_off();
            }
        }

        /// Removes a member after queueing its last line; dropping its
        /// outbox's sender lets its writer finish the queue and stop.
        fn part(&mut self, id: MemberId, last: &str, why: &str) {
            self.send(id, line(last));
            if let Some(member) = self.members.remove(&id) {
                log::info!("{} ({}) left: {why}", member.name, member.peer);
            }
        }
    }

    fn line(text: &str) -> Line {
        Arc::from(format!("{text}\n"))
    }

    /// Whether `name` may be a nick: 1 to 32 ASCII letters, digits, `_`, `-`.
    pub(crate) fn valid_nick(name: &str) -> bool {
        (1..=32).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    }

    /// The chat room. Every method takes one short lock and never blocks on
    /// a client: lines are queued with `try_send`.
    #[derive(Default)]
    pub(crate) struct Room {
        state: Mutex<State>,
    }

    impl Room {
        fn state(&self) -> MutexGuard<'_, State> {
            // A panic elsewhere must not take the whole room down.
            self.state.lock().unwrap_or_else(PoisonError::into_inner)
        }

        /// Adds a guest and queues its `WELCOME`. `None` once the room has
        /// closed for shutdown.
        pub(crate) fn join(
            &self,
            peer: impl fmt::Display,
            outbox: SyncSender<Line>,
            link: Arc<dyn Link>,
        ) -> Option<MemberId> {
            let mut state = self.state();
            if state.closed {
                return None;
            }
            // A guest name someone took with /nick is skipped.
            let name = loop {
                state.next_guest += 1;
                let name = format!("guest{}", state.next_guest);
                if !state.name_taken(&name) {
                    break name;
                }
            };
            state.next_id += 1;
            let id = MemberId(state.next_id);
            let welcome = line(&format!(
                "WELCOME to the chat room, {name}! Commands: /nick NAME, /who, /quit; \
                 anything else goes to everyone (say help to the bot)."
            ));
            log::info!("{name} ({peer}) joined");
            state.members.insert(
                id,
                Member {
                    name,
                    peer: peer.to_string(),
                    outbox,
                    link,
                },
            );
            state.send(id, welcome);
            Some(id)
        }

        /// Handles one line from `id` (without its line ending).
        pub(crate) fn on_line(&self, id: MemberId, raw: &[u8]) -> After {
            let mut state = self.state();
            let Some(member) = state.members.get(&id) else {
                return After::Close;
            };
            let Ok(text) = std::str::from_utf8(raw) else {
                log::info!("{} ({}) sent invalid UTF-8", member.name, member.peer);
                state.part(id, "ERR invalid UTF-8", "sent invalid UTF-8");
                return After::Close;
            };
            let name = member.name.clone();
            let (command, arg) = text.split_once(' ').unwrap_or((text, ""));
            match command {
                "/nick" => {
                    let nick = arg.trim();
                    let reply = if !valid_nick(nick) {
                        "ERR a nick is 1 to 32 ASCII letters, digits, _ or -".to_owned()
                    } else if nick != name && state.name_taken(nick) {
                        format!("ERR nick {nick} is taken")
                    } else {
                        log::info!("{name} is now {nick}");
                        if let Some(member) = state.members.get_mut(&id) {
                            member.name = nick.to_owned();
                        }
                        format!("OK nick {nick}")
                    };
                    state.send(id, line(&reply));
                }
                "/who" => {
                    let mut names: Vec<&str> =
                        state.members.values().map(|m| m.name.as_str()).collect();
                    names.sort_unstable();
                    let reply = line(&format!("USERS {}", names.join(",")));
                    state.send(id, reply);
                }
                "/quit" => {
                    state.part(id, "BYE", "quit");
                    return After::Close;
                }
                _ => {
                    let said = line(&format!("[{name}] {text}"));
                    let others: Vec<MemberId> =
                        state.members.keys().copied().filter(|&m| m != id).collect();
                    for other in others {
                        state.send(other, Arc::clone(&said));
                    }
                    let reply = bot::reply(&name, text, SystemTime::now());
                    state.send(id, line(&reply));
                }
            }
            // The member may have been dropped for not reading its replies.
            if state.members.contains_key(&id) {
                After::Continue
            } else {
                After::Close
            }
        }

        /// Refuses a line that was too long, and closes.
        pub(crate) fn too_long(&self, id: MemberId, max: usize) -> After {
            let mut state = self.state();
            state.part(
                id,
                &format!("ERR line too long (the limit is {max} bytes)"),
                "sent a line that was too long",
            );
            After::Close
        }

        /// Removes `id` if it is still a member (its client hung up).
        pub(crate) fn leave(&self, id: MemberId, why: &str) {
            if let Some(member) = self.state().members.remove(&id) {
                log::info!("{} ({}) left: {why}", member.name, member.peer);
            }
        }

        /// Drops `id` and cuts its connection off (its writer failed).
        pub(crate) fn drop_member(&self, id: MemberId, why: &str) {
            self.state().drop_member(id, why);
        }

        /// Shutdown: says goodbye to everyone, stops reading from them, and
        /// lets no one else in. Their writers deliver the goodbye and close.
        pub(crate) fn close(&self) {
            let mut state = self.state();
            state.closed = true;
            let ids: Vec<MemberId> = state.members.keys().copied().collect();
            log::info!(
                "closing the room: saying goodbye to {} client(s)",
                ids.len()
            );
            for id in ids {
                state.send(id, line("BYE server shutting down"));
                if let Some(member) = state.members.remove(&id) {
                    member.link.stop_reading();
                }
            }
        }
    }
}

use room::{After, Link, MemberId, Room};

/// The room closes a client's connection through its socket.
impl Link for TcpStream {
    fn stop_reading(&self) {
        // Wakes the reader blocked in recv(2) with end-of-file.
        let _ = self.shutdown(Shutdown::Read);
    }
    fn cut_off(&self) {
        let _ = self.shutdown(Shutdown::Both);
    }
}

/// The socket plumbing: per client, this handler is the reader and it runs
/// a writer thread that drains the client's outbox.
struct ChatHandler {
    room: Arc<Room>,
}

impl RequestHandler<TcpRequest> for ChatHandler {
    fn handle(&self, req: &mut TcpRequest) -> io::Result<()> {
        let peer = *req.peer_addr();
        // The writer and the room each need their own handle on the socket.
        let socket = Arc::new(req.socket().try_clone()?);
        socket.set_write_timeout(Some(WRITE_TIMEOUT))?;
        socket2::SockRef::from(&*socket).set_send_buffer_size(SEND_BUFFER)?;
        let (outbox, queue) = mpsc::sync_channel(OUTBOX_LINES);
        let link: Arc<dyn Link> = socket.clone();
        let Some(id) = self.room.join(peer, outbox, link) else {
            req.wfile.write_all(b"BYE server shutting down\n")?;
            return Ok(());
        };
        let room = &*self.room;
        let closing = thread::scope(|scope| {
            let writer = thread::Builder::new()
                .name(format!("chat-writer-{peer}"))
                .spawn_scoped(scope, || deliver(&socket, queue, room, id, peer));
            if let Err(e) = writer {
                room.drop_member(id, &format!("cannot start its writer: {e}"));
                return false;
            }
            let closing = read_lines(&mut req.rfile, room, id);
            // Leaving drops the outbox's sender: the writer sends what is
            // queued (BYE, ERR), half-closes, and ends.
            room.leave(id, "disconnected");
            closing
        });
        if closing {
            linger(req);
        }
        Ok(())
    }
}

/// Reads lines and hands them to the room until the client leaves. Returns
/// whether the server chose to close (so the client may still be sending).
fn read_lines(rfile: &mut impl BufRead, room: &Room, id: MemberId) -> bool {
    let mut buf = Vec::with_capacity(256);
    loop {
        let after = match line::read(rfile, &mut buf, MAX_LINE) {
            Ok(line::Frame::Line) => room.on_line(id, &buf),
            Ok(line::Frame::TooLong) => room.too_long(id, MAX_LINE),
            Ok(line::Frame::Eof) => return false,
            Err(e) => {
                log::debug!("client {id}: read failed: {e}");
                return false;
            }
        };
        if after == After::Close {
            return true;
        }
    }
}

/// The writer thread: sends the outbox's lines in order, flushing whenever
/// it runs dry, until the room lets go of the member; then half-closes.
fn deliver(
    socket: &TcpStream,
    queue: Receiver<room::Line>,
    room: &Room,
    id: MemberId,
    peer: SocketAddr,
) {
    let mut out = BufWriter::new(socket);
    let sent = (|| -> io::Result<()> {
        loop {
            let line = match queue.try_recv() {
                Ok(line) => line,
                Err(TryRecvError::Empty) => {
                    out.flush()?;
                    match queue.recv() {
                        Ok(line) => line,
                        Err(_) => break,
                    }
                }
                Err(TryRecvError::Disconnected) => break,
            };
            out.write_all(line.as_bytes())?;
        }
        out.flush()
    })();
    match sent {
        Ok(()) => {
            let _ = socket.shutdown(Shutdown::Write);
        }
        Err(e) => {
            let why = if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) {
                format!("stuck: a write blocked for over {WRITE_TIMEOUT:?}")
            } else {
                format!("write failed: {e}")
            };
            log::debug!("writer for {peer}: {e}");
            room.drop_member(id, &why);
            // It may have left already; make sure the reader wakes up.
            socket.cut_off();
        }
    }
}

/// Reads and discards what the client still sends, briefly, before the
/// socket is closed: see [`LINGER`].
fn linger(req: &mut TcpRequest) {
    if req.set_read_timeout(Some(LINGER)).is_ok() {
        let _ = io::copy(&mut (&mut req.rfile).take(LINGER_BYTES), &mut io::sink());
    }
}

fn run(args: &Args) -> io::Result<()> {
    if args.workers == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "--workers must be at least 1",
        ));
    }
    let room = Arc::new(Room::default());
    let handler = ChatHandler {
        room: Arc::clone(&room),
    };
    let mut server = TcpServer::bind(args.bind.as_str(), handler)?;
    // A direct hand-off: a client is taken only when a worker is free to
    // serve it, and told so when none is.
    server.set_dispatch(
        Pool::new(args.workers)
            .queue_size(0)
            .overflow(Overflow::Reject),
    );
    server.set_busy_hook(|_peer, out| {
        let _ = out.write_all(b"ERR server full, try again later\n");
    });
    server.set_drain_timeout(Duration::from_secs_f64(args.drain_secs.max(0.0)));
    server.shutdown_on_signals()?;

    // On shutdown, say goodbye: readers blocked in recv(2) are woken and
    // every handler returns, so the drain ends without waiting for clients.
    let token = server.shutdown_handle().token();
    thread::Builder::new()
        .name("chat-shutdown".into())
        .spawn(move || {
            while !token.wait(Duration::from_secs(3600)) {}
            room.close();
        })?;

    let url = format!("tcp://{}", server.local_addr()?);
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "listening on {url}")?;
    stdout.flush()?;
    drop(stdout);
    log::info!("chat room on {url}: up to {} clients at once", args.workers);
    let report = server.serve_forever()?;
    log::info!("stopped: {report}; {}", server.stats().snapshot());
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.log_level);
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("chatbot: {e}");
            eprintln!("chatbot: {e}");
            ExitCode::FAILURE
        }
    }
}

/// simplelog to stderr, in colour only when stderr is a terminal.
fn init_logging(level: LevelFilter) {
    let config = ConfigBuilder::new()
        .set_thread_level(LevelFilter::Off)
        .build();
    let color = if io::stderr().is_terminal() {
        ColorChoice::Auto
    } else {
        ColorChoice::Never
    };
    let _ = TermLogger::init(level, config, TerminalMode::Stderr, color);
}
