//! A load generator for any echo server (TCP or UDP): requests per second,
//! latency percentiles, and — given the server's pid — the server's CPU time
//! per request, the fairest efficiency figure when the load generator and
//! the server share a small machine.
//!
//! ```text
//! cargo run --release --example echo_server -- --bind 127.0.0.1:9999 &
//! cargo run --release --example loadgen -- --mode tcp-rr --addr 127.0.0.1:9999 \
//!     --connections 16 --size 64 --duration 5 --server-pid $!
//! ```
//!
//! Modes:
//!
//! - `tcp-rr`: C persistent connections, each sending M bytes and reading M
//!   bytes back, in a loop.
//! - `tcp-connect`: C clients, each in a loop: connect, one M-byte round
//!   trip, close (the pattern of a classic Python `socketserver` client).
//!   The latency includes the connect.
//! - `udp-rr`: C UDP sockets, each with one M-byte datagram outstanding; a
//!   reply not back within `--timeout-ms` counts as lost and the client
//!   moves on (a reply that turns up later is counted as `late`).
//! - `idle`: K connections (`--idle`) opened first and held open and silent,
//!   while C clients run `tcp-rr`. Each idle connection echoes one probe
//!   byte when it is opened (so the server has really taken it on, as a
//!   chat client that said hello) and again after the measured window, to
//!   check that all K stayed connected and served.
//!
//! Every run warms up for `--warmup` seconds, then measures for
//! `--duration` seconds; only requests that complete inside the window
//! count. Every echoed byte is checked: a wrong byte, an early close, an I/O
//! error or a request slower than `--timeout-ms` is an error (counted over
//! the whole run, warm-up included); the connection is then replaced.
//!
//! The load generator must cost far less than the server it measures, so it
//! is one readiness event loop (mio, edge-triggered epoll) per thread
//! (`--threads`, default 1) over non-blocking sockets with `TCP_NODELAY`;
//! buffers are allocated once per connection, and a request costs one
//! `write`, one `read` and a share of one `epoll_wait`. It reports its own
//! CPU time too (and how much of it was user space), the whole machine's
//! busy share over the window (`/proc/stat`), and the share that neither
//! the server nor the load generator used (`others_busy_pct`: other
//! processes disturbing the measurement), so you can see when it would be
//! the bottleneck and when a run was noisy. IPv4 connections rotate over
//! 32 loopback source addresses (see `open_stream`), so tcp-connect does not
//! run out of ephemeral ports.
//!
//! CPU time per request: with `--server-pid PID`, the server's utime + stime
//! (fields 14 and 15 of `/proc/PID/stat`, in clock ticks of
//! `sysconf(_SC_CLK_TCK)`) are read just before and just after the measured
//! window. For a server that forks, the snapshot also adds the reaped
//! children's time (fields 16 and 17, cutime + cstime) and the time of every
//! live descendant found through `/proc/PID/task/*/children` (recursively,
//! each with its own reaped children). A child that is reaped between the
//! read of its own stat and its parent's can be missed or counted twice;
//! over a window of seconds that is noise. The unit is one clock tick
//! (usually 10 ms), and with tick-based accounting the kernel charges a
//! whole tick to whatever runs when it fires, so the figure is statistical:
//! use windows of seconds and compare medians of several runs.
//!
//! Output: a human table on stdout, or with `--json` exactly one JSON line.
//! The exit status is 0 when the window measured at least one request, 1
//! otherwise (or on a usage or set-up error). Errors do not change the exit
//! status: read them from the report.
//!
//! Traffic goes to loopback addresses only (127.0.0.0/8, ::1): a load
//! generator is a flood, and this one refuses to aim elsewhere.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream as StdTcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use mio::net::{TcpStream, UdpSocket};
use mio::{Events, Interest, Poll, Token};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Persistent connections, M bytes out and M bytes back, in a loop.
    TcpRr,
    /// Connect, one M-byte round trip, close; in a loop.
    TcpConnect,
    /// One outstanding M-byte datagram per client socket.
    UdpRr,
    /// K idle connections held open while C clients run tcp-rr.
    Idle,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::TcpRr => "tcp-rr",
            Mode::TcpConnect => "tcp-connect",
            Mode::UdpRr => "udp-rr",
            Mode::Idle => "idle",
        }
    }
}

/// A load generator for echo servers (loopback only).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// What to measure.
    #[arg(long, value_enum, default_value_t = Mode::TcpRr)]
    mode: Mode,
    /// The echo server's address (a loopback host:port).
    #[arg(long, default_value = "127.0.0.1:9999")]
    addr: String,
    /// Concurrent clients (C): connections, or UDP sockets.
    #[arg(long, short = 'c', default_value_t = 16)]
    connections: usize,
    /// Request size in bytes (M); the echo must be the same M bytes.
    #[arg(long, short = 'm', default_value_t = 64)]
    size: usize,
    /// Length of the measured window, in seconds.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Warm-up before the window, in seconds (connections are opened then).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Idle connections held open in `--mode idle` (K).
    #[arg(long, default_value_t = 1000)]
    idle: usize,
    /// The server's pid, to report its CPU time per request.
    #[arg(long, value_name = "PID")]
    server_pid: Option<i32>,
    /// Print exactly one JSON line instead of the table.
    #[arg(long)]
    json: bool,
    /// A request (or a UDP reply) slower than this is an error (a loss for UDP).
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    timeout_ms: u64,
    /// Event-loop threads; the clients are spread over them.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

