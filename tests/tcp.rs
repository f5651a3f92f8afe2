//! TCP server behaviour, run over every dispatch strategy with `Sync` as the
//! reference, plus the hooks and lifecycle of Python's `BaseServer`.

mod util;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::Duration;

use socketserver::{BindOptions, Dispatch, Overflow, Pool, RequestError, TcpRequest, TcpServer};
use util::{STEP, all_dispatches, connect, echo_once, recv, spawn};

fn echo(req: &mut TcpRequest) -> io::Result<()> {
    io::copy(&mut req.rfile, &mut req.wfile)?;
    Ok(())
}

#[test]
fn echo_in_every_dispatch_mode_v4_and_v6() {
    for (name, dispatch) in all_dispatches() {
        for bind in ["127.0.0.1:0", "[::1]:0"] {
            let mut server = TcpServer::bind(bind, echo).unwrap();
            server.set_dispatch(dispatch.clone());
            let running = spawn(server);
            let payload: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
            assert_eq!(
                echo_once(running.addr, &payload),
                payload,
                "{name} on {bind}"
            );
            running.stop();
        }
    }
}

#[test]
fn sixty_four_concurrent_clients_fifty_round_trips_each() {
    for (name, dispatch) in all_dispatches() {
        let mut server = TcpServer::bind("127.0.0.1:0", echo).unwrap();
        server.set_dispatch(dispatch);
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
                        let mut reply = String::new();
                        reader.read_line(&mut reply).unwrap();
                        assert_eq!(reply, line);
                    }
                })
            })
            .collect();
        for client in clients {
            client
                .join()
                .unwrap_or_else(|_| panic!("a client failed in {name}"));
        }
        let stats = running.handle.clone();
        let report = running.stop();
        assert_eq!(report.forced, 0, "{name}");
        drop(stats);
    }
}

/// Counts handlers inside `handle` and remembers the most at once.
#[derive(Default)]
struct HighWater {
    now: AtomicUsize,
    max: AtomicUsize,
}

impl HighWater {
    fn enter(&self) {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
    }
    fn leave(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
}

#[test]
fn pool_never_runs_more_than_n_handlers_and_serves_every_queued_client() {
    const WORKERS: usize = 4;
    const CLIENTS: usize = 3 * WORKERS;
    let water = Arc::new(HighWater::default());
    let (entered_tx, entered_rx) = mpsc::channel();
    let release = Arc::new(Mutex::new(()));
    let gate = release.lock().unwrap();
    let mut server = TcpServer::bind("127.0.0.1:0", {
        let water = Arc::clone(&water);
        let entered_tx = Mutex::new(entered_tx);
        let release = Arc::clone(&release);
        move |req: &mut TcpRequest| {
            water.enter();
            entered_tx.lock().unwrap().send(()).unwrap();
            // Hold the worker until the test opens the gate.
            drop(release.lock().unwrap());
            water.leave();
            echo(req)
        }
    })
    .unwrap();
    server.set_dispatch(Pool::new(WORKERS).queue_size(WORKERS));
    let stats = server.stats();
    let running = spawn(server);
    let addr = running.addr;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| thread::spawn(move || echo_once(addr, format!("client {c}").as_bytes())))
        .collect();
    // The pool fills up: exactly WORKERS handlers enter, the rest wait.
    for _ in 0..WORKERS {
        recv(&entered_rx, "a worker to take a client");
    }
    assert_eq!(water.now.load(Ordering::SeqCst), WORKERS);
    drop(gate);
    for (c, client) in clients.into_iter().enumerate() {
        assert_eq!(client.join().unwrap(), format!("client {c}").into_bytes());
    }
    for _ in WORKERS..CLIENTS {
        recv(&entered_rx, "every queued client to be served");
    }
    assert_eq!(water.max.load(Ordering::SeqCst), WORKERS);
    // Counted after the client saw end-of-file: read once workers are joined.
    running.stop();
    assert_eq!(stats.snapshot().completed, CLIENTS as u64);
    assert_eq!(stats.snapshot().rejected, 0);
}

