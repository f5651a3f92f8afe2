//! The server: one generic type, [`Server<T, H>`], for every transport `T`
//! and handler `H`, with the serving loop of Python's `BaseServer`.
//!
//! ```text
//! bind ─────────────── server_bind + server_activate: socket options,
//!   │                  bind, listen (backlog); port 0 → local_addr()
//!   ▼
//! serve_forever() ──┐  or handle_request() (optional timeout → handle_timeout)
//!   │  loop:        │
//!   │   wait ───────┤  one poll(2) on the socket and the shutdown waker:
//!   │               │  no periodic wake-up (Python polls every 0.5 s)
//!   │   take request   accept(2) / recvfrom(2), non-blocking, in batches;
//!   │               │  transient errors (EMFILE, ECONNABORTED, ...) are
//!   │               │  logged, backed off and survived
//!   │   verify_request ──false──▶ close, count `denied`
//!   │   dispatch ───┤  Sync: run here · Threading: new thread ·
//!   │               │  Pool: bounded queue → worker (Overflow: block | reject)
//!   │     └─▶ setup → handle → finish → close (flush wfile / send reply,
//!   │               │  shut the connection down)
//!   │         └─ error or panic ─▶ handle_error (default: log with peer)
//!   │   service_actions   after each batch (and every service_interval)
//!   ▼               │
//! shutdown() ───────┘  from any thread, even a handler: wakes the loop
//!   │
//!   ▼
//! drain ─────────────  stop accepting (listener shut down by the caller on
//!   │                  Linux, else closed: new connects are refused);
//!   │                  queued and running requests finish until the drain
//!   │                  deadline; then live connections are cut (read side,
//!   │                  then both) and unstarted requests closed; every
//!   │                  thread is joined or, past the grace, abandoned
//!   ▼
//! server_close() / Drop ── the socket is released (Unix: file removed)
//! ```
//!
//! This module owns the loop and the request lifecycle around the handler;
//! transports (`net/`) know sockets, dispatchers (`dispatch/`) know threads.

use std::fmt;
use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::dispatch::{Dispatch, Dispatcher, Outcome, Work};
use crate::error::RequestError;
use crate::handler::RequestHandler;
use crate::net::{BusyHook, Next, Transport, sealed};
use crate::shutdown::{ShutdownHandle, ShutdownReport, ShutdownState, StopAccepting};
use crate::stats::Stats;
use crate::sys::{self, AcceptErrorKind, Ready, ReadyOr};

/// By default `rfile` buffers 8 KiB (Python's `rbufsize = -1`: the default
/// buffer size).
pub const DEFAULT_RBUFSIZE: usize = 8 * 1024;
/// By default `wfile` is unbuffered (Python's `wbufsize = 0`).
pub const DEFAULT_WBUFSIZE: usize = 0;
/// By default a datagram may be 8192 bytes (Python's `max_packet_size`).
pub const DEFAULT_MAX_PACKET_SIZE: usize = 8192;

/// How many requests the serving loop takes in one go before it runs
/// `service_actions` and looks at the shutdown flag's waker again.
const ACCEPT_BATCH: usize = 128;
/// Back-off after a resource-exhaustion accept error: 5 ms doubling to 1 s
/// (the schedule Go's net/http uses).
const BACKOFF_MIN: Duration = Duration::from_millis(5);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Server settings that requests read: fixed once serving starts.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) dispatch: Dispatch,
    pub(crate) rbufsize: usize,
    pub(crate) wbufsize: usize,
    pub(crate) read_timeout: Option<Duration>,
    pub(crate) write_timeout: Option<Duration>,
    pub(crate) nodelay: bool,
    pub(crate) timeout: Option<Duration>,
    pub(crate) service_interval: Option<Duration>,
    pub(crate) max_packet_size: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            dispatch: Dispatch::default(),
            rbufsize: DEFAULT_RBUFSIZE,
            wbufsize: DEFAULT_WBUFSIZE,
            read_timeout: None,
            write_timeout: None,
            nodelay: true,
            timeout: None,
            service_interval: None,
            max_packet_size: DEFAULT_MAX_PACKET_SIZE,
        }
    }
}

/// What transports and requests need from the server.
#[derive(Debug)]
pub struct Context {
    pub(crate) config: Config,
    pub(crate) state: Arc<ShutdownState>,
    pub(crate) stats: Stats,
}

type VerifyHook<A> = dyn Fn(&A) -> bool + Send + Sync;
type ErrorHook<A> = dyn Fn(&A, &RequestError) + Send + Sync;
type PlainHook = dyn Fn() + Send + Sync;

