//! Multi-client network servers the way Python's [`socketserver`] module
//! writes them — a request handler, a transport, a dispatch strategy,
//! `serve_forever` — with blocking, easy-to-read handler code and no async
//! runtime. And then better: a bounded worker pool with a real overflow
//! policy, shutdown that wakes at once and drains in-flight work with a
//! deadline, isolated panics, and counters you can read while it runs.
//!
//! [`socketserver`]: https://docs.python.org/3/library/socketserver.html
//!
//! # Quick start
//!
//! An echo server:
//!
//! ```no_run
//! use socketserver::{Dispatch, TcpRequest, TcpServer};
//!
//! let mut server = TcpServer::bind("127.0.0.1:9999", |req: &mut TcpRequest| {
//!     std::io::copy(&mut req.rfile, &mut req.wfile)?;
//!     Ok(())
//! })?;
//! server.set_dispatch(Dispatch::pool(8));
//! server.shutdown_on_signals()?; // Ctrl-C / SIGTERM: drain, then return
//! let report = server.serve_forever()?;
//! log::info!("stopped: {report}");
//! # std::io::Result::Ok(())
//! ```
//!
//! # The three axes
//!
//! As in Python, a server is a combination of three independent choices.
//!
//! 1. **Transport** — how requests arrive. [`TcpServer`] (IPv4 and IPv6)
//!    and [`UnixStreamServer`] accept connections: one connection is one
//!    [`StreamRequest`], with buffered `rfile`/`wfile`. [`UdpServer`] and
//!    [`UnixDatagramServer`] receive datagrams: one datagram is one
//!    [`DatagramRequest`], whose `wfile` is sent back as one reply.
//! 2. **Handler** — what to do with a request: a [`RequestHandler`] with
//!    `setup` / `handle` / `finish`, or just a closure.
//! 3. **Dispatch** — how many requests run at once, and where: the
//!    [`Dispatch`] strategies, Python's mixins.
//!
//! | Python                               | here                                            |
//! |--------------------------------------|-------------------------------------------------|
//! | `TCPServer`, `UDPServer`             | [`TcpServer`], [`UdpServer`]                    |
//! | `UnixStreamServer`, `UnixDatagramServer` | [`UnixStreamServer`], [`UnixDatagramServer`] |
//! | `BaseRequestHandler`                 | [`RequestHandler`] (or a closure)               |
//! | `StreamRequestHandler.rfile/wfile`   | [`StreamRequest::rfile`], [`StreamRequest::wfile`] |
//! | `DatagramRequestHandler`             | [`DatagramRequest`]                             |
//! | `ThreadingMixIn`                     | [`Dispatch::Threading`]                         |
//! | `ThreadingTCPServer`, `ForkingUDPServer`, ... | [`python::ThreadingTcpServer`], [`python::ForkingUdpServer`], ... |
//! | (none)                               | [`Dispatch::Pool`]                              |
//! | `ForkingMixIn` (`max_children`)      | [`Dispatch::Forking`] ([`Forking::max_children`]) |
//! | (none; gunicorn, Unicorn)            | [`Dispatch::Prefork`]                           |
//! | `verify_request`, `handle_error`, `handle_timeout`, `service_actions` | [`Server::set_verify_request`], [`Server::set_handle_error`], [`Server::set_handle_timeout`], [`Server::set_service_actions`] |
//! | `serve_forever`, `handle_request`, `shutdown`, `server_close` | [`Server::serve_forever`], [`Server::handle_request`], [`ShutdownHandle::shutdown`], [`Server::server_close`] |
//!
//! # Transports
//!
//! Python's four transports, each served by every dispatch strategy:
//!
//! | transport                | server                   | one request is   | the handler gets          |
//! |--------------------------|--------------------------|------------------|---------------------------|
//! | TCP, IPv4 and IPv6       | [`TcpServer`]            | a connection     | [`TcpRequest`]            |
//! | UDP, IPv4 and IPv6       | [`UdpServer`]            | a datagram       | [`UdpRequest`]            |
//! | Unix stream (`cfg(unix)`)   | [`UnixStreamServer`]   | a connection     | [`UnixStreamRequest`]     |
//! | Unix datagram (`cfg(unix)`) | [`UnixDatagramServer`] | a datagram       | [`UnixDatagramRequest`]   |
//!
//! **TCP** binds any address `std` resolves, `"127.0.0.1:0"` or `"[::1]:0"`
//! alike; port 0 picks a free port, read back with
//! [`local_addr`](Server::local_addr). [`BindOptions`] sets the backlog,
//! `SO_REUSEPORT`, and `IPV6_V6ONLY`: `only_v6(false)` on `"[::]:0"` makes a
//! dual-stack listener that also accepts IPv4 clients (as v4-mapped
//! addresses).
//!
//! ```
//! use std::io::{Read, Write};
//! use socketserver::{TcpRequest, TcpServer};
//!
//! let mut server = TcpServer::bind("[::1]:0", |req: &mut TcpRequest| {
//!     std::io::copy(&mut req.rfile, &mut req.wfile).map(drop)
//! })?;
//! let mut client = std::net::TcpStream::connect(server.local_addr()?)?;
//! client.write_all(b"over IPv6")?;
//! client.shutdown(std::net::Shutdown::Write)?;
//! assert!(server.handle_request()?); // serves the one connection
//! let mut reply = Vec::new();
//! client.read_to_end(&mut reply)?;
//! assert_eq!(reply, b"over IPv6");
//! # std::io::Result::Ok(())
//! ```
//!
//! **UDP**: a [`DatagramRequest`] holds the packet
//! ([`packet`](DatagramRequest::packet), or `rfile`), the sender
//! ([`peer_addr`](DatagramRequest::peer_addr)), and two ways to answer:
//! `wfile`, sent back as *one* datagram after `finish` (Python's
//! `DatagramRequestHandler`), or [`reply`](DatagramRequest::reply), as many
//! datagrams as the handler likes. With [`Dispatch::Pool`] and
//! [`Dispatch::Threading`] the serving thread goes on receiving while
//! handlers run, and every reply leaves through the server's one socket (no
//! socket per packet). A datagram larger than the
//! [`max_packet_size`](Server::set_max_packet_size) (8192 bytes by default)
//! is never handed on truncated: it is dropped, counted in
//! [`StatsSnapshot::oversize`], and reported to `handle_error` as
//! [`RequestError::Oversize`].
//!
//! ```
//! use std::io::Write;
//! use socketserver::{Dispatch, UdpRequest, UdpServer};
//!
//! let mut server = UdpServer::bind("127.0.0.1:0", |req: &mut UdpRequest| {
//!     let upper = req.packet().to_ascii_uppercase();
//!     req.wfile.write_all(&upper) // sent to the peer after `finish`
//! })?;
//! server.set_dispatch(Dispatch::pool(4));
//! let addr = server.local_addr()?;
//! let stop = server.shutdown_handle();
//! let serving = std::thread::spawn(move || server.serve_forever());
//!
//! let client = std::net::UdpSocket::bind("127.0.0.1:0")?;
//! client.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
//! client.send_to(b"shout", addr)?;
//! let mut buf = [0; 64];
//! let (n, from) = client.recv_from(&mut buf)?;
//! assert_eq!((&buf[..n], from), (&b"SHOUT"[..], addr));
//!
//! stop.shutdown();
//! serving.join().unwrap()?;
//! # std::io::Result::Ok(())
//! ```
//!
//! **Unix stream** and **Unix datagram** servers bind a filesystem path.
//! A stale socket file, left by a server that died, is replaced; a path
//! where a live server answers is an `AddrInUse` error (its socket is never
//! stolen), and so is a path holding anything that is not a socket (it is
//! left alone). The file is removed when the server is closed or dropped.
//!
//! ```
//! use std::io::{Read, Write};
//! use std::os::unix::net::UnixStream;
//! use socketserver::{UnixStreamRequest, UnixStreamServer};
//!
//! let path = std::env::temp_dir().join(format!("socketserver-doc-stream-{}.sock", std::process::id()));
//! let mut server = UnixStreamServer::bind(&path, |req: &mut UnixStreamRequest| {
//!     std::io::copy(&mut req.rfile, &mut req.wfile).map(drop)
//! })?;
//! let mut client = UnixStream::connect(&path)?;
//! client.write_all(b"local")?;
//! client.shutdown(std::net::Shutdown::Write)?;
//! assert!(server.handle_request()?);
//! let mut reply = Vec::new();
//! client.read_to_end(&mut reply)?;
//! assert_eq!(reply, b"local");
//!
//! drop(server);
//! assert!(!path.exists()); // the socket file goes with the server
//! # std::io::Result::Ok(())
//! ```
//!
//! A Unix datagram client must bind a path of its own to be answered. One
//! that did not has no address: its datagram is still handled, but a reply
//! fails with `NotConnected` ("peer has no address").
//!
//! ```
//! use std::os::unix::net::UnixDatagram;
//! use socketserver::{UnixDatagramRequest, UnixDatagramServer};
//!
//! let dir = std::env::temp_dir().join(format!("socketserver-doc-dgram-{}", std::process::id()));
//! std::fs::create_dir_all(&dir)?;
//! let (server_path, client_path) = (dir.join("server.sock"), dir.join("client.sock"));
//! let mut server = UnixDatagramServer::bind(&server_path, |req: &mut UnixDatagramRequest| {
//!     let reversed: Vec<u8> = req.packet().iter().rev().copied().collect();
//!     req.reply(&reversed).map(drop) // or write it to `wfile`
//! })?;
//! let client = UnixDatagram::bind(&client_path)?;
//! client.send_to(b"stressed", &server_path)?;
//! assert!(server.handle_request()?);
//! let mut buf = [0; 64];
//! let n = client.recv(&mut buf)?;
//! assert_eq!(&buf[..n], b"desserts");
//!
//! drop((server, client));
//! std::fs::remove_dir_all(&dir)?;
//! # std::io::Result::Ok(())
//! ```
//!
//! # Lifecycle
//!
//! ```text
//! bind → serve_forever ─┬─ wait (one poll: socket + shutdown waker)
//!                       ├─ accept/recv → verify_request → dispatch
//!                       │     └─ setup → handle → finish → close ─(error/panic)→ handle_error
//!                       └─ service_actions
//! shutdown() → stop accepting → drain until the deadline → cut off the rest
//!            → join every thread, reap every child → serve_forever returns
//!              a ShutdownReport
//! ```
//!
//! The full lifecycle, with each step's reasons, is at the top of
//! `src/server.rs`.
//!
//! # Which dispatch strategy?
//!
//! - **[`Dispatch::Sync`]** (the default): one request at a time on the
//!   serving thread. For tests, tools, and protocols whose requests take
//!   microseconds — and a UDP server, where it is usually the fastest.
//! - **[`Dispatch::Pool`]**: the production choice for short requests and
//!   short connections. N threads started once, a bounded queue, and an
//!   explicit [`Overflow`] policy: memory and thread count stay flat however
//!   hard clients push. Each worker holds a connection for the connection's
//!   whole life, so size the pool for the number of *simultaneous*
//!   connections you serve.
//! - **[`Dispatch::Threading`]**: a thread per request, as Python's
//!   `ThreadingMixIn`. Simple and unbounded; give it a
//!   [`Threading::max_threads`] cap in production.
//! - **[`Dispatch::Reactor`]** (Linux): for long-lived connections that are
//!   mostly idle — chat, device gateways, keep-alive protocols. The handler
//!   is a [`MessageHandler`] called only when a connection has data; idle
//!   connections wait in an epoll poller and hold no thread, so a few
//!   workers serve thousands of clients. See *Long-lived connections*.
//! - **[`Dispatch::Forking`]**: a child process per request, as Python's
//!   `ForkingMixIn`, at most [`Forking::max_children`] at once. Choose it
//!   when a request must not be able to hurt the server: a handler that may
//!   segfault, abort, leak or scribble over memory (native code behind FFI,
//!   a parser you do not trust), or one that changes process-wide state
//!   (user id, resource limits, working directory) for its own request.
//!   The crash, the leak and the state die with the child. The price is a
//!   `fork` and an exit per request, and a parent that must run only its
//!   serving thread (see the fork-safety rules on [`Forking`]).
//!   Not for high request rates.
//! - **[`Dispatch::Prefork`]**: P supervised worker processes accepting on
//!   one listening socket (gunicorn and Unicorn; Python has no mixin for
//!   it), each running sync, a pool or (Linux) a reactor. Choose it to use
//!   every core without sharing a lock or an allocator between them, and to
//!   survive a worker's crash — the supervisor replaces it — without paying
//!   a fork per request.
//!   Workers share no memory: caches are per process, and the counters live
//!   in each worker.
//!
//! In short: **pool** for throughput in one process, **reactor** for many
//! idle connections, **prefork** for throughput across cores with crash
//! containment per worker, **forking** for isolation of every single
//! request.
//!
//! # Long-lived connections
//!
//! With a [`RequestHandler`], a connection's handler runs for the
//! connection's whole life: in a pool of 8 workers, the 9th chat client
//! waits, and 100 clients that connect and say nothing starve everyone.
//! Message mode removes that limit:
//!
//! ```no_run
//! use std::io::{self, BufRead, Write};
//! use std::net::TcpStream;
//! use std::time::Duration;
//! use socketserver::{Action, Connection, MessageHandler, Messages, Reactor, TcpServer};
//!
//! struct Upper;
//!
//! impl MessageHandler<TcpStream> for Upper {
//!     type State = ();
//!     fn connect(&self, conn: &mut Connection<TcpStream>) -> io::Result<()> {
//!         conn.wfile.write_all(b"hello\n")
//!     }
//!     fn ready(&self, conn: &mut Connection<TcpStream>, _: &mut ()) -> io::Result<Action> {
//!         loop {
//!             let mut line = String::new();
//!             if conn.rfile.read_line(&mut line)? == 0 {
//!                 return Ok(Action::Close);
//!             }
//!             conn.wfile.write_all(line.to_uppercase().as_bytes())?;
//!             if !conn.has_buffered_data() {
//!                 return Ok(Action::Keep); // park until more arrives
//!             }
//!         }
//!     }
//! }
//!
//! let mut server = TcpServer::bind("127.0.0.1:7777", Messages(Upper))?;
//! server.set_dispatch(
//!     Reactor::new(4)
//!         .idle_timeout(Some(Duration::from_secs(600)))
//!         .read_timeout(Duration::from_secs(5))
//!         .max_connections(Some(50_000)),
//! );
//! server.serve_forever()?;
//! # io::Result::Ok(())
//! ```
//!
//! - **When the handler runs.** [`MessageHandler::connect`] once per
//!   connection (it may write a greeting), [`MessageHandler::ready`] each
//!   time data has arrived, [`MessageHandler::shutting_down`] once when the
//!   server begins to stop, [`MessageHandler::disconnect`] once at the end,
//!   with a [`CloseReason`]. Per-connection state is the handler's
//!   `State`; `rfile` keeps its buffer between calls.
//! - **Reading.** `ready` should handle the complete messages available and
//!   return [`Action::Keep`] once [`Connection::has_buffered_data`] is
//!   false. A read that needs more bytes waits for them — inside a message
//!   only, and only until the read timeout ([`Reactor::read_timeout`], 10 s
//!   by default). A client that trickles a message byte by byte is cut off
//!   at that deadline ([`CloseReason::ReadTimeout`]) and cannot hold a
//!   worker longer.
//! - **Idle connections** are closed after [`Reactor::idle_timeout`] (5 min
//!   by default) without data, and the handler is told
//!   ([`CloseReason::IdleTimeout`]).
//! - **Writing** never blocks a worker: what the socket cannot take at once
//!   is queued and sent as the peer reads. Other threads write to a
//!   connection through its [`ConnWriter`] (`conn.writer()`), e.g. a chat
//!   broadcast. A peer that lets more than [`Reactor::max_outbound`] (1 MiB)
//!   pile up is disconnected as a slow consumer; while its own replies are
//!   queued past 64 KiB, its input is not read (TCP backpressure).
//! - **Limits.** [`Reactor::max_connections`] caps open connections, with the
//!   pool's [`Overflow`] policy: block accepting, or reject (counted, with
//!   the server's busy hook).
//! - **How it works.** Every worker waits in the same epoll instance; each
//!   connection is armed one-shot, so exactly one worker learns it is ready
//!   and serves it there — no dispatcher thread, no hand-off per message.
//!   See `src/dispatch/reactor.rs`.
//!
//! # Shutting down
//!
//! Python's `socketserver` either abandons in-flight requests at shutdown or,
//! with `block_on_close`, waits forever on a client that never hangs up.
//! Here a stopping server *drains with a deadline*. It goes through four
//! states:
//!
//! ```text
//! running
//!   │  shutdown(), or a signal
//!   ▼
//! draining    stop accepting; accepted and queued requests run on
//!   │  the drain deadline, force(), or a second signal
//!   ▼
//! forced      open connections are cut; requests never started are closed
//!   │  every thread has returned (or is abandoned after the grace)
//!   ▼
//! finished    serve_forever returns a ShutdownReport
//! ```
//!
//! - **Running → draining.** [`ShutdownHandle::shutdown`] — from any thread,
//!   from inside a handler, or from a signal — returns at once and never
//!   waits for the server. The listening socket stops accepting
//!   immediately, so new connections are refused instead of waiting in the
//!   backlog (see *Platform-specific behavior* below), and the serving loop
//!   is woken through a descriptor, not by polling a flag.
//! - **Draining.** Requests already accepted run to completion: those
//!   running, and those still waiting — in a pool's queue, for a free worker
//!   or for a thread slot — which are started as room appears. Datagrams
//!   already received are handled too. Handlers can tell:
//!   [`StreamRequest::is_shutting_down`] (and
//!   [`DatagramRequest::is_shutting_down`]), or the [`ShutdownToken`] from
//!   `shutdown_token()`, which also gives the deadline and can block a
//!   helper thread ([`ShutdownToken::wait`], [`ShutdownToken::wait_forced`]).
//!   A long-lived handler (a chat session, a feed) should finish the message
//!   in hand and say goodbye. A message-mode handler on the keep-alive
//!   reactor hears it once through [`MessageHandler::shutting_down`], even
//!   while its connection is parked.
//! - **Forced.** At the drain deadline — [`Server::set_drain_timeout`], by
//!   default 5 s after shutdown began — or at once on
//!   [`ShutdownHandle::force`] or a second signal, every connection still
//!   open is shut down for reading: a handler blocked in `read` gets
//!   end-of-file, and, seeing [`ShutdownToken::is_forced`], can still write
//!   a last message where its protocol has one. A connection whose send
//!   buffer is full (its handler is blocked writing to a client that does
//!   not read) is shut down both ways at once, and half-way through the
//!   drain grace ([`Server::set_drain_grace`], by default 0.5 s) everything
//!   still open is. Requests accepted but never started are closed
//!   unserved. A datagram handler has no connection to cut: if it may run
//!   long, it should check [`ShutdownToken::is_forced`].
//! - **Finished.** Every worker and request thread the server started has
//!   been joined, and every descriptor it opened is closed — listener,
//!   connections, its wake-up socket pair — even while [`ShutdownHandle`]s
//!   live on. A handler that ignores both its closed socket and the token,
//!   still running when the drain grace has passed after the cut, is
//!   abandoned: its thread is detached, logged and counted in
//!   [`ShutdownReport::abandoned`]. So `serve_forever` returns at most the
//!   drain timeout plus the grace after shutdown began — except with
//!   [`Dispatch::Sync`], where the serving thread *is* the handler.
//! - **Processes.** With [`Dispatch::Forking`] the requests are child
//!   processes: the drain waits for them, at the deadline they get SIGTERM,
//!   SIGKILL once the grace has passed, and every child is reaped before
//!   `serve_forever` returns. A [`Dispatch::Prefork`] supervisor forwards
//!   the shutdown to every worker as SIGTERM, each worker drains as above,
//!   and the supervisor reaps them all.
//!
//! `serve_forever` then returns a [`ShutdownReport`] for the caller to log:
//! requests that finished during the drain (`drained`), requests cut off or
//! discarded at the deadline (`forced`), threads `abandoned`, and how long
//! the drain took. Closing or dropping a server that was not shut down
//! drains it the same way.
//!
//! A handler that says goodbye, between messages or when the deadline cuts
//! a wait for the next one short:
//!
//! ```
//! use std::io::{self, BufRead, Write};
//! use socketserver::TcpRequest;
//!
//! fn chat(req: &mut TcpRequest) -> io::Result<()> {
//!     let mut line = String::new();
//!     loop {
//!         line.clear();
//!         if req.rfile.read_line(&mut line)? == 0 {
//!             if req.shutdown_token().is_forced() {
//!                 req.wfile.write_all(b"* server shutting down\n")?;
//!             }
//!             return Ok(()); // the client left, or the deadline passed
//!         }
//!         req.wfile.write_all(line.as_bytes())?;
//!         if req.is_shutting_down() {
//!             return req.wfile.write_all(b"* server shutting down\n");
//!         }
//!     }
//! }
//! # let _ = chat;
//! ```
//!
//! ## Signals
//!
//! [`Server::shutdown_on_signals`] wires SIGINT (Ctrl-C), SIGTERM and SIGHUP
//! to all of this in one call, through the `ctrlc` crate. `ctrlc` allows one
//! handler per process, so [`signal`] installs it once and fans each signal
//! out to every registered server: the first signal begins a graceful
//! shutdown, a second ends the drain at once, and a signal that finds no
//! server left to stop exits the process with status 130. Signals are
//! handled on a thread `ctrlc` starts, which lives as long as the process.
//! Under systemd or Kubernetes (SIGTERM, then SIGKILL after a grace period),
//! keep the drain timeout plus the drain grace below that period.
//!
//! ## Platform-specific behavior
//!
//! On Linux the listener is shut down by the thread that calls `shutdown`,
//! so new connections are refused at once even while a `Sync` server's one
//! thread is busy in a handler (and TCP connections still in the backlog
//! are reset). Elsewhere the listener stops when the serving loop closes
//! it: at once, except with `Sync` dispatch while a handler runs, when new
//! connections wait in the backlog until the drain ends and are then reset.
//! A listener passed in with `from_listener` (inherited from systemd, or
//! shared with other processes) and a forked child's copy are never shut
//! down early, only closed: `shutdown(2)` would stop the socket for every
//! process sharing it.
//!
//! # Errors and panics
//!
//! A handler's error or panic ends only its own request: it is reported to
//! `handle_error` (by default logged with the peer address), counted in
//! [`Stats`], and the server goes on — a pool keeps all its workers. The
//! library itself never prints; it logs through the [`log`] crate. (A caught
//! panic is still printed by Rust's panic hook, which belongs to the
//! application; install your own with `std::panic::set_hook` to route it.)
//!
//! # Platform support
//!
//! Unix only (Linux, the BSDs, macOS): the serving loop waits with
//! `poll(2)`; forking and prefork dispatch use `fork(2)` and `SIGCHLD`
//! (prefork workers follow a dead supervisor on Linux only, through
//! `PR_SET_PDEATHSIG`). On other targets the crate does not compile;
//! `src/sys/mod.rs` lists what a port must provide. Unix-domain servers are `cfg(unix)`.

