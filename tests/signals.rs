//! Ctrl-C and SIGTERM, for real: the echo_server example runs as a process,
//! gets real signals (kill(2)), and is talked to over real sockets, in each
//! dispatch mode.
//!
//! A signal is handled asynchronously (on ctrlc's thread), so where a test
//! must know it has been acted on it waits for the server's log line
//! "shutdown requested". Time is the behaviour here — a client that keeps
//! sending for half a second, a process that must exit within the drain
//! deadline plus one second — so those are the only timed waits.

#![cfg(unix)]

mod util;

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use util::{Proc, STEP, connect};

const MODES: [&str; 6] = ["sync", "threading", "pool", "reactor", "forking", "prefork"];

/// What the server logs once it has begun shutting down (after it stopped
/// accepting).
const SHUTDOWN_BEGUN: &str = "shutdown requested";

fn start(mode: &str, drain_secs: &str) -> (Proc, SocketAddr) {
    let proc = Proc::start_logged(
        "echo_server",
        &[
            "--bind",
            "127.0.0.1:0",
            "--mode",
            mode,
            "--workers",
            "4",
            "--drain-secs",
            drain_secs,
            "--log-level",
            "info",
        ],
    );
    let addr = proc.listen_addr("tcp").parse().expect("a socket address");
    (proc, addr)
}

/// Connects and checks the connection is being served: one echo.
fn in_conversation(addr: SocketAddr) -> TcpStream {
    let mut stream = connect(addr);
    stream.write_all(b"hello").unwrap();
    let mut echoed = [0u8; 5];
    stream.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, b"hello");
    stream
}

/// A connection attempted after shutdown began is refused, or closed
/// without service (no echo).
fn assert_not_served(addr: SocketAddr, what: &str) {
    match TcpStream::connect_timeout(&addr, STEP) {
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{what}: {e}"),
        Ok(mut late) => {
            late.set_read_timeout(Some(STEP)).unwrap();
            let _ = late.write_all(b"late");
            let _ = late.shutdown(Shutdown::Write);
            let mut reply = Vec::new();
            match late.read_to_end(&mut reply) {
                Ok(_) => assert_eq!(reply, b"", "{what}: served after the signal"),
                Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{what}: {e}"),
            }
        }
    }
}

/// A client mid-conversation when the signal arrives keeps sending for half
/// a second, then half-closes, and gets every byte back; nobody new gets in;
/// the process exits 0.
fn mid_conversation(mode: &str, signal: Signal) {
    let what = format!("{mode}, {signal}");
    // A drain deadline far beyond the conversation: nothing may be cut off.
    let (mut proc, addr) = start(mode, "30");
    let mut stream = in_conversation(addr);
    let mut reader = stream.try_clone().unwrap();
    let reading = thread::spawn(move || {
        let mut echoed = b"hello".to_vec();
        reader.read_to_end(&mut echoed).map(|_| echoed)
    });
    let mut sent = b"hello".to_vec();
    let signalled = Instant::now();
    proc.signal(signal);
    proc.wait_stderr(SHUTDOWN_BEGUN, STEP);
    assert_not_served(addr, &what);
    let mut chunk_no = 0u32;
    while signalled.elapsed() < Duration::from_millis(500) {
        let chunk: Vec<u8> = (0..1024u32)
            .map(|i| (i.wrapping_mul(31) ^ chunk_no) as u8)
            .collect();
        stream.write_all(&chunk).unwrap();
        sent.extend_from_slice(&chunk);
        chunk_no += 1;
        thread::sleep(Duration::from_millis(5));
    }
    stream.shutdown(Shutdown::Write).unwrap();
    let echoed = reading.join().unwrap().expect("read the echo");
    assert!(chunk_no > 0, "{what}: sent nothing after the signal");
    assert_eq!(echoed.len(), sent.len(), "{what}");
    assert!(echoed == sent, "{what}: echo differs");
    let status = proc.wait_exit(STEP).expect("exits after the drain");
    assert!(status.success(), "{what}: {status:?}");
}