/// Reconnect this long after a failed connection, so a dead server is not
/// hammered in a tight loop.
const BACKOFF: Duration = Duration::from_millis(10);
/// How often each event loop looks for requests past their deadline.
const SWEEP: Duration = Duration::from_millis(10);
/// How long opening and probing the idle crowd may take, on top of
/// `--timeout-ms`.
const IDLE_SETUP: Duration = Duration::from_secs(10);
/// Slot index bits of a token; the rest is the slot's generation, so an
/// event for a closed connection is never taken for its replacement's.
const SLOT_BITS: u32 = 24;

/// Everything a worker counts. `requests`, `sent`, `received`, `lost` and
/// `late` count inside the measured window only; the error counters count
/// the whole run.
#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    requests: u64,
    sent: u64,
    received: u64,
    lost: u64,
    late: u64,
    connects: u64,
    timeouts: u64,
    mismatches: u64,
    io_errors: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.requests += o.requests;
        self.sent += o.sent;
        self.received += o.received;
        self.lost += o.lost;
        self.late += o.late;
        self.connects += o.connects;
        self.timeouts += o.timeouts;
        self.mismatches += o.mismatches;
        self.io_errors += o.io_errors;
    }

    fn errors(&self) -> u64 {
        self.timeouts + self.mismatches + self.io_errors
    }
}

/// The measured window, shared by every worker and the main thread.
#[derive(Clone, Copy, Debug)]
struct Window {
    start: Instant,
    end: Instant,
}

impl Window {
    fn contains(&self, t: Instant) -> bool {
        t >= self.start && t < self.end
    }
}

/// What one worker hands back.
#[derive(Debug)]
struct WorkerReport {
    counts: Counts,
    hist: Histogram<u64>,
}

fn new_histogram() -> Histogram<u64> {
    // Nanoseconds from 1 ns to 100 s, three significant digits.
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid histogram bounds")
}

/// Fills `buf` with a pattern that differs per client, and stamps `seq` in
/// the first eight bytes (when there is room), so a stale or shifted echo
/// never matches by accident.
fn fill_pattern(buf: &mut [u8], client: usize) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (i.wrapping_mul(31) ^ client.wrapping_mul(131)) as u8;
    }
}

fn stamp(buf: &mut [u8], seq: u64) {
    if buf.len() >= 8 {
        buf[..8].copy_from_slice(&seq.to_le_bytes());
    }
}

fn stamp_of(buf: &[u8]) -> Option<u64> {
    buf.get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
}

fn token(slot: usize, generation: u32) -> Token {
    Token(((generation as usize) << SLOT_BITS) | slot)
}

fn split_token(t: Token) -> (usize, u32) {
    (t.0 & ((1 << SLOT_BITS) - 1), (t.0 >> SLOT_BITS) as u32)
}

// ---------------------------------------------------------------- TCP ----

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting to (re)connect at `deadline`.
    Backoff,
    /// Non-blocking connect in progress.
    Connecting,
    /// A request is out: `sent` of M bytes written, `got` read back.
    Active,
}

#[derive(Debug)]
struct TcpSlot {
    stream: Option<TcpStream>,
    generation: u32,
    phase: Phase,
    sent: usize,
    got: usize,
    /// An edge said there may be bytes to read and no read has yet seen
    /// `WouldBlock` since.
    readable: bool,
    seq: u64,
    started: Instant,
    deadline: Instant,
    out: Box<[u8]>,
    inp: Box<[u8]>,
}

struct TcpWorker {
    poll: Poll,
    addr: SocketAddr,
    /// true: close after one round trip and reconnect (tcp-connect).
    one_shot: bool,
    size: usize,
    timeout: Duration,
    window: Window,
    slots: Vec<TcpSlot>,
    /// Connections opened so far (picks each one's source address).
    opened: u64,
    counts: Counts,
    hist: Histogram<u64>,
}

/// How many loopback source addresses (127.0.0.1, 127.0.0.2, ...) the
/// connections of an IPv4 run rotate over.
const SOURCE_ADDRS: u64 = 32;

/// Starts a non-blocking connect to `addr`, the `n`th of this thread.
///
/// For an IPv4 loopback server, connection `n` comes from source address
/// 127.0.0.(1 + n mod 32) (all of 127.0.0.0/8 is the loopback interface),
/// with `IP_BIND_ADDRESS_NO_PORT` so the port is picked at connect time
/// for the whole 4-tuple (ip(7)). Why: a client that closes first leaves
/// each connection in TIME_WAIT for 60 s, and at tens of thousands of
/// connections a second (tcp-connect) one source address runs its 28,000
/// ephemeral ports dry; the kernel then spends the client's time searching
/// for a reusable port in `connect` (`__inet_hash_connect` tops the
/// profile), and the load generator, not the server, sets the pace.
fn open_stream(addr: SocketAddr, n: u64) -> io::Result<TcpStream> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    if let SocketAddr::V4(v4) = addr
        && v4.ip().is_loopback()
    {
        nix::sys::socket::setsockopt(
            &socket,
            nix::sys::socket::sockopt::IpBindAddressNoPort,
            &true,
        )?;
        let host = 1 + (n % SOURCE_ADDRS) as u8;
        let src = SocketAddr::from(([127, 0, 0, host], 0));
        socket.bind(&src.into())?;
    }
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(nix::errno::Errno::EINPROGRESS as i32) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(std::net::TcpStream::from(socket)))
}