#![deny(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(not(unix))]
compile_error!(
    "socketserver supports Unix platforms only for now: see src/sys/mod.rs for what a port must provide"
);

mod connection;
mod dispatch;
mod error;
mod handler;
mod net;
pub mod python;
mod request;
mod server;
mod shutdown;
pub mod signal;
mod stats;
mod sys;

pub use connection::{ConnReader, ConnWriter, Connection};
#[cfg(any(target_os = "linux", target_os = "android"))]
pub use dispatch::Reactor;
pub use dispatch::{Dispatch, Overflow, Pool, Threading};
#[cfg(unix)]
pub use dispatch::{Forking, Prefork};
pub use error::RequestError;
pub use handler::{Action, CloseReason, MessageHandler, Messages, RequestHandler};
pub use net::{BindOptions, DEFAULT_REQUEST_QUEUE_SIZE, DatagramSocket, StreamSocket, Transport};
#[cfg(unix)]
pub use net::{UnixDatagramSocket, UnixListener};
pub use request::{
    DatagramRequest, SocketReader, SocketWriter, StreamRequest, TcpRequest, UdpRequest,
};
#[cfg(unix)]
pub use request::{UnixDatagramRequest, UnixStreamRequest};
pub use server::{
    DEFAULT_MAX_PACKET_SIZE, DEFAULT_RBUFSIZE, DEFAULT_WBUFSIZE, Server, Service, TcpServer,
    UdpServer,
};
#[cfg(unix)]
pub use server::{UnixDatagramServer, UnixStreamServer};
pub use shutdown::{ShutdownHandle, ShutdownReport, ShutdownToken};
pub use stats::{Stats, StatsSnapshot};