#[test]
fn sigint_drains_a_client_mid_conversation_and_exits_0() {
    for mode in MODES {
        mid_conversation(mode, Signal::SIGINT);
    }
}

#[test]
fn sigterm_drains_a_client_mid_conversation_and_exits_0() {
    for mode in MODES {
        mid_conversation(mode, Signal::SIGTERM);
    }
}

/// A client that never hangs up is cut off at the drain deadline: the
/// process exits 0 no sooner than the deadline and within it plus 1 s.
fn never_hangs_up(mode: &str, signal: Signal) {
    let what = format!("{mode}, {signal}");
    let drain = Duration::from_secs(1);
    let (mut proc, addr) = start(mode, "1");
    let mut stream = in_conversation(addr);
    let signalled = Instant::now();
    proc.signal(signal);
    let status = proc
        .wait_exit(drain + Duration::from_secs(1))
        .unwrap_or_else(|| panic!("{what}: still running 1 s after the drain deadline"));
    let took = signalled.elapsed();
    assert!(status.success(), "{what}: {status:?}");
    assert!(
        took >= drain,
        "{what}: cut off after {took:?}, before the deadline"
    );
    // The server ended the connection: end-of-file, nothing more.
    let mut rest = Vec::new();
    match stream.read_to_end(&mut rest) {
        Ok(_) => assert_eq!(rest, b"", "{what}"),
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{what}: {e}"),
    }
}

#[test]
fn sigint_with_a_client_that_never_hangs_up_exits_0_at_the_deadline() {
    for mode in MODES {
        never_hangs_up(mode, Signal::SIGINT);
    }
}

#[test]
fn sigterm_with_a_client_that_never_hangs_up_exits_0_at_the_deadline() {
    for mode in MODES {
        never_hangs_up(mode, Signal::SIGTERM);
    }
}

#[test]
fn a_second_sigint_ends_the_drain_at_once() {
    for mode in MODES {
        // Only a second signal can end a 30 s drain within the 5 s allowed.
        let (mut proc, addr) = start(mode, "30");
        let _stream = in_conversation(addr);
        proc.signal(Signal::SIGINT);
        // Two signals sent before the first is handled merge into one.
        proc.wait_stderr(SHUTDOWN_BEGUN, STEP);
        proc.signal(Signal::SIGINT);
        let status = proc
            .wait_exit(Duration::from_secs(5))
            .unwrap_or_else(|| panic!("{mode}: the second SIGINT did not end the drain"));
        assert!(status.success(), "{mode}: {status:?}");
    }
}

#[test]
fn udp_and_unix_servers_stop_on_sigterm_with_status_0() {
    let mut udp = Proc::start_logged("echo_server", &["--udp", "--bind", "127.0.0.1:0"]);
    let addr = udp.listen_addr("udp");
    let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_read_timeout(Some(STEP)).unwrap();
    client.send_to(b"dgram", &addr).unwrap();
    let mut buf = [0u8; 16];
    let n = client.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"dgram");
    udp.signal(Signal::SIGTERM);
    assert!(udp.wait_exit(STEP).expect("udp server exits").success());

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("echo.sock");
    let mut unix = Proc::start_logged("echo_server", &["--unix", path.to_str().unwrap()]);
    assert_eq!(unix.listen_addr("unix"), path.to_str().unwrap());
    let mut stream = std::os::unix::net::UnixStream::connect(&path).unwrap();
    stream.set_read_timeout(Some(STEP)).unwrap();
    stream.write_all(b"unix").unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).unwrap();
    assert_eq!(reply, b"unix");
    unix.signal(Signal::SIGTERM);
    assert!(unix.wait_exit(STEP).expect("unix server exits").success());
    assert!(
        !path.exists(),
        "the socket file is removed on a graceful stop"
    );
}