impl TcpWorker {
    fn new(
        addr: SocketAddr,
        clients: &[usize],
        one_shot: bool,
        size: usize,
        timeout: Duration,
        window: Window,
    ) -> io::Result<Self> {
        let now = Instant::now();
        let slots = clients
            .iter()
            .map(|&client| {
                let mut out = vec![0u8; size].into_boxed_slice();
                fill_pattern(&mut out, client);
                TcpSlot {
                    stream: None,
                    generation: 0,
                    phase: Phase::Backoff,
                    sent: 0,
                    got: 0,
                    readable: false,
                    seq: 0,
                    started: now,
                    deadline: now,
                    out,
                    inp: vec![0u8; size].into_boxed_slice(),
                }
            })
            .collect();
        Ok(TcpWorker {
            poll: Poll::new()?,
            addr,
            one_shot,
            size,
            timeout,
            window,
            slots,
            opened: 0,
            counts: Counts::default(),
            hist: new_histogram(),
        })
    }

    fn run(mut self) -> io::Result<WorkerReport> {
        let mut events = Events::with_capacity(1024);
        for i in 0..self.slots.len() {
            self.connect(i, Instant::now());
        }
        let mut next_sweep = Instant::now() + SWEEP;
        loop {
            let now = Instant::now();
            if now >= self.window.end {
                break;
            }
            let wait = SWEEP.min(self.window.end - now);
            if let Err(e) = self.poll.poll(&mut events, Some(wait)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for event in events.iter() {
                let (i, generation) = split_token(event.token());
                let Some(slot) = self.slots.get_mut(i) else {
                    continue;
                };
                if slot.generation != generation || slot.stream.is_none() {
                    continue; // an event for a connection already replaced
                }
                if event.is_readable() || event.is_read_closed() || event.is_error() {
                    slot.readable = true;
                }
                self.drive(i);
            }
            let now = Instant::now();
            if now >= next_sweep {
                next_sweep = now + SWEEP;
                self.sweep(now);
            }
        }
        self.drain(&mut events)?;
        Ok(WorkerReport {
            counts: self.counts,
            hist: self.hist,
        })
    }

    /// After the window: lets the requests in flight finish, so every
    /// connection closes with a clean FIN. (Closing a socket with an unread
    /// echo in it sends a reset, which a server rightly logs as an error.)
    /// Nothing here is counted, except errors.
    fn drain(&mut self, events: &mut Events) -> io::Result<()> {
        let now = Instant::now();
        let until = now + self.timeout.min(Duration::from_millis(500));
        for i in 0..self.slots.len() {
            let slot = &self.slots[i];
            if slot.phase != Phase::Active || slot.sent < self.size {
                self.close(i, now);
            }
        }
        loop {
            let now = Instant::now();
            if now >= until || self.slots.iter().all(|s| s.stream.is_none()) {
                break;
            }
            if let Err(e) = self.poll.poll(events, Some(SWEEP.min(until - now))) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for event in events.iter() {
                let (i, generation) = split_token(event.token());
                let Some(slot) = self.slots.get_mut(i) else {
                    continue;
                };
                if slot.generation == generation && slot.stream.is_some() {
                    slot.readable = true;
                    self.drive(i);
                }
            }
        }
        for i in 0..self.slots.len() {
            self.close(i, now);
        }
        Ok(())
    }

    /// Starts a non-blocking connect for slot `i`.
    fn connect(&mut self, i: usize, now: Instant) {
        let slot = &mut self.slots[i];
        slot.stream = None;
        slot.generation = slot.generation.wrapping_add(1) & 0xff_ffff;
        slot.readable = false;
        slot.started = now;
        slot.deadline = now + self.timeout;
        self.opened += 1;
        match open_stream(self.addr, self.opened) {
            Ok(mut stream) => {
                let t = token(i, slot.generation);
                match self.poll.registry().register(
                    &mut stream,
                    t,
                    Interest::READABLE | Interest::WRITABLE,
                ) {
                    Ok(()) => {
                        slot.stream = Some(stream);
                        slot.phase = Phase::Connecting;
                    }
                    Err(_) => self.fail(i, now),
                }
            }
            Err(_) => self.fail(i, now),
        }
    }

    /// Counts an I/O error on slot `i`, closes it, and schedules a reconnect.
    fn fail(&mut self, i: usize, now: Instant) {
        self.counts.io_errors += 1;
        self.close(i, now);
    }

    fn close(&mut self, i: usize, now: Instant) {
        let slot = &mut self.slots[i];
        if let Some(mut stream) = slot.stream.take() {
            let _ = self.poll.registry().deregister(&mut stream);
        }
        slot.phase = Phase::Backoff;
        slot.deadline = now + BACKOFF;
    }

    fn begin_request(&mut self, i: usize, now: Instant) {
        let slot = &mut self.slots[i];
        slot.seq += 1;
        stamp(&mut slot.out, slot.seq);
        slot.sent = 0;
        slot.got = 0;
        slot.started = now;
        slot.deadline = now + self.timeout;
        slot.phase = Phase::Active;
    }

    /// Makes as much progress on slot `i` as the socket allows without
    /// blocking.
    fn drive(&mut self, i: usize) {
        loop {
            let m = self.size;
            let slot = &mut self.slots[i];
            let Some(stream) = slot.stream.as_ref() else {
                return;
            };
            match slot.phase {
                Phase::Backoff => return,
                Phase::Connecting => {
                    // mio's recipe: an error, or not yet connected, or done.
                    match stream.take_error() {
                        Ok(None) => {}
                        Ok(Some(_)) | Err(_) => return self.fail(i, Instant::now()),
                    }
                    match stream.peer_addr() {
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                        Err(_) => return self.fail(i, Instant::now()),
                    }
                    if stream.set_nodelay(true).is_err() {
                        return self.fail(i, Instant::now());
                    }
                    self.counts.connects += 1;
                    if self.one_shot {
                        // The round trip's clock started at connect().
                        let started = slot.started;
                        self.begin_request(i, started);
                    } else {
                        self.begin_request(i, Instant::now());
                    }
                }
                Phase::Active => {
                    let mut stream_ref = stream;
                    let mut write_blocked = false;
                    while slot.sent < m {
                        match stream_ref.write(&slot.out[slot.sent..]) {
                            Ok(0) => return self.fail(i, Instant::now()),
                            Ok(n) => slot.sent += n,
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                write_blocked = true;
                                break;
                            }
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(_) => return self.fail(i, Instant::now()),
                        }
                    }
                    // Read when an edge said so, or when the write is stuck
                    // (a large request: the echo must be drained for the
                    // server to keep reading).
                    if slot.readable || write_blocked {
                        while slot.got < m {
                            match stream_ref.read(&mut slot.inp[slot.got..]) {
                                Ok(0) => return self.fail(i, Instant::now()),
                                Ok(n) => slot.got += n,
                                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                    slot.readable = false;
                                    break;
                                }
                                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                                Err(_) => return self.fail(i, Instant::now()),
                            }
                        }
                    }
                    if slot.got < m {
                        return; // wait for the next edge
                    }
                    // A whole echo. The server sends nothing unasked, so the
                    // socket is drained: the next reply raises a new edge.
                    slot.readable = false;
                    let now = Instant::now();
                    let ok = slot.inp == slot.out;
                    let started = slot.started;
                    if !ok {
                        self.counts.mismatches += 1;
                        self.close(i, now);
                        return;
                    }
                    if self.window.contains(now) {
                        self.counts.requests += 1;
                        let ns = (now - started).as_nanos().min(u64::MAX as u128) as u64;
                        self.hist.saturating_record(ns.max(1));
                    }
                    if now >= self.window.end {
                        self.close(i, now); // done: the drain is on
                        return;
                    }
                    if self.one_shot {
                        self.close(i, now);
                        self.connect(i, now);
                        return;
                    }
                    self.begin_request(i, now);
                }
            }
        }
    }

    /// Reconnects slots whose back-off is over; fails requests past their
    /// deadline.
    fn sweep(&mut self, now: Instant) {
        for i in 0..self.slots.len() {
            let slot = &self.slots[i];
            if now < slot.deadline {
                continue;
            }
            match slot.phase {
                Phase::Backoff => self.connect(i, now),
                Phase::Connecting | Phase::Active => {
                    self.counts.timeouts += 1;
                    self.close(i, now);
                }
            }
        }
    }
}

