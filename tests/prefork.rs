//! Prefork dispatch (a supervisor and worker processes on one listening
//! socket), run as real processes: the echo_server example in `--mode
//! prefork`, and fork_probe with `--prefork`.
//!
//! Workers appear a moment after the first stdout line (the supervisor
//! forks them in `serve_forever`), so each test first waits for them in
//! `/proc`.

#![cfg(target_os = "linux")]

mod util;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::thread;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use util::procfs::{children, eventually, exited, udp_round_trip};
use util::{Proc, STEP, connect, echo_once};

fn start(name: &str, args: &[&str]) -> (Proc, SocketAddr) {
    let proc = Proc::start(name, args);
    let addr = proc
        .listen_addr("tcp")
        .parse()
        .expect("first line holds a socket address");
    (proc, addr)
}

/// Waits until `supervisor` has exactly `n` live workers and returns them.
fn workers(supervisor: i32, n: usize) -> Vec<i32> {
    let mut found = Vec::new();
    eventually(&format!("{n} workers run"), || {
        found = children(supervisor);
        found.len() == n && found.iter().all(|&w| !exited(w))
    });
    found
}

fn signal(pid: i32, sig: Signal) {
    kill(Pid::from_raw(pid), sig).expect("kill");
}

fn echo_clients(addr: SocketAddr, n: usize) {
    let clients: Vec<_> = (0..n)
        .map(|i| {
            thread::spawn(move || {
                let payload = format!("prefork client {i};").repeat(200).into_bytes();
                assert_eq!(echo_once(addr, &payload), payload);
            })
        })
        .collect();
    for client in clients {
        client.join().expect("a client failed");
    }
}

fn stop_and_check(mut proc: Proc, workers: &[i32]) {
    proc.signal(Signal::SIGTERM);
    let status = proc.wait_exit(STEP).expect("exits after SIGTERM");
    assert!(status.success(), "{status:?}");
    for &w in workers {
        assert!(exited(w), "worker {w} outlived its supervisor");
    }
}

#[test]
fn a_worker_killed_with_sigkill_is_replaced_and_clients_keep_being_served() {
    let (proc, addr) = start(
        "echo_server",
        &[
            "--bind",
            "127.0.0.1:0",
            "--mode",
            "prefork",
            "--processes",
            "2",
            "--workers",
            "2",
        ],
    );
    let before = workers(proc.pid, 2);
    echo_clients(addr, 20);

    signal(before[0], Signal::SIGKILL);
    let mut after = Vec::new();
    eventually("a replacement worker runs", || {
        after = children(proc.pid);
        after.len() == 2 && !after.contains(&before[0]) && after.iter().all(|&w| !exited(w))
    });
    assert!(
        after.contains(&before[1]),
        "the other worker was left alone"
    );
    echo_clients(addr, 20);
    stop_and_check(proc, &after);
}

/// Sync workers (one request at a time): the one serving the client is busy
/// in its handler, yet new connections are refused at once, because the
/// supervisor stops the shared listening socket itself (Linux).
#[test]
fn sigterm_to_the_supervisor_drains_and_exits_zero_with_no_worker_left() {
    let (mut proc, addr) = start(
        "echo_server",
        &[
            "--bind",
            "127.0.0.1:0",
            "--mode",
            "prefork",
            "--processes",
            "2",
        ],
    );
    let workers = workers(proc.pid, 2);
    let mut client = connect(addr);
    client.write_all(b"first ").unwrap();
    let mut echoed = [0u8; 6];
    client.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, b"first ");

    proc.signal(Signal::SIGTERM);
    eventually("new connections are refused", || {
        TcpStream::connect_timeout(&addr, STEP).is_err()
    });
    // The request in flight is drained, not cut off.
    client.write_all(b"second").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"second");

    let status = proc.wait_exit(STEP).expect("exits after the drain");
    assert!(status.success(), "{status:?}");
    for w in workers {
        assert!(exited(w), "worker {w} left behind");
    }
}

#[test]
fn prefork_serves_udp_from_every_worker_socket_copy() {
    let proc = Proc::start(
        "echo_server",
        &[
            "--udp",
            "--bind",
            "127.0.0.1:0",
            "--mode",
            "prefork",
            "--processes",
            "2",
        ],
    );
    let addr: SocketAddr = proc.listen_addr("udp").parse().unwrap();
    let workers = workers(proc.pid, 2);
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..20 {
        udp_round_trip(&client, addr, format!("datagram {i}").as_bytes());
    }
    stop_and_check(proc, &workers);
}

