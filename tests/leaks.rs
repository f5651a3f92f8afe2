//! No leaks: after `serve_forever` returns, every thread the server started
//! has exited and every descriptor it opened is closed — counted in
//! `/proc/self/task` and `/proc/self/fd` — in every dispatch mode and for
//! every transport, with requests completed, cut off at the deadline and
//! discarded unserved.
//!
//! Both counts are process-wide, and cargo runs the tests of one binary in
//! parallel: so this file holds exactly one test, which runs each case in
//! turn.

#![cfg(target_os = "linux")]

mod util;

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, UdpSocket};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use socketserver::{
    Dispatch, Messages, Pool, Reactor, Server, Service, ShutdownReport, TcpRequest, TcpServer,
    Transport, UdpRequest, UdpServer, UnixDatagramRequest, UnixDatagramServer, UnixStreamRequest,
    UnixStreamServer,
};
use util::{STEP, all_dispatches, connect, echo_once, recv};

/// Threads and open descriptors of this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Counts {
    threads: usize,
    fds: usize,
}

fn counts() -> Counts {
    let count = |dir: &str| std::fs::read_dir(dir).expect(dir).count();
    Counts {
        threads: count("/proc/self/task"),
        // Includes the descriptor read_dir itself holds, every time alike.
        fds: count("/proc/self/fd"),
    }
}

/// Waits (bounded) for the counts to come back to `baseline`, and returns
/// what they were last. A joined thread can still be listed for a moment:
/// `pthread_join` returns when the kernel clears the thread id, before the
/// task is released from `/proc` — there is nothing to synchronise on, so
/// this polls.
fn settle(baseline: Counts) -> Counts {
    let until = Instant::now() + STEP;
    loop {
        let now = counts();
        if now == baseline || Instant::now() >= until {
            return now;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// Runs `serve_forever` on a thread that hands the server back, so the
/// counts can be taken with the server (and its handle) still alive.
fn serve<T, H>(
    mut server: Server<T, H>,
) -> thread::JoinHandle<(Server<T, H>, io::Result<ShutdownReport>)>
where
    T: Transport,
    H: Service<T>,
    Server<T, H>: Send + 'static,
{
    thread::spawn(move || {
        let report = server.serve_forever();
        (server, report)
    })
}

fn join<T: Send + 'static>(serving: thread::JoinHandle<T>) -> T {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(serving.join());
    });
    rx.recv_timeout(STEP)
        .expect("serve_forever did not return")
        .expect("serve_forever panicked")
}

/// Checks the counts against `baseline` once `serve_forever` has returned
/// (server and handles alive, clients closed), then after everything is
/// dropped.
fn check<S, K>(what: &str, baseline: Counts, server: S, keep: K) {
    let after = settle(baseline);
    assert_eq!(
        after, baseline,
        "{what}: after serve_forever returned (server still alive)"
    );
    drop(server);
    drop(keep);
    let dropped = settle(baseline);
    assert_eq!(dropped, baseline, "{what}: after the server was dropped");
}

fn echo(req: &mut TcpRequest) -> io::Result<()> {
    io::copy(&mut req.rfile, &mut req.wfile).map(drop)
}

/// TCP: three requests served, one cut off at the deadline, one more that
/// is queued behind it (discarded) or cut off too, depending on the mode.
fn tcp(name: &str, dispatch: Dispatch, baseline: Counts) {
    let mut server = TcpServer::bind("127.0.0.1:0", echo).unwrap();
    server.set_dispatch(dispatch);
    server.set_drain_timeout(Duration::from_millis(100));
    server.set_drain_grace(STEP);
    let (accepted_tx, accepted) = mpsc::channel();
    server.set_verify_request(move |_: &SocketAddr| {
        accepted_tx.send(()).unwrap();
        true
    });
    let addr = server.local_addr().unwrap();
    let handle = server.shutdown_handle();
    let token = handle.token();
    let serving = serve(server);
    for i in 0..3 {
        let data = format!("request {i}");
        assert_eq!(echo_once(addr, data.as_bytes()), data.as_bytes(), "{name}");
        recv(&accepted, "a served request");
    }
    let mut idle = connect(addr);
    idle.write_all(b"ping").unwrap();
    let mut echoed = [0u8; 4];
    idle.read_exact(&mut echoed).unwrap();
    recv(&accepted, "the idle connection");
    let mut waiting = connect(addr);
    waiting.write_all(b"wait").unwrap();
    handle.shutdown();
    let (server, report) = join(serving);
    let report = report.unwrap();
    assert!(report.forced >= 1, "{name}: {report}");
    assert_eq!(report.abandoned, 0, "{name}");
    drop((idle, waiting));
    check(name, baseline, server, (handle, token));
}

fn udp(name: &str, dispatch: Dispatch, baseline: Counts) {
    let mut server = UdpServer::bind("127.0.0.1:0", |req: &mut UdpRequest| {
        let packet = req.packet().to_vec();
        req.wfile.write_all(&packet)
    })
    .unwrap();
    server.set_dispatch(dispatch);
    let addr = server.local_addr().unwrap();
    let handle = server.shutdown_handle();
    let serving = serve(server);
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_read_timeout(Some(STEP)).unwrap();
    for i in 0..3u8 {
        client.send_to(&[i], addr).unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(client.recv(&mut buf).unwrap(), 1, "{name}");
        assert_eq!(buf[0], i, "{name}");
    }
    handle.shutdown();
    let (server, report) = join(serving);
    assert_eq!(report.unwrap().forced, 0, "{name}");
    drop(client);
    check(name, baseline, server, handle);
}

