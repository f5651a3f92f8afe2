//! A line-oriented client for the echo server: sends each line read from
//! stdin (or one `--message`) and prints the reply — the classic Python
//! `socketserver` client loop.
//!
//! ```text
//! cargo run --example echo_server &            # listening on tcp://127.0.0.1:9999
//! cargo run --example echo_client -- --message hello
//! printf 'one\ntwo\n' | cargo run --example echo_client
//! cargo run --example echo_client -- --udp --connect 127.0.0.1:9998 --message hi
//! cargo run --example echo_client -- --unix /tmp/echo.sock --message hi
//! ```
//!
//! Exits non-zero if the server cannot be reached or a reply differs from
//! what was sent.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

/// Sends lines to an echo server and prints the replies.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Server address (host:port).
    #[arg(long, default_value = "127.0.0.1:9999")]
    connect: String,
    /// Send this one message instead of reading stdin.
    #[arg(long)]
    message: Option<String>,
    /// Use UDP (one datagram per line).
    #[arg(long)]
    udp: bool,
    /// Connect to a Unix socket at this path (with --udp: Unix datagrams).
    #[arg(long, value_name = "PATH")]
    unix: Option<PathBuf>,
    /// Seconds to wait for each reply.
    #[arg(long, default_value_t = 5.0)]
    timeout: f64,
}

/// One way of sending a line and getting its echo back.
trait Exchange {
    fn exchange(&mut self, line: &str) -> io::Result<String>;
}

/// A stream connection: send the line with its newline, read one line back.
struct Stream<S: Read + Write> {
    writer: S,
    reader: BufReader<S>,
}

impl<S: Read + Write> Exchange for Stream<S> {
    fn exchange(&mut self, line: &str) -> io::Result<String> {
        self.writer.write_all(format!("{line}\n").as_bytes())?;
        let mut reply = String::new();
        if self.reader.read_line(&mut reply)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "server closed the connection",
            ));
        }
        Ok(reply.trim_end_matches('\n').to_owned())
    }
}

/// Datagrams: one line per datagram, one datagram back.
struct Udp(UdpSocket);
struct UnixDgram(UnixDatagram, PathBuf);

impl Exchange for Udp {
    fn exchange(&mut self, line: &str) -> io::Result<String> {
        self.0.send(line.as_bytes())?;
        let mut buf = vec![0; 65536];
        let n = self.0.recv(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    }
}

impl Exchange for UnixDgram {
    fn exchange(&mut self, line: &str) -> io::Result<String> {
        self.0.send(line.as_bytes())?;
        let mut buf = vec![0; 65536];
        let n = self.0.recv(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    }
}

impl Drop for UnixDgram {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.1);
    }
}

fn open(args: &Args) -> io::Result<Box<dyn Exchange>> {
    let timeout = Some(Duration::from_secs_f64(args.timeout.max(0.001)));
    Ok(match (&args.unix, args.udp) {
        (None, false) => {
            let stream = TcpStream::connect(args.connect.as_str())?;
            stream.set_read_timeout(timeout)?;
            Box::new(Stream {
                reader: BufReader::new(stream.try_clone()?),
                writer: stream,
            })
        }
        (None, true) => {
            let socket = UdpSocket::bind(if args.connect.starts_with('[') {
                "[::]:0"
            } else {
                "0.0.0.0:0"
            })?;
            socket.connect(args.connect.as_str())?;
            socket.set_read_timeout(timeout)?;
            Box::new(Udp(socket))
        }
        (Some(path), false) => {
            let stream = UnixStream::connect(path)?;
            stream.set_read_timeout(timeout)?;
            Box::new(Stream {
                reader: BufReader::new(stream.try_clone()?),
                writer: stream,
            })
        }
        (Some(path), true) => {
            // A datagram client must bind an address to be replied to.
            let own = std::env::temp_dir().join(format!("echo_client-{}.sock", std::process::id()));
            let _ = std::fs::remove_file(&own);
            let socket = UnixDatagram::bind(&own)?;
            socket.connect(path)?;
            socket.set_read_timeout(timeout)?;
            Box::new(UnixDgram(socket, own))
        }
    })
}

fn run(args: &Args) -> io::Result<()> {
    let mut conn = open(args)?;
    let lines: Box<dyn Iterator<Item = io::Result<String>>> = match &args.message {
        Some(message) => Box::new(std::iter::once(Ok(message.clone()))),
        None => Box::new(io::stdin().lock().lines()),
    };
    let mut stdout = io::stdout().lock();
    for line in lines {
        let line = line?;
        let reply = conn.exchange(&line)?;
        writeln!(stdout, "{reply}")?;
        stdout.flush()?;
        if reply != line {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("reply {reply:?} differs from {line:?}"),
            ));
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("echo_client: {e}");
            ExitCode::FAILURE
        }
    }
}