// ---------------------------------------------------------------- UDP ----

#[derive(Debug)]
struct UdpSlot {
    socket: UdpSocket,
    seq: u64,
    /// A datagram is out and its reply not yet back.
    waiting: bool,
    /// The last send hit `WouldBlock` (or failed) and must be retried.
    must_send: bool,
    started: Instant,
    deadline: Instant,
    out: Box<[u8]>,
    inp: Box<[u8]>,
}

struct UdpWorker {
    poll: Poll,
    size: usize,
    timeout: Duration,
    window: Window,
    slots: Vec<UdpSlot>,
    counts: Counts,
    hist: Histogram<u64>,
}

impl UdpWorker {
    fn new(
        addr: SocketAddr,
        clients: &[usize],
        size: usize,
        timeout: Duration,
        window: Window,
    ) -> io::Result<Self> {
        let poll = Poll::new()?;
        let now = Instant::now();
        let local: SocketAddr = if addr.is_ipv4() {
            "127.0.0.1:0".parse().expect("valid address")
        } else {
            "[::1]:0".parse().expect("valid address")
        };
        let mut slots = Vec::with_capacity(clients.len());
        for (i, &client) in clients.iter().enumerate() {
            let mut socket = UdpSocket::bind(local)?;
            socket.connect(addr)?;
            poll.registry().register(
                &mut socket,
                token(i, 0),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            let mut out = vec![0u8; size].into_boxed_slice();
            fill_pattern(&mut out, client);
            slots.push(UdpSlot {
                socket,
                seq: 0,
                waiting: false,
                must_send: true,
                started: now,
                deadline: now,
                out,
                // Room for one byte more than M, so a too-long reply shows.
                inp: vec![0u8; size + 1].into_boxed_slice(),
            });
        }
        Ok(UdpWorker {
            poll,
            size,
            timeout,
            window,
            slots,
            counts: Counts::default(),
            hist: new_histogram(),
        })
    }

    fn run(mut self) -> io::Result<WorkerReport> {
        let mut events = Events::with_capacity(1024);
        for i in 0..self.slots.len() {
            self.send_next(i, Instant::now());
        }
        let mut next_sweep = Instant::now() + SWEEP;
        loop {
            let now = Instant::now();
            if now >= self.window.end {
                break;
            }
            let wait = SWEEP.min(self.window.end - now);
            if let Err(e) = self.poll.poll(&mut events, Some(wait)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for event in events.iter() {
                let (i, _) = split_token(event.token());
                if i >= self.slots.len() {
                    continue;
                }
                if event.is_readable() {
                    self.receive(i);
                }
                if event.is_writable() && self.slots[i].must_send {
                    self.send_next(i, Instant::now());
                }
            }
            let now = Instant::now();
            if now >= next_sweep {
                next_sweep = now + SWEEP;
                self.sweep(now);
            }
        }
        Ok(WorkerReport {
            counts: self.counts,
            hist: self.hist,
        })
    }

    /// Sends slot `i`'s next datagram (or retries the one that could not go).
    fn send_next(&mut self, i: usize, now: Instant) {
        let slot = &mut self.slots[i];
        if !slot.must_send {
            slot.seq += 1;
            stamp(&mut slot.out, slot.seq);
        }
        match slot.socket.send(&slot.out) {
            Ok(n) if n == slot.out.len() => {
                slot.must_send = false;
                slot.waiting = true;
                slot.started = now;
                slot.deadline = now + self.timeout;
                if self.window.contains(now) {
                    self.counts.sent += 1;
                }
            }
            Ok(_) => {
                // A short datagram cannot happen for M <= 65507; count it.
                self.counts.io_errors += 1;
                slot.must_send = true;
                slot.deadline = now + BACKOFF;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                slot.must_send = true;
                slot.deadline = now + self.timeout;
            }
            Err(_) => {
                // E.g. ECONNREFUSED: an ICMP "port unreachable" came back.
                self.counts.io_errors += 1;
                slot.must_send = true;
                slot.deadline = now + BACKOFF;
            }
        }
    }

    fn receive(&mut self, i: usize) {
        let m = self.size;
        loop {
            let slot = &mut self.slots[i];
            let n = match slot.socket.recv(&mut slot.inp) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.counts.io_errors += 1;
                    continue;
                }
            };
            let now = Instant::now();
            let in_window = self.window.contains(now);
            if slot.waiting && n == m && slot.inp[..m] == *slot.out {
                slot.waiting = false;
                if in_window {
                    self.counts.received += 1;
                    self.counts.requests += 1;
                    let ns = (now - slot.started).as_nanos().min(u64::MAX as u128) as u64;
                    self.hist.saturating_record(ns.max(1));
                }
                self.send_next(i, now);
            } else if n == m && stamp_of(&slot.inp[..n]).is_some_and(|s| s < slot.seq) {
                // The reply to a datagram already counted as lost.
                if in_window {
                    self.counts.late += 1;
                }
            } else {
                self.counts.mismatches += 1;
            }
        }
    }

