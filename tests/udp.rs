//! UDP server behaviour (Python's `UDPServer` with `DatagramRequestHandler`),
//! run over every dispatch strategy with `Sync` as the reference: echo over
//! IPv4 and IPv6, many concurrent clients, oversize datagrams, explicit
//! replies, dual-stack sockets, and the shared reply socket of the pool.

mod util;

use std::collections::HashSet;
use std::io::{self, Write};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;

use socketserver::{
    BindOptions, DEFAULT_MAX_PACKET_SIZE, Dispatch, Overflow, Pool, RequestError, UdpRequest,
    UdpServer,
};
use util::{STEP, UDP_ATTEMPTS, all_dispatches, recv, spawn, udp_client, udp_request};

/// Python's `DatagramRequestHandler` echo: the packet goes back through
/// `wfile`, as one datagram after `finish`.
fn echo(req: &mut UdpRequest) -> io::Result<()> {
    let packet = req.packet().to_vec();
    req.wfile.write_all(&packet)
}

/// Receives one datagram within [`STEP`] or fails the test.
fn recv_datagram(client: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    client.set_read_timeout(Some(STEP)).unwrap();
    let mut buf = vec![0; 65_536];
    let (n, from) = client.recv_from(&mut buf).expect("a datagram within STEP");
    (buf[..n].to_vec(), from)
}

/// What `handle_error` was told: the peer, the message, and for
/// [`RequestError::Oversize`] the size and the limit.
type ErrorReport = (SocketAddr, String, Option<(usize, usize)>);

/// Forwards every `handle_error` report to a channel.
fn errors_to_channel(
    server: &mut UdpServer<impl socketserver::RequestHandler<UdpRequest>>,
) -> mpsc::Receiver<ErrorReport> {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    server.set_handle_error(move |peer: &SocketAddr, err: &RequestError| {
        let oversize = match err {
            RequestError::Oversize { size, limit } => Some((*size, *limit)),
            _ => None,
        };
        let _ = tx.lock().unwrap().send((*peer, err.to_string(), oversize));
    });
    rx
}

#[test]
fn echo_in_every_dispatch_mode_v4_and_v6() {
    for (name, dispatch) in all_dispatches() {
        for bind in ["127.0.0.1:0", "[::1]:0"] {
            let mut server = UdpServer::bind(bind, echo).unwrap();
            server.set_dispatch(dispatch.clone());
            let running = spawn(server);
            assert_eq!(running.addr.is_ipv6(), bind.starts_with('['));
            let client = udp_client(running.addr);
            let full: Vec<u8> = (0..DEFAULT_MAX_PACKET_SIZE)
                .map(|i| (i * 7) as u8)
                .collect();
            for payload in [&b"x"[..], b"hello datagram", &full] {
                let (reply, from) = udp_request(&client, running.addr, payload);
                assert_eq!(reply, payload, "{name} on {bind}");
                assert_eq!(from, running.addr, "{name}: reply from the server's socket");
            }
            running.stop();
        }
    }
}