/// The server hooks of Python's `BaseServer`, as closures.
struct Hooks<A> {
    verify_request: Option<Box<VerifyHook<A>>>,
    handle_error: Option<Box<ErrorHook<A>>>,
    handle_timeout: Option<Box<PlainHook>>,
    service_actions: Option<Box<PlainHook>>,
    busy: Option<Box<BusyHook<A>>>,
}

impl<A> Default for Hooks<A> {
    fn default() -> Self {
        Hooks {
            verify_request: None,
            handle_error: None,
            handle_timeout: None,
            service_actions: None,
            busy: None,
        }
    }
}

/// Everything a worker needs: shared by the serving thread and workers.
pub struct Shared<T: sealed::Transport, H> {
    pub(crate) ctx: Context,
    pub(crate) handler: H,
    hooks: Hooks<T::Addr>,
}

impl<T: sealed::Transport, H> fmt::Debug for Shared<T, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("ctx", &self.ctx)
            .finish_non_exhaustive()
    }
}

impl<T: sealed::Transport, H> Shared<T, H> {
    pub(crate) fn report_error(&self, peer: &T::Addr, error: &RequestError) {
        match &self.hooks.handle_error {
            Some(hook) => {
                // A panicking error hook must not take a worker down with it.
                if catch_unwind(AssertUnwindSafe(|| hook(peer, error))).is_err() {
                    log::error!("handle_error hook panicked while reporting: {error}");
                }
            }
            None => log::error!("error handling request from {peer:?}: {error}"),
        }
    }
}

/// What a [`Server<T, H>`] can run as its handler `H`: any
/// [`RequestHandler`] of `T`'s request type (called once per request), or
/// [`Messages`]`(M)` for a [`MessageHandler`](crate::MessageHandler) `M`
/// (stream transports; served by [`Dispatch::Reactor`]). Implemented for
/// both; sealed.
///
/// [`Messages`]: crate::Messages
pub trait Service<T: Transport>: service::Service<T> {}

impl<T: Transport, H: service::Service<T>> Service<T> for H {}

pub(crate) mod service {
    use super::*;

    /// The internal side of [`Service`](super::Service).
    #[allow(
        unreachable_pub,
        reason = "sealed-trait pattern: public so it may bound a public trait, unnameable outside the crate"
    )]
    pub trait Service<T: sealed::Transport>: Send + Sync + Sized + 'static {
        /// Runs one job to completion.
        fn process(shared: &Shared<T, Self>, job: T::Job) -> io::Result<()>;

        /// The dispatch a server of this handler starts with.
        fn default_dispatch() -> Dispatch {
            Dispatch::Sync
        }

        /// Whether only a reactor can serve this handler.
        fn needs_reactor() -> bool {
            false
        }

        /// Starts a reactor for this handler.
        #[cfg(any(target_os = "linux", target_os = "android"))]
        fn start_reactor(
            shared: &Arc<Shared<T, Self>>,
            config: &crate::dispatch::Reactor,
        ) -> io::Result<Box<dyn crate::dispatch::reactor::ReactorDispatch<T::Job>>> {
            let _ = (shared, config);
            Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "Dispatch::Reactor serves message handlers: wrap a MessageHandler in Messages(..)",
            ))
        }
    }
}

/// setup → handle → finish → close, in Python's order: `finish` runs even
/// when `handle` failed; neither runs when `setup` failed.
fn process_request<T, H>(shared: &Shared<T, H>, job: T::Job) -> io::Result<()>
where
    T: sealed::Transport,
    H: RequestHandler<T::Request>,
{
    let handler = &shared.handler;
    let mut request = T::open(job, &shared.ctx)?;
    handler.setup(&mut request)?;
    let handled = handler.handle(&mut request);
    let finished = handler.finish(&mut request);
    let closed = T::close(request);
    handled.and(finished).and(closed)
}

