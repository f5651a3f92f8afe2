//! Graceful shutdown, in process: the drain, its deadline, `force`, what
//! handlers see, and the report — over every dispatch strategy, for TCP,
//! UDP and Unix stream servers.
//!
//! Synchronisation is by channels: a handler says when it has started, a
//! latch says when it may finish, `verify_request` says when a request has
//! been accepted. Where the deadline itself is the behaviour, deadlines are
//! short (200 ms) and every wait is bounded by `util::STEP`. The drain grace
//! (how long cut-off handlers get before they are abandoned) is `STEP`, so a
//! slow, loaded machine delays a test but does not fail it — except in the
//! test of abandoning itself.

mod util;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Barrier, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use socketserver::{
    Dispatch, Pool, TcpRequest, TcpServer, Threading, UdpRequest, UdpServer, UnixStreamRequest,
    UnixStreamServer,
};
use util::{STEP, all_dispatches, connect, recv, spawn};

/// The short drain deadline of tests whose subject is the deadline.
const DEADLINE: Duration = Duration::from_millis(200);

/// A gate handlers wait at until the test opens it (bounded by `STEP`).
#[derive(Default)]
struct Latch {
    open: Mutex<bool>,
    cv: Condvar,
}

impl Latch {
    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.cv.notify_all();
    }

    /// Waits for the latch; `false` if it stayed shut for `STEP`.
    fn wait(&self) -> bool {
        let open = self.open.lock().unwrap();
        let (open, _) = self.cv.wait_timeout_while(open, STEP, |o| !*o).unwrap();
        *open
    }
}

/// Dispatch strategies with room for exactly one running request, so a
/// second one waits: in a pool queue, in a full pool's hand-off (the
/// serving loop blocked), or for a thread slot.
fn one_slot_dispatches() -> Vec<(&'static str, Dispatch)> {
    vec![
        ("pool-queued", Pool::new(1).queue_size(4).into()),
        ("pool-handoff-blocked", Pool::new(1).queue_size(0).into()),
        ("threading-cap-1", Threading::new().max_threads(1).into()),
    ]
}

/// A TCP server whose handler reports it has started, then echoes until
/// end-of-file, then reports whether the drain had been forced by then.
fn echo_reporting(
    dispatch: Dispatch,
    drain: Duration,
) -> (
    TcpServer<impl socketserver::RequestHandler<TcpRequest>>,
    Receiver<()>,
    Receiver<bool>,
) {
    let (entered_tx, entered_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel();
    let mut server = TcpServer::bind("127.0.0.1:0", move |req: &mut TcpRequest| {
        entered_tx.send(()).unwrap();
        let copied = io::copy(&mut req.rfile, &mut req.wfile);
        done_tx.send(req.shutdown_token().is_forced()).unwrap();
        copied.map(drop)
    })
    .unwrap();
    server.set_dispatch(dispatch);
    server.set_drain_timeout(drain);
    server.set_drain_grace(STEP);
    (server, entered_rx, done_rx)
}

/// Connects and checks the connection is being served (one echo).
fn connect_served(addr: SocketAddr, entered: &Receiver<()>) -> TcpStream {
    let mut client = connect(addr);
    client.write_all(b"ping").unwrap();
    let mut echoed = [0u8; 4];
    client.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, b"ping");
    recv(entered, "the handler to start");
    client
}

/// Reads what is left on a connection the server closed: the bytes, or
/// nothing if it was reset.
fn read_rest(stream: &mut impl Read) -> Vec<u8> {
    let mut rest = Vec::new();
    match stream.read_to_end(&mut rest) {
        Ok(_) => rest,
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => rest,
        Err(e) => panic!("reading the end of the connection: {e}"),
    }
}

/// Asserts a connect to `addr` does not get served: refused (Linux stops the
/// listener the moment shutdown begins) or closed without a reply.
fn assert_not_served(addr: SocketAddr, what: &str) {
    match TcpStream::connect_timeout(&addr, STEP) {
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{what}"),
        Ok(mut late) => {
            if cfg!(target_os = "linux") {
                panic!("{what}: on Linux the listener refuses at once");
            }
            late.set_read_timeout(Some(STEP)).unwrap();
            let _ = late.write_all(b"late");
            assert_eq!(read_rest(&mut late), b"", "{what}: served after shutdown");
        }
    }
}