#[test]
fn thirty_two_clients_send_a_hundred_datagrams_each_and_every_reply_is_matched() {
    const CLIENTS: usize = 32;
    const DATAGRAMS: usize = 100;
    for (name, dispatch) in all_dispatches() {
        let mut server = UdpServer::bind("127.0.0.1:0", echo).unwrap();
        server.set_dispatch(dispatch);
        let stats = server.stats();
        let running = spawn(server);
        let addr = running.addr;
        let clients: Vec<_> = (0..CLIENTS)
            .map(|c| {
                thread::spawn(move || {
                    let client = udp_client(addr);
                    let mut buf = [0u8; 1024];
                    let mut resent = 0;
                    for seq in 0..DATAGRAMS {
                        // Distinct lengths too, so a reply cut short or sent
                        // to the wrong client cannot pass for the right one.
                        let sent = format!("client {c:02} seq {seq:03} {}", "#".repeat(seq % 17));
                        let mut attempts = 0;
                        'send: loop {
                            attempts += 1;
                            assert!(attempts <= UDP_ATTEMPTS, "client {c} seq {seq}: no reply");
                            client.send_to(sent.as_bytes(), addr).unwrap();
                            // Each send is answered at most once, so at most
                            // `attempts` replies can be pending: a bounded
                            // read loop that skips late duplicates.
                            for _ in 0..attempts {
                                let (n, from) = match client.recv_from(&mut buf) {
                                    Ok(got) => got,
                                    Err(e)
                                        if matches!(
                                            e.kind(),
                                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                                        ) =>
                                    {
                                        resent += 1;
                                        continue 'send;
                                    }
                                    Err(e) => panic!("client {c}: {e}"),
                                };
                                assert_eq!(from, addr);
                                let reply = std::str::from_utf8(&buf[..n]).unwrap();
                                assert!(
                                    reply.starts_with(&format!("client {c:02} seq ")),
                                    "client {c} got another client's reply: {reply:?}"
                                );
                                if reply == sent {
                                    break 'send;
                                }
                                // A duplicate answer to an earlier, resent
                                // datagram of this client: never a later one.
                                let earlier: usize = reply[14..17].parse().unwrap();
                                assert!(earlier < seq, "client {c}: reply {reply:?} out of order");
                            }
                        }
                    }
                    resent
                })
            })
            .collect();
        let resent: usize = clients
            .into_iter()
            .map(|c| {
                c.join()
                    .unwrap_or_else(|_| panic!("a client failed in {name}"))
            })
            .sum();
        running.stop();
        let s = stats.snapshot();
        assert_eq!(
            s.completed as usize,
            CLIENTS * DATAGRAMS + resent,
            "{name}: every datagram received was handled ({resent} resent)"
        );
        assert_eq!((s.errors, s.rejected, s.oversize), (0, 0, 0), "{name}");
    }
}

#[test]
fn an_oversize_datagram_is_reported_counted_and_not_echoed_truncated() {
    for (name, dispatch) in all_dispatches() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut server = UdpServer::bind("127.0.0.1:0", {
            let seen = Arc::clone(&seen);
            move |req: &mut UdpRequest| {
                seen.lock().unwrap().push(req.packet().len());
                echo(req)
            }
        })
        .unwrap();
        server.set_dispatch(dispatch);
        let errors = errors_to_channel(&mut server);
        let stats = server.stats();
        let running = spawn(server);
        let client = udp_client(running.addr);

        let oversize = vec![b'o'; 10_000];
        client.send_to(&oversize, running.addr).unwrap();
        let (peer, message, size) = recv(&errors, "handle_error for the oversize datagram");
        assert_eq!(peer, client.local_addr().unwrap(), "{name}");
        assert!(message.contains("max_packet_size"), "{name}: {message}");
        // Linux reports the real size through MSG_TRUNC; elsewhere it is
        // known only to exceed the limit.
        let (size, limit) = size.expect("RequestError::Oversize");
        assert_eq!(limit, DEFAULT_MAX_PACKET_SIZE);
        if cfg!(target_os = "linux") {
            assert_eq!(size, 10_000, "{name}");
        } else {
            assert!(size > limit, "{name}");
        }
        assert_eq!(stats.snapshot().oversize, 1, "{name}");

        // The next datagram is served, and it is the first reply the client
        // sees: nothing of the oversize one came back.
        let exact = vec![b'e'; DEFAULT_MAX_PACKET_SIZE];
        client.send_to(&exact, running.addr).unwrap();
        assert_eq!(recv_datagram(&client).0, exact, "{name}");
        let (reply, _) = udp_request(&client, running.addr, b"after");
        assert_eq!(reply, b"after", "{name}");
        running.stop();
        assert_eq!(
            *seen.lock().unwrap(),
            [DEFAULT_MAX_PACKET_SIZE, 5],
            "{name}: the handler never saw the oversize datagram"
        );
        let s = stats.snapshot();
        assert_eq!((s.oversize, s.completed, s.accepted), (1, 2, 2), "{name}");
    }
}

