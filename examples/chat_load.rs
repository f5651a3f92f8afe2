//! A load generator for the chatbot example: holds K idle chat clients open
//! while a few active clients chat at a steady rate, and reports the active
//! clients' reply latency (from sending a line to receiving its `BOT `
//! reply), plus the server's memory and thread count if given its pid.
//! `scripts/chat_bench.sh` runs it with and without an idle crowd.
//!
//! ```text
//! cargo run --release --example chatbot -- --bind 127.0.0.1:7777 &
//! cargo run --release --example chat_load -- --addr 127.0.0.1:7777 --idle 10000 --server-pid $!
//! ```
//!
//! The idle clients connect, read their `WELCOME`, and then neither send nor
//! read: they are the crowd a thread-per-connection server would need a
//! thread for each of. (They do receive the active clients' chat, which
//! the server fans out to every member; at the default rate this is a few
//! kilobytes per client, which their socket buffers absorb.) The soft limit
//! on open files is raised to the hard limit for them.
//!
//! Output: one human-readable table, or with `--json` one JSON line.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;

/// Holds idle chat clients open while active ones chat; reports reply latency.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The chatbot's address.
    #[arg(long, default_value = "127.0.0.1:7777")]
    addr: String,
    /// Idle clients to hold open.
    #[arg(long, default_value_t = 0)]
    idle: usize,
    /// Active clients chatting.
    #[arg(long, default_value_t = 4)]
    active: usize,
    /// Lines per second each active client sends.
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Seconds of measurement.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of chatting before measurement starts.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// The server's pid, to report its memory (VmRSS) and threads.
    #[arg(long)]
    server_pid: Option<u32>,
    /// What the active clients send: `chat` lines (answered by the bot and
    /// fanned out to every other member, the idle crowd included) or `nick`
    /// commands (answered, not fanned out: isolates the cost of parking the
    /// crowd from the cost of writing to it).
    #[arg(long, value_enum, default_value_t = Kind::Chat)]
    kind: Kind,
    /// Print one JSON line instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Kind {
    Chat,
    Nick,
}

const STEP: Duration = Duration::from_secs(10);

fn connect(addr: SocketAddr) -> io::Result<(TcpStream, BufReader<TcpStream>)> {
    let stream = TcpStream::connect_timeout(&addr, STEP)?;
    stream.set_read_timeout(Some(STEP))?;
    stream.set_write_timeout(Some(STEP))?;
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut welcome = String::new();
    reader.read_line(&mut welcome)?;
    if !welcome.starts_with("WELCOME") {
        return Err(io::Error::other(format!(
            "expected WELCOME, got {welcome:?}"
        )));
    }
    Ok((stream, reader))
}

/// Raises the soft open-files limit to the hard limit.
fn raise_fd_limit() -> io::Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    Ok(hard)
}

/// Opens `count` idle clients from a few threads at once.
fn open_idle(addr: SocketAddr, count: usize) -> io::Result<Vec<TcpStream>> {
    let threads = 8.min(count.max(1));
    let per = count.div_ceil(threads);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let n = per.min(count.saturating_sub(t * per));
            thread::spawn(move || -> io::Result<Vec<TcpStream>> {
                (0..n).map(|_| connect(addr).map(|(s, _)| s)).collect()
            })
        })
        .collect();
    let mut all = Vec::with_capacity(count);
    for h in handles {
        all.extend(h.join().expect("idle opener panicked")?);
    }
    Ok(all)
}

/// One active client: a line every `1/rate` s, timing each until its `BOT`
/// reply. Lines other clients said arrive in between and are skipped.
fn chat(
    addr: SocketAddr,
    me: usize,
    kind: Kind,
    rate: f64,
    measuring: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> io::Result<Vec<Duration>> {
    let (mut stream, mut reader) = connect(addr)?;
    stream.write_all(format!("/nick active{me}\n").as_bytes())?;
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let period = Duration::from_secs_f64(1.0 / rate);
    let mut next = Instant::now();
    let mut latencies = Vec::new();
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if next > now {
            thread::sleep(next - now);
        }
        next += period;
        let sent = Instant::now();
        let (said, reply) = match kind {
            Kind::Chat => (format!("hello from active{me}, line {i}\n"), "BOT "),
            Kind::Nick => (format!("/nick active{me}\n"), "OK nick"),
        };
        stream.write_all(said.as_bytes())?;
        i += 1;
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Err(io::Error::other("server closed the connection"));
            }
            if line.starts_with(reply) {
                break;
            }
        }
        if measuring.load(Ordering::Relaxed) {
            latencies.push(sent.elapsed());
        }
    }
    Ok(latencies)
}

/// `VmRSS` (KiB) and `Threads` of a process.
fn proc_status(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("Threads:")?))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn run(args: &Args) -> io::Result<()> {
    let addr = args
        .addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::other("no address"))?;
    if args.idle > 0 {
        raise_fd_limit()?;
    }
    let started = Instant::now();
    let idle = open_idle(addr, args.idle)?;
    let opened_in = started.elapsed();
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let chatters: Vec<_> = (0..args.active)
        .map(|me| {
            let (measuring, stop) = (Arc::clone(&measuring), Arc::clone(&stop));
            let (kind, rate) = (args.kind, args.rate);
            thread::spawn(move || chat(addr, me, kind, rate, measuring, stop))
        })
        .collect();
    thread::sleep(Duration::from_secs_f64(args.warmup));
    measuring.store(true, Ordering::Relaxed);
    thread::sleep(Duration::from_secs_f64(args.duration));
    let status = args.server_pid.and_then(proc_status);
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for c in chatters {
        latencies.extend(c.join().expect("chatter panicked")?);
    }
    latencies.sort();
    // Every idle client is still connected: none was dropped.
    let still_open = idle.iter().filter(|s| s.peer_addr().is_ok()).count();
    let (rss_kib, threads) = status.map_or((None, None), |(r, t)| (Some(r), Some(t)));
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let p50 = us(percentile(&latencies, 50.0));
    let p99 = us(percentile(&latencies, 99.0));
    let max = us(latencies.last().copied().unwrap_or_default());
    let opt = |v: Option<u64>| v.map_or("null".to_owned(), |v| v.to_string());
    if args.json {
        println!(
            "{{\"kind\":\"{:?}\",\"idle\":{},\"idle_open\":{},\"active\":{},\"rate\":{},\"replies\":{},\"p50_us\":{:.1},\"p99_us\":{:.1},\"max_us\":{:.1},\"server_rss_kib\":{},\"server_threads\":{},\"open_s\":{:.2}}}",
            args.kind,
            args.idle,
            still_open,
            args.active,
            args.rate,
            latencies.len(),
            p50,
            p99,
            max,
            opt(rss_kib),
            opt(threads),
            opened_in.as_secs_f64()
        );
    } else {
        println!(
            "idle clients     {} ({} still open; opened in {:.2} s)",
            args.idle,
            still_open,
            opened_in.as_secs_f64()
        );
        println!("active clients   {} x {} lines/s", args.active, args.rate);
        println!("replies timed    {}", latencies.len());
        println!("reply latency    p50 {p50:.0} us   p99 {p99:.0} us   max {max:.0} us");
        if let (Some(rss), Some(t)) = (rss_kib, threads) {
            println!(
                "server           RSS {:.1} MiB, {t} threads",
                rss as f64 / 1024.0
            );
        }
    }
    drop(idle);
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chat_load: {e}");
            ExitCode::FAILURE
        }
    }
}