/// A rolling restart of one worker: SIGTERM to the worker alone drains it
/// and it is replaced, and — a worker never having bound the socket — the
/// Unix socket file stays until the supervisor stops.
#[test]
fn a_worker_stopped_on_its_own_is_replaced_and_keeps_the_socket_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("prefork.sock");
    let proc = Proc::start(
        "echo_server",
        &[
            "--unix",
            path.to_str().unwrap(),
            "--mode",
            "prefork",
            "--processes",
            "2",
        ],
    );
    let before = workers(proc.pid, 2);
    signal(before[0], Signal::SIGTERM);
    let mut after = Vec::new();
    eventually("a replacement worker runs", || {
        after = children(proc.pid);
        after.len() == 2 && !after.contains(&before[0]) && after.iter().all(|&w| !exited(w))
    });
    assert!(
        path.exists(),
        "a worker removed the supervisor's socket file"
    );
    for i in 0..5 {
        let mut stream = UnixStream::connect(&path).unwrap();
        stream.set_read_timeout(Some(STEP)).unwrap();
        let message = format!("unix {i}");
        stream.write_all(message.as_bytes()).unwrap();
        stream.shutdown(Shutdown::Write).unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).unwrap();
        assert_eq!(reply, message);
    }
    stop_and_check(proc, &after);
    assert!(!path.exists(), "the supervisor removes its socket file");
}

fn fork_probe(dir: &Path, processes: &str) -> (Proc, SocketAddr) {
    let record = dir.join("record");
    let log = dir.join("server.log");
    start(
        "fork_probe",
        &[
            "--record",
            record.to_str().unwrap(),
            "--server-log",
            log.to_str().unwrap(),
            "--prefork",
            processes,
        ],
    )
}

fn command(addr: SocketAddr, line: &str) -> String {
    let mut stream = connect(addr);
    stream.write_all(format!("{line}\n").as_bytes()).unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply).unwrap();
    reply
}

#[test]
fn a_handler_that_aborts_takes_down_only_its_worker() {
    let dir = tempfile::tempdir().unwrap();
    let (proc, addr) = fork_probe(dir.path(), "2");
    let before = workers(proc.pid, 2);
    let mut stream = connect(addr);
    stream.write_all(b"abort\n").unwrap();
    let mut reply = Vec::new();
    // The worker dies without a reply: end-of-file or a reset.
    match stream.read_to_end(&mut reply) {
        Ok(_) => assert!(reply.is_empty(), "{reply:?}"),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    let record = std::fs::read_to_string(dir.path().join("record")).unwrap();
    let aborted: i32 = record
        .trim()
        .strip_prefix("abort ")
        .and_then(|p| p.parse().ok())
        .expect("the worker recorded its pid");
    assert!(before.contains(&aborted));
    let mut after = Vec::new();
    eventually("the crashed worker is replaced", || {
        after = children(proc.pid);
        after.len() == 2 && !after.contains(&aborted) && after.iter().all(|&w| !exited(w))
    });
    assert_eq!(command(addr, "still serving"), "still serving\n");
    let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains(&format!("worker {aborted} ")) && l.contains("SIGABRT")),
        "{log}"
    );
    stop_and_check(proc, &after);
}

#[test]
fn a_handler_calling_shutdown_in_a_worker_stops_the_whole_server() {
    let dir = tempfile::tempdir().unwrap();
    let (mut proc, addr) = fork_probe(dir.path(), "2");
    let workers = workers(proc.pid, 2);
    assert_eq!(command(addr, "shutdown"), "ok\n");
    let status = proc.wait_exit(STEP).expect("the supervisor stops");
    assert!(status.success(), "{status:?}");
    for w in workers {
        assert!(exited(w), "worker {w} left behind");
    }
}

/// PR_SET_PDEATHSIG: a supervisor killed outright (no chance to forward
/// anything) still leaves no worker serving behind it.
#[test]
fn workers_stop_when_the_supervisor_is_killed() {
    let (mut proc, _addr) = start(
        "echo_server",
        &[
            "--bind",
            "127.0.0.1:0",
            "--mode",
            "prefork",
            "--processes",
            "2",
        ],
    );
    let workers = workers(proc.pid, 2);
    proc.signal(Signal::SIGKILL);
    let status = proc.wait_exit(STEP).expect("SIGKILL ends it");
    assert!(!status.success());
    eventually("every worker has exited", || {
        workers.iter().all(|&w| exited(w))
    });
}