#[test]
fn max_packet_size_is_configurable_both_ways() {
    // Smaller than the default.
    let mut server = UdpServer::bind("127.0.0.1:0", echo).unwrap();
    server.set_max_packet_size(100);
    let errors = errors_to_channel(&mut server);
    let stats = server.stats();
    let running = spawn(server);
    let client = udp_client(running.addr);
    assert_eq!(udp_request(&client, running.addr, &[1; 100]).0, [1; 100]);
    client.send_to(&[2; 101], running.addr).unwrap();
    let (_, _, size) = recv(&errors, "oversize report");
    let (size, limit) = size.unwrap();
    assert_eq!(limit, 100);
    assert!(size == 101 || !cfg!(target_os = "linux"), "{size}");
    assert_eq!(stats.snapshot().oversize, 1);
    running.stop();

    // Larger than the default.
    let mut server = UdpServer::bind("127.0.0.1:0", echo).unwrap();
    server.set_max_packet_size(20_000);
    let stats = server.stats();
    let running = spawn(server);
    let client = udp_client(running.addr);
    let big: Vec<u8> = (0..15_000u32).map(|i| i as u8).collect();
    assert_eq!(udp_request(&client, running.addr, &big).0, big);
    running.stop();
    assert_eq!(stats.snapshot().oversize, 0);
}

#[test]
fn explicit_replies_send_several_datagrams_or_none() {
    for (name, dispatch) in all_dispatches() {
        let mut server =
            UdpServer::bind("127.0.0.1:0", |req: &mut UdpRequest| match req.packet() {
                b"three" => {
                    for i in 1..=3 {
                        let sent = req.reply(format!("part {i}").as_bytes())?;
                        assert_eq!(sent, 6);
                    }
                    Ok(())
                }
                b"none" => Ok(()),
                _ => echo(req),
            })
            .unwrap();
        server.set_dispatch(dispatch);
        let running = spawn(server);
        let client = udp_client(running.addr);
        client.send_to(b"three", running.addr).unwrap();
        for i in 1..=3 {
            let (reply, from) = recv_datagram(&client);
            assert_eq!(reply, format!("part {i}").as_bytes(), "{name}");
            assert_eq!(from, running.addr);
        }
        client.send_to(b"none", running.addr).unwrap();
        // Nothing for "none": the next datagram to arrive answers "echo".
        assert_eq!(
            udp_request(&client, running.addr, b"echo").0,
            b"echo",
            "{name}"
        );
        running.stop();
    }
}

