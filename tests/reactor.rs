//! Message mode and the keep-alive reactor: idle connections hold no worker,
//! idle and per-message read timeouts, connection limits, writes to parked
//! connections from other threads, and the drain.

mod util;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Mutex;
use std::sync::mpsc::{self, Sender};
use std::thread;
use std::time::{Duration, Instant};

use socketserver::{
    Action, CloseReason, ConnWriter, Connection, Dispatch, MessageHandler, Messages, Overflow,
    Reactor, RequestError, TcpRequest, TcpServer, UnixStreamServer,
};
use util::{STEP, connect, echo_once, recv, spawn};

/// Echoes whatever arrives; reports each disconnect reason.
struct Echo {
    closed: Mutex<Option<Sender<String>>>,
}

impl Echo {
    fn new() -> Self {
        Echo {
            closed: Mutex::new(None),
        }
    }

    fn reporting(tx: Sender<String>) -> Self {
        Echo {
            closed: Mutex::new(Some(tx)),
        }
    }
}

impl<S: socketserver::StreamSocket> MessageHandler<S> for Echo {
    type State = ();

    fn connect(&self, _conn: &mut Connection<S>) -> io::Result<()> {
        Ok(())
    }

    fn ready(&self, conn: &mut Connection<S>, _: &mut ()) -> io::Result<Action> {
        let data = conn.rfile.fill_buf()?;
        if data.is_empty() {
            return Ok(Action::Close);
        }
        let n = data.len();
        conn.wfile.write_all(data)?;
        conn.rfile.consume(n);
        Ok(Action::Keep)
    }

    fn disconnect(&self, _conn: &mut Connection<S>, _: (), reason: &CloseReason) {
        if let Some(tx) = &*self.closed.lock().unwrap() {
            let _ = tx.send(format!("{reason:?}"));
        }
    }
}

/// A line protocol: each complete line is answered with `> line`.
struct Lines {
    events: Mutex<Sender<String>>,
}

impl MessageHandler<TcpStream> for Lines {
    type State = ();

    fn connect(&self, conn: &mut Connection<TcpStream>) -> io::Result<()> {
        conn.wfile.write_all(b"hello\n")
    }

    fn ready(&self, conn: &mut Connection<TcpStream>, _: &mut ()) -> io::Result<Action> {
        loop {
            let mut line = String::new();
            if conn.rfile.read_line(&mut line)? == 0 {
                return Ok(Action::Close);
            }
            let _ = self
                .events
                .lock()
                .unwrap()
                .send(format!("line {}", line.trim_end()));
            conn.wfile.write_all(format!("> {line}").as_bytes())?;
            if !conn.has_buffered_data() {
                return Ok(Action::Keep);
            }
        }
    }

    fn disconnect(&self, _conn: &mut Connection<TcpStream>, _: (), reason: &CloseReason) {
        let _ = self
            .events
            .lock()
            .unwrap()
            .send(format!("closed {reason:?}"));
    }
}

fn read_line(reader: &mut impl BufRead) -> String {
    let mut line = String::new();
    reader.read_line(&mut line).expect("read a line");
    line
}

#[test]
fn reactor_echoes_over_v4_v6_and_unix() {
    for bind in ["127.0.0.1:0", "[::1]:0"] {
        let server = TcpServer::bind(bind, Messages(Echo::new())).unwrap();
        let running = spawn(server);
        let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i * 13) as u8).collect();
        assert_eq!(echo_once(running.addr, &payload), payload, "{bind}");
        running.stop();
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("echo.sock");
    let server = UnixStreamServer::bind(&path, Messages(Echo::new())).unwrap();
    let running = spawn(server);
    let mut client = std::os::unix::net::UnixStream::connect(&path).unwrap();
    client.set_read_timeout(Some(STEP)).unwrap();
    client.write_all(b"over a unix socket").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let mut reply = String::new();
    client.read_to_string(&mut reply).unwrap();
    assert_eq!(reply, "over a unix socket");
    running.stop();
}

