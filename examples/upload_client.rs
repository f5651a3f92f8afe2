//! The client of the file_upload example: hashes a file, sends
//! `UPLOAD <name> <size> <sha256-hex>` and the file's bytes, and prints the
//! server's one-line answer. A progress bar is drawn on stderr when stderr
//! is a terminal (indicatif).
//!
//! ```text
//! cargo run --example file_upload -- --dir /tmp/uploads &    # listening on tcp://127.0.0.1:9000
//! cargo run --example upload_client -- --connect 127.0.0.1:9000 Cargo.toml
//! OK 1194 31837909d3038d2b8e6b5195f8887d8d40354b653d7cb679125ead25fb3b6440
//! cargo run --example upload_client -- Cargo.toml --name ../escape
//! ERR bad name: contains a path separator                     # exit status 1
//! ```
//!
//! Exits with status 0 when the server answers `OK` with the file's size
//! and hash; non-zero on `ERR`, on any other answer, or if the file cannot
//! be read or the server cannot be reached.

use std::fs::File;
use std::io::{self, BufRead, BufReader, IsTerminal, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

/// Uploads one file to the file_upload example server.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Server address (host:port).
    #[arg(long, default_value = "127.0.0.1:9000")]
    connect: String,
    /// The file to upload.
    path: PathBuf,
    /// The name to store it under (default: the file's own name).
    #[arg(long)]
    name: Option<String>,
    /// Seconds to wait on the server (to connect, to take data, to answer).
    #[arg(long, value_name = "S", default_value_t = 60.0)]
    timeout: f64,
}

/// A failure, with the text to print.
fn error(message: impl Into<String>) -> io::Error {
    io::Error::other(message.into())
}

/// A bar of `len` bytes on stderr if it is a terminal; hidden otherwise.
fn progress(len: u64, what: &'static str) -> ProgressBar {
    if !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template(
        "{msg:>9} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    ProgressBar::new(len).with_style(style).with_message(what)
}

/// The SHA-256 of the first `size` bytes of `path`, in hex.
fn hash_file(path: &Path, size: u64) -> io::Result<String> {
    let bar = progress(size, "hashing");
    let mut file = bar.wrap_read(File::open(path)?.take(size));
    let mut hasher = Sha256::new();
    let mut buf = vec![0; 64 * 1024];
    loop {
        match file.read(&mut buf)? {
            0 => break,
            n => hasher.update(&buf[..n]),
        }
    }
    bar.finish_and_clear();
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Sends exactly `size` bytes of `path`.
fn send_file(path: &Path, size: u64, socket: &TcpStream) -> io::Result<()> {
    let bar = progress(size, "uploading");
    let mut file = File::open(path)?.take(size);
    let sent = io::copy(&mut file, &mut bar.wrap_write(socket))?;
    bar.finish_and_clear();
    if sent != size {
        return Err(error(format!(
            "{} shrank while uploading ({sent} of {size} bytes)",
            path.display()
        )));
    }
    Ok(())
}

fn run(args: &Args) -> io::Result<String> {
    let name = match &args.name {
        Some(name) => name.clone(),
        None => args
            .path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| {
                error(format!(
                    "{}: no usable file name; give --name",
                    args.path.display()
                ))
            })?
            .to_owned(),
    };
    if name.is_empty() || name.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Err(error(format!(
            "cannot send the name {name:?}: the protocol has no room for spaces or control characters"
        )));
    }
    let size = std::fs::metadata(&args.path)?.len();
    let sha256 = hash_file(&args.path, size)?;

    let timeout = Duration::from_secs_f64(args.timeout.max(0.001));
    let socket = TcpStream::connect(args.connect.as_str())?;
    socket.set_read_timeout(Some(timeout))?;
    socket.set_write_timeout(Some(timeout))?;
    (&socket).write_all(format!("UPLOAD {name} {size} {sha256}\n").as_bytes())?;
    // The server may refuse from the header (too large, bad name) and stop
    // reading: the write then fails, but its ERR is still worth reading.
    let sent = send_file(&args.path, size, &socket);
    if sent.is_err() {
        // Whatever went wrong, the server should not wait for the rest.
        let _ = socket.shutdown(Shutdown::Write);
    }

    let mut reply = String::new();
    let read = BufReader::new(&socket).take(1024).read_line(&mut reply);
    let reply = reply.trim_end().to_owned();
    if !reply.is_empty() {
        println!("{reply}");
    }
    match (sent, read) {
        (_, Ok(_)) if reply == format!("OK {size} {sha256}") => Ok(reply),
        (_, Ok(_)) if reply.starts_with("ERR") => Err(error("the server refused the upload")),
        (_, Ok(_)) if reply.starts_with("OK") => Err(error(format!(
            "the server stored something else: expected OK {size} {sha256}"
        ))),
        (Err(e), _) => Err(e),
        (Ok(()), Ok(0)) => Err(error("the server closed the connection without an answer")),
        (Ok(()), Ok(_)) => Err(error(format!("unexpected answer {reply:?}"))),
        (Ok(()), Err(e)) => Err(e),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("upload_client: {e}");
            ExitCode::FAILURE
        }
    }
}
