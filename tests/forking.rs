//! Forking dispatch (a child process per request), run as real processes:
//! the echo_server example in `--mode forking`, and the fork_probe example,
//! whose children record what they do in a file.
//!
//! These tests never fork inside the test harness: it runs many threads,
//! and forking dispatch requires a parent that runs only its serving thread
//! (see the `forking` module docs).

#![cfg(target_os = "linux")]

mod util;

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use nix::sys::signal::Signal;
use util::procfs::{children, eventually, exited, udp_round_trip, zombie_children};
use util::{Proc, STEP, connect, echo_once, recv};

fn start(name: &str, args: &[&str]) -> (Proc, SocketAddr) {
    let proc = Proc::start(name, args);
    let addr = proc
        .listen_addr("tcp")
        .parse()
        .expect("first line holds a socket address");
    (proc, addr)
}

fn fork_probe(dir: &Path, extra: &[&str]) -> (Proc, SocketAddr) {
    let record = dir.join("record");
    let log = dir.join("server.log");
    let mut args = vec![
        "--record",
        record.to_str().unwrap(),
        "--server-log",
        log.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    start("fork_probe", &args)
}

fn read_record(dir: &Path) -> Vec<(String, i32)> {
    let text = std::fs::read_to_string(dir.join("record")).unwrap_or_default();
    text.lines()
        .map(|line| {
            let (what, pid) = line.split_once(' ').expect("record line: WHAT PID");
            (what.to_owned(), pid.parse().expect("pid"))
        })
        .collect()
}

fn stop(mut proc: Proc) {
    proc.signal(Signal::SIGTERM);
    let status = proc.wait_exit(STEP).expect("exits after SIGTERM");
    assert!(status.success(), "{status:?}");
}

/// Sends one command line to fork_probe and returns the first reply line.
fn command(addr: SocketAddr, line: &str) -> String {
    let mut stream = connect(addr);
    stream.write_all(format!("{line}\n").as_bytes()).unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply).unwrap();
    reply
}

#[test]
fn fifty_tcp_clients_are_echoed_and_leave_no_zombie_children() {
    let (proc, addr) = start(
        "echo_server",
        &[
            "--bind",
            "127.0.0.1:0",
            "--mode",
            "forking",
            "--workers",
            "8",
        ],
    );
    for batch in 0..5 {
        let clients: Vec<_> = (0..10)
            .map(|i| {
                thread::spawn(move || {
                    let payload = format!("client {batch}-{i};").repeat(500).into_bytes();
                    assert_eq!(echo_once(addr, &payload), payload);
                })
            })
            .collect();
        for client in clients {
            client.join().expect("a client failed");
        }
    }
    // The last children exit just after their clients saw EOF, while the
    // server sits idle: it must wake on their exit and reap them, not wait
    // for another request.
    eventually("every child has been reaped", || {
        children(proc.pid).is_empty()
    });
    assert!(zombie_children(proc.pid).is_empty());
    stop(proc);
}

#[test]
fn fifty_udp_datagrams_are_echoed_and_leave_no_zombie_children() {
    let proc = Proc::start(
        "echo_server",
        &["--udp", "--bind", "127.0.0.1:0", "--mode", "forking"],
    );
    let addr: SocketAddr = proc.listen_addr("udp").parse().unwrap();
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..50 {
        udp_round_trip(&client, addr, format!("datagram {i}").as_bytes());
    }
    eventually("every child has been reaped", || {
        children(proc.pid).is_empty()
    });
    stop(proc);
}

