//! A file-upload server: each connection uploads one file into `--dir`,
//! checked against the size and SHA-256 its client announced. Shows a
//! worker pool doing real, bounded work per request — streaming to disk,
//! hashing on the way, an atomic rename at the end — and bad input refused
//! with a reason, without leaving anything behind.
//!
//! Run it and poke it:
//!
//! ```text
//! cargo run --example file_upload -- --bind 127.0.0.1:9000 --dir /tmp/uploads
//! cargo run --example upload_client -- --connect 127.0.0.1:9000 Cargo.toml
//! OK 1194 31837909d3038d2b8e6b5195f8887d8d40354b653d7cb679125ead25fb3b6440
//! # by hand: the header, then exactly <size> bytes
//! { printf 'UPLOAD hi.txt 3 %s\n' "$(printf 'hi\n' | sha256sum | cut -d' ' -f1)"; printf 'hi\n'; } \
//!     | nc -q2 127.0.0.1 9000
//! OK 3 98ea6e4f216f2fb4b69fff9b3a44842c38686ca685f3f55dc48c5d3fb1107be4
//! ```
//!
//! # The protocol
//!
//! The client sends one header line, `UPLOAD <name> <size> <sha256-hex>`
//! (`\n` or `\r\n`, at most 1024 bytes), then exactly `size` bytes. The
//! server answers one line and closes the connection:
//!
//! - `OK <size> <sha256-hex>` once the file is safely stored: its size and
//!   hash matched, its data was synced, and it was renamed into place;
//! - `ERR <reason>` otherwise — a malformed header; a name that is empty,
//!   longer than 255 bytes, starts with `.` (so `.`, `..` and hidden files),
//!   or contains `/`, `\`, a NUL or another control character; a size over
//!   `--max-bytes` (refused from the header, before any data is read); a
//!   connection closed before `size` bytes arrived (truncated); no data for
//!   `--timeout` seconds; a hash mismatch; or a disk error.
//!
//! The data goes to a temporary file in `--dir` (`.upload-XXXXXX.part`) and
//! is hashed as it streams. Only when size and hash match is it synced and
//! renamed to its name, atomically: a reader of `--dir` sees the old file or
//! the whole new one, never a part. An upload under the name of an existing
//! file **replaces** it. On any failure the temporary file is removed before
//! the `ERR` is sent. (Temporary files of a server killed with SIGKILL stay
//! behind, named `.upload-*.part`.)
//!
//! `--workers` uploads run at once (a pool; by default 8); more connections
//! wait in the queue and then in the listen backlog. The first line on
//! stdout is exactly `listening on tcp://HOST:PORT`; logs go to stderr.
//! Ctrl-C or SIGTERM lets uploads in progress finish for up to
//! `--drain-secs`, then exits with status 0.

mod common;
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use sha2::{Digest, Sha256};
use simplelog::LevelFilter;
use socketserver::{Pool, RequestHandler, TcpRequest, TcpServer};

/// The longest header line, in bytes, with its line ending.
const MAX_HEADER: u64 = 1024;
/// The longest file name, in bytes (`NAME_MAX` on Linux).
const MAX_NAME: usize = 255;
/// After an `ERR`, the server reads and discards what the client still
/// sends, for up to this long between reads and this many bytes in all.
/// Closing a TCP socket with unread input sends a reset instead of a FIN
/// (RFC 2525, section 2.17), and the kernel drops whatever it has not sent
/// yet — possibly the `ERR` itself. Apache calls this "lingering close".
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: u64 = 16 * 1024 * 1024;

/// Stores uploaded files, checked by size and SHA-256.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on (host:port; port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:9000")]
    bind: String,
    /// Directory the files are stored in (created if missing).
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// Uploads served at once (pool workers).
    #[arg(long, default_value_t = 8)]
    workers: usize,
    /// The largest upload accepted, in bytes (default 100 MiB).
    #[arg(long, value_name = "BYTES", default_value_t = 100 * 1024 * 1024)]
    max_bytes: u64,
    /// Seconds without data after which an upload is abandoned.
    #[arg(long, value_name = "S", default_value_t = 30.0)]
    timeout: f64,
    /// Seconds a graceful shutdown waits for uploads in progress.
    #[arg(long, value_name = "S", default_value_t = 5.0)]
    drain_secs: f64,
    /// Log level: off, error, warn, info, debug, trace.
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    log_level: LevelFilter,
}