    fn sweep(&mut self, now: Instant) {
        for i in 0..self.slots.len() {
            let slot = &self.slots[i];
            if now < slot.deadline {
                continue;
            }
            if slot.waiting {
                self.slots[i].waiting = false;
                if self.window.contains(now) {
                    self.counts.lost += 1;
                }
                self.send_next(i, now);
            } else if slot.must_send {
                self.send_next(i, now);
            }
        }
    }
}

// ------------------------------------------------------- idle crowd ----

/// K connections opened before the run, probed once, then left silent.
#[derive(Debug)]
struct IdleCrowd {
    streams: Vec<StdTcpStream>,
    wanted: usize,
    /// How many echoed the opening probe.
    ready: usize,
}

impl IdleCrowd {
    fn open(addr: SocketAddr, k: usize, deadline: Instant) -> IdleCrowd {
        let mut streams = Vec::with_capacity(k);
        for _ in 0..k {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match StdTcpStream::connect_timeout(&addr, left) {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    streams.push(s);
                }
                Err(e) => {
                    eprintln!("loadgen: idle connection {}: {e}", streams.len());
                    break;
                }
            }
        }
        let mut crowd = IdleCrowd {
            streams,
            wanted: k,
            ready: 0,
        };
        crowd.ready = crowd.probe(deadline);
        crowd
    }

    /// Sends one byte on every connection and counts those that echo it
    /// before `deadline`.
    fn probe(&mut self, deadline: Instant) -> usize {
        let mut sent = vec![false; self.streams.len()];
        for (s, ok) in self.streams.iter_mut().zip(sent.iter_mut()) {
            *ok = s.write_all(b"i").is_ok();
        }
        let mut echoed = 0;
        for (s, ok) in self.streams.iter_mut().zip(sent) {
            if !ok {
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            // A zero timeout means "block forever" to set_read_timeout.
            let wait = left.max(Duration::from_millis(1));
            let mut b = [0u8; 1];
            if s.set_read_timeout(Some(wait)).is_ok() && matches!(s.read(&mut b), Ok(1)) {
                echoed += usize::from(b[0] == b'i');
            }
        }
        echoed
    }
}