#[test]
fn reject_policy_closes_overflow_at_once_with_a_busy_message() {
    let (entered_tx, entered_rx) = mpsc::channel();
    let release = Arc::new(Mutex::new(()));
    let gate = release.lock().unwrap();
    let mut server = TcpServer::bind("127.0.0.1:0", {
        let entered_tx = Mutex::new(entered_tx);
        let release = Arc::clone(&release);
        move |req: &mut TcpRequest| {
            entered_tx.lock().unwrap().send(()).unwrap();
            drop(release.lock().unwrap());
            echo(req)
        }
    })
    .unwrap();
    server.set_dispatch(Pool::new(1).queue_size(1).overflow(Overflow::Reject));
    server.set_busy_hook(|_peer: &SocketAddr, out: &mut dyn Write| {
        let _ = out.write_all(b"BUSY try later\n");
    });
    let stats = server.stats();
    let running = spawn(server);
    let addr = running.addr;

    // Client 1 occupies the only worker.
    let first = thread::spawn(move || echo_once(addr, b"first"));
    recv(&entered_rx, "the first client to reach the worker");
    // Client 2 fills the queue; client 3 overflows. connect() returns once
    // the connection is in the backlog, so the server accepts them in order.
    let mut second = connect(addr);
    let mut third = connect(addr);
    let mut busy = String::new();
    third.read_to_string(&mut busy).unwrap();
    assert_eq!(busy, "BUSY try later\n");
    assert_eq!(stats.snapshot().rejected, 1);

    drop(gate);
    assert_eq!(first.join().unwrap(), b"first");
    second.write_all(b"second").unwrap();
    second.shutdown(Shutdown::Write).unwrap();
    let mut reply = Vec::new();
    second.read_to_end(&mut reply).unwrap();
    assert_eq!(reply, b"second", "the queued client is still served");
    running.stop();
}

/// Regression: with a direct hand-off (`queue_size(0)`) and `Reject`, a
/// request was refused whenever no worker happened to be parked in `recv`
/// at that instant — right after the pool started, or right after a worker
/// finished a request — though workers were free to serve it.
#[test]
fn direct_hand_off_rejects_only_when_every_worker_is_busy() {
    let (entered_tx, entered_rx) = mpsc::channel();
    let release = Arc::new(Mutex::new(()));
    let gate = release.lock().unwrap();
    let mut server = TcpServer::bind("127.0.0.1:0", {
        let entered_tx = Mutex::new(entered_tx);
        let release = Arc::clone(&release);
        move |req: &mut TcpRequest| {
            entered_tx.lock().unwrap().send(()).unwrap();
            drop(release.lock().unwrap());
            echo(req)
        }
    })
    .unwrap();
    server.set_dispatch(Pool::new(2).queue_size(0).overflow(Overflow::Reject));
    server.set_busy_hook(|_peer: &SocketAddr, out: &mut dyn Write| {
        let _ = out.write_all(b"BUSY\n");
    });
    let stats = server.stats();
    let addr = server.local_addr().unwrap();
    // Two clients wait in the backlog before the pool exists, so they are
    // handed over the moment its workers start.
    let first = connect(addr);
    let second = connect(addr);
    let running = spawn(server);
    recv(&entered_rx, "the first client to reach a worker");
    recv(&entered_rx, "the second client to reach a worker");
    assert_eq!(stats.snapshot().rejected, 0);

    // Both workers are busy now: the next client is refused.
    let mut third = connect(addr);
    let mut busy = String::new();
    third.read_to_string(&mut busy).unwrap();
    assert_eq!(busy, "BUSY\n");

    drop(gate);
    for (mut client, data) in [(first, &b"first"[..]), (second, &b"second"[..])] {
        client.write_all(data).unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).unwrap();
        assert_eq!(reply, data);
    }
    assert_eq!(stats.snapshot().rejected, 1);
    running.stop();
}

#[test]
fn shutdown_from_another_thread_returns_serve_forever() {
    for (name, dispatch) in all_dispatches() {
        let mut server = TcpServer::bind("127.0.0.1:0", echo).unwrap();
        server.set_dispatch(dispatch);
        let running = spawn(server);
        assert_eq!(echo_once(running.addr, b"x"), b"x", "{name}");
        let handle = running.handle.clone();
        let stopper = thread::spawn(move || handle.shutdown());
        stopper.join().unwrap();
        let report = running.join();
        assert_eq!(report.forced, 0, "{name}");
    }
}

