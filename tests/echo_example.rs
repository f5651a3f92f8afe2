//! The echo_server and echo_client examples, run as real processes and
//! talked to over real sockets, the way an outside checker would.

mod util;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::process::{Command, Stdio};

use util::{Proc, STEP, connect, example};

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
    for mode in ["sync", "threading", "pool"] {
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