#[test]
fn a_handler_blocked_in_read_is_woken_at_the_drain_deadline() {
    for (name, dispatch) in all_dispatches() {
        let (server, entered, done) = echo_reporting(dispatch, DEADLINE);
        let running = spawn(server);
        let mut client = connect_served(running.addr, &entered);
        let started = Instant::now();
        running.handle.shutdown();
        let report = running.join_within(STEP);
        assert!(
            recv(&done, "the handler to return"),
            "{name}: the handler was woken by the deadline, not before"
        );
        assert!(started.elapsed() >= DEADLINE, "{name}: cut off early");
        assert!(report.drain_time >= DEADLINE, "{name}: {report:?}");
        assert_eq!((report.drained, report.forced), (0, 1), "{name}");
        assert_eq!(report.abandoned, 0, "{name}");
        // The handler saw end-of-file and returned: the client sees the
        // connection end cleanly.
        assert_eq!(read_rest(&mut client), b"", "{name}");
    }
}

#[test]
fn a_request_that_finishes_during_the_drain_counts_as_drained_and_sees_the_token() {
    for (name, dispatch) in all_dispatches() {
        let latch = Arc::new(Latch::default());
        let (entered_tx, entered_rx) = mpsc::channel();
        let (seen_tx, seen_rx) = mpsc::channel();
        let mut server = TcpServer::bind("127.0.0.1:0", {
            let latch = Arc::clone(&latch);
            move |req: &mut TcpRequest| {
                entered_tx.send(()).unwrap();
                assert!(latch.wait(), "the test never opened the latch");
                let token = req.shutdown_token();
                seen_tx
                    .send([
                        req.is_shutting_down(),
                        token.is_shutting_down(),
                        token.wait(Duration::ZERO),
                        token.deadline().is_some(),
                        token.is_forced(),
                    ])
                    .unwrap();
                req.wfile.write_all(b"done")
            }
        })
        .unwrap();
        server.set_dispatch(dispatch);
        server.set_drain_timeout(STEP);
        server.set_drain_grace(STEP);
        let running = spawn(server);
        let mut client = connect(running.addr);
        recv(&entered_rx, "the handler to start");
        let handle = running.handle.clone();
        assert!(!handle.is_shutting_down());
        handle.shutdown();
        assert!(handle.is_shutting_down(), "{name}");
        latch.open();
        assert_eq!(read_rest(&mut client), b"done", "{name}");
        let report = running.join_within(STEP);
        assert_eq!(
            recv(&seen_rx, "what the handler saw"),
            [true, true, true, true, false],
            "{name}: is_shutting_down, token, wait, deadline, is_forced"
        );
        assert_eq!((report.drained, report.forced), (1, 0), "{name}");
    }
}

#[test]
fn new_connections_are_refused_as_soon_as_shutdown_begins() {
    // Even in Sync mode, where the serving thread is busy inside a handler
    // and cannot close the listener until the drain is over.
    for (name, dispatch) in all_dispatches() {
        let latch = Arc::new(Latch::default());
        let (entered_tx, entered_rx) = mpsc::channel();
        let mut server = TcpServer::bind("127.0.0.1:0", {
            let latch = Arc::clone(&latch);
            move |req: &mut TcpRequest| {
                entered_tx.send(()).unwrap();
                assert!(latch.wait());
                req.wfile.write_all(b"in flight")
            }
        })
        .unwrap();
        server.set_dispatch(dispatch);
        server.set_drain_timeout(STEP);
        server.set_drain_grace(STEP);
        let running = spawn(server);
        let mut in_flight = connect(running.addr);
        recv(&entered_rx, "the handler to start");
        running.handle.shutdown();
        assert_not_served(running.addr, name);
        latch.open();
        assert_eq!(read_rest(&mut in_flight), b"in flight", "{name}");
        let report = running.join_within(STEP);
        assert_eq!((report.drained, report.forced), (1, 0), "{name}");
        assert!(
            entered_rx.try_recv().is_err(),
            "{name}: a late connection was handled"
        );
    }
}

/// A server with room for one running request whose handler waits at a
/// latch, then echoes; `verify_request` reports every accepted connection.
struct OneSlot {
    running: util::Running<SocketAddr>,
    latch: Arc<Latch>,
    entered: Receiver<()>,
    accepted: Receiver<SocketAddr>,
}