// ------------------------------------------------------ CPU snapshots ----

/// CPU time and clock readings taken at one instant.
#[derive(Clone, Copy, Debug)]
struct Snapshot {
    /// The server's CPU ticks, its reaped children's, and its live
    /// descendants'.
    server_ticks: Option<u64>,
    /// Live descendants seen.
    server_children: usize,
    /// This process's user + system time.
    self_cpu: Duration,
    /// This process's user time alone.
    self_user: Duration,
    /// Machine-wide (busy, total) jiffies from /proc/stat.
    machine: Option<(u64, u64)>,
}

impl Snapshot {
    fn take(server_pid: Option<i32>) -> Snapshot {
        let (server_ticks, server_children) = match server_pid {
            Some(pid) => {
                let mut children = 0;
                let ticks = tree_ticks(pid, &mut children, 0);
                (ticks, children)
            }
            None => (None, 0),
        };
        let (self_user, self_sys) = self_cpu();
        Snapshot {
            server_ticks,
            server_children,
            self_cpu: self_user + self_sys,
            self_user,
            machine: machine_jiffies(),
        }
    }
}

/// utime + stime + cutime + cstime of `pid` (fields 14-17 of its stat).
fn stat_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces or
    // parentheses itself: count fields from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state), so field N is fields[N - 3].
    let sum = (14..=17)
        .map(|n| fields.get(n - 3)?.parse::<u64>().ok())
        .sum::<Option<u64>>()?;
    Some(sum)
}

/// The CPU ticks of `pid` and, recursively, of its live descendants.
fn tree_ticks(pid: i32, children: &mut usize, depth: usize) -> Option<u64> {
    let mut total = stat_ticks(pid)?;
    if depth > 8 {
        return Some(total);
    }
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Some(total);
    };
    for task in tasks.flatten() {
        let Ok(list) = std::fs::read_to_string(task.path().join("children")) else {
            continue;
        };
        for child in list
            .split_whitespace()
            .filter_map(|c| c.parse::<i32>().ok())
        {
            // A child that exited meanwhile is simply not there any more.
            if let Some(t) = tree_ticks(child, children, depth + 1) {
                *children += 1;
                total += t;
            }
        }
    }
    Some(total)
}

/// This process's (user, system) CPU time.
fn self_cpu() -> (Duration, Duration) {
    use nix::sys::resource::{UsageWho, getrusage};
    match getrusage(UsageWho::RUSAGE_SELF) {
        Ok(u) => {
            let tv = |t: nix::sys::time::TimeVal| {
                Duration::from_secs(t.tv_sec().max(0) as u64)
                    + Duration::from_micros(t.tv_usec().max(0) as u64)
            };
            (tv(u.user_time()), tv(u.system_time()))
        }
        Err(_) => (Duration::ZERO, Duration::ZERO),
    }
}

fn machine_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is
    // already inside user).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).unwrap_or(&0);
    Some((total - idle, total))
}

fn clock_ticks_per_sec() -> u64 {
    use nix::unistd::{SysconfVar, sysconf};
    match sysconf(SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => t as u64,
        _ => 100,
    }
}

/// Raises the soft open-files limit to fit `needed` descriptors, never
/// above the hard limit.
fn raise_nofile(needed: u64) -> io::Result<()> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft >= needed {
        return Ok(());
    }
    if needed > hard {
        return Err(io::Error::other(format!(
            "needs {needed} open files but the hard limit (ulimit -Hn) is {hard}"
        )));
    }
    setrlimit(Resource::RLIMIT_NOFILE, needed, hard)?;
    Ok(())
}

// ----------------------------------------------------------- report ----

#[derive(Debug)]
struct Report {
    mode: Mode,
    addr: SocketAddr,
    connections: usize,
    size: usize,
    threads: usize,
    duration: f64,
    warmup: f64,
    counts: Counts,
    hist: Histogram<u64>,
    idle: Option<(usize, usize, usize)>,
    server_pid: Option<i32>,
    server_cpu: Option<f64>,
    server_children: usize,
    loadgen_cpu: f64,
    loadgen_user_cpu: f64,
    machine_busy: Option<f64>,
    others_busy: Option<f64>,
}

impl Report {
    fn rps(&self) -> f64 {
        self.counts.requests as f64 / self.duration
    }

    fn pct_us(&self, q: f64) -> Option<f64> {
        (!self.hist.is_empty()).then(|| self.hist.value_at_quantile(q) as f64 / 1000.0)
    }

    fn per_req_us(&self, cpu: Option<f64>) -> Option<f64> {
        let cpu = cpu?;
        (self.counts.requests > 0).then(|| cpu * 1e6 / self.counts.requests as f64)
    }