#[test]
fn shutdown_from_inside_a_handler_does_not_deadlock() {
    for (name, dispatch) in all_dispatches() {
        let mut server = TcpServer::bind("127.0.0.1:0", |req: &mut TcpRequest| {
            req.shutdown_handle().shutdown();
            // Idempotent: a second call is harmless.
            req.shutdown_handle().shutdown();
            assert!(req.is_shutting_down());
            req.wfile.write_all(b"bye")
        })
        .unwrap();
        server.set_dispatch(dispatch);
        let running = spawn(server);
        assert_eq!(echo_once(running.addr, b""), b"bye", "{name}");
        let report = running.join();
        assert_eq!(report.drained, 1, "{name}: the stopping request finished");
    }
}

#[test]
fn shutdown_before_serving_returns_at_once() {
    let mut server = TcpServer::bind("127.0.0.1:0", echo).unwrap();
    server.shutdown_handle().shutdown();
    let report = server.serve_forever().unwrap();
    assert_eq!(report.drained + report.forced, 0);
    // Serving again after shutdown returns the same report.
    assert_eq!(server.serve_forever().unwrap(), report);
}

#[test]
fn handle_request_times_out_and_calls_handle_timeout() {
    let mut server = TcpServer::bind("127.0.0.1:0", echo).unwrap();
    let timed_out = Arc::new(AtomicUsize::new(0));
    server.set_timeout(Some(Duration::from_millis(20)));
    server.set_handle_timeout({
        let timed_out = Arc::clone(&timed_out);
        move || {
            timed_out.fetch_add(1, Ordering::SeqCst);
        }
    });
    assert!(!server.handle_request().unwrap());
    assert_eq!(timed_out.load(Ordering::SeqCst), 1);

    // With a client waiting, it serves one request and does not time out.
    let addr = server.local_addr().unwrap();
    let client = thread::spawn(move || echo_once(addr, b"one"));
    assert!(server.handle_request().unwrap());
    assert_eq!(client.join().unwrap(), b"one");
    assert_eq!(timed_out.load(Ordering::SeqCst), 1);
}

#[test]
fn handle_request_returns_false_after_shutdown() {
    let mut server = TcpServer::bind("127.0.0.1:0", echo).unwrap();
    server.shutdown_handle().shutdown();
    assert!(!server.handle_request().unwrap());
}

#[test]
fn verify_request_rejection_closes_without_calling_the_handler() {
    for (name, dispatch) in all_dispatches() {
        let called = Arc::new(AtomicBool::new(false));
        let mut server = TcpServer::bind("127.0.0.1:0", {
            let called = Arc::clone(&called);
            move |req: &mut TcpRequest| {
                called.store(true, Ordering::SeqCst);
                req.wfile.write_all(b"served")
            }
        })
        .unwrap();
        server.set_dispatch(dispatch);
        let seen = Arc::new(Mutex::new(Vec::new()));
        server.set_verify_request({
            let seen = Arc::clone(&seen);
            move |peer: &SocketAddr| {
                seen.lock().unwrap().push(*peer);
                false
            }
        });
        let stats = server.stats();
        let running = spawn(server);
        let mut client = connect(running.addr);
        let local = client.local_addr().unwrap();
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).unwrap();
        assert!(reply.is_empty(), "{name}: a refused client gets nothing");
        running.stop();
        assert!(!called.load(Ordering::SeqCst), "{name}: handler ran");
        assert_eq!(seen.lock().unwrap().as_slice(), &[local], "{name}");
        assert_eq!(stats.snapshot().denied, 1, "{name}");
    }
}

