//! A multi-client chat room with a bot. Shows a long-lived, line-oriented
//! protocol in message mode (`Messages` + `Dispatch::Reactor`): connected
//! clients wait in the poller and hold no thread, so a 4-worker server holds
//! thousands of them; fan-out to every client never waits on a slow one;
//! input is bounded; and everyone gets a goodbye on Ctrl-C.
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
//! - The room never waits for a client: lines are queued on each client's
//!   connection without blocking, and a client that lets more than 256 KiB
//!   pile up (it stopped reading) is dropped, with a log line.
//! - A client that starts a line must finish it within 10 s (the reactor's
//!   read timeout); one that says nothing for 30 min is disconnected.
//! - On Ctrl-C or SIGTERM every client gets `BYE server shutting down` and
//!   is closed; the process exits with status 0 within `--drain-secs` even
//!   if clients stay connected.
//!
//! # Threads
//!
//! `--workers` (default 4) threads serve whichever connections have data;
//! idle clients cost no thread, only a little memory. `--max-clients`
//! (default: no limit) caps the clients at once; the next one gets
//! `ERR server full, try again later` and is closed (the reactor's reject
//! policy and the server's busy hook).
//!
//! The code is in three parts: `room` (the protocol: members, nicks, `/who`,
//! fan-out; no sockets), `bot` (the replies) and `line` (bounded line
//! framing), then the socket plumbing (`ChatHandler`, a `MessageHandler`).
//!
//! The first line on stdout is exactly `listening on tcp://HOST:PORT`; logs
//! go to stderr.

mod common;
use std::io::{self, Write};
use std::net::TcpStream;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use simplelog::LevelFilter;
use socketserver::{
    Action, CloseReason, ConnWriter, Connection, MessageHandler, Messages, Overflow, Reactor,
    TcpServer,
};

/// The longest line a client may send, in bytes, not counting `\r\n`.
const MAX_LINE: usize = 4096;
/// How much output may wait for one client before it counts as too slow.
const MAX_QUEUED: usize = 256 * 1024;
/// The kernel send buffer per client. Fixing it (instead of letting Linux
/// grow it to megabytes) keeps what a stalled client can hold bounded:
/// this plus [`MAX_QUEUED`].
const SEND_BUFFER: usize = 64 * 1024;
/// Each client's read buffer. Small, because thousands of idle clients each
/// keep one; a longer line is still read whole, in several reads.
const READ_BUFFER: usize = 1024;
/// How long a started line may take to arrive.
const LINE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may say nothing before it is disconnected.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// A multi-client chat room with a bot.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on (host:port; port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7777")]
    bind: String,
    /// Worker threads serving the clients that have something to say.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// The most clients connected at once (default: no limit but the
    /// process's file-descriptor limit).
    #[arg(long, value_name = "N")]
    max_clients: Option<usize>,
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
/// them is sent. Knows nothing of sockets: each member is an [`Outbox`].
mod room {
    use std::collections::BTreeMap;
    use std::fmt;
    use std::sync::mpsc::{self, Receiver, SyncSender};
    use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
    use std::thread;
    use std::time::{Duration, SystemTime};

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

    /// Why an [`Outbox`] refused a line.
    #[derive(Debug, PartialEq, Eq)]
    pub(crate) enum Refused {
        /// The client is not reading: too much is waiting for it already.
        TooSlow,
        /// The connection is gone.
        Gone,
    }

    /// Where a member's lines go. `push` must never block: the room holds
    /// its lock while it calls it.
    pub(crate) trait Outbox: Send + Sync {
        fn push(&self, line: &str) -> Result<(), Refused>;
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
        outbox: Arc<dyn Outbox>,
        /// How many lines had been said to the room when it joined: it is
        /// sent only the ones after.
        since: u64,
    }

    #[derive(Default)]
    struct State {
        members: BTreeMap<MemberId, Member>,
        /// Lines said to the room so far.
        said: u64,
        next_id: u64,
        next_guest: u64,
        closed: bool,
    }