/// The serving thread of a pool (or threading) server receives and queues
/// datagrams while every worker is busy, and the workers reply through the
/// server's one socket: no socket is created per packet.
#[test]
fn workers_reply_through_the_shared_socket_while_the_serving_thread_keeps_receiving() {
    const WORKERS: usize = 2;
    const DATAGRAMS: usize = 6;
    let dispatches: [(&str, Dispatch); 2] = [
        ("pool", Pool::new(WORKERS).queue_size(8).into()),
        ("threading", Dispatch::threading()),
    ];
    for (name, dispatch) in dispatches {
        let (entered_tx, entered_rx) = mpsc::channel();
        let (received_tx, received_rx) = mpsc::channel();
        let release = Arc::new(Mutex::new(()));
        let gate = release.lock().unwrap();
        let fds = Arc::new(Mutex::new(HashSet::<RawFd>::new()));
        let mut server = UdpServer::bind("127.0.0.1:0", {
            let entered_tx = Mutex::new(entered_tx);
            let release = Arc::clone(&release);
            let fds = Arc::clone(&fds);
            move |req: &mut UdpRequest| {
                fds.lock().unwrap().insert(req.socket().as_raw_fd());
                entered_tx.lock().unwrap().send(()).unwrap();
                drop(release.lock().unwrap());
                echo(req)
            }
        })
        .unwrap();
        server.set_dispatch(dispatch);
        // verify_request runs on the serving thread for each datagram it
        // receives, before dispatch.
        let received_tx = Mutex::new(received_tx);
        server.set_verify_request(move |_peer: &SocketAddr| {
            received_tx.lock().unwrap().send(()).unwrap();
            true
        });
        let stats = server.stats();
        let running = spawn(server);
        let clients: Vec<UdpSocket> = (0..DATAGRAMS).map(|_| udp_client(running.addr)).collect();
        for (i, client) in clients.iter().enumerate() {
            client
                .send_to(format!("datagram {i}").as_bytes(), running.addr)
                .unwrap();
        }
        // The first handlers block on the gate...
        let blocked = if name == "pool" { WORKERS } else { DATAGRAMS };
        for _ in 0..blocked {
            recv(&entered_rx, "a handler to start");
        }
        // ...and still every datagram is received by the serving thread.
        for _ in 0..DATAGRAMS {
            recv(&received_rx, "the serving thread to receive a datagram");
        }
        if name == "pool" {
            let s = stats.snapshot();
            assert_eq!(s.active, WORKERS as u64, "{name}");
            assert_eq!(s.accepted, DATAGRAMS as u64, "{name}: {s}");
        }
        drop(gate);
        for (i, client) in clients.iter().enumerate() {
            let (reply, from) = recv_datagram(client);
            assert_eq!(reply, format!("datagram {i}").as_bytes(), "{name}");
            assert_eq!(
                from, running.addr,
                "{name}: reply from the server's address"
            );
        }
        running.stop();
        assert_eq!(
            fds.lock().unwrap().len(),
            1,
            "{name}: every handler replied through one socket"
        );
        assert_eq!(stats.snapshot().completed, DATAGRAMS as u64);
    }
}

#[test]
fn a_full_pool_with_reject_answers_with_the_busy_hook() {
    let (entered_tx, entered_rx) = mpsc::channel();
    let release = Arc::new(Mutex::new(()));
    let gate = release.lock().unwrap();
    let mut server = UdpServer::bind("127.0.0.1:0", {
        let entered_tx = Mutex::new(entered_tx);
        let release = Arc::clone(&release);
        move |req: &mut UdpRequest| {
            entered_tx.lock().unwrap().send(()).unwrap();
            drop(release.lock().unwrap());
            echo(req)
        }
    })
    .unwrap();
    server.set_dispatch(Pool::new(1).queue_size(1).overflow(Overflow::Reject));
    server.set_busy_hook(|_peer: &SocketAddr, out: &mut dyn Write| {
        let _ = out.write_all(b"BUSY");
    });
    let stats = server.stats();
    let running = spawn(server);
    let first = udp_client(running.addr);
    first.send_to(b"first", running.addr).unwrap();
    recv(&entered_rx, "the worker to take the first datagram");
    let second = udp_client(running.addr);
    second.send_to(b"second", running.addr).unwrap(); // queued
    let third = udp_client(running.addr);
    third.send_to(b"third", running.addr).unwrap(); // rejected
    assert_eq!(recv_datagram(&third).0, b"BUSY");
    assert_eq!(stats.snapshot().rejected, 1);
    drop(gate);
    assert_eq!(recv_datagram(&first).0, b"first");
    assert_eq!(recv_datagram(&second).0, b"second");
    running.stop();
}