fn unix_stream(name: &str, dispatch: Dispatch, baseline: Counts) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("leaks.sock");
    let mut server = UnixStreamServer::bind(&path, |req: &mut UnixStreamRequest| {
        io::copy(&mut req.rfile, &mut req.wfile).map(drop)
    })
    .unwrap();
    server.set_dispatch(dispatch);
    server.set_drain_timeout(Duration::from_millis(100));
    server.set_drain_grace(STEP);
    let handle = server.shutdown_handle();
    let serving = serve(server);
    let mut done = UnixStream::connect(&path).unwrap();
    done.set_read_timeout(Some(STEP)).unwrap();
    done.write_all(b"served").unwrap();
    done.shutdown(Shutdown::Write).unwrap();
    let mut reply = Vec::new();
    done.read_to_end(&mut reply).unwrap();
    assert_eq!(reply, b"served", "{name}");
    let mut idle = UnixStream::connect(&path).unwrap();
    idle.set_read_timeout(Some(STEP)).unwrap();
    idle.write_all(b"x").unwrap();
    let mut echoed = [0u8; 1];
    idle.read_exact(&mut echoed).unwrap();
    handle.shutdown();
    let (server, report) = join(serving);
    assert_eq!(report.unwrap().forced, 1, "{name}");
    drop((done, idle));
    check(name, baseline, server, handle);
    drop(dir);
}

fn unix_datagram(name: &str, dispatch: Dispatch, baseline: Counts) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("leaks-dgram.sock");
    let mut server = UnixDatagramServer::bind(&path, |req: &mut UnixDatagramRequest| {
        let packet = req.packet().to_vec();
        req.wfile.write_all(&packet)
    })
    .unwrap();
    server.set_dispatch(dispatch);
    let handle = server.shutdown_handle();
    let serving = serve(server);
    let client = UnixDatagram::bind(dir.path().join("client.sock")).unwrap();
    client.set_read_timeout(Some(STEP)).unwrap();
    client.send_to(b"dgram", &path).unwrap();
    let mut buf = [0u8; 8];
    let n = client.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"dgram", "{name}");
    handle.shutdown();
    let (server, report) = join(serving);
    assert_eq!(report.unwrap().forced, 0, "{name}");
    drop(client);
    check(name, baseline, server, handle);
    drop(dir);
}

/// The reactor: its workers, its epoll descriptor and its exit waker go
/// too; one connection served, one parked one cut off at the deadline.
fn reactor(baseline: Counts) {
    let mut server = TcpServer::bind("127.0.0.1:0", Messages(util::MessageEcho)).unwrap();
    server.set_dispatch(Dispatch::Reactor(Reactor::new(2)));
    server.set_drain_timeout(Duration::from_millis(100));
    server.set_drain_grace(STEP);
    let addr = server.local_addr().unwrap();
    let handle = server.shutdown_handle();
    let serving = serve(server);
    assert_eq!(echo_once(addr, b"message"), b"message");
    let mut parked = connect(addr);
    parked.write_all(b"x").unwrap();
    let mut echoed = [0u8; 1];
    parked.read_exact(&mut echoed).unwrap();
    handle.shutdown();
    let (server, report) = join(serving);
    let report = report.unwrap();
    assert_eq!(
        (report.forced, report.abandoned),
        (1, 0),
        "reactor: {report}"
    );
    drop(parked);
    check("reactor", baseline, server, handle);
}

/// `handle_request` starts the dispatcher's threads too; `server_close`
/// joins them, and a later `handle_request` must not start new ones.
fn handle_request_then_close(name: &str, dispatch: Dispatch, baseline: Counts) {
    let mut server = TcpServer::bind("127.0.0.1:0", echo).unwrap();
    server.set_dispatch(dispatch);
    let addr = server.local_addr().unwrap();
    let client = thread::spawn(move || echo_once(addr, b"once"));
    assert!(server.handle_request().unwrap(), "{name}");
    assert_eq!(client.join().unwrap(), b"once", "{name}");
    server.server_close();
    assert!(!server.handle_request().unwrap(), "{name}");
    check(name, baseline, server, ());
}

#[test]
fn serve_forever_leaves_no_thread_and_no_descriptor_behind() {
    let baseline = counts();
    let mut modes = all_dispatches();
    modes.push(("pool-1-queued", Pool::new(1).queue_size(4).into()));
    modes.push(("pool-1-handoff", Pool::new(1).queue_size(0).into()));
    for (name, dispatch) in &modes {
        tcp(&format!("tcp {name}"), dispatch.clone(), baseline);
        udp(&format!("udp {name}"), dispatch.clone(), baseline);
        unix_stream(&format!("unix stream {name}"), dispatch.clone(), baseline);
        unix_datagram(&format!("unix datagram {name}"), dispatch.clone(), baseline);
        handle_request_then_close(
            &format!("handle_request {name}"),
            dispatch.clone(),
            baseline,
        );
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    reactor(baseline);
    // A server dropped without ever serving cleans up too.
    drop(TcpServer::bind("127.0.0.1:0", echo).unwrap());
    assert_eq!(settle(baseline), baseline, "a server never served");
}