    impl State {
        fn name_taken(&self, name: &str) -> bool {
            self.members.values().any(|m| m.name == name)
        }

        /// Queues `line` for `id`. A member that is not reading is dropped
        /// (its connection is being closed), and `false` returned.
        fn send(&mut self, id: MemberId, line: Line) -> bool {
            let Some(member) = self.members.get(&id) else {
                return false;
            };
            match member.outbox.push(&line) {
                Ok(()) => true,
                // The connection is closing anyway.
                Err(Refused::Gone) => false,
                Err(Refused::TooSlow) => {
                    self.drop_slow(id);
                    false
                }
            }
        }

        /// Removes a member that stopped reading (its connection is being
        /// closed as a slow consumer), with a log line.
        fn drop_slow(&mut self, id: MemberId) {
            if let Some(member) = self.members.remove(&id) {
                log::warn!(
                    "dropping {} ({}): too slow, it stopped reading",
                    member.name,
                    member.peer
                );
            }
        }

        /// Removes a member after queueing its last line.
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

    /// A line said to the room, on its way to everyone else.
    struct Said {
        seq: u64,
        from: MemberId,
        line: Line,
    }

    /// The chat room. Every method takes one short lock and never blocks on
    /// a client: lines are queued on connections without waiting.
    ///
    /// Lines said to the room are fanned out by a thread of its own, the
    /// broadcaster, not by the handler that read them: with thousands of
    /// members a fan-out takes milliseconds (a write per member), and the
    /// workers must stay free to answer the next client. When lines arrive
    /// faster than one fan-out takes, the broadcaster sends everything
    /// waiting in one write per member.
    pub(crate) struct Room {
        state: Mutex<State>,
        said: Mutex<SyncSender<Option<Said>>>,
        broadcaster: Mutex<Option<thread::JoinHandle<()>>>,
    }

    /// Lines said to the room waiting for the broadcaster, at most; beyond
    /// this a member saying something waits (after getting its own reply).
    const BACKLOG: usize = 4096;
    /// Lines sent together in one fan-out, at most.
    const BATCH: usize = 1024;
    /// A round writes to this many members, then pauses for [`PAUSE`], so
    /// the workers answering clients never wait long for a CPU behind a
    /// fan-out (on 2 cores, 10 000 members take ~80 ms a round this way).
    /// Measured with `scripts/chat_bench.sh`: 256 members per 500 µs pause
    /// put the active clients' p99 at 4x its value without the crowd; 32 per
    /// 100 µs, at 1.4-1.6x.
    const SLICE: usize = 32;
    const PAUSE: Duration = Duration::from_micros(100);

    impl Room {
        /// Opens a room and starts its broadcaster.
        pub(crate) fn open() -> std::io::Result<Arc<Room>> {
            let (said, queue) = mpsc::sync_channel(BACKLOG);
            let room = Arc::new(Room {
                state: Mutex::default(),
                said: Mutex::new(said),
                broadcaster: Mutex::new(None),
            });
            let handle = thread::Builder::new()
                .name("chat-broadcaster".into())
                .spawn({
                    let room = Arc::clone(&room);
                    move || room.broadcast(&queue)
                })?;
            *room
                .broadcaster
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(handle);
            Ok(room)
        }

        /// Stops the broadcaster once everything said so far is delivered.
        pub(crate) fn stop(&self) {
            let _ = self
                .said
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .send(None);
            let handle = self
                .broadcaster
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if let Some(handle) = handle {
                let _ = handle.join();
            }
        }

