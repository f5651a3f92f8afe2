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
//! eprintln!("stopped: {report}");
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
//! | (none)                               | [`Dispatch::Pool`]                              |
//! | `verify_request`, `handle_error`, `handle_timeout`, `service_actions` | [`Server::set_verify_request`], [`Server::set_handle_error`], [`Server::set_handle_timeout`], [`Server::set_service_actions`] |
//! | `serve_forever`, `handle_request`, `shutdown`, `server_close` | [`Server::serve_forever`], [`Server::handle_request`], [`ShutdownHandle::shutdown`], [`Server::server_close`] |
//!
//! # Lifecycle
//!
//! ```text
//! bind → serve_forever ─┬─ wait (one poll: socket + shutdown waker)
//!                       ├─ accept/recv → verify_request → dispatch
//!                       │     └─ setup → handle → finish → close ─(error/panic)→ handle_error
//!                       └─ service_actions
//! shutdown() → stop accepting → drain until the deadline → cut off the rest
//!            → join every thread → serve_forever returns a ShutdownReport
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
//!
//! # Shutting down
//!
//! A server is *running*, then *draining*, then *forced*:
//!
//! - [`ShutdownHandle::shutdown`] (from any thread, a handler, or a signal
//!   via [`Server::shutdown_on_signals`]) wakes the serving loop at once.
//!   It stops accepting and closes the listening socket, so new connections
//!   are refused rather than left in the backlog.
//! - While draining, requests already accepted — running or queued — finish
//!   normally. Handlers can see it: [`StreamRequest::is_shutting_down`].
//! - At the drain deadline ([`Server::set_drain_timeout`], 5 s by default),
//!   or at once on [`ShutdownHandle::force`] or a second Ctrl-C, every
//!   connection still open is shut down in both directions, so handlers
//!   blocked in `read` or `write` return; queued requests that never started
//!   are closed unserved.
//! - `serve_forever` returns once every worker thread has exited, with a
//!   [`ShutdownReport`]: how many requests drained, how many were forced.
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
//! `poll(2)`. On other targets the crate does not compile; `src/sys/mod.rs`
//! lists what a port must provide. Unix-domain servers are `cfg(unix)`.

#![deny(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(not(unix))]
compile_error!(
    "socketserver supports Unix platforms only for now: see src/sys/mod.rs for what a port must provide"
);

mod dispatch;
mod error;
mod handler;
mod net;
mod request;
mod server;
mod shutdown;
pub mod signal;
mod stats;
mod sys;

pub use dispatch::{Dispatch, Overflow, Pool, Threading};
pub use error::RequestError;
pub use handler::RequestHandler;
pub use net::{BindOptions, DEFAULT_REQUEST_QUEUE_SIZE, DatagramSocket, StreamSocket, Transport};
#[cfg(unix)]
pub use net::{UnixDatagramSocket, UnixListener};
pub use request::{
    DatagramRequest, SocketReader, SocketWriter, StreamRequest, TcpRequest, UdpRequest,
};
#[cfg(unix)]
pub use request::{UnixDatagramRequest, UnixStreamRequest};
pub use server::{
    DEFAULT_MAX_PACKET_SIZE, DEFAULT_RBUFSIZE, DEFAULT_WBUFSIZE, Server, TcpServer, UdpServer,
};
#[cfg(unix)]
pub use server::{UnixDatagramServer, UnixStreamServer};
pub use shutdown::{ShutdownHandle, ShutdownReport, ShutdownToken};
pub use stats::{Stats, StatsSnapshot};