fn one_slot(dispatch: Dispatch, drain: Duration) -> OneSlot {
    let latch = Arc::new(Latch::default());
    let (entered_tx, entered) = mpsc::channel();
    let (accepted_tx, accepted) = mpsc::channel();
    let mut server = TcpServer::bind("127.0.0.1:0", {
        let latch = Arc::clone(&latch);
        move |req: &mut TcpRequest| {
            entered_tx.send(()).unwrap();
            assert!(latch.wait(), "the test never opened the latch");
            io::copy(&mut req.rfile, &mut req.wfile).map(drop)
        }
    })
    .unwrap();
    server.set_dispatch(dispatch);
    server.set_drain_timeout(drain);
    server.set_drain_grace(STEP);
    server.set_verify_request(move |peer: &SocketAddr| {
        accepted_tx.send(*peer).unwrap();
        true
    });
    OneSlot {
        running: spawn(server),
        latch,
        entered,
        accepted,
    }
}

#[test]
fn requests_waiting_for_a_worker_are_served_if_they_finish_before_the_deadline() {
    for (name, dispatch) in one_slot_dispatches() {
        let s = one_slot(dispatch, STEP);
        let mut first = connect(s.running.addr);
        first.write_all(b"first").unwrap();
        first.shutdown(Shutdown::Write).unwrap();
        recv(&s.accepted, "the first connection to be accepted");
        recv(&s.entered, "the first request to start");
        // The second waits: queued, or held by the blocked serving loop.
        let mut second = connect(s.running.addr);
        second.write_all(b"second").unwrap();
        second.shutdown(Shutdown::Write).unwrap();
        recv(&s.accepted, "the second connection to be accepted");
        s.running.handle.shutdown();
        assert_not_served(s.running.addr, name);
        s.latch.open();
        assert_eq!(read_rest(&mut first), b"first", "{name}");
        assert_eq!(read_rest(&mut second), b"second", "{name}: still served");
        let report = s.running.join_within(STEP);
        assert_eq!((report.drained, report.forced), (2, 0), "{name}");
    }
}

#[test]
fn requests_still_waiting_at_the_deadline_are_closed_unserved() {
    for (name, dispatch) in one_slot_dispatches() {
        let (mut server, entered, done) = echo_reporting(dispatch, DEADLINE);
        let (accepted_tx, accepted) = mpsc::channel();
        server.set_verify_request(move |peer: &SocketAddr| {
            accepted_tx.send(*peer).unwrap();
            true
        });
        let running = spawn(server);
        // The first never hangs up: it holds the only slot until the deadline.
        let mut first = connect_served(running.addr, &entered);
        recv(&accepted, "the first connection to be accepted");
        let mut second = connect(running.addr);
        second.write_all(b"never served").unwrap();
        recv(&accepted, "the second connection to be accepted");
        running.handle.shutdown();
        let report = running.join_within(STEP);
        assert!(recv(&done, "the first handler to return"), "{name}");
        assert!(
            entered.try_recv().is_err(),
            "{name}: the waiting request was started after the deadline"
        );
        assert_eq!((report.drained, report.forced), (0, 2), "{name}");
        assert_eq!(read_rest(&mut first), b"", "{name}");
        assert_eq!(read_rest(&mut second), b"", "{name}: closed unserved");
    }
}

#[test]
fn force_ends_the_drain_at_once() {
    for (name, dispatch) in all_dispatches() {
        for shutdown_first in [true, false] {
            // A deadline far beyond the wait below: only force() can end it.
            let (server, entered, done) = echo_reporting(dispatch.clone(), 10 * STEP);
            let running = spawn(server);
            let mut client = connect_served(running.addr, &entered);
            if shutdown_first {
                running.handle.shutdown();
            }
            running.handle.force();
            assert!(running.handle.token().is_forced(), "{name}");
            let report = running.join_within(STEP);
            assert!(recv(&done, "the handler to return"), "{name}");
            assert_eq!((report.drained, report.forced), (0, 1), "{name}");
            assert_eq!(read_rest(&mut client), b"", "{name}");
        }
    }
}