        /// The broadcaster: takes what is waiting (one line, or a burst),
        /// sends it to every member in one write each, repeats.
        fn broadcast(&self, queue: &Receiver<Option<Said>>) {
            let mut batch = Vec::new();
            while let Ok(Some(first)) = queue.recv() {
                batch.push(first);
                let mut stop = false;
                while batch.len() < BATCH {
                    match queue.try_recv() {
                        Ok(Some(said)) => batch.push(said),
                        Ok(None) => {
                            stop = true;
                            break;
                        }
                        Err(_) => break,
                    }
                }
                self.deliver(&batch);
                batch.clear();
                if stop {
                    return;
                }
            }
        }

        fn deliver(&self, batch: &[Said]) {
            let first_seq = batch[0].seq;
            let recipients: Vec<(MemberId, u64, Arc<dyn Outbox>)> = self
                .state()
                .members
                .iter()
                .map(|(&id, m)| (id, m.since, Arc::clone(&m.outbox)))
                .collect();
            // Most members get all of it; the few who said some of it, or
            // joined during it, get their own cut.
            let all: String = batch.iter().map(|s| &*s.line).collect();
            let mut too_slow = Vec::new();
            for (i, (id, since, outbox)) in recipients.into_iter().enumerate() {
                if i > 0 && i % SLICE == 0 {
                    // Step aside between slices, so a round over thousands
                    // of members never keeps the workers waiting for a CPU.
                    thread::sleep(PAUSE);
                }
                let own = since >= first_seq || batch.iter().any(|s| s.from == id);
                let result = if own {
                    let cut: String = batch
                        .iter()
                        .filter(|s| s.from != id && s.seq > since)
                        .map(|s| &*s.line)
                        .collect();
                    if cut.is_empty() {
                        continue;
                    }
                    outbox.push(&cut)
                } else {
                    outbox.push(&all)
                };
                if result == Err(Refused::TooSlow) {
                    too_slow.push(id);
                }
            }
            if !too_slow.is_empty() {
                let mut state = self.state();
                for id in too_slow {
                    state.drop_slow(id);
                }
            }
        }

        fn state(&self) -> MutexGuard<'_, State> {
            // A panic elsewhere must not take the whole room down.
            self.state.lock().unwrap_or_else(PoisonError::into_inner)
        }