    fn json(&self) -> String {
        fn num(v: Option<f64>) -> String {
            match v {
                Some(x) if x.is_finite() => format!("{x:.3}"),
                _ => "null".to_owned(),
            }
        }
        let c = &self.counts;
        let mut s = String::from("{");
        let _ = write!(
            s,
            "\"mode\":\"{}\",\"addr\":\"{}\",\"connections\":{},\"size\":{},\"threads\":{},\
             \"duration_s\":{},\"warmup_s\":{},\"requests\":{},\"rps\":{},\
             \"p50_us\":{},\"p90_us\":{},\"p99_us\":{},\"p999_us\":{},\"max_us\":{},\"mean_us\":{},\
             \"errors\":{},\"timeouts\":{},\"mismatches\":{},\"io_errors\":{},\"connects\":{},\
             \"sent\":{},\"received\":{},\"lost\":{},\"late\":{},",
            self.mode.name(),
            self.addr,
            self.connections,
            self.size,
            self.threads,
            self.duration,
            self.warmup,
            c.requests,
            num(Some(self.rps())),
            num(self.pct_us(0.5)),
            num(self.pct_us(0.9)),
            num(self.pct_us(0.99)),
            num(self.pct_us(0.999)),
            num((!self.hist.is_empty()).then(|| self.hist.max() as f64 / 1000.0)),
            num((!self.hist.is_empty()).then(|| self.hist.mean() / 1000.0)),
            c.errors(),
            c.timeouts,
            c.mismatches,
            c.io_errors,
            c.connects,
            c.sent,
            c.received,
            c.lost,
            c.late,
        );
        match self.idle {
            Some((wanted, ready, alive)) => {
                let _ = write!(
                    s,
                    "\"idle\":{wanted},\"idle_ready\":{ready},\"idle_alive_end\":{alive},"
                );
            }
            None => s.push_str("\"idle\":0,\"idle_ready\":null,\"idle_alive_end\":null,"),
        }
        let _ = write!(
            s,
            "\"server_pid\":{},\"server_children\":{},\"server_cpu_s\":{},\
             \"server_cpu_us_per_req\":{},\"loadgen_cpu_s\":{},\"loadgen_user_cpu_s\":{},\
             \"loadgen_cpu_us_per_req\":{},\"machine_busy_pct\":{},\"others_busy_pct\":{}}}",
            self.server_pid
                .map_or_else(|| "null".to_owned(), |p| p.to_string()),
            self.server_children,
            num(self.server_cpu),
            num(self.per_req_us(self.server_cpu)),
            num(Some(self.loadgen_cpu)),
            num(Some(self.loadgen_user_cpu)),
            num(self.per_req_us(Some(self.loadgen_cpu))),
            num(self.machine_busy),
            num(self.others_busy),
        );
        s
    }

    fn table(&self) -> String {
        fn us(v: Option<f64>) -> String {
            v.map_or_else(|| "-".to_owned(), |x| format!("{x:.1}"))
        }
        let c = &self.counts;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "loadgen {} -> {}   C={}  M={} B  threads={}  window {:.2} s after {:.2} s warm-up",
            self.mode.name(),
            self.addr,
            self.connections,
            self.size,
            self.threads,
            self.duration,
            self.warmup
        );
        let _ = writeln!(
            s,
            "  requests      {:>12}   {:>12.1} /s",
            c.requests,
            self.rps()
        );
        let _ = writeln!(
            s,
            "  latency us    p50 {}   p90 {}   p99 {}   p99.9 {}   max {}",
            us(self.pct_us(0.5)),
            us(self.pct_us(0.9)),
            us(self.pct_us(0.99)),
            us(self.pct_us(0.999)),
            us((!self.hist.is_empty()).then(|| self.hist.max() as f64 / 1000.0)),
        );
        let _ = writeln!(
            s,
            "  errors        {:>12}   (timeouts {}, wrong bytes {}, I/O {}; whole run)",
            c.errors(),
            c.timeouts,
            c.mismatches,
            c.io_errors
        );
        if self.mode == Mode::UdpRr {
            let _ = writeln!(
                s,
                "  datagrams     sent {}, received {}, lost {}, late {}",
                c.sent, c.received, c.lost, c.late
            );
        }
        if self.mode == Mode::TcpConnect {
            let _ = writeln!(s, "  connections   {:>12}   (whole run)", c.connects);
        }
        if let Some((wanted, ready, alive)) = self.idle {
            let _ = writeln!(
                s,
                "  idle crowd    {wanted} opened, {ready} served at start, {alive} still served at end"
            );
        }
        match (self.server_pid, self.server_cpu) {
            (Some(pid), Some(cpu)) => {
                let _ = writeln!(
                    s,
                    "  server CPU    {:>12.3} s {:>12} us/request   (pid {pid}, {} live children)",
                    cpu,
                    us(self.per_req_us(Some(cpu))),
                    self.server_children
                );
            }
            (Some(pid), None) => {
                let _ = writeln!(s, "  server CPU    unreadable (pid {pid} gone?)");
            }
            (None, _) => {
                let _ = writeln!(s, "  server CPU    (pass --server-pid)");
            }
        }
        let _ = writeln!(
            s,
            "  loadgen CPU   {:>12.3} s {:>12} us/request   ({:.3} s of it in user space)",
            self.loadgen_cpu,
            us(self.per_req_us(Some(self.loadgen_cpu))),
            self.loadgen_user_cpu
        );
        if let Some(busy) = self.machine_busy {
            let cores = thread::available_parallelism().map_or(1, |n| n.get());
            let _ = write!(s, "  machine busy  {busy:>12.1} % of {cores} cores");
            if let Some(others) = self.others_busy {
                let _ = write!(s, "   ({others:.1} % by other processes)");
            }
            s.push('\n');
        }
        s
    }
}