/// A line-echo chat handler that says goodbye once it sees the shutdown:
/// between messages, or when woken at the deadline.
fn chat(req: &mut TcpRequest) -> io::Result<()> {
    let mut line = String::new();
    loop {
        line.clear();
        if req.rfile.read_line(&mut line)? == 0 {
            if req.shutdown_token().is_forced() {
                req.wfile.write_all(b"goodbye: server shutting down\n")?;
            }
            return Ok(());
        }
        // Checked before the reply goes out, so a client that has its reply
        // knows which side of the shutdown this message was on.
        let stopping = req.is_shutting_down();
        req.wfile.write_all(line.as_bytes())?;
        if stopping {
            return req.wfile.write_all(b"goodbye\n");
        }
    }
}

#[test]
fn a_chat_handler_says_goodbye_after_the_message_in_progress() {
    for (name, dispatch) in all_dispatches() {
        let mut server = TcpServer::bind("127.0.0.1:0", chat).unwrap();
        server.set_dispatch(dispatch);
        server.set_drain_timeout(STEP);
        server.set_drain_grace(STEP);
        let running = spawn(server);
        let mut client = connect(running.addr);
        let mut reader = BufReader::new(client.try_clone().unwrap());
        let mut line = String::new();
        client.write_all(b"one\n").unwrap();
        reader.read_line(&mut line).unwrap();
        assert_eq!(line, "one\n");
        running.handle.shutdown();
        client.write_all(b"two\n").unwrap();
        let rest = String::from_utf8(read_rest(&mut reader)).unwrap();
        assert_eq!(rest, "two\ngoodbye\n", "{name}");
        let report = running.join_within(STEP);
        assert_eq!((report.drained, report.forced), (1, 0), "{name}");
    }
}

#[test]
fn a_chat_handler_blocked_in_read_can_say_goodbye_at_the_deadline() {
    for (name, dispatch) in all_dispatches() {
        let mut server = TcpServer::bind("127.0.0.1:0", chat).unwrap();
        server.set_dispatch(dispatch);
        server.set_drain_timeout(DEADLINE);
        server.set_drain_grace(STEP);
        let running = spawn(server);
        let mut client = connect(running.addr);
        let mut reader = BufReader::new(client.try_clone().unwrap());
        let mut line = String::new();
        client.write_all(b"one\n").unwrap();
        reader.read_line(&mut line).unwrap();
        assert_eq!(line, "one\n");
        // The client stays silent: the handler is blocked in read_line.
        running.handle.shutdown();
        let rest = String::from_utf8(read_rest(&mut reader)).unwrap();
        assert_eq!(rest, "goodbye: server shutting down\n", "{name}");
        let report = running.join_within(STEP);
        assert_eq!((report.drained, report.forced), (0, 1), "{name}");
    }
}

/// A handler blocked in `write` to a client that never reads: its send
/// buffer is full, so the cut shuts both sides and the write fails.
#[test]
fn a_handler_blocked_in_write_is_woken_at_the_deadline() {
    for (name, dispatch) in all_dispatches() {
        let (entered_tx, entered_rx) = mpsc::channel();
        let mut server = TcpServer::bind("127.0.0.1:0", move |req: &mut TcpRequest| {
            entered_tx.send(()).unwrap();
            // Fill the socket buffers of a client that never reads.
            let chunk = vec![b'x'; 64 * 1024];
            loop {
                req.wfile.write_all(&chunk)?;
            }
        })
        .unwrap();
        server.set_dispatch(dispatch);
        server.set_drain_timeout(DEADLINE);
        server.set_drain_grace(STEP);
        let running = spawn(server);
        let client = connect(running.addr);
        recv(&entered_rx, "the handler to start");
        running.handle.shutdown();
        let report = running.join_within(STEP);
        assert_eq!((report.drained, report.forced), (0, 1), "{name}");
        assert_eq!(report.abandoned, 0, "{name}");
        drop(client);
    }
}