/// Nine clients hold their children open; the test releases the oldest
/// only once three run at once, so a server without a cap would run all
/// nine together. The children's start/end lines in the record file give
/// the true concurrency.
#[test]
fn concurrent_children_never_exceed_max_children() {
    const MAX: usize = 3;
    const CLIENTS: usize = 9;
    let dir = tempfile::tempdir().unwrap();
    let (proc, addr) = fork_probe(dir.path(), &["--max-children", "3"]);
    let (started_tx, started_rx) = mpsc::channel();
    let mut releases = Vec::new();
    let mut clients = Vec::new();
    for id in 0..CLIENTS {
        let (release_tx, release_rx) = mpsc::channel::<()>();
        releases.push(Some(release_tx));
        let started_tx = started_tx.clone();
        clients.push(thread::spawn(move || {
            let mut stream = connect(addr);
            stream.write_all(b"hold\n").unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            assert!(line.starts_with("started "), "{line:?}");
            started_tx.send(id).unwrap();
            release_rx.recv_timeout(STEP).expect("released by the test");
            stream.shutdown(Shutdown::Write).unwrap();
            line.clear();
            reader.read_line(&mut line).unwrap();
            assert_eq!(line, "done\n");
        }));
    }
    let mut held = VecDeque::new();
    for _ in 0..CLIENTS {
        held.push_back(recv(&started_rx, "a child to start"));
        if held.len() == MAX {
            let oldest: usize = held.pop_front().unwrap();
            releases[oldest].take().unwrap().send(()).unwrap();
        }
    }
    for id in held {
        releases[id].take().unwrap().send(()).unwrap();
    }
    for client in clients {
        client.join().expect("a client failed");
    }
    // Each child wrote "end" before replying "done", so the record is
    // complete.
    let record = read_record(dir.path());
    let (mut live, mut most) = (0usize, 0usize);
    for (what, _pid) in &record {
        match what.as_str() {
            "start" => {
                live += 1;
                most = most.max(live);
            }
            "end" => live -= 1,
            other => panic!("unexpected record line {other}"),
        }
    }
    assert_eq!(record.len(), 2 * CLIENTS, "{record:?}");
    assert_eq!(most, MAX, "children running at once: {record:?}");
    stop(proc);
}

/// User and system CPU time of a process, in clock ticks.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .collect();
    // After the name: state is field 3, utime field 14, stime field 15.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn at_the_cap_the_server_waits_without_spinning() {
    let dir = tempfile::tempdir().unwrap();
    let (proc, addr) = fork_probe(dir.path(), &["--max-children", "1"]);
    let mut first = connect(addr);
    first.write_all(b"hold\n").unwrap();
    let mut reader = BufReader::new(first.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("started "), "{line:?}");
    // A second client queues in the backlog while the server is at its cap.
    let mut second = connect(addr);
    second.write_all(b"hold\n").unwrap();
    let before = cpu_ticks(proc.pid);
    // The behaviour under test is time: half a second at the cap.
    thread::sleep(Duration::from_millis(500));
    let used = cpu_ticks(proc.pid) - before;
    // A busy loop would burn ~50 ticks (at 100 Hz) in half a second.
    assert!(used <= 5, "the waiting server used {used} ticks of CPU");
    let starts = read_record(dir.path())
        .iter()
        .filter(|(w, _)| w == "start")
        .count();
    assert_eq!(starts, 1, "the second child started while the first ran");
    // Releasing the first lets the second in.
    first.shutdown(Shutdown::Write).unwrap();
    line.clear();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "done\n");
    second.shutdown(Shutdown::Write).unwrap();
    let mut reply = String::new();
    second.read_to_string(&mut reply).unwrap();
    assert!(
        reply.starts_with("started ") && reply.ends_with("done\n"),
        "{reply:?}"
    );
    stop(proc);
}