// ------------------------------------------------------------- main ----

fn resolve(addr: &str) -> io::Result<SocketAddr> {
    let addr = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::other(format!("{addr}: no address")))?;
    if !addr.ip().is_loopback() {
        return Err(io::Error::other(format!(
            "{addr} is not a loopback address: loadgen only aims at 127.0.0.0/8 or ::1"
        )));
    }
    Ok(addr)
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        thread::sleep(t - now);
    }
}

fn run(args: &Args) -> io::Result<Report> {
    if args.connections == 0 {
        return Err(io::Error::other("--connections must be at least 1"));
    }
    if args.size == 0 || (args.mode == Mode::UdpRr && args.size > 65_507) {
        return Err(io::Error::other(
            "--size must be at least 1 (and at most 65507 for UDP)",
        ));
    }
    if args.threads == 0 || args.threads > args.connections {
        return Err(io::Error::other(
            "--threads must be between 1 and --connections",
        ));
    }
    if !(args.duration > 0.0 && args.warmup >= 0.0) {
        return Err(io::Error::other(
            "--duration must be positive and --warmup not negative",
        ));
    }
    let addr = resolve(&args.addr)?;
    let idle_k = if args.mode == Mode::Idle {
        args.idle
    } else {
        0
    };
    raise_nofile((args.connections + idle_k + 64) as u64)?;
    let timeout = Duration::from_millis(args.timeout_ms.max(1));

    let crowd = (args.mode == Mode::Idle)
        .then(|| IdleCrowd::open(addr, idle_k, Instant::now() + IDLE_SETUP + timeout));
    if let Some(c) = crowd.as_ref().filter(|c| c.ready < c.wanted) {
        eprintln!(
            "loadgen: only {} of {} idle connections were served at start",
            c.ready, c.wanted
        );
    }

    let start = Instant::now() + Duration::from_secs_f64(args.warmup);
    let window = Window {
        start,
        end: start + Duration::from_secs_f64(args.duration),
    };
    let mut workers = Vec::with_capacity(args.threads);
    for t in 0..args.threads {
        let clients: Vec<usize> = (t..args.connections).step_by(args.threads).collect();
        let (mode, size) = (args.mode, args.size);
        let worker = move || -> io::Result<WorkerReport> {
            match mode {
                Mode::UdpRr => UdpWorker::new(addr, &clients, size, timeout, window)?.run(),
                Mode::TcpConnect => {
                    TcpWorker::new(addr, &clients, true, size, timeout, window)?.run()
                }
                Mode::TcpRr | Mode::Idle => {
                    TcpWorker::new(addr, &clients, false, size, timeout, window)?.run()
                }
            }
        };
        workers.push(
            thread::Builder::new()
                .name(format!("loadgen-{t}"))
                .spawn(worker)?,
        );
    }

    sleep_until(window.start);
    let before = Snapshot::take(args.server_pid);
    sleep_until(window.end);
    let after = Snapshot::take(args.server_pid);

    let mut counts = Counts::default();
    let mut hist = new_histogram();
    for w in workers {
        let report = w
            .join()
            .map_err(|_| io::Error::other("a load generator thread panicked"))??;
        counts.add(&report.counts);
        hist.add(&report.hist)
            .map_err(|e| io::Error::other(format!("merging histograms: {e:?}")))?;
    }

    let idle = crowd.map(|mut c| {
        let alive = c.probe(Instant::now() + timeout.max(Duration::from_secs(1)));
        (c.wanted, c.ready, alive)
    });

    let tck = clock_ticks_per_sec() as f64;
    let server_cpu = match (before.server_ticks, after.server_ticks) {
        (Some(b), Some(a)) => Some(a.saturating_sub(b) as f64 / tck),
        _ => None,
    };
    let loadgen_cpu = (after.self_cpu.saturating_sub(before.self_cpu)).as_secs_f64();
    // The machine's busy share, and the share neither the server nor this
    // process used: other processes (a build next door) disturbing the run.
    let (machine_busy, others_busy) = match (before.machine, after.machine) {
        (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => {
            let capacity = (t1 - t0) as f64 / tck;
            let busy = (b1 - b0) as f64 / tck;
            let others =
                server_cpu.map(|srv| (busy - srv - loadgen_cpu).max(0.0) * 100.0 / capacity);
            (Some(busy * 100.0 / capacity), others)
        }
        _ => (None, None),
    };
    Ok(Report {
        mode: args.mode,
        addr,
        connections: args.connections,
        size: args.size,
        threads: args.threads,
        duration: args.duration,
        warmup: args.warmup,
        counts,
        hist,
        idle,
        server_pid: args.server_pid,
        server_cpu,
        server_children: after.server_children,
        loadgen_cpu,
        loadgen_user_cpu: (after.self_user.saturating_sub(before.self_user)).as_secs_f64(),
        machine_busy,
        others_busy,
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(report) => {
            let mut out = io::stdout().lock();
            let _ = if args.json {
                writeln!(out, "{}", report.json())
            } else {
                write!(out, "{}", report.table())
            };
            if report.counts.requests > 0 {
                ExitCode::SUCCESS
            } else {
                eprintln!("loadgen: no request completed in the measured window");
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}
