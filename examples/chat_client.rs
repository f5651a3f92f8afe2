//! An interactive client for the chatbot example: what you type goes to the
//! server line by line, and what the server sends is printed as it arrives —
//! two threads, one per direction, on one socket.
//!
//! ```text
//! cargo run --example chatbot &                 # listening on tcp://127.0.0.1:7777
//! cargo run --example chat_client -- --connect 127.0.0.1:7777
//! WELCOME to the chat room, guest1! ...
//! /nick bob
//! OK nick bob
//! hi
//! BOT Hello, bob!
//! /quit
//! BYE
//! ```
//!
//! Exits with status 0 when the server closes the connection (after `/quit`
//! and its `BYE`, or when the server shuts down), or when stdin ends (the
//! client then half-closes and waits for the server to finish). Exits
//! non-zero if it cannot connect or the connection fails.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{Shutdown, TcpStream};
use std::process::ExitCode;
use std::thread;

use clap::Parser;

/// Talks to the chatbot example: stdin to the server, the server to stdout.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Server address (host:port).
    #[arg(long, default_value = "127.0.0.1:7777")]
    connect: String,
}

/// stdin → socket, a line at a time, up to `/quit` or the end of input;
/// then half-close, so the server sees end-of-file and closes its side.
fn send_lines(mut socket: &TcpStream) -> io::Result<()> {
    for line in io::stdin().lock().lines() {
        let line = line?;
        socket.write_all(format!("{line}\n").as_bytes())?;
        if line.trim_end() == "/quit" {
            break;
        }
    }
    socket.shutdown(Shutdown::Write)
}

/// socket → stdout, each line as soon as it arrives, until the server
/// closes the connection.
fn print_lines(socket: &TcpStream) -> io::Result<()> {
    let mut reader = BufReader::new(socket);
    let mut stdout = io::stdout().lock();
    let mut line = Vec::new();
    while reader.read_until(b'\n', &mut line)? > 0 {
        stdout.write_all(&line)?;
        stdout.flush()?;
        line.clear();
    }
    Ok(())
}

fn run(args: &Args) -> io::Result<()> {
    let socket = TcpStream::connect(args.connect.as_str())?;
    let sender = socket.try_clone()?;
    // Not joined: it may sit in a read of stdin forever, and the process
    // ends when the server closes the connection.
    thread::Builder::new().name("stdin".into()).spawn(move || {
        if let Err(e) = send_lines(&sender) {
            eprintln!("chat_client: sending: {e}");
            // Wake the printer: there is no point going on.
            let _ = sender.shutdown(Shutdown::Both);
        }
    })?;
    print_lines(&socket)
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chat_client: {e}");
            ExitCode::FAILURE
        }
    }
}