/// Every request handler is a service of its transport. (One impl per
/// transport rather than one blanket impl, so that `Messages<M>` can be a
/// service of the stream transports too without the impls overlapping.)
macro_rules! request_handler_service {
    ($($(#[$cfg:meta])* $transport:ty),* $(,)?) => {
        $(
            $(#[$cfg])*
            impl<H> service::Service<$transport> for H
            where
                H: RequestHandler<<$transport as sealed::Transport>::Request>,
            {
                fn process(
                    shared: &Shared<$transport, H>,
                    job: <$transport as sealed::Transport>::Job,
                ) -> io::Result<()> {
                    process_request(shared, job)
                }
            }
        )*
    };
}

request_handler_service!(
    std::net::TcpListener,
    std::net::UdpSocket,
    #[cfg(unix)]
    crate::net::UnixListener,
    #[cfg(unix)]
    crate::net::UnixDatagramSocket,
);

impl<T, H> Work for Shared<T, H>
where
    T: sealed::Transport,
    H: service::Service<T>,
{
    type Job = T::Job;

    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn start_reactor(
        self: &Arc<Self>,
        config: &crate::dispatch::Reactor,
    ) -> io::Result<Box<dyn crate::dispatch::reactor::ReactorDispatch<T::Job>>> {
        H::start_reactor(self, config)
    }

    fn run(&self, job: T::Job) -> Outcome {
        let stats = &self.ctx.stats;
        let peer = T::job_peer(&job).clone();
        stats.inc_active();
        let outcome = catch_unwind(AssertUnwindSafe(|| H::process(self, job)));
        stats.dec_active();
        let error = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(RequestError::Io(e)),
            Err(payload) => Some(RequestError::from_panic(payload)),
        };
        let outcome = match error {
            None => {
                stats.inc_completed();
                Outcome::Completed
            }
            Some(error) => {
                stats.inc_errors();
                if error.is_panic() {
                    stats.inc_panics();
                }
                self.report_error(&peer, &error);
                if error.is_panic() {
                    Outcome::Panicked
                } else {
                    Outcome::Failed
                }
            }
        };
        let state = &self.ctx.state;
        if state.is_shutting_down() {
            if state.is_forced() {
                stats.inc_forced();
            } else {
                stats.inc_drained();
            }
        }
        outcome
    }

    fn peer(job: &T::Job) -> String {
        format!("{:?}", T::job_peer(job))
    }

    fn reject(&self, job: T::Job) {
        let stats = &self.ctx.stats;
        stats.inc_rejected();
        let rejected = stats.snapshot().rejected;
        // Under sustained overload every request is rejected: log the first
        // and then every thousandth, not each one.
        if rejected == 1 || rejected.is_multiple_of(1000) {
            log::warn!(
                "at capacity (queue or connection limit full): rejected request from {:?} ({rejected} rejected so far)",
                T::job_peer(&job)
            );
        }
        T::refuse(job, self.hooks.busy.as_deref());
    }

    fn discard(&self, job: T::Job) {
        self.ctx.stats.inc_forced();
        log::debug!(
            "drain deadline passed: closing unserved request from {:?}",
            T::job_peer(&job)
        );
        drop(job);
    }
}

/// A server: a transport `T`, a handler `H`, a dispatch strategy and hooks.
///
/// Use the aliases — [`TcpServer`], [`UdpServer`],
/// [`UnixStreamServer`](crate::UnixStreamServer),
/// [`UnixDatagramServer`](crate::UnixDatagramServer) — and their `bind`
/// constructors. Settings (`set_*`) are made before serving starts.
///
/// # Examples
///
/// ```
/// use std::io::{BufRead, Read, Write};
/// use socketserver::{Dispatch, TcpRequest, TcpServer};
///
/// let mut server = TcpServer::bind("127.0.0.1:0", |req: &mut TcpRequest| {
///     let mut line = String::new();
///     req.rfile.read_line(&mut line)?;
///     write!(req.wfile, "hello, {}", line.trim())?;
///     Ok(())
/// })?;
/// server.set_dispatch(Dispatch::pool(4));
/// let addr = server.local_addr()?;
/// let handle = server.shutdown_handle();
/// let serving = std::thread::spawn(move || server.serve_forever());
///
/// let mut conn = std::net::TcpStream::connect(addr)?;
/// conn.write_all(b"world\n")?;
/// let mut reply = String::new();
/// conn.read_to_string(&mut reply)?;
/// assert_eq!(reply, "hello, world");
///
/// handle.shutdown();
/// serving.join().unwrap()?;
/// # std::io::Result::Ok(())
/// ```
pub struct Server<T: Transport, H: Service<T>> {
    transport: Option<Arc<T>>,
    shared: Arc<Shared<T, H>>,
    dispatcher: Option<Dispatcher<Shared<T, H>>>,
    prepared: bool,
    scratch: Vec<u8>,
    backoff: Duration,
    report: Option<ShutdownReport>,
    /// The process that bound the listening socket itself, if this server
    /// did: only then may shutdown stop the socket early (an inherited
    /// listener may be shared with a supervisor, a forked child's with its
    /// parent, and `shutdown(2)` acts on the shared socket).
    listener_owner: Option<u32>,
}

/// A TCP server (Python's `TCPServer`), IPv4 or IPv6.
pub type TcpServer<H> = Server<std::net::TcpListener, H>;
/// A UDP server (Python's `UDPServer`), IPv4 or IPv6.
pub type UdpServer<H> = Server<std::net::UdpSocket, H>;
/// A Unix stream server (Python's `UnixStreamServer`).
#[cfg(unix)]
pub type UnixStreamServer<H> = Server<crate::net::UnixListener, H>;
/// A Unix datagram server (Python's `UnixDatagramServer`).
#[cfg(unix)]
pub type UnixDatagramServer<H> = Server<crate::net::UnixDatagramSocket, H>;

impl<T: Transport, H: Service<T>> fmt::Debug for Server<T, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field(
                "local_addr",
                &self.transport.as_ref().map(|t| t.local_addr()),
            )
            .field("config", &self.shared.ctx.config)
            .field("stats", &self.shared.ctx.stats.snapshot())
            .finish_non_exhaustive()
    }
}

