//! The file_upload and upload_client examples, run as real processes: real
//! uploads over loopback into temporary directories, good ones checked byte
//! for byte, bad ones checked to leave nothing behind.

mod util;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use nix::sys::signal::Signal;
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use util::{Proc, STEP, example};

/// Uploads share two cores with the rest of the suite: allow them longer
/// than one ordinary step.
const UPLOAD_LIMIT: Duration = Duration::from_secs(120);
const MAX_BYTES: u64 = 6_000_000;

/// A running server and the directory it stores into.
struct Server {
    proc: Proc,
    addr: SocketAddr,
    root: TempDir,
}

impl Server {
    /// Starts file_upload storing into `<tmp>/store` (so an escape to the
    /// parent would show in `<tmp>`).
    fn start(extra: &[&str]) -> Server {
        let root = tempfile::tempdir().unwrap();
        let store = root.path().join("store");
        let store_arg = store.to_str().unwrap().to_owned();
        let max = MAX_BYTES.to_string();
        let mut args = vec![
            "--bind",
            "127.0.0.1:0",
            "--dir",
            &store_arg,
            "--max-bytes",
            &max,
            "--log-level",
            "error",
        ];
        args.extend_from_slice(extra);
        let proc = Proc::start("file_upload", &args);
        let addr: SocketAddr = proc.listen_addr("tcp").parse().unwrap();
        assert_eq!(
            proc.first_line,
            format!("listening on tcp://127.0.0.1:{}\n", addr.port())
        );
        Server { proc, addr, root }
    }

    fn store(&self) -> PathBuf {
        self.root.path().join("store")
    }

    /// The names in the store, sorted.
    fn stored(&self) -> Vec<String> {
        names_in(&self.store())
    }