#[test]
fn many_clients_many_round_trips_with_few_workers() {
    let mut server = TcpServer::bind("127.0.0.1:0", Messages(Echo::new())).unwrap();
    server.set_dispatch(Reactor::new(2));
    let running = spawn(server);
    let addr = running.addr;
    let clients: Vec<_> = (0..64)
        .map(|c| {
            thread::spawn(move || {
                let mut stream = connect(addr);
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                for i in 0..50 {
                    let line = format!("client {c} message {i}\n");
                    stream.write_all(line.as_bytes()).unwrap();
                    assert_eq!(read_line(&mut reader), line);
                }
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap();
    }
    running.stop();
}

#[test]
fn two_hundred_idle_connections_do_not_hold_the_four_workers() {
    let (tx, rx) = mpsc::channel();
    let mut server = TcpServer::bind(
        "127.0.0.1:0",
        Messages(Lines {
            events: Mutex::new(tx),
        }),
    )
    .unwrap();
    server.set_dispatch(Reactor::new(4));
    let stats = server.stats();
    let running = spawn(server);
    // 200 clients connect, are greeted, and then say nothing.
    let idle: Vec<_> = (0..200)
        .map(|_| {
            let stream = connect(running.addr);
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            assert_eq!(read_line(&mut reader), "hello\n");
            (stream, reader)
        })
        .collect();
    assert_eq!(
        stats.snapshot().active,
        0,
        "idle connections hold no worker"
    );
    // A new client is still served, in a bounded wait (read timeout STEP).
    let mut fresh = connect(running.addr);
    let mut reader = BufReader::new(fresh.try_clone().unwrap());
    assert_eq!(read_line(&mut reader), "hello\n");
    fresh.write_all(b"still served\n").unwrap();
    assert_eq!(read_line(&mut reader), "> still served\n");
    assert_eq!(recv(&rx, "the line event"), "line still served");
    // And the idle ones are all still open and served too.
    for (mut stream, mut reader) in idle.into_iter().step_by(20) {
        stream.write_all(b"late\n").unwrap();
        assert_eq!(read_line(&mut reader), "> late\n");
    }
    // (every client is dropped by now, so the drain is immediate)
    drop((fresh, reader));
    running.stop();
}

#[test]
fn a_connection_idle_past_the_idle_timeout_is_closed_and_the_handler_told() {
    let (tx, rx) = mpsc::channel();
    let mut server = TcpServer::bind("127.0.0.1:0", Messages(Echo::reporting(tx))).unwrap();
    server.set_dispatch(Reactor::new(2).idle_timeout(Some(Duration::from_millis(200))));
    let stats = server.stats();
    let running = spawn(server);
    let mut client = connect(running.addr);
    client.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    client.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    // Now silent: the server closes it.
    let mut rest = Vec::new();
    client
        .read_to_end(&mut rest)
        .expect("closed by the server, not a read timeout");
    assert!(rest.is_empty());
    assert_eq!(recv(&rx, "the disconnect"), "IdleTimeout");
    assert_eq!(stats.snapshot().timeouts, 1);
    running.stop();
}

#[test]
fn a_slowloris_client_is_cut_at_the_read_timeout_and_then_frees_its_worker() {
    const READ_TIMEOUT: Duration = Duration::from_millis(300);
    let (tx, rx) = mpsc::channel();
    let mut server = TcpServer::bind(
        "127.0.0.1:0",
        Messages(Lines {
            events: Mutex::new(tx),
        }),
    )
    .unwrap();
    // One worker: whoever holds it blocks everyone else.
    server.set_dispatch(Reactor::new(1).read_timeout(READ_TIMEOUT));
    let running = spawn(server);

    let mut slow = connect(running.addr);
    let mut slow_reader = BufReader::new(slow.try_clone().unwrap());
    assert_eq!(read_line(&mut slow_reader), "hello\n");
    let started = Instant::now();
    // Trickle a line that never ends, a byte every 50 ms, for up to STEP.
    let trickler = thread::spawn(move || {
        let deadline = Instant::now() + STEP;
        while Instant::now() < deadline {
            if slow.write_all(b"x").is_err() {
                return true; // cut off
            }
            thread::sleep(Duration::from_millis(50)); // the attack is time itself
        }
        false
    });
    let closed = recv(&rx, "the slowloris to be cut");
    assert_eq!(closed, "closed ReadTimeout");
    let held = started.elapsed();
    assert!(
        held < READ_TIMEOUT + STEP / 2,
        "held the worker for {held:?}"
    );
    // The worker is free again: a normal client is served.
    let mut normal = connect(running.addr);
    let mut reader = BufReader::new(normal.try_clone().unwrap());
    assert_eq!(read_line(&mut reader), "hello\n");
    normal.write_all(b"hi\n").unwrap();
    assert_eq!(read_line(&mut reader), "> hi\n");
    assert_eq!(recv(&rx, "the normal line"), "line hi");
    assert!(
        trickler.join().unwrap(),
        "the trickler saw its connection cut"
    );
    drop((normal, reader, slow_reader));
    running.stop();
}

#[test]
fn max_connections_reject_sends_the_busy_message_and_counts() {
    let mut server = TcpServer::bind("127.0.0.1:0", Messages(Echo::new())).unwrap();
    server.set_dispatch(
        Reactor::new(2)
            .max_connections(Some(2))
            .overflow(Overflow::Reject),
    );
    server.set_busy_hook(|_: &SocketAddr, out: &mut dyn Write| {
        let _ = out.write_all(b"BUSY\n");
    });
    let stats = server.stats();
    let running = spawn(server);
    let mut first = connect(running.addr);
    let mut second = connect(running.addr);
    // Both are registered once they echo.
    for c in [&mut first, &mut second] {
        c.write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        c.read_exact(&mut b).unwrap();
    }
    let mut third = connect(running.addr);
    let mut reply = String::new();
    third.read_to_string(&mut reply).unwrap();
    assert_eq!(reply, "BUSY\n");
    assert_eq!(stats.snapshot().rejected, 1);
    // Closing one frees a place.
    drop(first);
    // The close is seen asynchronously: until then a newcomer is still
    // refused (BUSY). Retry, bounded in time.
    let attempt = |addr| -> io::Result<Vec<u8>> {
        let mut c = TcpStream::connect(addr)?;
        c.set_read_timeout(Some(STEP))?;
        c.write_all(b"in")?;
        c.shutdown(Shutdown::Write)?;
        let mut reply = Vec::new();
        c.read_to_end(&mut reply)?;
        Ok(reply)
    };
    let deadline = Instant::now() + STEP;
    let mut reply = Vec::new();
    while Instant::now() < deadline {
        match attempt(running.addr) {
            Ok(r) if r == b"in" => {
                reply = r;
                break;
            }
            Ok(r) => assert_eq!(r, b"BUSY\n"),
            Err(_) => {} // refused mid-handshake: try again
        }
    }
    assert_eq!(reply, b"in");
    drop(second);
    running.stop();
}

#[test]
fn max_connections_block_waits_for_a_place() {
    let (tx, rx) = mpsc::channel();
    let mut server = TcpServer::bind("127.0.0.1:0", Messages(Echo::reporting(tx))).unwrap();
    server.set_dispatch(Reactor::new(2).max_connections(Some(1)));
    let stats = server.stats();
    let running = spawn(server);
    let mut first = connect(running.addr);
    first.write_all(b"1").unwrap();
    let mut b = [0u8; 1];
    first.read_exact(&mut b).unwrap();
    // The second waits in the backlog: accepted, not served.
    let addr = running.addr;
    let second = thread::spawn(move || echo_once(addr, b"2"));
    // Let the first finish; the second is then served.
    first.shutdown(Shutdown::Write).unwrap();
    assert_eq!(recv(&rx, "the first to close"), "PeerClosed");
    // (the handler returned Close at end of file: reported as PeerClosed)
    assert_eq!(second.join().unwrap(), b"2");
    assert_eq!(stats.snapshot().rejected, 0);
    running.stop();
}

/// A chat room: every line goes to every other member through its
/// `ConnWriter`, written from whichever worker read the line.
struct Room {
    members: Mutex<Vec<ConnWriter<TcpStream>>>,
    closed: Mutex<Sender<String>>,
}

impl MessageHandler<TcpStream> for Room {
    type State = ();

    fn connect(&self, conn: &mut Connection<TcpStream>) -> io::Result<()> {
        self.members.lock().unwrap().push(conn.writer());
        conn.wfile.write_all(b"joined\n")
    }

    fn ready(&self, conn: &mut Connection<TcpStream>, _: &mut ()) -> io::Result<Action> {
        let me = conn.writer();
        loop {
            let mut line = String::new();
            if conn.rfile.read_line(&mut line)? == 0 {
                return Ok(Action::Close);
            }
            for member in self.members.lock().unwrap().iter() {
                if !member.same_connection(&me) {
                    let _ = member.send(line.as_bytes());
                }
            }
            if !conn.has_buffered_data() {
                return Ok(Action::Keep);
            }
        }
    }

    fn disconnect(&self, conn: &mut Connection<TcpStream>, _: (), reason: &CloseReason) {
        let me = conn.writer();
        self.members
            .lock()
            .unwrap()
            .retain(|m| !m.same_connection(&me));
        let _ = self.closed.lock().unwrap().send(format!("{reason:?}"));
    }
}

#[test]
fn broadcast_reaches_parked_connections_and_a_stuck_reader_is_dropped() {
    let (tx, rx) = mpsc::channel();
    let mut server = TcpServer::bind(
        "127.0.0.1:0",
        Messages(Room {
            members: Mutex::new(Vec::new()),
            closed: Mutex::new(tx),
        }),
    )
    .unwrap();
    server.set_dispatch(Reactor::new(2).max_outbound(64 * 1024));
    let running = spawn(server);
    let join = |addr| {
        let stream = connect(addr);
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        assert_eq!(read_line(&mut reader), "joined\n");
        (stream, reader)
    };
    let (mut alice, mut alice_in) = join(running.addr);
    let (_bob, mut bob_in) = join(running.addr);
    let (_carol, mut carol_in) = join(running.addr);
    alice.write_all(b"hi all\n").unwrap();
    assert_eq!(read_line(&mut bob_in), "hi all\n");
    assert_eq!(read_line(&mut carol_in), "hi all\n");

    // Dave joins and never reads. Alice floods until Dave is dropped as a
    // slow consumer; Bob and Carol keep up and get every line, so the room
    // never stalls on Dave.
    let (dave, _dave_in) = join(running.addr);
    let line = format!("{}\n", "y".repeat(1000));
    let readers: Vec<_> = [bob_in, carol_in]
        .into_iter()
        .map(|mut r| {
            thread::spawn(move || {
                let mut lines = 0u64;
                loop {
                    let mut got = String::new();
                    r.read_line(&mut got).unwrap();
                    if got == "END\n" {
                        return (lines, r);
                    }
                    assert_eq!(got.len(), 1001);
                    lines += 1;
                }
            })
        })
        .collect();
    let mut sent = 0u64;
    let mut dropped = None;
    // Kernel buffers absorb a few MB before the server queues anything;
    // 100 000 lines (100 MB) bounds the flood.
    while sent < 100_000 {
        alice.write_all(line.as_bytes()).unwrap();
        sent += 1;
        if sent.is_multiple_of(100)
            && let Ok(reason) = rx.try_recv()
        {
            dropped = Some(reason);
            break;
        }
    }
    alice.write_all(b"END\n").unwrap();
    let dropped = dropped.unwrap_or_else(|| recv(&rx, "dave to be dropped"));
    assert_eq!(dropped, "SlowConsumer");
    for r in readers {
        let (lines, reader) = r.join().expect("a reader failed");
        assert_eq!(lines, sent, "every line reached the readers");
        drop(reader);
    }
    drop(dave);
    // The room still works.
    let (mut erin, erin_in) = join(running.addr);
    erin.write_all(b"after\n").unwrap();
    assert_eq!(read_line(&mut alice_in), "after\n");
    drop((alice, alice_in, erin, erin_in, _bob, _carol));
    running.stop();
}

#[test]
fn a_peer_that_writes_without_reading_gets_backpressure_not_a_disconnect() {
    let mut server = TcpServer::bind("127.0.0.1:0", Messages(Echo::new())).unwrap();
    server.set_dispatch(Reactor::new(2).max_outbound(256 * 1024));
    let running = spawn(server);
    // 8 MB out before reading anything back: far beyond the outbound limit
    // and the socket buffers, so the server must stop reading meanwhile.
    let payload: Vec<u8> = (0..8_000_000u32).map(|i| (i % 251) as u8).collect();
    let mut stream = connect(running.addr);
    let writer = {
        let mut stream = stream.try_clone().unwrap();
        let payload = payload.clone();
        thread::spawn(move || {
            stream.write_all(&payload).unwrap();
            stream.shutdown(Shutdown::Write).unwrap();
        })
    };
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).unwrap();
    writer.join().unwrap();
    assert_eq!(reply.len(), payload.len());
    assert!(reply == payload);
    running.stop();
}

#[test]
fn handler_errors_and_panics_close_one_connection_and_reach_handle_error() {
    struct Fussy;
    impl MessageHandler<TcpStream> for Fussy {
        type State = ();
        fn connect(&self, _: &mut Connection<TcpStream>) -> io::Result<()> {
            Ok(())
        }
        fn ready(&self, conn: &mut Connection<TcpStream>, _: &mut ()) -> io::Result<Action> {
            let mut line = String::new();
            conn.rfile.read_line(&mut line)?;
            match line.trim() {
                "panic" => panic!("deliberate reactor panic"),
                "error" => Err(io::Error::other("deliberate error")),
                other => {
                    conn.wfile.write_all(format!("ok {other}\n").as_bytes())?;
                    Ok(Action::Keep)
                }
            }
        }
    }
    let mut server = TcpServer::bind("127.0.0.1:0", Messages(Fussy)).unwrap();
    server.set_dispatch(Reactor::new(1));
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    server.set_handle_error(move |_: &SocketAddr, e: &RequestError| {
        tx.lock().unwrap().send(e.to_string()).unwrap();
    });
    let stats = server.stats();
    let running = spawn(server);
    for (word, expected) in [
        ("panic", "handler panicked: deliberate reactor panic"),
        ("error", "deliberate error"),
    ] {
        let mut c = connect(running.addr);
        c.write_all(format!("{word}\n").as_bytes()).unwrap();
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).unwrap();
        assert_eq!(recv(&rx, "handle_error"), expected);
    }
    let mut c = connect(running.addr);
    let mut r = BufReader::new(c.try_clone().unwrap());
    c.write_all(b"fine\n").unwrap();
    assert_eq!(read_line(&mut r), "ok fine\n");
    assert_eq!(stats.snapshot().panics, 1);
    assert_eq!(stats.snapshot().errors, 2);
    drop((c, r));
    running.stop();
}

#[test]
fn shutdown_says_goodbye_to_parked_connections_and_drains() {
    struct Polite;
    impl MessageHandler<TcpStream> for Polite {
        type State = ();
        fn connect(&self, conn: &mut Connection<TcpStream>) -> io::Result<()> {
            conn.wfile.write_all(b"hi\n")
        }
        fn ready(&self, conn: &mut Connection<TcpStream>, _: &mut ()) -> io::Result<Action> {
            let n = conn.rfile.fill_buf()?.len();
            conn.rfile.consume(n);
            Ok(if n == 0 { Action::Close } else { Action::Keep })
        }
        fn shutting_down(
            &self,
            conn: &mut Connection<TcpStream>,
            _: &mut (),
        ) -> io::Result<Action> {
            assert!(conn.is_shutting_down());
            conn.wfile.write_all(b"server going away\n")?;
            Ok(Action::Close)
        }
    }
    let server = TcpServer::bind("127.0.0.1:0", Messages(Polite)).unwrap();
    let running = spawn(server);
    let clients: Vec<_> = (0..5)
        .map(|_| {
            let c = connect(running.addr);
            let mut r = BufReader::new(c.try_clone().unwrap());
            assert_eq!(read_line(&mut r), "hi\n");
            (c, r)
        })
        .collect();
    let report = running.stop();
    for (_c, mut r) in clients {
        assert_eq!(read_line(&mut r), "server going away\n");
        assert_eq!(read_line(&mut r), "", "then closed");
    }
    assert_eq!(report.drained, 5);
    assert_eq!(report.forced, 0);
}

#[test]
fn the_drain_deadline_cuts_off_connections_that_stay() {
    let (tx, rx) = mpsc::channel();
    let mut server = TcpServer::bind("127.0.0.1:0", Messages(Echo::reporting(tx))).unwrap();
    server.set_drain_timeout(Duration::from_millis(200));
    let running = spawn(server);
    let mut stayer = connect(running.addr);
    stayer.write_all(b"x").unwrap();
    let mut b = [0u8; 1];
    stayer.read_exact(&mut b).unwrap();
    let report = running.stop();
    assert_eq!(report.forced, 1);
    assert_eq!(recv(&rx, "the forced close"), "Shutdown");
    let mut rest = Vec::new();
    let _ = stayer.read_to_end(&mut rest);
    assert!(rest.is_empty());
}

#[test]
fn message_handlers_need_the_reactor_and_the_reactor_needs_message_handlers() {
    let mut server = TcpServer::bind("127.0.0.1:0", Messages(Echo::new())).unwrap();
    server.set_dispatch(Dispatch::pool(2));
    let err = server.serve_forever().unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);

    let mut server = TcpServer::bind("127.0.0.1:0", |_: &mut TcpRequest| Ok(())).unwrap();
    server.set_dispatch(Reactor::new(2));
    let err = server.serve_forever().unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
}