impl<T, H> Server<T, H>
where
    T: Transport,
    H: Service<T>,
{
    pub(crate) fn new(transport: T, handler: H) -> io::Result<Self> {
        let state = ShutdownState::new()?;
        Ok(Server {
            transport: Some(Arc::new(transport)),
            shared: Arc::new(Shared {
                ctx: Context {
                    config: Config {
                        dispatch: H::default_dispatch(),
                        ..Config::default()
                    },
                    state,
                    stats: Stats::new(),
                },
                handler,
                hooks: Hooks::default(),
            }),
            dispatcher: None,
            prepared: false,
            scratch: Vec::new(),
            backoff: Duration::ZERO,
            report: None,
            listener_owner: None,
        })
    }

    /// A server on a socket it bound itself (not inherited).
    pub(crate) fn new_bound(transport: T, handler: H) -> io::Result<Self> {
        let mut server = Self::new(transport, handler)?;
        server.listener_owner = Some(std::process::id());
        Ok(server)
    }

    fn shared_mut(&mut self) -> &mut Shared<T, H> {
        Arc::get_mut(&mut self.shared)
            .expect("socketserver: settings cannot change once worker threads have started (configure the server before serving)")
    }

    /// The address the server is bound to — the real port when bound to
    /// port 0.
    ///
    /// # Errors
    ///
    /// Fails with `NotConnected` after the server has been closed.
    pub fn local_addr(&self) -> io::Result<T::Addr> {
        match &self.transport {
            Some(t) => t.local_addr(),
            None => Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "server is closed",
            )),
        }
    }

    /// A handle that stops the server from any thread. See
    /// [`ShutdownHandle`].
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle::new(Arc::clone(&self.shared.ctx.state))
    }

    /// The server's counters (a live, cloneable handle).
    pub fn stats(&self) -> Stats {
        self.shared.ctx.stats.clone()
    }

    /// Stops the server on Ctrl-C (SIGINT) or SIGTERM: the first signal
    /// begins a graceful shutdown, a second forces the end of the drain.
    /// Any number of servers in one process can register; one signal stops
    /// them all. See [`crate::signal`].
    ///
    /// # Errors
    ///
    /// Fails if another signal handler was already installed through the
    /// `ctrlc` crate outside this library.
    pub fn shutdown_on_signals(&self) -> io::Result<()> {
        crate::signal::register(&self.shutdown_handle())
    }

    /// Chooses how requests are run. By default [`Dispatch::Sync`].
    ///
    /// # Panics
    ///
    /// If worker threads have already been started by `serve_forever` or
    /// `handle_request`.
    pub fn set_dispatch(&mut self, dispatch: impl Into<Dispatch>) {
        self.shared_mut().ctx.config.dispatch = dispatch.into();
        if matches!(self.dispatcher, Some(Dispatcher::Sync)) {
            self.dispatcher = None;
        }
    }

    /// The size of `rfile`'s buffer (stream servers). By default 8 KiB.
    pub fn set_rbufsize(&mut self, size: usize) {
        self.shared_mut().ctx.config.rbufsize = size;
    }

    /// The size of `wfile`'s buffer (stream servers). By default 0:
    /// unbuffered, every write goes to the socket. With a buffer, flush it
    /// when a reply is complete; the server flushes it after `finish`.
    pub fn set_wbufsize(&mut self, size: usize) {
        self.shared_mut().ctx.config.wbufsize = size;
    }

    /// A read timeout applied to every accepted connection (Python's
    /// `StreamRequestHandler.timeout`). By default none.
    pub fn set_read_timeout(&mut self, timeout: Option<Duration>) {
        self.shared_mut().ctx.config.read_timeout = timeout;
    }

    /// A write timeout applied to every accepted connection, and the longest
    /// a datagram reply waits for room in the send buffer. By default none
    /// for connections, one second for datagram replies.
    pub fn set_write_timeout(&mut self, timeout: Option<Duration>) {
        self.shared_mut().ctx.config.write_timeout = timeout;
    }

    /// `TCP_NODELAY` on accepted TCP connections (Python's
    /// `disable_nagle_algorithm`). By default on: request/response protocols
    /// should not wait 40 ms for a delayed ACK.
    pub fn set_nodelay(&mut self, nodelay: bool) {
        self.shared_mut().ctx.config.nodelay = nodelay;
    }

    /// How long [`handle_request`](Self::handle_request) waits for a request
    /// before calling the `handle_timeout` hook (Python's `timeout`). By
    /// default it waits forever.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.shared_mut().ctx.config.timeout = timeout;
    }

    /// How long a graceful shutdown waits for in-flight requests before
    /// cutting their connections off. By default 5 seconds. See "Shutting
    /// down" in the [crate docs](crate).
    pub fn set_drain_timeout(&mut self, timeout: Duration) {
        self.shared.ctx.state.set_drain_timeout(timeout);
    }

    /// How long handlers get, once the drain deadline has cut their
    /// connections off, to return before their threads are left behind
    /// (counted in [`ShutdownReport::abandoned`]). For the first half only
    /// the read side is shut, so a handler woken from `read` can still say
    /// goodbye; then both sides are. By default half a second: a stopping
    /// server returns at most the drain timeout plus this after shutdown
    /// begins (except with `Sync` dispatch, where the serving thread *is*
    /// the handler and must return).
    pub fn set_drain_grace(&mut self, grace: Duration) {
        self.shared.ctx.state.set_grace(grace);
    }

    /// Also run `service_actions` at least this often while idle. By default
    /// `service_actions` runs only after requests: the serving loop sleeps
    /// until there is work instead of waking on a timer.
    pub fn set_service_interval(&mut self, interval: Option<Duration>) {
        self.shared_mut().ctx.config.service_interval = interval;
    }

    /// The largest datagram accepted (datagram servers). By default 8192
    /// bytes. A larger datagram is dropped, counted in `Stats::oversize`,
    /// and reported to `handle_error` as [`RequestError::Oversize`] — never
    /// passed on truncated.
    pub fn set_max_packet_size(&mut self, size: usize) {
        self.shared_mut().ctx.config.max_packet_size = size;
    }

    /// Python's `verify_request`: called on the serving thread with each
    /// peer's address before dispatch; `false` closes the request without
    /// running the handler (counted in `Stats::denied`). By default every
    /// request is accepted.
    pub fn set_verify_request(&mut self, hook: impl Fn(&T::Addr) -> bool + Send + Sync + 'static) {
        self.shared_mut().hooks.verify_request = Some(Box::new(hook));
    }

    /// Python's `handle_error`: called with the peer and the error when a
    /// request fails or its handler panics. By default the error is logged
    /// at error level with the peer's address.
    pub fn set_handle_error(
        &mut self,
        hook: impl Fn(&T::Addr, &RequestError) + Send + Sync + 'static,
    ) {
        self.shared_mut().hooks.handle_error = Some(Box::new(hook));
    }

    /// Python's `handle_timeout`: called when
    /// [`handle_request`](Self::handle_request) times out. By default does
    /// nothing.
    pub fn set_handle_timeout(&mut self, hook: impl Fn() + Send + Sync + 'static) {
        self.shared_mut().hooks.handle_timeout = Some(Box::new(hook));
    }

    /// Python's `service_actions`: called by `serve_forever` on the serving
    /// thread after each batch of requests (and every
    /// [`service_interval`](Self::set_service_interval), if set). By default
    /// does nothing.
    pub fn set_service_actions(&mut self, hook: impl Fn() + Send + Sync + 'static) {
        self.shared_mut().hooks.service_actions = Some(Box::new(hook));
    }

    /// Called for a request refused by a full pool ([`Overflow::Reject`]):
    /// whatever it writes is sent before the connection closes (for
    /// datagram servers, as one reply datagram). The write is non-blocking
    /// and runs on the serving thread: keep it to one short message.
    ///
    /// [`Overflow::Reject`]: crate::Overflow::Reject
    pub fn set_busy_hook(
        &mut self,
        hook: impl Fn(&T::Addr, &mut dyn io::Write) + Send + Sync + 'static,
    ) {
        self.shared_mut().hooks.busy = Some(Box::new(hook));
    }

    /// Prepares the socket and starts the dispatcher's threads, once; after
    /// shutdown has begun, starts nothing.
    fn start(&mut self) -> io::Result<()> {
        Self::check_dispatch(&self.shared.ctx.config.dispatch)?;
        if self.shared.ctx.state.is_shutting_down() {
            return Ok(());
        }
        if !self.prepared {
            self.prepare()?;
            if let Some(transport) = &self.transport
                && self.listener_owner == Some(std::process::id())
            {
                let weak: std::sync::Weak<dyn StopAccepting> = Arc::downgrade(transport) as _;
                self.shared.ctx.state.set_listener(weak);
            }
        }
        if self.dispatcher.is_none() {
            let ctx = &self.shared.ctx;
            let mut dispatcher =
                Dispatcher::start(&ctx.config.dispatch, &self.shared, &ctx.state, &ctx.stats)?;
            if let Some(transport) = &self.transport {
                dispatcher.set_listener(transport.wait_fd());
            }
            self.dispatcher = Some(dispatcher);
        }
        Ok(())
    }

    /// Whether `dispatch` can serve this server's handler.
    fn check_dispatch(dispatch: &Dispatch) -> io::Result<()> {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        let reactor = matches!(dispatch, Dispatch::Reactor(_));
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        let reactor = false;
        if H::needs_reactor() && !reactor {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a message handler (Messages(..)) is served by Dispatch::Reactor only",
            ));
        }
        Ok(())
    }

    /// Prepares the socket for the serving loop (non-blocking mode), once.
    fn prepare(&mut self) -> io::Result<()> {
        if let (false, Some(transport)) = (self.prepared, &self.transport) {
            transport.prepare(&self.shared.ctx)?;
            self.prepared = true;
        }
        Ok(())
    }

    /// Serves requests until [`shutdown`](ShutdownHandle::shutdown) is
    /// called, then drains and returns how the drain went (Python's
    /// `serve_forever`).
    ///
    /// The loop sleeps in one `poll(2)` until a request or the shutdown
    /// request arrives: shutdown is seen at once, and an idle server uses no
    /// CPU. After shutdown the listening socket stops accepting, so new
    /// connections are refused; queued and running requests finish, up to
    /// the [drain deadline](Self::set_drain_timeout), when their
    /// connections are cut off; every worker thread is joined. See "Shutting
    /// down" in the [crate docs](crate).
    ///
    /// # Errors
    ///
    /// Fails only if the listening socket itself fails (not on a request's
    /// error, nor on transient accept errors such as running out of file
    /// descriptors, which are logged and retried with back-off). The server
    /// is drained before the error is returned.
    pub fn serve_forever(&mut self) -> io::Result<ShutdownReport> {
        if let Some(report) = self.report {
            return Ok(report);
        }
        #[cfg(unix)]
        if let Dispatch::Prefork(prefork) = &self.shared.ctx.config.dispatch {
            // This process becomes the supervisor; its workers come back
            // here with their own dispatch.
            let prefork = prefork.clone();
            return crate::dispatch::prefork::supervise(self, &prefork);
        }
        let served = self.start().and_then(|()| self.serve_loop());
        let report = self.stop();
        served.map(|()| report)
    }

    fn serve_loop(&mut self) -> io::Result<()> {
        let state = Arc::clone(&self.shared.ctx.state);
        let (Some(transport), Some(waker)) = (self.transport.clone(), state.waker()) else {
            return Ok(());
        };
        let interval = self.shared.ctx.config.service_interval;
        loop {
            // Take what is pending first: under load the socket is usually
            // readable, and the poll would only confirm it.
            self.take_batch(&transport)?;
            self.service_actions();
            if state.is_shutting_down() {
                return Ok(());
            }
            let extra = self.dispatcher.as_ref().and_then(Dispatcher::wake_fd);
            match sys::wait_readable_or(transport.wait_fd(), extra, &waker, interval)? {
                ReadyOr::Ready(Ready::Woken) => return Ok(()),
                // A dispatcher event (a child exited) is handled by
                // service_actions at the top of the loop.
                ReadyOr::Ready(Ready::Io | Ready::TimedOut) | ReadyOr::Extra => {}
            }
        }
    }

    /// Takes up to [`ACCEPT_BATCH`] requests; stops early when the socket
    /// has none left or shutdown begins. Returns how many were taken.
    fn take_batch(&mut self, transport: &Arc<T>) -> io::Result<usize> {
        let mut taken = 0;
        while taken < ACCEPT_BATCH && !self.shared.ctx.state.is_shutting_down() {
            match self.take_one(transport)? {
                true => taken += 1,
                false => break,
            }
        }
        Ok(taken)
    }

    /// Takes and dispatches one request. `Ok(false)` when none was pending
    /// (or a transient error was absorbed).
    fn take_one(&mut self, transport: &Arc<T>) -> io::Result<bool> {
        let next = transport.next_job(&self.shared.ctx, &mut self.scratch);
        match next {
            Ok(Next::Job(job)) => {
                self.backoff = Duration::ZERO;
                self.shared.ctx.stats.inc_accepted();
                self.verify_and_dispatch(job);
                Ok(true)
            }
            Ok(Next::Empty) => Ok(false),
            Ok(Next::Dropped { peer, error }) => {
                self.shared.report_error(&peer, &error);
                Ok(true)
            }
            // Shutdown may have stopped the listener under us (Linux:
            // accept fails with EINVAL): that is the end, not a failure.
            Err(_) if self.shared.ctx.state.is_shutting_down() => Ok(false),
            // In a forked copy of the server that bound the socket (a
            // prefork worker), the same means the owner stopped it: its
            // shutdown has begun, so this copy's begins too.
            Err(e) if sys::listener_was_stopped(&e) && self.is_forked_copy() => {
                self.shared.ctx.state.begin();
                Ok(false)
            }
            Err(e) => self.absorb_accept_error(e).map(|()| false),
        }
    }

    fn verify_and_dispatch(&mut self, job: T::Job) {
        if let Some(verify) = &self.shared.hooks.verify_request {
            let peer = T::job_peer(&job);
            let allowed = match catch_unwind(AssertUnwindSafe(|| verify(peer))) {
                Ok(allowed) => allowed,
                Err(_) => {
                    log::error!("verify_request panicked for {peer:?}; request refused");
                    false
                }
            };
            if !allowed {
                self.shared.ctx.stats.inc_denied();
                log::debug!("verify_request refused {peer:?}");
                T::refuse(job, None);
                return;
            }
        }
        match &mut self.dispatcher {
            Some(dispatcher) => dispatcher.dispatch(&self.shared, job),
            None => {
                Work::run(&*self.shared, job);
            }
        }
    }

    /// Whether this is a forked copy of a server that bound its socket
    /// itself: a prefork worker.
    fn is_forked_copy(&self) -> bool {
        self.listener_owner
            .is_some_and(|owner| owner != std::process::id())
    }

    /// Sorts an accept/receive error: retry, back off, or give up.
    fn absorb_accept_error(&mut self, error: io::Error) -> io::Result<()> {
        match sys::classify_accept_error(&error) {
            AcceptErrorKind::Retry => {
                log::debug!("transient accept error: {error}");
                Ok(())
            }
            AcceptErrorKind::Backoff => {
                self.backoff = (self.backoff * 2).clamp(BACKOFF_MIN, BACKOFF_MAX);
                log::error!("accept failed: {error}; retrying in {:?}", self.backoff);
                // Sleep on the waker, so shutdown still ends the wait.
                if let Some(waker) = self.shared.ctx.state.waker() {
                    sys::sleep_unless_woken(&waker, self.backoff)?;
                }
                Ok(())
            }
            AcceptErrorKind::Fatal => {
                log::error!("listening socket failed: {error}");
                Err(error)
            }
        }
    }

    fn service_actions(&mut self) {
        if let Some(dispatcher) = &mut self.dispatcher {
            dispatcher.service();
        }
        if let Some(hook) = &self.shared.hooks.service_actions {
            hook();
        }
    }

    /// Waits for and handles one request (Python's `handle_request`).
    ///
    /// Waits up to the [`timeout`](Self::set_timeout) (forever by default);
    /// if it passes, calls the `handle_timeout` hook and returns `false`.
    /// Returns `true` once a request was taken and dispatched — with a
    /// threading or pool dispatch it may still be running — and `false`
    /// after shutdown.
    ///
    /// # Errors
    ///
    /// Fails if the socket itself fails.
    pub fn handle_request(&mut self) -> io::Result<bool> {
        self.start()?;
        let state = Arc::clone(&self.shared.ctx.state);
        let (Some(transport), Some(waker)) = (self.transport.clone(), state.waker()) else {
            return Ok(false);
        };
        let deadline = self.shared.ctx.config.timeout.map(|t| Instant::now() + t);
        loop {
            if state.is_shutting_down() {
                return Ok(false);
            }
            let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let extra = self.dispatcher.as_ref().and_then(Dispatcher::wake_fd);
            match sys::wait_readable_or(transport.wait_fd(), extra, &waker, remaining)? {
                ReadyOr::Ready(Ready::Woken) => return Ok(false),
                ReadyOr::Extra => {
                    if let Some(dispatcher) = &mut self.dispatcher {
                        dispatcher.service();
                    }
                }
                ReadyOr::Ready(Ready::TimedOut) => {
                    if let Some(hook) = &self.shared.hooks.handle_timeout {
                        hook();
                    }
                    return Ok(false);
                }
                ReadyOr::Ready(Ready::Io) => {
                    if self.take_one(&transport)? {
                        return Ok(true);
                    }
                }
            }
        }
    }

    /// Stops accepting, drains, joins, releases the socket. Idempotent.
    fn stop(&mut self) -> ShutdownReport {
        if let Some(report) = self.report {
            return report;
        }
        let state = Arc::clone(&self.shared.ctx.state);
        state.begin();
        // Closing the listening socket refuses new connections at once
        // instead of leaving them in the backlog.
        self.transport = None;
        let abandoned = self.dispatcher.take().map_or(0, Dispatcher::drain);
        state.finish();
        let stats = self.shared.ctx.stats.snapshot();
        let report = ShutdownReport {
            drained: stats.drained,
            forced: stats.forced,
            abandoned,
            drain_time: state.started().map_or(Duration::ZERO, |t| t.elapsed()),
        };
        log::info!("server stopped: {report}");
        self.report = Some(report);
        report
    }

    /// Closes the server (Python's `server_close`): begins shutdown if it has
    /// not begun, drains (bounded by the drain deadline), joins every thread
    /// and releases the socket, so the port or path can be bound again.
    /// Idempotent; `Drop` does the same.
    pub fn server_close(&mut self) -> ShutdownReport {
        self.stop()
    }
}