#[test]
fn panicking_handler_reaches_handle_error_and_the_pool_keeps_its_size() {
    const WORKERS: usize = 3;
    let barrier = Arc::new(Barrier::new(WORKERS + 1));
    let mut server = TcpServer::bind("127.0.0.1:0", {
        let barrier = Arc::clone(&barrier);
        move |req: &mut TcpRequest| {
            let mut first = [0u8; 1];
            req.rfile.read_exact(&mut first)?;
            if first[0] == b'!' {
                panic!("deliberate test panic");
            }
            // Every worker must be alive to get past this barrier.
            barrier.wait();
            req.wfile.write_all(b"ok")
        }
    })
    .unwrap();
    server.set_dispatch(Pool::new(WORKERS));
    let (errors_tx, errors_rx) = mpsc::channel();
    let errors_tx = Mutex::new(errors_tx);
    server.set_handle_error(move |peer: &SocketAddr, err: &RequestError| {
        errors_tx
            .lock()
            .unwrap()
            .send((*peer, err.is_panic(), err.to_string()))
            .unwrap();
    });
    let stats = server.stats();
    let running = spawn(server);
    for _ in 0..10 {
        let mut client = connect(running.addr);
        let local = client.local_addr().unwrap();
        client.write_all(b"!").unwrap();
        let mut rest = Vec::new();
        let _ = client.read_to_end(&mut rest);
        let (peer, is_panic, message) = recv(&errors_rx, "handle_error for the panic");
        assert_eq!(peer, local);
        assert!(is_panic);
        assert!(message.contains("deliberate test panic"), "{message}");
    }
    // All WORKERS workers are still there: WORKERS clients pass the barrier
    // together only if each is served by its own live worker.
    let addr = running.addr;
    let clients: Vec<_> = (0..WORKERS)
        .map(|_| thread::spawn(move || echo_once(addr, b"?")))
        .collect();
    barrier.wait();
    for client in clients {
        assert_eq!(client.join().unwrap(), b"ok");
    }
    // A client sees end-of-file before its worker counts the request as
    // completed: read the counters once the workers are joined.
    running.stop();
    let snapshot = stats.snapshot();
    assert_eq!(snapshot.panics, 10);
    assert_eq!(snapshot.completed, WORKERS as u64);
}

#[test]
fn handler_errors_reach_handle_error_with_the_peer() {
    let mut server = TcpServer::bind("127.0.0.1:0", |_req: &mut TcpRequest| {
        Err(io::Error::other("no thanks"))
    })
    .unwrap();
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    server.set_handle_error(move |peer: &SocketAddr, err: &RequestError| {
        tx.lock().unwrap().send((*peer, err.to_string())).unwrap();
    });
    let running = spawn(server);
    let client = connect(running.addr);
    let local = client.local_addr().unwrap();
    let (peer, message) = recv(&rx, "handle_error");
    assert_eq!(peer, local);
    assert_eq!(message, "no thanks");
    running.stop();
}