        /// Adds a guest and queues its `WELCOME`. `None` once the room has
        /// closed for shutdown.
        pub(crate) fn join(
            &self,
            peer: impl fmt::Display,
            outbox: Arc<dyn Outbox>,
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
            let since = state.said;
            state.members.insert(
                id,
                Member {
                    name,
                    peer: peer.to_string(),
                    outbox,
                    since,
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
                    let reply = bot::reply(&name, text, SystemTime::now());
                    state.send(id, line(&reply));
                    state.said += 1;
                    let said = Said {
                        seq: state.said,
                        from: id,
                        line: line(&format!("[{name}] {text}")),
                    };
                    // The broadcaster tells the others; the room is not
                    // held while the line waits for it.
                    let queue = self
                        .said
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .clone();
                    drop(state);
                    let _ = queue.send(Some(said));
                    state = self.state();
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

        /// Shutdown: says goodbye to `id` and lets no one else in.
        pub(crate) fn goodbye(&self, id: MemberId) {
            let mut state = self.state();
            state.closed = true;
            state.part(id, "BYE server shutting down", "server shutting down");
        }
    }
}

use room::{After, MemberId, Outbox, Refused, Room};

/// A member's lines go straight onto its connection: queued without
/// blocking, sent as the client reads.
impl Outbox for ConnWriter<TcpStream> {
    fn push(&self, line: &str) -> Result<(), Refused> {
        match self.send(line.as_bytes()) {
            Ok(()) => Ok(()),
            // Past the reactor's outbound limit: it closes the connection.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(Refused::TooSlow),
            Err(_) => Err(Refused::Gone),
        }
    }
}

/// The socket plumbing: called by the reactor when a client has sent
/// something, when the server begins shutting down, and when the client's
/// connection closes.
struct ChatHandler {
    room: Arc<Room>,
}

/// Per client: who it is in the room (`None` if it arrived as the room
/// closed), and the buffer its lines are read into.
struct Client {
    id: Option<MemberId>,
    line: Vec<u8>,
}

impl MessageHandler<TcpStream> for ChatHandler {
    type State = Client;

    fn connect(&self, conn: &mut Connection<TcpStream>) -> io::Result<Client> {
        socket2::SockRef::from(conn.socket()).set_send_buffer_size(SEND_BUFFER)?;
        let outbox: Arc<dyn Outbox> = Arc::new(conn.writer());
        let id = self.room.join(conn.peer_addr(), outbox);
        if id.is_none() {
            conn.wfile.write_all(b"BYE server shutting down\n")?;
        }
        Ok(Client {
            id,
            line: Vec::with_capacity(128),
        })
    }

    fn ready(&self, conn: &mut Connection<TcpStream>, client: &mut Client) -> io::Result<Action> {
        let Some(id) = client.id else {
            return Ok(Action::Close);
        };
        // Every complete line that has arrived; a line cut across packets
        // is waited for (up to the reactor's read timeout).
        loop {
            let after = match line::read(&mut conn.rfile, &mut client.line, MAX_LINE)? {
                line::Frame::Line => self.room.on_line(id, &client.line),
                line::Frame::TooLong => self.room.too_long(id, MAX_LINE),
                line::Frame::Eof => return Ok(Action::Close),
            };
            if after == After::Close {
                return Ok(Action::Close);
            }
            if !conn.has_buffered_data() {
                return Ok(Action::Keep);
            }
        }
    }

    fn shutting_down(
        &self,
        _conn: &mut Connection<TcpStream>,
        client: &mut Client,
    ) -> io::Result<Action> {
        if let Some(id) = client.id.take() {
            self.room.goodbye(id);
        }
        Ok(Action::Close)
    }

    fn disconnect(&self, _conn: &mut Connection<TcpStream>, client: Client, reason: &CloseReason) {
        let Some(id) = client.id else {
            return;
        };
        match reason {
            // Interrupted mid-line by the shutdown: still say goodbye.
            CloseReason::Shutdown => self.room.goodbye(id),
            CloseReason::ReadTimeout => self.room.leave(id, "a line took too long to arrive"),
            CloseReason::IdleTimeout => self.room.leave(id, "idle for too long"),
            _ => self.room.leave(id, "disconnected"),
        }
    }
}

fn run(args: &Args) -> io::Result<()> {
    if args.workers == 0 || args.max_clients == Some(0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "--workers and --max-clients must be at least 1",
        ));
    }
    let room = Room::open()?;
    let handler = ChatHandler {
        room: Arc::clone(&room),
    };
    let mut server = TcpServer::bind(args.bind.as_str(), Messages(handler))?;
    server.set_dispatch(
        Reactor::new(args.workers)
            .read_timeout(LINE_TIMEOUT)
            .idle_timeout(Some(IDLE_TIMEOUT))
            .max_connections(args.max_clients)
            .max_outbound(MAX_QUEUED)
            .overflow(Overflow::Reject),
    );
    server.set_rbufsize(READ_BUFFER);
    server.set_busy_hook(|_peer, out| {
        let _ = out.write_all(b"ERR server full, try again later\n");
    });
    server.set_drain_timeout(Duration::from_secs_f64(args.drain_secs.max(0.0)));
    server.shutdown_on_signals()?;

    let url = format!("tcp://{}", server.local_addr()?);
    common::announce(&url)?;
    log::info!(
        "chat room on {url}: {} workers, {}",
        args.workers,
        match args.max_clients {
            Some(n) => format!("up to {n} clients at once"),
            None => "no limit on clients".to_owned(),
        }
    );
    let report = server.serve_forever();
    room.stop();
    let report = report?;
    log::info!("stopped: {report}; {}", server.stats().snapshot());
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    common::init_logging(args.log_level);
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("chatbot: {e}");
            eprintln!("chatbot: {e}");
            ExitCode::FAILURE
        }
    }
}
