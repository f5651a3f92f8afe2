//! A raw byte echo server: every byte a client sends is written back until
//! the client's end-of-file, then the server closes that connection. Shows
//! the three axes — transport (`--udp`, `--unix`), dispatch (`--mode`) and a
//! five-line handler — plus graceful shutdown on Ctrl-C / SIGTERM.
//!
//! Run it and poke it:
//!
//! ```text
//! cargo run --release --example echo_server -- --bind 127.0.0.1:9999 --mode pool
//! cargo run --release --example echo_server -- --mode reactor --workers 2
//! printf 'hello\n' | nc -q1 127.0.0.1 9999                    # TCP
//! cargo run --example echo_server -- --udp --bind 127.0.0.1:9998
//! printf 'hello' | nc -u -w1 127.0.0.1 9998                   # UDP
//! cargo run --example echo_server -- --unix /tmp/echo.sock
//! printf 'hello\n' | nc -q1 -U /tmp/echo.sock                 # Unix stream
//! cargo run --example echo_server -- --mode forking --workers 8    # a process per connection
//! cargo run --example echo_server -- --mode prefork --processes 4 --workers 8
//! ```
//!
//! `--workers N` is the pool's (and reactor's) thread count, threading's
//! thread cap, forking's `max_children`, and prefork's threads per worker
//! process (a pool of N in each; one request at a time when N is 1 or
//! absent).
//!
//! The first line on stdout is exactly `listening on tcp://HOST:PORT`
//! (`udp://HOST:PORT`, `unix://PATH`) with the real bound address, so a
//! script can start it on port 0 and read where it listens. Logs go to
//! stderr.
//!
//! Ctrl-C or SIGTERM stops accepting at once and lets open connections
//! finish for up to `--drain-secs` (default 5), then cuts off what is left;
//! the process then exits with status 0. A second Ctrl-C ends the drain at
//! once.

mod common;
use std::io::{self, BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use simplelog::LevelFilter;
use socketserver::{
    Action, Connection, DatagramRequest, DatagramSocket, Dispatch, Forking, MessageHandler,
    Messages, Pool, Prefork, Reactor, Server, Service, StreamRequest, StreamSocket, TcpServer,
    Threading, Transport, UdpServer, UnixDatagramServer, UnixStreamServer,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// One request at a time on the serving thread.
    Sync,
    /// A thread per connection.
    Threading,
    /// A fixed pool of worker threads behind a bounded queue.
    Pool,
    /// Message mode: connections wait in an epoll poller between reads and
    /// a few workers serve whichever is ready (TCP and Unix stream only).
    Reactor,
    /// A child process per connection (or datagram).
    Forking,
    /// Supervised worker processes accepting on the one socket.
    Prefork,
}

/// A raw byte echo server.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on (host:port; port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:9999")]
    bind: String,
    /// Dispatch strategy.
    #[arg(long, value_enum, default_value_t = Mode::Pool)]
    mode: Mode,
    /// Worker threads (pool, reactor); the cap on live threads (threading)
    /// or on live child processes (forking; default 40); threads per worker
    /// process (prefork: a pool of N in each, or one request at a time if N
    /// is 1 or absent).
    #[arg(long)]
    workers: Option<usize>,
    /// Worker processes (prefork; default: one per core).
    #[arg(long, value_name = "P")]
    processes: Option<usize>,
    /// Pool queue size (requests waiting for a worker).
    #[arg(long)]
    queue: Option<usize>,
    /// Serve UDP (each datagram echoed to its sender); with --unix, Unix datagrams.
    #[arg(long)]
    udp: bool,
    /// Serve a Unix socket at this path instead of TCP/UDP.
    #[arg(long, value_name = "PATH")]
    unix: Option<PathBuf>,
    /// Seconds a graceful shutdown waits for open connections.
    #[arg(long, value_name = "S", default_value_t = 5.0)]
    drain_secs: f64,
    /// Log level: off, error, warn, info, debug, trace.
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    log_level: LevelFilter,
}

/// The whole stream handler: copy until EOF.
fn echo_stream<S: StreamSocket>(req: &mut StreamRequest<S>) -> io::Result<()> {
    io::copy(&mut req.rfile, &mut req.wfile)?;
    Ok(())
}