#[test]
fn finish_runs_even_when_handle_fails_and_setup_failure_skips_both() {
    use socketserver::RequestHandler;
    struct Probe(mpsc::Sender<&'static str>);
    impl RequestHandler<TcpRequest> for Probe {
        fn setup(&self, req: &mut TcpRequest) -> io::Result<()> {
            let mut b = [0u8; 1];
            req.rfile.read_exact(&mut b)?;
            self.0.send("setup").unwrap();
            if b[0] == b's' {
                return Err(io::Error::other("setup failed"));
            }
            Ok(())
        }
        fn handle(&self, _req: &mut TcpRequest) -> io::Result<()> {
            self.0.send("handle").unwrap();
            Err(io::Error::other("handle failed"))
        }
        fn finish(&self, _req: &mut TcpRequest) -> io::Result<()> {
            self.0.send("finish").unwrap();
            Ok(())
        }
    }
    let (tx, rx) = mpsc::channel();
    let mut server = TcpServer::bind("127.0.0.1:0", Probe(tx)).unwrap();
    server.set_handle_error(|_: &SocketAddr, _: &RequestError| {});
    let addr = server.local_addr().unwrap();
    let client = thread::spawn(move || echo_once(addr, b"h"));
    assert!(server.handle_request().unwrap());
    client.join().unwrap();
    let calls: Vec<_> = rx.try_iter().collect();
    assert_eq!(calls, ["setup", "handle", "finish"]);

    let client = thread::spawn(move || echo_once(addr, b"s"));
    assert!(server.handle_request().unwrap());
    client.join().unwrap();
    let calls: Vec<_> = rx.try_iter().collect();
    assert_eq!(calls, ["setup"]);
}

#[test]
fn the_port_can_be_bound_again_after_the_server_is_dropped() {
    let server = TcpServer::bind("127.0.0.1:0", echo).unwrap();
    let running = spawn(server);
    let addr = running.addr;
    // Leave a connection in TIME_WAIT on the server side too.
    assert_eq!(echo_once(addr, b"x"), b"x");
    running.stop();
    let again = TcpServer::bind(addr, echo).expect("rebind the same port");
    assert_eq!(again.local_addr().unwrap(), addr);
    drop(again);
    // std's plain listener too (SO_REUSEADDR is set by std on Unix).
    TcpListener::bind(addr).expect("std rebind");
}

#[test]
fn server_close_releases_the_port_and_is_idempotent() {
    let mut server = TcpServer::bind("127.0.0.1:0", echo).unwrap();
    server.set_dispatch(Dispatch::pool(2));
    let addr = server.local_addr().unwrap();
    server.server_close();
    server.server_close();
    assert!(server.local_addr().is_err());
    TcpServer::bind(addr, echo).expect("rebind after server_close");
    // Nothing listens: a connect is refused.
    drop(server);
}

#[test]
fn connections_after_shutdown_are_refused() {
    let server = TcpServer::bind("127.0.0.1:0", echo).unwrap();
    let running = spawn(server);
    let addr = running.addr;
    running.stop();
    let err = std::net::TcpStream::connect_timeout(&addr, STEP).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
}

#[test]
fn accepted_connections_have_nodelay_on_by_default_and_off_when_asked() {
    for nodelay in [true, false] {
        let mut server = TcpServer::bind("127.0.0.1:0", |req: &mut TcpRequest| {
            let on = req.socket().nodelay()?;
            req.wfile.write_all(if on { b"1" } else { b"0" })
        })
        .unwrap();
        if !nodelay {
            server.set_nodelay(false);
        }
        let running = spawn(server);
        let expected: &[u8] = if nodelay { b"1" } else { b"0" };
        assert_eq!(echo_once(running.addr, b""), expected);
        running.stop();
    }
}

#[test]
fn buffer_sizes_and_timeouts_are_applied_to_each_request() {
    let mut server = TcpServer::bind("127.0.0.1:0", |req: &mut TcpRequest| {
        let report = format!(
            "{} {} {:?} {:?}",
            req.rfile.capacity(),
            req.wfile.capacity(),
            req.socket().read_timeout()?,
            req.socket().write_timeout()?
        );
        req.wfile.write_all(report.as_bytes())
    })
    .unwrap();
    server.set_rbufsize(1234);
    server.set_wbufsize(4321);
    server.set_read_timeout(Some(Duration::from_secs(7)));
    server.set_write_timeout(Some(Duration::from_secs(9)));
    let running = spawn(server);
    let reply = String::from_utf8(echo_once(running.addr, b"")).unwrap();
    assert_eq!(reply, "1234 4321 Some(7s) Some(9s)");
    running.stop();
}

#[test]
fn read_timeout_ends_a_silent_connection_with_an_error() {
    let mut server = TcpServer::bind("127.0.0.1:0", echo).unwrap();
    server.set_read_timeout(Some(Duration::from_millis(50)));
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    server.set_handle_error(move |_: &SocketAddr, err: &RequestError| {
        let kind = match err {
            RequestError::Io(e) => Some(e.kind()),
            _ => None,
        };
        tx.lock().unwrap().send(kind).unwrap();
    });
    let running = spawn(server);
    let mut silent = connect(running.addr);
    let kind = recv(&rx, "the read timeout");
    assert!(
        matches!(
            kind,
            Some(io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
        ),
        "{kind:?}"
    );
    let mut rest = Vec::new();
    silent.read_to_end(&mut rest).unwrap();
    running.stop();
}

#[test]
fn bind_options_are_applied() {
    let options = BindOptions::new().request_queue_size(16).reuse_port(true);
    let first = TcpServer::bind_with("127.0.0.1:0", &options, echo).unwrap();
    let addr = first.local_addr().unwrap();
    // SO_REUSEPORT on both lets a second server share the port.
    let second = TcpServer::bind_with(addr, &options, echo).unwrap();
    assert_eq!(second.local_addr().unwrap(), addr);
    // Without it, the port is taken.
    let err = TcpServer::bind(addr, echo).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::AddrInUse);

    let v6only = BindOptions::new().only_v6(true);
    let server = TcpServer::bind_with("[::1]:0", &v6only, echo).unwrap();
    assert!(server.local_addr().unwrap().is_ipv6());
}

#[test]
fn from_listener_serves_an_existing_socket() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let server = TcpServer::from_listener(listener, echo).unwrap();
    let running = spawn(server);
    assert_eq!(echo_once(running.addr, b"inherited"), b"inherited");
    running.stop();
}