/// Why an upload was refused: the text after `ERR `.
#[derive(Debug)]
enum UploadError {
    Header(String),
    Name(&'static str),
    TooLarge { size: u64, max: u64 },
    Truncated { got: u64, size: u64 },
    Mismatch { expected: String, actual: String },
    Receive(io::Error),
    Disk(io::Error),
}

impl fmt::Display for UploadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UploadError::Header(why) => write!(f, "bad header: {why}"),
            UploadError::Name(why) => write!(f, "bad name: {why}"),
            UploadError::TooLarge { size, max } => {
                write!(f, "too large: {size} bytes (the limit is {max})")
            }
            UploadError::Truncated { got, size } => {
                write!(f, "truncated: got {got} of {size} bytes")
            }
            UploadError::Mismatch { expected, actual } => {
                write!(f, "hash mismatch: expected {expected}, got {actual}")
            }
            UploadError::Receive(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                write!(f, "timed out waiting for data")
            }
            UploadError::Receive(e) => write!(f, "receive failed: {e}"),
            UploadError::Disk(e) => write!(f, "disk error: {e}"),
        }
    }
}

/// A parsed, checked header.
#[derive(Debug)]
struct Header {
    name: String,
    size: u64,
    sha256: String,
}

/// Why `name` may not be stored, if it may not.
fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        Err("empty")
    } else if name.len() > MAX_NAME {
        Err("longer than 255 bytes")
    } else if name.contains(['/', '\\']) {
        Err("contains a path separator")
    } else if name.chars().any(char::is_control) {
        Err("contains a control character")
    } else if name.starts_with('.') {
        Err("starts with '.'")
    } else {
        Ok(())
    }
}

/// Parses `UPLOAD <name> <size> <sha256-hex>` (line ending removed).
fn parse_header(line: &[u8], max_bytes: u64) -> Result<Header, UploadError> {
    let line = std::str::from_utf8(line).map_err(|_| UploadError::Header("not UTF-8".into()))?;
    let fields: Vec<&str> = line.split(' ').collect();
    let [verb, name, size, sha256] = fields[..] else {
        return Err(UploadError::Header(
            "expected UPLOAD <name> <size> <sha256-hex>".into(),
        ));
    };
    if verb != "UPLOAD" {
        return Err(UploadError::Header(format!("unknown command {verb:?}")));
    }
    check_name(name).map_err(UploadError::Name)?;
    // Digits only: u64's parser would also take a leading '+'.
    let size: u64 = match size.bytes().all(|b| b.is_ascii_digit()) {
        true => size.parse().ok(),
        false => None,
    }
    .ok_or_else(|| UploadError::Header(format!("bad size {size:?}")))?;
    if size > max_bytes {
        return Err(UploadError::TooLarge {
            size,
            max: max_bytes,
        });
    }
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(UploadError::Header(
            "the hash must be 64 hexadecimal digits".into(),
        ));
    }
    Ok(Header {
        name: name.to_owned(),
        size,
        sha256: sha256.to_ascii_lowercase(),
    })
}

/// Lower-case hexadecimal.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

struct UploadHandler {
    dir: PathBuf,
    max_bytes: u64,
}

impl UploadHandler {
    /// Reads the header and the data, and stores the file.
    fn receive(&self, req: &mut TcpRequest) -> Result<Header, UploadError> {
        let mut line = Vec::new();
        (&mut req.rfile)
            .take(MAX_HEADER)
            .read_until(b'\n', &mut line)
            .map_err(UploadError::Receive)?;
        if line.pop() != Some(b'\n') {
            return Err(UploadError::Header(if line.is_empty() {
                "no header".into()
            } else {
                format!("no complete header line within {MAX_HEADER} bytes")
            }));
        }
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        let header = parse_header(&line, self.max_bytes)?;
        self.store(req, &header)?;
        Ok(header)
    }