#[test]
fn a_message_half_received_when_shutdown_begins_ends_with_a_goodbye() {
    struct Framed;
    impl MessageHandler<TcpStream> for Framed {
        type State = ();
        fn connect(&self, conn: &mut Connection<TcpStream>) -> io::Result<()> {
            conn.wfile.write_all(b"ready\n")
        }
        fn ready(&self, conn: &mut Connection<TcpStream>, _: &mut ()) -> io::Result<Action> {
            let mut line = String::new();
            conn.rfile.read_line(&mut line)?; // waits for the rest of the line
            conn.wfile.write_all(line.as_bytes())?;
            Ok(Action::Keep)
        }
        fn disconnect(&self, conn: &mut Connection<TcpStream>, _: (), reason: &CloseReason) {
            if matches!(reason, CloseReason::Shutdown) {
                let _ = conn.wfile.write_all(b"goodbye\n");
            }
        }
    }
    let mut server = TcpServer::bind("127.0.0.1:0", Messages(Framed)).unwrap();
    // A long drain: the goodbye must not wait for it.
    server.set_drain_timeout(STEP * 3);
    let stats = server.stats();
    let running = spawn(server);
    let mut client = connect(running.addr);
    let mut reader = BufReader::new(client.try_clone().unwrap());
    assert_eq!(read_line(&mut reader), "ready\n");
    client.write_all(b"half a li").unwrap();
    // Wait until a worker is inside `ready`, waiting for the rest.
    let deadline = Instant::now() + STEP;
    while stats.snapshot().active == 0 {
        assert!(Instant::now() < deadline, "the handler never started");
        thread::yield_now();
    }
    let report = running.stop();
    assert_eq!(read_line(&mut reader), "goodbye\n");
    assert_eq!(read_line(&mut reader), "", "then closed");
    assert_eq!(report.forced, 0);
}