#[test]
fn stats_count_the_lifecycle() {
    let mut server = TcpServer::bind("127.0.0.1:0", |req: &mut TcpRequest| {
        let mut b = [0u8; 1];
        req.rfile.read_exact(&mut b)?;
        match b[0] {
            b'e' => Err(io::Error::other("error")),
            b'p' => panic!("panic"),
            _ => Ok(()),
        }
    })
    .unwrap();
    server.set_dispatch(Pool::new(2));
    server.set_handle_error(|_: &SocketAddr, _: &RequestError| {});
    let stats = server.stats();
    let running = spawn(server);
    for msg in [b"o", b"e", b"p", b"o"] {
        echo_once(running.addr, msg);
    }
    running.stop();
    let s = stats.snapshot();
    assert_eq!(s.accepted, 4);
    assert_eq!(s.completed, 2);
    assert_eq!(s.errors, 2);
    assert_eq!(s.panics, 1);
    assert_eq!(s.active, 0);
    assert_eq!(s.queued, 0);
}

#[test]
fn service_actions_run_after_requests_and_on_the_interval() {
    let mut server = TcpServer::bind("127.0.0.1:0", echo).unwrap();
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    server.set_service_actions(move || {
        let _ = tx.lock().unwrap().send(());
    });
    server.set_service_interval(Some(Duration::from_millis(10)));
    let running = spawn(server);
    // Idle: the interval alone drives it.
    for _ in 0..3 {
        recv(&rx, "service_actions while idle");
    }
    running.stop();
}

/// `IPV6_V6ONLY`: a `[::]` listener with `only_v6(false)` accepts IPv4
/// clients too (seen as v4-mapped peers); with `only_v6(true)` an IPv4
/// connect to the same port is refused.
#[test]
fn dual_stack_listener_accepts_ipv4_and_v6_only_refuses_it() {
    let server = TcpServer::bind_with(
        "[::]:0",
        &BindOptions::new().only_v6(false),
        |req: &mut TcpRequest| {
            let peer = req.peer_addr().to_string();
            req.wfile.write_all(peer.as_bytes())
        },
    )
    .unwrap();
    let running = spawn(server);
    let port = running.addr.port();
    let v4: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut client = connect(v4);
    let local = client.local_addr().unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let mut peer = String::new();
    client.read_to_string(&mut peer).unwrap();
    assert_eq!(peer, format!("[::ffff:127.0.0.1]:{}", local.port()));
    let v6: SocketAddr = format!("[::1]:{port}").parse().unwrap();
    assert!(echo_once(v6, b"").starts_with(b"[::1]:"));
    running.stop();

    let server = TcpServer::bind_with("[::]:0", &BindOptions::new().only_v6(true), echo).unwrap();
    let port = server.local_addr().unwrap().port();
    let running = spawn(server);
    let v6: SocketAddr = format!("[::1]:{port}").parse().unwrap();
    assert_eq!(echo_once(v6, b"v6 only"), b"v6 only");
    let v4: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let err = std::net::TcpStream::connect_timeout(&v4, STEP).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
    running.stop();
}

#[test]
fn python_names_bind_servers_with_their_mixin_dispatch() {
    use socketserver::python::ThreadingTcpServer;
    let server = ThreadingTcpServer::bind("127.0.0.1:0", |req: &mut TcpRequest| {
        let name = thread::current().name().unwrap_or("").to_owned();
        req.wfile.write_all(name.as_bytes())
    })
    .unwrap();
    let running = spawn(server);
    let reply = String::from_utf8(echo_once(running.addr, b"")).unwrap();
    assert!(reply.starts_with("socketserver-request-"), "{reply:?}");
    running.stop();
}
