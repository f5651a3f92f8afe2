//! A test-support server for forking and prefork dispatch: each request
//! runs in a child (or worker) process and records what it does, so a test
//! can watch processes it cannot see inside. `tests/forking.rs` and
//! `tests/prefork.rs` drive it; it is also a small demonstration of crash
//! isolation.
//!
//! ```text
//! cargo run --example fork_probe -- --record /tmp/probe.log --max-children 3
//! printf 'hold\n' | nc -q1 127.0.0.1 PORT     # "started PID", then "done" at EOF
//! printf 'abort\n' | nc -q1 127.0.0.1 PORT    # the child aborts; the server goes on
//! ```
//!
//! Each connection sends one command line:
//!
//! - `hold` — append `start PID` to the record file, reply `started PID`,
//!   read until the client's end-of-file, append `end PID`, reply `done`.
//!   The client decides how long the child lives, so a test can make
//!   children overlap.
//! - `abort` — append `abort PID`, then `std::process::abort()`.
//! - `panic` — append `panic PID`, then panic (caught: exit status 2).
//! - `shutdown` — call the request's `shutdown_handle().shutdown()` (from a
//!   child process), reply `ok`.
//! - anything else — echo the line back.
//!
//! Record lines are single `write(2)`s to a file opened with `O_APPEND`, so
//! lines from concurrent children never interleave. The first stdout line
//! is `listening on tcp://HOST:PORT`, as for echo_server; logs go to
//! `--server-log FILE` if given, else stderr. After SIGTERM or SIGINT the
//! server drains and exits with status 0.

use std::fs::OpenOptions;
use std::io::{self, BufRead, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use simplelog::{ColorChoice, ConfigBuilder, LevelFilter, TermLogger, TerminalMode, WriteLogger};
use socketserver::{Dispatch, Forking, Prefork, TcpRequest, TcpServer};

/// A forking server that records what its children do.
#[derive(Debug, Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    bind: String,
    /// File the children append their `start`/`end`/`abort` lines to.
    #[arg(long, value_name = "FILE")]
    record: PathBuf,
    /// Cap on live children (forking).
    #[arg(long, default_value_t = 40)]
    max_children: usize,
    /// Run P prefork workers (each serving one request at a time) instead
    /// of forking a child per request.
    #[arg(long, value_name = "P")]
    prefork: Option<usize>,
    /// Seconds a graceful shutdown waits for running children.
    #[arg(long, value_name = "S", default_value_t = 5.0)]
    drain_secs: f64,
    /// Write the server's log here instead of stderr.
    #[arg(long, value_name = "FILE")]
    server_log: Option<PathBuf>,
}

fn record(path: &PathBuf, line: &str) -> io::Result<()> {
    let mut file = OpenOptions::new().create(true).append(true).open(path)?;
    // One write(2) of one short line: atomic with O_APPEND.
    file.write_all(format!("{line}\n").as_bytes())
}

fn probe(record_file: &PathBuf, req: &mut TcpRequest) -> io::Result<()> {
    let pid = std::process::id();
    let mut command = String::new();
    req.rfile.read_line(&mut command)?;
    match command.trim_end() {
        "hold" => {
            record(record_file, &format!("start {pid}"))?;
            writeln!(req.wfile, "started {pid}")?;
            let mut rest = Vec::new();
            req.rfile.read_to_end(&mut rest)?;
            record(record_file, &format!("end {pid}"))?;
            writeln!(req.wfile, "done")?;
        }
        "abort" => {
            record(record_file, &format!("abort {pid}"))?;
            // Where core dumps are enabled, leave the core next to the
            // record file (a test's temporary directory), not in ours.
            if let Some(dir) = record_file.parent() {
                let _ = std::env::set_current_dir(dir);
            }
            std::process::abort();
        }
        "panic" => {
            record(record_file, &format!("panic {pid}"))?;
            panic!("fork_probe: asked to panic");
        }
        "shutdown" => {
            req.shutdown_handle().shutdown();
            writeln!(req.wfile, "ok")?;
        }
        other => writeln!(req.wfile, "{other}")?,
    }
    Ok(())
}

fn run(args: &Args) -> io::Result<()> {
    let record_file = args.record.clone();
    let mut server = TcpServer::bind(args.bind.as_str(), move |req: &mut TcpRequest| {
        probe(&record_file, req)
    })?;
    let dispatch: Dispatch = match args.prefork {
        Some(processes) => Prefork::new(processes).into(),
        None => Forking::new().max_children(args.max_children).into(),
    };
    server.set_dispatch(dispatch);
    server.set_drain_timeout(Duration::from_secs_f64(args.drain_secs.max(0.0)));
    server.shutdown_on_signals()?;
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "listening on tcp://{}", server.local_addr()?)?;
    stdout.flush()?;
    drop(stdout);
    let report = server.serve_forever()?;
    log::info!(
        "fork_probe stopped: {report}; {}",
        server.stats().snapshot()
    );
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = ConfigBuilder::new()
        .set_thread_level(LevelFilter::Off)
        .build();
    let _ = match &args.server_log {
        Some(path) => match OpenOptions::new().create(true).append(true).open(path) {
            Ok(file) => WriteLogger::init(LevelFilter::Debug, config, file),
            Err(e) => {
                eprintln!("fork_probe: cannot open {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        },
        None => TermLogger::init(
            LevelFilter::Info,
            config,
            TerminalMode::Stderr,
            ColorChoice::Auto,
        ),
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fork_probe: {e}");
            ExitCode::FAILURE
        }
    }
}