/// Regression: the drain wakes parked connections to tell them of the
/// shutdown, but skipped those a worker was busy with at that moment; they
/// then waited, unaware, until the drain deadline cut them off.
#[test]
fn connections_busy_when_shutdown_begins_still_hear_of_it() {
    struct Busy {
        entered: Mutex<Sender<()>>,
    }
    impl MessageHandler<TcpStream> for Busy {
        type State = ();
        fn connect(&self, conn: &mut Connection<TcpStream>) -> io::Result<()> {
            conn.wfile.write_all(b"hi\n")
        }
        fn ready(&self, conn: &mut Connection<TcpStream>, _: &mut ()) -> io::Result<Action> {
            let n = conn.rfile.fill_buf()?.len();
            conn.rfile.consume(n);
            self.entered.lock().unwrap().send(()).unwrap();
            // Busy until the shutdown has begun (bounded by STEP).
            conn.shutdown_token().wait(STEP);
            Ok(Action::Keep)
        }
        fn shutting_down(
            &self,
            conn: &mut Connection<TcpStream>,
            _: &mut (),
        ) -> io::Result<Action> {
            conn.wfile.write_all(b"bye\n")?;
            Ok(Action::Close)
        }
    }
    const BUSY: usize = 4;
    let (tx, rx) = mpsc::channel();
    let mut server = TcpServer::bind(
        "127.0.0.1:0",
        Messages(Busy {
            entered: Mutex::new(tx),
        }),
    )
    .unwrap();
    server.set_dispatch(Reactor::new(BUSY));
    // A drain far longer than any wait below: hearing of the shutdown must
    // not depend on the deadline.
    server.set_drain_timeout(STEP * 3);
    let running = spawn(server);
    let clients: Vec<_> = (0..BUSY)
        .map(|_| {
            let mut c = connect(running.addr);
            let mut r = BufReader::new(c.try_clone().unwrap());
            assert_eq!(read_line(&mut r), "hi\n");
            c.write_all(b"x").unwrap();
            (c, r)
        })
        .collect();
    for _ in 0..BUSY {
        recv(&rx, "every worker busy in a handler");
    }
    let started = Instant::now();
    let report = running.stop();
    assert!(
        started.elapsed() < STEP,
        "the drain waited for its deadline"
    );
    for (_c, mut r) in clients {
        assert_eq!(read_line(&mut r), "bye\n");
    }
    assert_eq!(report.forced, 0);
}