#[test]
fn a_panicking_or_failing_handler_ends_only_its_own_datagram() {
    for (name, dispatch) in all_dispatches() {
        let mut server =
            UdpServer::bind("127.0.0.1:0", |req: &mut UdpRequest| match req.packet() {
                b"panic" => panic!("deliberate test panic"),
                b"error" => Err(io::Error::other("deliberate error")),
                _ => echo(req),
            })
            .unwrap();
        server.set_dispatch(dispatch);
        let errors = errors_to_channel(&mut server);
        let stats = server.stats();
        let running = spawn(server);
        let client = udp_client(running.addr);
        client.send_to(b"panic", running.addr).unwrap();
        let (peer, message, _) = recv(&errors, "the panic report");
        assert_eq!(peer, client.local_addr().unwrap());
        assert!(
            message.contains("deliberate test panic"),
            "{name}: {message}"
        );
        client.send_to(b"error", running.addr).unwrap();
        assert_eq!(recv(&errors, "the error report").1, "deliberate error");
        assert_eq!(
            udp_request(&client, running.addr, b"fine").0,
            b"fine",
            "{name}"
        );
        running.stop();
        let s = stats.snapshot();
        assert_eq!((s.errors, s.panics, s.completed), (2, 1, 1), "{name}");
    }
}

#[test]
fn verify_request_denies_a_datagram_without_a_reply() {
    let handled = Arc::new(AtomicUsize::new(0));
    let mut server = UdpServer::bind("127.0.0.1:0", {
        let handled = Arc::clone(&handled);
        move |req: &mut UdpRequest| {
            handled.fetch_add(1, Ordering::SeqCst);
            echo(req)
        }
    })
    .unwrap();
    let denied_client = udp_client("127.0.0.1:0".parse().unwrap());
    let denied = denied_client.local_addr().unwrap();
    server.set_verify_request(move |peer: &SocketAddr| *peer != denied);
    let stats = server.stats();
    let running = spawn(server);
    let client = udp_client(running.addr);
    denied_client.send_to(b"let me in", running.addr).unwrap();
    assert_eq!(udp_request(&client, running.addr, b"ok").0, b"ok");
    // Sync dispatch: the denied datagram was taken before "ok" was.
    assert_eq!(stats.snapshot().denied, 1);
    running.stop();
    assert_eq!(handled.load(Ordering::SeqCst), 1);
}

/// `IPV6_V6ONLY`: a `[::]` socket with `only_v6(false)` serves IPv4 clients
/// too (they appear as v4-mapped addresses); with `only_v6(true)` the IPv4
/// port stays free for another socket.
#[test]
fn dual_stack_socket_serves_ipv4_clients_and_v6_only_does_not() {
    let mut server = UdpServer::bind_with(
        "[::]:0",
        &BindOptions::new().only_v6(false),
        |req: &mut UdpRequest| {
            let peer = req.peer_addr().to_string();
            req.wfile.write_all(peer.as_bytes())
        },
    )
    .unwrap();
    server.set_dispatch(Dispatch::pool(2));
    let running = spawn(server);
    let port = running.addr.port();
    let v4: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let client = udp_client(v4);
    let (reply, from) = udp_request(&client, v4, b"who am I");
    assert_eq!(from, v4, "the reply comes from the address the client used");
    let mapped = format!("[::ffff:127.0.0.1]:{}", client.local_addr().unwrap().port());
    assert_eq!(String::from_utf8(reply).unwrap(), mapped);
    // Dual-stack: the IPv4 port is taken by the server.
    let err = UdpSocket::bind(v4).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    running.stop();

    let server = UdpServer::bind_with("[::]:0", &BindOptions::new().only_v6(true), echo).unwrap();
    let port = server.local_addr().unwrap().port();
    // v6-only: the same port number on IPv4 belongs to nobody.
    UdpSocket::bind(("127.0.0.1", port)).expect("the IPv4 port is free");
    drop(server);
}

#[test]
fn from_socket_serves_an_existing_socket_and_shutdown_drains() {
    let socket = UdpSocket::bind("[::1]:0").unwrap();
    let mut server = UdpServer::from_socket(socket, echo).unwrap();
    server.set_dispatch(Dispatch::pool(2));
    let running = spawn(server);
    let client = udp_client(running.addr);
    assert_eq!(
        udp_request(&client, running.addr, b"inherited").0,
        b"inherited"
    );
    let report = running.stop();
    assert_eq!(report.forced, 0);
}