    /// Streams `header.size` bytes to a temporary file while hashing them;
    /// syncs and renames it into place only if size and hash match. On any
    /// error the temporary file is removed (by its `Drop`).
    fn store(&self, req: &mut TcpRequest, header: &Header) -> Result<(), UploadError> {
        let mut part = tempfile::Builder::new()
            .prefix(".upload-")
            .suffix(".part")
            // What File::create would give (0o666 less the umask), not
            // tempfile's private 0o600: the file is meant to be used.
            .permissions(std::fs::Permissions::from_mode(0o666))
            .tempfile_in(&self.dir)
            .map_err(UploadError::Disk)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0; 64 * 1024];
        let mut got = 0;
        while got < header.size {
            let want = (header.size - got).min(buf.len() as u64) as usize;
            let n = match req.rfile.read(&mut buf[..want]) {
                Ok(0) => {
                    return Err(UploadError::Truncated {
                        got,
                        size: header.size,
                    });
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(UploadError::Receive(e)),
            };
            hasher.update(&buf[..n]);
            part.write_all(&buf[..n]).map_err(UploadError::Disk)?;
            got += n as u64;
        }
        let actual = hex(&hasher.finalize());
        if actual != header.sha256 {
            return Err(UploadError::Mismatch {
                expected: header.sha256.clone(),
                actual,
            });
        }
        // Data first, then the rename, then the directory entry: after a
        // crash the name holds the old file or the whole new one.
        part.as_file().sync_all().map_err(UploadError::Disk)?;
        part.persist(self.dir.join(&header.name))
            .map_err(|e| UploadError::Disk(e.error))?;
        File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(UploadError::Disk)
    }
}

impl RequestHandler<TcpRequest> for UploadHandler {
    fn handle(&self, req: &mut TcpRequest) -> io::Result<()> {
        let peer = *req.peer_addr();
        match self.receive(req) {
            Ok(header) => {
                log::info!(
                    "{peer}: stored {:?} ({} bytes, sha256 {})",
                    header.name,
                    header.size,
                    header.sha256
                );
                writeln!(req.wfile, "OK {} {}", header.size, header.sha256)
            }
            Err(e) => {
                log::warn!("{peer}: upload refused: {e}");
                // A client that went away cannot be told; that is not a
                // second failure worth reporting.
                if let Err(e) = writeln!(req.wfile, "ERR {e}").and_then(|()| req.wfile.flush()) {
                    log::debug!("{peer}: could not send the refusal: {e}");
                    return Ok(());
                }
                // The client may still be sending the data we refused: say
                // we are done, then drain a little before closing.
                let _ = req.socket().shutdown(std::net::Shutdown::Write);
                if req.set_read_timeout(Some(LINGER)).is_ok() {
                    let _ = io::copy(&mut (&mut req.rfile).take(LINGER_BYTES), &mut io::sink());
                }
                Ok(())
            }
        }
    }
}

fn run(args: &Args) -> io::Result<()> {
    if args.workers == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "--workers must be at least 1",
        ));
    }
    std::fs::create_dir_all(&args.dir)?;
    let dir = args.dir.canonicalize()?;
    let handler = UploadHandler {
        dir: dir.clone(),
        max_bytes: args.max_bytes,
    };
    let mut server = TcpServer::bind(args.bind.as_str(), handler)?;
    server.set_dispatch(Pool::new(args.workers));
    server.set_read_timeout(Some(Duration::from_secs_f64(args.timeout.max(0.001))));
    server.set_drain_timeout(Duration::from_secs_f64(args.drain_secs.max(0.0)));
    server.shutdown_on_signals()?;
    let url = format!("tcp://{}", server.local_addr()?);
    common::announce(&url)?;
    log::info!(
        "storing uploads in {} on {url}: {} at once, up to {} bytes each",
        dir.display(),
        args.workers,
        args.max_bytes
    );
    let report = server.serve_forever()?;
    log::info!("stopped: {report}; {}", server.stats().snapshot());
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    common::init_logging(args.log_level);
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("file_upload: {e}");
            eprintln!("file_upload: {e}");
            ExitCode::FAILURE
        }
    }
}
