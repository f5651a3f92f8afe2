//! Shutdown latency of an idle server, per dispatch strategy: the time from
//! `ShutdownHandle::shutdown()` to `serve_forever` returning (listener
//! closed, every worker joined), with no connection open.
//!
//! ```text
//! cargo run --release --example shutdown_latency -- --rounds 50
//! cargo run --release --example shutdown_latency -- --modes pool --json
//! ```
//!
//! Each round binds a TCP echo server on 127.0.0.1:0, starts
//! `serve_forever` on a thread, echoes one byte through it (so the loop is
//! known to be running and idle in its wait, and every worker has started),
//! then calls `shutdown()` and waits for `serve_forever` to return. Prints
//! a table of p50 and max per mode, or with `--json` one JSON line.

use std::io::{self, BufRead, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;
use socketserver::{
    Action, Connection, Dispatch, MessageHandler, Messages, Pool, Reactor, Server, Service,
    StreamSocket, TcpRequest, TcpServer,
};

/// Measures how long an idle server takes to shut down.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Shutdowns measured per mode.
    #[arg(long, default_value_t = 50)]
    rounds: usize,
    /// Comma-separated modes to measure (default: all).
    #[arg(long, value_delimiter = ',')]
    modes: Vec<String>,
    /// Print exactly one JSON line instead of the table.
    #[arg(long)]
    json: bool,
}

/// Every dispatch strategy this build has, as echo_server names them.
fn all_modes() -> Vec<(&'static str, Dispatch)> {
    vec![
        ("sync", Dispatch::Sync),
        ("threading", Dispatch::threading()),
        ("pool", Pool::default().into()),
        ("reactor", Reactor::default().into()),
    ]
}

fn echo(req: &mut TcpRequest) -> io::Result<()> {
    io::copy(&mut req.rfile, &mut req.wfile)?;
    Ok(())
}

/// The reactor's echo (as in echo_server): echo what has arrived, park.
#[derive(Debug)]
struct ReactorEcho;

impl<S: StreamSocket> MessageHandler<S> for ReactorEcho {
    type State = ();

    fn connect(&self, _conn: &mut Connection<S>) -> io::Result<()> {
        Ok(())
    }

    fn ready(&self, conn: &mut Connection<S>, _state: &mut ()) -> io::Result<Action> {
        let data = conn.rfile.fill_buf()?;
        if data.is_empty() {
            return Ok(Action::Close);
        }
        let n = data.len();
        conn.wfile.write_all(data)?;
        conn.rfile.consume(n);
        Ok(Action::Keep)
    }
}

/// One round: returns the shutdown latency.
fn once(dispatch: &Dispatch) -> io::Result<Duration> {
    if matches!(dispatch, Dispatch::Reactor(_)) {
        measure(
            TcpServer::bind("127.0.0.1:0", Messages(ReactorEcho))?,
            dispatch,
        )
    } else {
        measure(TcpServer::bind("127.0.0.1:0", echo)?, dispatch)
    }
}

fn measure<H>(mut server: Server<TcpListener, H>, dispatch: &Dispatch) -> io::Result<Duration>
where
    H: Service<TcpListener>,
    Server<TcpListener, H>: Send + 'static,
{
    server.set_dispatch(dispatch.clone());
    let addr = server.local_addr()?;
    let handle = server.shutdown_handle();
    let stats = server.stats();
    let serving = thread::Builder::new()
        .name("shutdown-latency-serve".into())
        .spawn(move || server.serve_forever())?;
    {
        let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        c.set_read_timeout(Some(Duration::from_secs(5)))?;
        c.write_all(b"x")?;
        let mut b = [0u8; 1];
        c.read_exact(&mut b)?;
    } // closed: the server is idle again once its handler sees EOF
    // Wait (bounded) until that request has completed: nothing in flight.
    let waited = Instant::now();
    while stats.snapshot().completed < 1 {
        if waited.elapsed() > Duration::from_secs(5) {
            return Err(io::Error::other("the probe request never completed"));
        }
        thread::sleep(Duration::from_millis(1));
    }
    let t0 = Instant::now();
    handle.shutdown();
    let report = serving
        .join()
        .map_err(|_| io::Error::other("serve_forever panicked"))??;
    let elapsed = t0.elapsed();
    if report.forced > 0 {
        return Err(io::Error::other(format!(
            "an idle server forced {} request(s)",
            report.forced
        )));
    }
    Ok(elapsed)
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn run(args: &Args) -> io::Result<Vec<(&'static str, Vec<Duration>)>> {
    if args.rounds == 0 {
        return Err(io::Error::other("--rounds must be at least 1"));
    }
    let modes: Vec<_> = all_modes()
        .into_iter()
        .filter(|(name, _)| args.modes.is_empty() || args.modes.iter().any(|m| m == name))
        .collect();
    if modes.is_empty() {
        return Err(io::Error::other(format!(
            "no such mode in {:?}; known: {:?}",
            args.modes,
            all_modes().iter().map(|(n, _)| *n).collect::<Vec<_>>()
        )));
    }
    let mut results: Vec<(&'static str, Vec<Duration>)> =
        modes.iter().map(|(n, _)| (*n, Vec::new())).collect();
    // Interleave the modes round by round, so machine drift hits all alike.
    for _ in 0..args.rounds {
        for ((_, dispatch), (_, times)) in modes.iter().zip(results.iter_mut()) {
            times.push(once(dispatch)?);
        }
    }
    for (_, times) in &mut results {
        times.sort();
    }
    Ok(results)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let results = match run(&args) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("shutdown_latency: {e}");
            return ExitCode::FAILURE;
        }
    };
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    if args.json {
        let fields: Vec<String> = results
            .iter()
            .map(|(name, t)| {
                format!(
                    "\"{name}\":{{\"p50_ms\":{:.3},\"max_ms\":{:.3}}}",
                    ms(quantile(t, 0.5)),
                    ms(*t.last().expect("at least one round"))
                )
            })
            .collect();
        println!(
            "{{\"rounds\":{},\"modes\":{{{}}}}}",
            args.rounds,
            fields.join(",")
        );
    } else {
        println!("idle-server shutdown latency, {} rounds", args.rounds);
        println!("{:<12} {:>10} {:>10}", "mode", "p50 ms", "max ms");
        for (name, t) in &results {
            println!(
                "{:<12} {:>10.3} {:>10.3}",
                name,
                ms(quantile(t, 0.5)),
                ms(*t.last().expect("at least one round"))
            );
        }
    }
    ExitCode::SUCCESS
}