#[test]
fn the_token_wakes_helper_threads_on_shutdown_and_on_force() {
    let server = TcpServer::bind("127.0.0.1:0", |_req: &mut TcpRequest| Ok(())).unwrap();
    let handle = server.shutdown_handle();
    let token = handle.token();
    assert!(!token.wait(Duration::ZERO));
    assert!(!token.wait_forced(Duration::ZERO));
    assert_eq!(token.deadline(), None);
    let (tx, rx) = mpsc::channel();
    let helper = thread::spawn({
        let token = token.clone();
        move || {
            tx.send(()).unwrap();
            let begun = token.wait(STEP);
            let forced = token.wait_forced(STEP);
            (begun, forced)
        }
    });
    recv(&rx, "the helper to start");
    handle.shutdown();
    assert!(token.is_shutting_down());
    assert!(!token.is_forced());
    handle.force();
    assert_eq!(helper.join().unwrap(), (true, true));
    assert!(token.deadline().unwrap() <= Instant::now());
    drop(server);
    // After the server is gone, every call is still harmless.
    handle.shutdown();
    handle.force();
    assert!(token.is_shutting_down() && token.wait(Duration::ZERO));
}

#[test]
fn wait_forced_returns_false_when_the_drain_ends_without_a_cut() {
    let server = TcpServer::bind("127.0.0.1:0", |_req: &mut TcpRequest| Ok(())).unwrap();
    let token = server.shutdown_handle().token();
    let running = spawn(server);
    running.handle.shutdown();
    let report = running.join_within(STEP);
    assert_eq!((report.drained, report.forced, report.abandoned), (0, 0, 0));
    // The server finished: a wait for a cut that will never come returns.
    assert!(!token.wait_forced(STEP));
}

#[test]
fn concurrent_shutdown_and_force_from_many_threads() {
    // Regression: force() racing a first shutdown() could have its
    // deadline overwritten by the later one, stretching the drain.
    for round in 0..20 {
        let (server, entered, done) = echo_reporting(Pool::new(2).into(), 10 * STEP);
        let running = spawn(server);
        let _client = connect_served(running.addr, &entered);
        let barrier = Arc::new(Barrier::new(4));
        let callers: Vec<_> = (0..4)
            .map(|i| {
                let handle = running.handle.clone();
                let barrier = Arc::clone(&barrier);
                thread::spawn(move || {
                    barrier.wait();
                    if i % 2 == 0 {
                        handle.shutdown();
                    } else {
                        handle.force();
                    }
                })
            })
            .collect();
        for caller in callers {
            caller.join().unwrap();
        }
        let token = running.handle.token();
        assert!(token.is_forced(), "round {round}");
        assert!(token.deadline().unwrap() <= Instant::now(), "round {round}");
        let report = running.join_within(STEP);
        assert!(recv(&done, "the handler to return"));
        assert_eq!(report.forced, 1, "round {round}");
    }
}

#[test]
fn a_handler_that_ignores_the_cut_off_is_abandoned_after_a_grace_period() {
    for (name, dispatch) in [
        ("threading", Dispatch::threading()),
        ("pool", Pool::new(1).queue_size(4).into()),
    ] {
        let latch = Arc::new(Latch::default());
        let (entered_tx, entered_rx) = mpsc::channel();
        let (accepted_tx, accepted_rx) = mpsc::channel();
        let mut server = TcpServer::bind("127.0.0.1:0", {
            let latch = Arc::clone(&latch);
            move |_req: &mut TcpRequest| {
                entered_tx.send(()).unwrap();
                // Ignores its socket and the token.
                latch.wait();
                Ok(())
            }
        })
        .unwrap();
        server.set_dispatch(dispatch);
        server.set_drain_timeout(DEADLINE);
        server.set_drain_grace(DEADLINE);
        server.set_verify_request(move |_: &SocketAddr| {
            accepted_tx.send(()).unwrap();
            true
        });
        let running = spawn(server);
        let _stuck = connect(running.addr);
        recv(&entered_rx, "the handler to start");
        recv(&accepted_rx, "the first connection to be accepted");
        // In the pool, a second request queues behind the stuck worker.
        let mut queued = (name == "pool").then(|| {
            let queued = connect(running.addr);
            recv(&accepted_rx, "the second connection to be accepted");
            queued
        });
        running.handle.shutdown();
        let report = running.join_within(STEP);
        assert_eq!(report.abandoned, 1, "{name}: {report}");
        assert!(report.to_string().contains("1 worker(s) abandoned"));
        // The stuck request has not ended, so it is not counted; the queued
        // one was closed unserved by the drain itself.
        assert_eq!(report.forced, u64::from(queued.is_some()), "{name}");
        if let Some(queued) = &mut queued {
            assert_eq!(read_rest(queued), b"", "{name}");
        }
        assert!(entered_rx.try_recv().is_err(), "{name}");
        latch.open();
    }
}

