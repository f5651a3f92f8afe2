//! The echo_server and echo_client examples, run as real processes and
//! talked to over real sockets, the way an outside checker would.

mod util;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::process::{Command, Stdio};

use util::{Proc, STEP, connect, example, udp_client, udp_request};

fn start(args: &[&str]) -> (Proc, SocketAddr) {
    let proc = Proc::start("echo_server", args);
    let addr: SocketAddr = proc
        .listen_addr("tcp")
        .parse()
        .expect("first line holds a socket address");
    (proc, addr)
}

fn echo(addr: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut stream = connect(addr);
    stream.write_all(data).unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).unwrap();
    reply
}

#[test]
fn first_line_is_exact_and_every_mode_echoes_raw_bytes() {
    for mode in ["sync", "threading", "pool", "reactor", "forking", "prefork"] {
        let (mut proc, addr) = start(&["--bind", "127.0.0.1:0", "--mode", mode]);
        assert_eq!(
            proc.first_line,
            format!("listening on tcp://127.0.0.1:{}\n", addr.port())
        );
        assert_ne!(addr.port(), 0);
        // Raw bytes, not lines: every byte value, no trailing newline.
        let payload: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
        assert_eq!(echo(addr, &payload), payload, "mode {mode}");
        proc.signal(nix::sys::signal::Signal::SIGTERM);
        let status = proc.wait_exit(STEP).expect("exits after SIGTERM");
        assert!(status.success(), "mode {mode}: {status:?}");
    }
}

#[test]
fn ipv6_bind_prints_a_bracketed_address() {
    let (proc, addr) = start(&["--bind", "[::1]:0", "--workers", "2", "--queue", "4"]);
    assert_eq!(
        proc.first_line,
        format!("listening on tcp://[::1]:{}\n", addr.port())
    );
    assert_eq!(echo(addr, b"over v6"), b"over v6");
}

#[test]
fn a_bad_bind_address_fails_with_a_clear_error() {
    let output = Command::new(example("echo_server"))
        .args(["--bind", "not-an-address"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        output.stdout.is_empty(),
        "nothing is listening, so no first line"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("echo_server:"), "{stderr}");
}

#[test]
fn echo_client_sends_lines_and_prints_replies() {
    let (_proc, addr) = start(&["--bind", "127.0.0.1:0"]);
    let mut client = Command::new(example("echo_client"))
        .args(["--connect", &addr.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    client
        .stdin
        .take()
        .unwrap()
        .write_all(b"one\ntwo words\nthree\n")
        .unwrap();
    let output = client.wait_with_output().unwrap();
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        "one\ntwo words\nthree\n"
    );

    let output = Command::new(example("echo_client"))
        .args(["--connect", &addr.to_string(), "--message", "hello"])
        .output()
        .unwrap();
    assert!(output.status.success());
    assert_eq!(output.stdout, b"hello\n");
}

fn sigterm_exits_zero(mut proc: Proc, what: &str) {
    proc.signal(nix::sys::signal::Signal::SIGTERM);
    let status = proc.wait_exit(STEP).expect("exits after SIGTERM");
    assert!(status.success(), "{what}: {status:?}");
}

#[test]
fn udp_flag_echoes_each_datagram_unchanged_to_its_sender() {
    for (mode, bind) in [
        ("sync", "127.0.0.1:0"),
        ("threading", "127.0.0.1:0"),
        ("pool", "127.0.0.1:0"),
        ("pool", "[::1]:0"),
    ] {
        let proc = Proc::start("echo_server", &["--udp", "--bind", bind, "--mode", mode]);
        let addr: SocketAddr = proc.listen_addr("udp").parse().expect("udp://HOST:PORT");
        assert_ne!(addr.port(), 0);
        assert_eq!(proc.first_line, format!("listening on udp://{addr}\n"));
        assert_eq!(addr.is_ipv6(), bind.starts_with('['));
        // Two clients, each answered with its own datagrams: raw bytes,
        // every value, and the replies come from the server's address.
        let clients = [udp_client(addr), udp_client(addr)];
        for round in 0..3u8 {
            for (c, client) in clients.iter().enumerate() {
                let payload: Vec<u8> = (0..=255u8)
                    .cycle()
                    .skip(c + round as usize)
                    .take(1000 + c)
                    .collect();
                let (reply, from) = udp_request(client, addr, &payload);
                assert_eq!(reply, payload, "mode {mode}, client {c}");
                assert_eq!(from, addr);
            }
        }
        sigterm_exits_zero(proc, mode);
    }
}

#[test]
fn unix_flag_serves_a_unix_stream_echo_and_removes_its_file() {
    use std::os::unix::net::UnixStream;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("echo.sock");
    // A stale file from an earlier run that died is replaced.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let proc = Proc::start("echo_server", &["--unix", path.to_str().unwrap()]);
    assert_eq!(
        proc.first_line,
        format!("listening on unix://{}\n", path.display())
    );
    assert_eq!(proc.listen_addr("unix"), path.to_str().unwrap());
    let payload: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let mut stream = UnixStream::connect(&path).unwrap();
    stream.set_read_timeout(Some(STEP)).unwrap();
    stream.write_all(&payload).unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).unwrap();
    assert_eq!(reply, payload);

    // A second server on the live path fails clearly, prints no first line,
    // and the first keeps serving.
    let output = Command::new(example("echo_server"))
        .args(["--unix", path.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("already listening"), "{stderr}");
    let mut stream = UnixStream::connect(&path).unwrap();
    stream.set_read_timeout(Some(STEP)).unwrap();
    stream.write_all(b"still here").unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).unwrap();
    assert_eq!(reply, b"still here");

    sigterm_exits_zero(proc, "unix stream");
    assert!(!path.exists(), "the socket file is removed on exit");
}

#[test]
fn unix_and_udp_flags_serve_a_unix_datagram_echo() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("echo-dgram.sock");
    let proc = Proc::start(
        "echo_server",
        &[
            "--unix",
            path.to_str().unwrap(),
            "--udp",
            "--mode",
            "threading",
        ],
    );
    assert_eq!(
        proc.first_line,
        format!("listening on unix://{}\n", path.display())
    );
    let clients: Vec<UnixDatagram> = (0..2)
        .map(|c| {
            let client = UnixDatagram::bind(dir.path().join(format!("client-{c}.sock"))).unwrap();
            client.set_read_timeout(Some(STEP)).unwrap();
            client
        })
        .collect();
    let mut buf = vec![0; 4096];
    for round in 0..3usize {
        for (c, client) in clients.iter().enumerate() {
            let payload: Vec<u8> = (0..=255u8).cycle().skip(round + c).take(300 + c).collect();
            client.send_to(&payload, &path).unwrap();
            let (n, from) = client.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], payload, "client {c}");
            assert_eq!(from.as_pathname(), Some(path.as_path()));
        }
    }
    sigterm_exits_zero(proc, "unix datagram");
    assert!(!path.exists(), "the socket file is removed on exit");
}