#[test]
fn a_child_that_aborts_or_panics_does_not_stop_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let (proc, addr) = fork_probe(dir.path(), &[]);

    let mut stream = connect(addr);
    stream.write_all(b"abort\n").unwrap();
    let mut reply = Vec::new();
    // The child dies without a reply: end-of-file or a reset.
    match stream.read_to_end(&mut reply) {
        Ok(_) => assert!(reply.is_empty(), "{reply:?}"),
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}"),
    }
    assert_eq!(command(addr, "still serving"), "still serving\n");

    assert_eq!(command(addr, "panic"), "");
    assert_eq!(command(addr, "still serving"), "still serving\n");

    let record = read_record(dir.path());
    let aborted = record.iter().find(|(w, _)| w == "abort").unwrap().1;
    let panicked = record.iter().find(|(w, _)| w == "panic").unwrap().1;
    let log_path = dir.path().join("server.log");
    eventually("both children's ends are logged", || {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        log.lines()
            .any(|l| l.contains(&format!("child {aborted} ")) && l.contains("SIGABRT"))
            && log
                .lines()
                .any(|l| l.contains(&format!("child {panicked} ")) && l.contains("exit status 2"))
    });
    eventually("every child has been reaped", || {
        children(proc.pid).is_empty()
    });
    stop(proc);
}

#[test]
fn sigterm_drains_running_children_and_refuses_new_connections() {
    let (mut proc, addr) = start(
        "echo_server",
        &["--bind", "127.0.0.1:0", "--mode", "forking"],
    );
    let mut client = connect(addr);
    client.write_all(b"first ").unwrap();
    let mut echoed = [0u8; 6];
    client.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, b"first ");
    let kids = children(proc.pid);
    assert_eq!(kids.len(), 1, "one child serves the one client");

    proc.signal(Signal::SIGTERM);
    // Refused, not queued: the parent closed its listening socket, and the
    // child closed its copy when it was forked.
    eventually("new connections are refused", || {
        TcpStream::connect_timeout(&addr, STEP).is_err()
    });
    client.write_all(b"second").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"second");

    let status = proc.wait_exit(STEP).expect("exits after the drain");
    assert!(status.success(), "{status:?}");
    assert!(exited(kids[0]), "the child outlived its server");
}

#[test]
fn a_child_still_running_at_the_drain_deadline_is_terminated() {
    let (mut proc, addr) = start(
        "echo_server",
        &[
            "--bind",
            "127.0.0.1:0",
            "--mode",
            "forking",
            "--drain-secs",
            "0.3",
        ],
    );
    let mut client = connect(addr);
    client.write_all(b"abc").unwrap();
    let mut echoed = [0u8; 3];
    client.read_exact(&mut echoed).unwrap();
    let kids = children(proc.pid);
    assert_eq!(kids.len(), 1);

    proc.signal(Signal::SIGTERM);
    // The client never finishes; at the deadline the child is sent SIGTERM
    // and its end of the connection closes.
    let mut rest = Vec::new();
    match client.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty()),
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}"),
    }
    let status = proc.wait_exit(STEP).expect("exits after the deadline");
    assert!(status.success(), "{status:?}");
    assert!(exited(kids[0]));
}

#[test]
fn forked_children_never_remove_the_unix_socket_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("echo.sock");
    let proc = Proc::start(
        "echo_server",
        &["--unix", path.to_str().unwrap(), "--mode", "forking"],
    );
    for i in 0..5 {
        let mut stream = UnixStream::connect(&path).unwrap();
        stream.set_read_timeout(Some(STEP)).unwrap();
        let message = format!("over unix {i}");
        stream.write_all(message.as_bytes()).unwrap();
        stream.shutdown(Shutdown::Write).unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).unwrap();
        assert_eq!(reply, message);
    }
    eventually("every child has exited", || children(proc.pid).is_empty());
    assert!(path.exists(), "a child removed the server's socket file");
    stop(proc);
    assert!(!path.exists(), "the server removes its socket file on exit");
}

#[test]
fn a_handler_calling_shutdown_in_a_child_stops_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let (mut proc, addr) = fork_probe(dir.path(), &[]);
    assert_eq!(command(addr, "shutdown"), "ok\n");
    let status = proc.wait_exit(STEP).expect("the server stops");
    assert!(status.success(), "{status:?}");
}