#[test]
fn force_before_serving_returns_at_once_in_every_mode() {
    for (name, dispatch) in all_dispatches() {
        let mut server = TcpServer::bind("127.0.0.1:0", |_req: &mut TcpRequest| Ok(())).unwrap();
        server.set_dispatch(dispatch);
        server.shutdown_handle().force();
        let report = server.serve_forever().unwrap();
        assert_eq!((report.drained, report.forced, report.abandoned), (0, 0, 0));
        // handle_request after the stop starts nothing and returns false.
        assert!(!server.handle_request().unwrap(), "{name}");
    }
}

// --- UDP -------------------------------------------------------------------

/// A UDP server whose handler echoes, except that a "hold" packet waits at
/// the latch (or, with `until_forced`, until the drain is forced).
fn udp_server(
    dispatch: Dispatch,
    drain: Duration,
    until_forced: bool,
) -> (
    util::Running<SocketAddr>,
    Arc<Latch>,
    Receiver<()>,
    Receiver<()>,
) {
    let latch = Arc::new(Latch::default());
    let (entered_tx, entered) = mpsc::channel();
    let (accepted_tx, accepted): (Sender<()>, _) = mpsc::channel();
    let mut server = UdpServer::bind("127.0.0.1:0", {
        let latch = Arc::clone(&latch);
        move |req: &mut UdpRequest| {
            let packet = req.packet().to_vec();
            if packet == b"hold" {
                entered_tx.send(()).unwrap();
                if until_forced {
                    assert!(req.shutdown_token().wait_forced(STEP));
                    return req.wfile.write_all(b"late");
                }
                assert!(latch.wait());
            }
            req.wfile.write_all(&packet)
        }
    })
    .unwrap();
    server.set_dispatch(dispatch);
    server.set_drain_timeout(drain);
    server.set_drain_grace(STEP);
    server.set_verify_request(move |_: &SocketAddr| {
        accepted_tx.send(()).unwrap();
        true
    });
    (spawn(server), latch, entered, accepted)
}

fn udp_client() -> UdpSocket {
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_read_timeout(Some(STEP)).unwrap();
    client
}

fn udp_recv(client: &UdpSocket) -> Vec<u8> {
    let mut buf = [0u8; 64];
    let n = client.recv(&mut buf).expect("a reply datagram");
    buf[..n].to_vec()
}

/// After the server has stopped, every reply it will ever send is already
/// in the client's buffer (loopback delivers at once): nothing more.
fn assert_no_more_datagrams(client: &UdpSocket, what: &str) {
    client.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 64];
    match client.recv(&mut buf) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        other => panic!("{what}: unexpected datagram {other:?}"),
    }
}

#[test]
fn an_in_flight_datagram_is_drained_in_every_mode() {
    for (name, dispatch) in all_dispatches() {
        let (running, latch, entered, _accepted) = udp_server(dispatch, STEP, false);
        let client = udp_client();
        client.send_to(b"hold", running.addr).unwrap();
        recv(&entered, "the handler to start");
        running.handle.shutdown();
        latch.open();
        assert_eq!(udp_recv(&client), b"hold", "{name}");
        let report = running.join_within(STEP);
        assert_eq!((report.drained, report.forced), (1, 0), "{name}");
    }
}

#[test]
fn queued_datagrams_are_served_during_the_drain() {
    let (running, latch, entered, accepted) = udp_server(Pool::new(1).into(), STEP, false);
    let client = udp_client();
    client.send_to(b"hold", running.addr).unwrap();
    recv(&entered, "the handler to start");
    recv(&accepted, "the first datagram");
    for packet in [&b"q1"[..], b"q2"] {
        client.send_to(packet, running.addr).unwrap();
        recv(&accepted, "a queued datagram");
    }
    running.handle.shutdown();
    latch.open();
    let mut replies: Vec<_> = (0..3).map(|_| udp_recv(&client)).collect();
    replies.sort();
    assert_eq!(replies, [&b"hold"[..], b"q1", b"q2"]);
    let report = running.join_within(STEP);
    assert_eq!((report.drained, report.forced), (3, 0));
    assert_no_more_datagrams(&client, "after the drain");
}

