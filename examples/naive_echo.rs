//! The benchmark's baseline: the echo server a competent person writes with
//! std alone, without this library — a `TcpListener`, a thread per
//! connection, a plain read/write loop over an 8 KiB buffer (`TCP_NODELAY`
//! on, to be fair); with `--udp`, one thread in a blocking
//! `recv_from`/`send_to` loop. No logging, no shutdown: stop it with a
//! signal.
//!
//! The 8 KiB buffer is the size std's own `io::copy` and `BufReader` use,
//! and this library's default `rbufsize`: neither side is tuned to the
//! benchmark's request sizes.
//!
//! ```text
//! cargo run --release --example naive_echo -- --bind 127.0.0.1:9999
//! printf 'hello\n' | nc -q1 127.0.0.1 9999
//! cargo run --release --example naive_echo -- --udp --bind 127.0.0.1:9998
//! printf 'hello' | nc -u -w1 127.0.0.1 9998
//! ```
//!
//! Like echo_server, the first line on stdout is exactly
//! `listening on tcp://HOST:PORT` (or `udp://HOST:PORT`), so scripts can
//! bind port 0 and read the real port back.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::thread;

use clap::Parser;

/// A naive std::net echo server (the benchmark baseline).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on (host:port; port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:9999")]
    bind: String,
    /// Serve UDP: one thread, recv_from then send_to, forever.
    #[arg(long)]
    udp: bool,
}

fn echo(mut stream: TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = [0u8; 8 * 1024];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        stream.write_all(&buf[..n])?;
    }
}

fn announce(url: String) -> io::Result<()> {
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "listening on {url}")?;
    stdout.flush()
}

fn serve_tcp(bind: &str) -> io::Result<()> {
    let listener = TcpListener::bind(bind)?;
    announce(format!("tcp://{}", listener.local_addr()?))?;
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                thread::spawn(move || {
                    let _ = echo(stream);
                });
            }
            // What a naive server does with EMFILE and friends: note it,
            // go on.
            Err(e) => eprintln!("naive_echo: accept: {e}"),
        }
    }
    Ok(())
}

fn serve_udp(bind: &str) -> io::Result<()> {
    let socket = UdpSocket::bind(bind)?;
    announce(format!("udp://{}", socket.local_addr()?))?;
    let mut buf = [0u8; 65_536];
    loop {
        let Ok((n, peer)) = socket.recv_from(&mut buf) else {
            continue;
        };
        // A reply that cannot be sent is dropped, as UDP would.
        let _ = socket.send_to(&buf[..n], peer);
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = if args.udp {
        serve_udp(&args.bind)
    } else {
        serve_tcp(&args.bind)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("naive_echo: {e}");
            ExitCode::FAILURE
        }
    }
}