    /// Nothing was stored, nothing was left half-written, nothing escaped.
    fn assert_nothing_stored(&self, case: &str) {
        assert_eq!(self.stored(), Vec::<String>::new(), "{case}");
        assert_eq!(names_in(self.root.path()), ["store"], "{case}");
    }
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Deterministic pseudo-random bytes (xorshift64*): no extra dependency,
/// the same files on every run, and quick enough in a debug build.
fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = vec![0; len.next_multiple_of(8)];
    for chunk in out.chunks_exact_mut(8) {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        chunk.copy_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Sends `header` and `body` over a raw connection, optionally half-closes,
/// and returns the server's one-line answer (without `\n`).
fn raw_upload(addr: SocketAddr, header: &[u8], body: &[u8], half_close: bool) -> String {
    let mut stream = util::connect(addr);
    stream.write_all(header).unwrap();
    stream.write_all(body).unwrap();
    if half_close {
        stream.shutdown(Shutdown::Write).unwrap();
    }
    let mut reply = String::new();
    BufReader::new(&stream)
        .read_line(&mut reply)
        .expect("read the answer");
    assert!(reply.ends_with('\n'), "unterminated answer {reply:?}");
    reply.pop();
    // One answer, then the server closes.
    let mut rest = Vec::new();
    (&stream).read_to_end(&mut rest).expect("read to EOF");
    assert!(rest.is_empty(), "more after the answer: {rest:?}");
    reply
}

/// An upload of `data` as `name`, done right.
fn good_upload(addr: SocketAddr, name: &str, data: &[u8]) -> String {
    let header = format!("UPLOAD {name} {} {}\n", data.len(), sha256_hex(data));
    raw_upload(addr, header.as_bytes(), data, false)
}

/// Waits for a child with a time limit (killing it past the limit) and
/// returns its output.
fn finish(child: Child, limit: Duration) -> Output {
    let pid = child.id() as i32;
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(output) => output.expect("wait for the client"),
        Err(_) => {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
            panic!("process {pid} still running after {limit:?}");
        }
    }
}

fn upload_client(addr: SocketAddr, args: &[&str]) -> Child {
    Command::new(example("upload_client"))
        .arg("--connect")
        .arg(addr.to_string())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn upload_client")
}

#[test]
fn twenty_concurrent_uploads_are_stored_with_correct_hashes() {
    let server = Server::start(&["--workers", "4"]);
    let sources = tempfile::tempdir().unwrap();
    let files: Vec<(String, Vec<u8>)> = (0..20u64)
        .map(|i| {
            let len = 1_000_000 + (random_bytes(1000 + i, 8)[0] as usize * 4_000_000) / 255;
            (format!("file-{i:02}.bin"), random_bytes(i, len))
        })
        .collect();
    for (name, data) in &files {
        fs::write(sources.path().join(name), data).unwrap();
    }
    // All twenty at once: four are served, the rest queue.
    let clients: Vec<Child> = files
        .iter()
        .map(|(name, _)| {
            let path = sources.path().join(name);
            upload_client(server.addr, &[path.to_str().unwrap()])
        })
        .collect();
    for ((name, data), client) in files.iter().zip(clients) {
        let output = finish(client, UPLOAD_LIMIT);
        assert!(
            output.status.success(),
            "{name}: {:?} {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(
            String::from_utf8(output.stdout).unwrap(),
            format!("OK {} {}\n", data.len(), sha256_hex(data)),
            "{name}"
        );
        let stored = fs::read(server.store().join(name)).unwrap();
        assert!(stored == *data, "{name}: stored bytes differ");
    }
    let mut names: Vec<String> = files.iter().map(|(n, _)| n.clone()).collect();
    names.sort();
    assert_eq!(server.stored(), names, "twenty files and nothing else");
}

#[test]
fn each_bad_upload_gets_err_and_leaves_no_file() {
    let server = Server::start(&["--workers", "2"]);
    let addr = server.addr;
    let data = random_bytes(7, 100_000);
    let hash = sha256_hex(&data);

    let long_name = "n".repeat(256);
    for name in [
        "../escape",
        "..",
        ".",
        "/etc/passwd",
        "/tmp/abs",
        "sub/file",
        "back\\slash",
        "nul\0byte",
        "tab\there",
        ".hidden",
        "",
        long_name.as_str(),
    ] {
        let header = format!("UPLOAD {name} {} {hash}\n", data.len());
        let reply = raw_upload(addr, header.as_bytes(), &data, false);
        assert!(reply.starts_with("ERR"), "name {name:?} got {reply:?}");
        server.assert_nothing_stored(&format!("name {name:?}"));
    }

    // Over --max-bytes: refused from the header, with no data sent.
    let header = format!("UPLOAD big.bin {} {hash}\n", MAX_BYTES + 1);
    let reply = raw_upload(addr, header.as_bytes(), b"", false);
    assert!(
        reply.starts_with("ERR") && reply.contains("too large"),
        "{reply:?}"
    );
    server.assert_nothing_stored("oversize");

    // Data that does not match the hash.
    let wrong = sha256_hex(b"something else");
    let header = format!("UPLOAD wrong.bin {} {wrong}\n", data.len());
    let reply = raw_upload(addr, header.as_bytes(), &data, false);
    assert!(
        reply.starts_with("ERR") && reply.contains("mismatch"),
        "{reply:?}"
    );
    server.assert_nothing_stored("wrong hash");

    // The client stops after half the data.
    let header = format!("UPLOAD short.bin {} {hash}\n", data.len());
    let reply = raw_upload(addr, header.as_bytes(), &data[..50_000], true);
    assert!(
        reply.starts_with("ERR") && reply.contains("truncated"),
        "{reply:?}"
    );
    server.assert_nothing_stored("truncated");

    // Malformed headers.
    let endless = "A".repeat(5000);
    for header in [
        "HELLO\n".to_owned(),
        "upload a.bin 5 x\n".to_owned(),
        format!("UPLOAD a.bin 5 {hash} extra\n"),
        format!("UPLOAD a.bin -5 {hash}\n"),
        format!("UPLOAD a.bin +5 {hash}\n"),
        format!("UPLOAD a.bin 99999999999999999999999 {hash}\n"),
        "UPLOAD a.bin 5 abc123\n".to_owned(),
        format!("UPLOAD a.bin 5 {}\n", "g".repeat(64)),
        endless.clone(),
        String::new(),
    ] {
        let reply = raw_upload(addr, header.as_bytes(), b"", true);
        assert!(reply.starts_with("ERR"), "header {header:?} got {reply:?}");
        server.assert_nothing_stored(&format!("header {header:?}"));
    }

    // The server is none the worse: a good upload with the longest name.
    let name = "n".repeat(255);
    assert_eq!(good_upload(addr, &name, &data), format!("OK 100000 {hash}"));
    assert_eq!(server.stored(), [name.as_str()]);
    assert!(fs::read(server.store().join(&name)).unwrap() == data);
    // \r\n ends a header too; an empty file is a file.
    let header = format!("UPLOAD empty.txt 0 {}\r\n", sha256_hex(b""));
    let reply = raw_upload(addr, header.as_bytes(), b"", false);
    assert_eq!(reply, format!("OK 0 {}", sha256_hex(b"")));
    assert_eq!(
        fs::metadata(server.store().join("empty.txt"))
            .unwrap()
            .len(),
        0
    );
}

#[test]
fn a_failed_upload_keeps_the_old_file_and_a_good_one_replaces_it() {
    let server = Server::start(&[]);
    let v1 = random_bytes(1, 20_000);
    let v2 = random_bytes(2, 30_000);
    let path = server.store().join("keep.bin");
    assert!(good_upload(server.addr, "keep.bin", &v1).starts_with("OK "));

    let wrong = format!("UPLOAD keep.bin {} {}\n", v2.len(), sha256_hex(&v1));
    let reply = raw_upload(server.addr, wrong.as_bytes(), &v2, false);
    assert!(reply.starts_with("ERR"), "{reply:?}");
    let short = format!("UPLOAD keep.bin {} {}\n", v2.len(), sha256_hex(&v2));
    let reply = raw_upload(server.addr, short.as_bytes(), &v2[..10], true);
    assert!(reply.starts_with("ERR"), "{reply:?}");
    assert!(fs::read(&path).unwrap() == v1, "the old file is intact");
    assert_eq!(server.stored(), ["keep.bin"]);

    assert_eq!(
        good_upload(server.addr, "keep.bin", &v2),
        format!("OK {} {}", v2.len(), sha256_hex(&v2))
    );
    assert!(fs::read(&path).unwrap() == v2, "replaced");
    assert_eq!(server.stored(), ["keep.bin"]);
}

#[test]
fn upload_client_exits_non_zero_on_err_and_on_no_server() {
    let server = Server::start(&[]);
    let sources = tempfile::tempdir().unwrap();
    let small = sources.path().join("small.txt");
    fs::write(&small, b"hello\n").unwrap();
    let small = small.to_str().unwrap();

    let output = finish(
        upload_client(server.addr, &[small, "--name", "../escape"]),
        STEP,
    );
    assert!(!output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(stdout.starts_with("ERR "), "{stdout:?}");

    // Too large: refused from the header while the client is still sending.
    let big = sources.path().join("big.bin");
    fs::write(&big, random_bytes(3, MAX_BYTES as usize + 1)).unwrap();
    let output = finish(
        upload_client(server.addr, &[big.to_str().unwrap()]),
        UPLOAD_LIMIT,
    );
    assert!(!output.status.success());
    server.assert_nothing_stored("client uploads");

    // --name renames; the reply is printed.
    let output = finish(
        upload_client(server.addr, &[small, "--name", "renamed.txt"]),
        STEP,
    );
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        format!("OK 6 {}\n", sha256_hex(b"hello\n"))
    );
    assert_eq!(server.stored(), ["renamed.txt"]);

    // Nothing listening.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let output = finish(upload_client(closed, &[small]), STEP);
    assert!(!output.status.success());
    assert!(output.stdout.is_empty());
}

#[test]
fn sigterm_mid_upload_exits_0_and_leaves_no_file() {
    let mut server = Server::start(&["--drain-secs", "1"]);
    let data = random_bytes(9, 200_000);
    // One client stalls halfway through its data; one is connected and idle.
    let mut stalled = util::connect(server.addr);
    let header = format!("UPLOAD stalled.bin {} {}\n", data.len(), sha256_hex(&data));
    stalled.write_all(header.as_bytes()).unwrap();
    stalled.write_all(&data[..100_000]).unwrap();
    let _idle = util::connect(server.addr);
    // A completed upload proves both connections were accepted by then
    // (the pool serves in order).
    assert!(good_upload(server.addr, "done.bin", &data).starts_with("OK "));

    server.proc.signal(Signal::SIGTERM);
    let status = server.proc.wait_exit(STEP).expect("exits after SIGTERM");
    assert!(status.success(), "{status:?}");
    assert_eq!(server.stored(), ["done.bin"], "no part of stalled.bin");
}