/// What the prefork supervisor (`dispatch/prefork.rs`) needs of a server:
/// it runs whole serving loops in worker processes.
#[cfg(unix)]
impl<T: Transport, H: Service<T>> Server<T, H> {
    pub(crate) fn prefork_state(&self) -> &Arc<ShutdownState> {
        &self.shared.ctx.state
    }

    /// Prepares the socket the workers will inherit, after checking that
    /// the workers' `dispatch` can serve the handler, and registers it to be
    /// stopped the moment shutdown begins (Linux), as `start` does: new
    /// connections are then refused at once, even by workers busy in a
    /// request; a worker's `accept` failing on the stopped socket begins
    /// its own shutdown (see `take_one`).
    pub(crate) fn prefork_prepare(&mut self, dispatch: &Dispatch) -> io::Result<()> {
        Self::check_dispatch(dispatch)?;
        self.prepare()?;
        if let Some(transport) = &self.transport
            && self.listener_owner == Some(std::process::id())
        {
            let weak: std::sync::Weak<dyn StopAccepting> = Arc::downgrade(transport) as _;
            self.shared.ctx.state.set_listener(weak);
        }
        Ok(())
    }

    /// In a freshly forked worker: a shutdown state of its own (the
    /// supervisor's waker is shared across fork), and the worker's
    /// dispatch. Returns the new state.
    pub(crate) fn prefork_become_worker(
        &mut self,
        dispatch: Dispatch,
    ) -> io::Result<Arc<ShutdownState>> {
        let state = ShutdownState::new()?;
        let old = &self.shared.ctx.state;
        state.set_drain_timeout(old.drain_timeout());
        state.set_grace(old.grace());
        let shared = self.shared_mut();
        shared.ctx.state = Arc::clone(&state);
        shared.ctx.config.dispatch = dispatch;
        Ok(state)
    }

    /// Closes the supervisor's copy of the listening socket.
    pub(crate) fn prefork_close_listener(&mut self) {
        self.transport = None;
    }

    pub(crate) fn prefork_finish(&mut self, report: ShutdownReport) {
        self.report = Some(report);
    }
}

impl<T: Transport, H: Service<T>> Drop for Server<T, H> {
    fn drop(&mut self) {
        self.stop();
    }
}