/// The reactor-mode handler: echo whatever has arrived, then park.
struct ReactorEcho;

impl<S: StreamSocket> MessageHandler<S> for ReactorEcho {
    type State = ();

    fn connect(&self, _conn: &mut Connection<S>) -> io::Result<()> {
        Ok(())
    }

    fn ready(&self, conn: &mut Connection<S>, _state: &mut ()) -> io::Result<Action> {
        let data = conn.rfile.fill_buf()?;
        if data.is_empty() {
            return Ok(Action::Close); // the client's EOF
        }
        let n = data.len();
        conn.wfile.write_all(data)?;
        conn.rfile.consume(n);
        Ok(Action::Keep)
    }
}

/// The whole datagram handler: the packet goes back as the reply.
fn echo_datagram<D: DatagramSocket>(req: &mut DatagramRequest<D>) -> io::Result<()> {
    let DatagramRequest { rfile, wfile, .. } = req;
    wfile.extend_from_slice(rfile.get_ref());
    Ok(())
}

fn dispatch(args: &Args) -> Dispatch {
    match args.mode {
        Mode::Sync => Dispatch::Sync,
        Mode::Threading => match args.workers {
            Some(max) => Threading::new().max_threads(max).into(),
            None => Dispatch::threading(),
        },
        Mode::Pool => {
            let mut pool = args.workers.map(Pool::new).unwrap_or_default();
            if let Some(queue) = args.queue {
                pool = pool.queue_size(queue);
            }
            pool.into()
        }
        Mode::Reactor => args.workers.map(Reactor::new).unwrap_or_default().into(),
        Mode::Forking => match args.workers {
            Some(max) => Forking::new().max_children(max).into(),
            None => Dispatch::forking(),
        },
        Mode::Prefork => {
            let prefork = args.processes.map(Prefork::new).unwrap_or_default();
            match args.workers {
                Some(n) if n > 1 => prefork.dispatch(Pool::new(n)).into(),
                _ => prefork.into(),
            }
        }
    }
}

fn serve<T, H>(mut server: Server<T, H>, url: String, args: &Args) -> io::Result<()>
where
    T: Transport,
    H: Service<T>,
{
    server.set_dispatch(dispatch(args));
    let drain = Duration::try_from_secs_f64(args.drain_secs).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "--drain-secs {}: not a non-negative number of seconds",
                args.drain_secs
            ),
        )
    })?;
    server.set_drain_timeout(drain);
    server.shutdown_on_signals()?;
    common::announce(&url)?;
    log::info!("echo server on {url}, dispatch {:?}", dispatch(args));
    let report = server.serve_forever()?;
    log::info!("stopped: {report}; {}", server.stats().snapshot());
    Ok(())
}

fn run(args: &Args) -> io::Result<()> {
    let reactor = args.mode == Mode::Reactor;
    if reactor && args.udp {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "--mode reactor serves stream sockets; it cannot be combined with --udp",
        ));
    }
    match (&args.unix, args.udp) {
        (Some(path), false) if reactor => {
            let server = UnixStreamServer::bind(path, Messages(ReactorEcho))?;
            serve(server, format!("unix://{}", path.display()), args)
        }
        (None, false) if reactor => {
            let server = TcpServer::bind(args.bind.as_str(), Messages(ReactorEcho))?;
            let url = format!("tcp://{}", server.local_addr()?);
            serve(server, url, args)
        }
        (Some(path), false) => {
            let server = UnixStreamServer::bind(path, echo_stream)?;
            serve(server, format!("unix://{}", path.display()), args)
        }
        (Some(path), true) => {
            let server = UnixDatagramServer::bind(path, echo_datagram)?;
            serve(server, format!("unix://{}", path.display()), args)
        }
        (None, false) => {
            let server = TcpServer::bind(args.bind.as_str(), echo_stream)?;
            let url = format!("tcp://{}", server.local_addr()?);
            serve(server, url, args)
        }
        (None, true) => {
            let server = UdpServer::bind(args.bind.as_str(), echo_datagram)?;
            let url = format!("udp://{}", server.local_addr()?);
            serve(server, url, args)
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    common::init_logging(args.log_level);
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("echo_server: {e}");
            eprintln!("echo_server: {e}");
            ExitCode::FAILURE
        }
    }
}