#[test]
fn queued_datagrams_are_discarded_at_the_deadline() {
    let (running, _latch, entered, accepted) = udp_server(Pool::new(1).into(), DEADLINE, true);
    let client = udp_client();
    client.send_to(b"hold", running.addr).unwrap();
    recv(&entered, "the handler to start");
    recv(&accepted, "the first datagram");
    for packet in [&b"q1"[..], b"q2"] {
        client.send_to(packet, running.addr).unwrap();
        recv(&accepted, "a queued datagram");
    }
    running.handle.shutdown();
    let report = running.join_within(STEP);
    // The held request saw the cut (wait_forced) and replied late; the two
    // queued behind it were never handled.
    assert_eq!((report.drained, report.forced), (0, 3));
    assert_eq!(udp_recv(&client), b"late");
    assert_no_more_datagrams(&client, "queued datagrams were discarded");
}

// --- Unix stream -----------------------------------------------------------

fn unix_connect(path: &std::path::Path) -> UnixStream {
    let stream = UnixStream::connect(path).expect("connect");
    stream.set_read_timeout(Some(STEP)).unwrap();
    stream.set_write_timeout(Some(STEP)).unwrap();
    stream
}

#[test]
fn unix_stream_server_drains_and_cuts_off_at_the_deadline() {
    for (name, dispatch) in all_dispatches() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("drain.sock");
        let latch = Arc::new(Latch::default());
        let (entered_tx, entered_rx) = mpsc::channel();
        let mut server = UnixStreamServer::bind(&path, {
            let latch = Arc::clone(&latch);
            move |req: &mut UnixStreamRequest| {
                entered_tx.send(()).unwrap();
                let mut first = [0u8; 1];
                req.rfile.read_exact(&mut first)?;
                if first[0] == b'h' {
                    // Finishes during the drain, when the test says.
                    assert!(latch.wait());
                    return req.wfile.write_all(b"drained");
                }
                // Echoes until end-of-file: blocked in read until the cut.
                io::copy(&mut req.rfile, &mut req.wfile).map(drop)
            }
        })
        .unwrap();
        server.set_dispatch(dispatch);
        server.set_drain_timeout(DEADLINE);
        server.set_drain_grace(STEP);
        let running = spawn(server);

        // Sync serves one connection at a time: first the drained one, in
        // its own server run.
        let mut holder = unix_connect(&path);
        holder.write_all(b"h").unwrap();
        recv(&entered_rx, "the handler to start");
        running.handle.shutdown();
        match UnixStream::connect(&path) {
            Err(e) => assert!(
                matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound
                ),
                "{name}: {e}"
            ),
            Ok(_) if cfg!(target_os = "linux") => panic!("{name}: connect accepted"),
            Ok(_) => {}
        }
        latch.open();
        assert_eq!(read_rest(&mut holder), b"drained", "{name}");
        let report = running.join_within(STEP);
        assert_eq!((report.drained, report.forced), (1, 0), "{name}");
        assert!(!path.exists(), "{name}: socket file removed");
    }
    for (name, dispatch) in all_dispatches() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cut.sock");
        let (entered_tx, entered_rx) = mpsc::channel();
        let mut server = UnixStreamServer::bind(&path, move |req: &mut UnixStreamRequest| {
            entered_tx.send(()).unwrap();
            io::copy(&mut req.rfile, &mut req.wfile).map(drop)
        })
        .unwrap();
        server.set_dispatch(dispatch);
        server.set_drain_timeout(DEADLINE);
        server.set_drain_grace(STEP);
        let running = spawn(server);
        let mut silent = unix_connect(&path);
        silent.write_all(b"x").unwrap();
        let mut echoed = [0u8; 1];
        silent.read_exact(&mut echoed).unwrap();
        recv(&entered_rx, "the handler to start");
        running.handle.shutdown();
        let report = running.join_within(STEP);
        assert!(report.drain_time >= DEADLINE, "{name}");
        assert_eq!(
            (report.drained, report.forced),
            (0, 1),
            "{name}: {report:?}"
        );
        assert_eq!(read_rest(&mut silent), b"", "{name}");
    }
}