/// Regression: a worker takes several ready events at once; if the handler
/// of the first blocked on something other than its connection, the others
/// waited behind it although another worker sat idle.
#[test]
fn a_handler_blocked_elsewhere_does_not_hold_up_other_connections() {
    struct Gate {
        gate: Mutex<std::sync::mpsc::Receiver<()>>,
    }
    impl MessageHandler<TcpStream> for Gate {
        type State = ();
        fn connect(&self, _: &mut Connection<TcpStream>) -> io::Result<()> {
            Ok(())
        }
        fn ready(&self, conn: &mut Connection<TcpStream>, _: &mut ()) -> io::Result<Action> {
            let mut line = String::new();
            if conn.rfile.read_line(&mut line)? == 0 {
                return Ok(Action::Close);
            }
            if line == "block\n" {
                // Blocks on a channel, not on the connection.
                let _ = self.gate.lock().unwrap().recv_timeout(STEP);
            }
            conn.wfile.write_all(line.as_bytes())?;
            Ok(Action::Keep)
        }
    }
    let (open, gate) = mpsc::channel();
    let mut server = TcpServer::bind(
        "127.0.0.1:0",
        Messages(Gate {
            gate: Mutex::new(gate),
        }),
    )
    .unwrap();
    server.set_dispatch(Reactor::new(2));
    let running = spawn(server);
    for _ in 0..10 {
        let mut blocker = connect(running.addr);
        let mut other = connect(running.addr);
        // Both arrive together, so one worker may take both events.
        blocker.write_all(b"block\n").unwrap();
        other.write_all(b"free\n").unwrap();
        let started = Instant::now();
        let mut reader = BufReader::new(other.try_clone().unwrap());
        assert_eq!(read_line(&mut reader), "free\n");
        assert!(
            started.elapsed() < STEP / 2,
            "waited behind the blocked handler"
        );
        open.send(()).unwrap();
        let mut reader = BufReader::new(blocker.try_clone().unwrap());
        assert_eq!(read_line(&mut reader), "block\n");
    }
    running.stop();
}
