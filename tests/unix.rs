//! Unix-domain servers (Python's `UnixStreamServer` and
//! `UnixDatagramServer`): echo over every dispatch strategy, and the life of
//! the socket file — a stale file is replaced, a live server's path is never
//! stolen, something that is not a socket is left alone, and the file is
//! removed when the server closes (only if it is still the server's own).
#![cfg(unix)]

mod util;

use std::fs;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use socketserver::{
    BindOptions, Dispatch, RequestError, UnixDatagramRequest, UnixDatagramServer,
    UnixStreamRequest, UnixStreamServer,
};
use util::{STEP, all_dispatches, recv, spawn};

fn echo_stream(req: &mut UnixStreamRequest) -> io::Result<()> {
    io::copy(&mut req.rfile, &mut req.wfile)?;
    Ok(())
}

fn echo_datagram(req: &mut UnixDatagramRequest) -> io::Result<()> {
    let packet = req.packet().to_vec();
    req.wfile.write_all(&packet)
}

fn is_socket(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

/// Connects, sends `data`, half-closes and reads everything back.
fn stream_echo(path: &Path, data: &[u8]) -> Vec<u8> {
    let mut stream = UnixStream::connect(path).expect("connect");
    stream.set_read_timeout(Some(STEP)).unwrap();
    stream.set_write_timeout(Some(STEP)).unwrap();
    stream.write_all(data).unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).expect("read reply");
    reply
}

/// A datagram client bound to its own path in `dir`, so it can be replied
/// to; reads time out after [`STEP`].
fn dgram_client(dir: &Path, name: &str) -> UnixDatagram {
    let socket = UnixDatagram::bind(dir.join(name)).expect("bind client");
    socket.set_read_timeout(Some(STEP)).unwrap();
    socket.set_write_timeout(Some(STEP)).unwrap();
    socket
}

/// Sends `data` to the server at `path` and returns the reply. Unix
/// datagrams are never lost: a full receiver blocks the sender instead.
fn dgram_echo(client: &UnixDatagram, path: &Path, data: &[u8]) -> Vec<u8> {
    client.send_to(data, path).expect("send");
    let mut buf = vec![0; 65_536];
    let n = client.recv(&mut buf).expect("a reply within STEP");
    buf.truncate(n);
    buf
}

#[test]
fn stream_echo_in_every_dispatch_mode() {
    let dir = tempfile::tempdir().unwrap();
    for (name, dispatch) in all_dispatches() {
        let path = dir.path().join(format!("{name}.sock"));
        let mut server = UnixStreamServer::bind(&path, echo_stream).unwrap();
        server.set_dispatch(dispatch);
        let running = spawn(server);
        assert_eq!(running.addr.as_pathname(), Some(path.as_path()));
        let payload: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
        assert_eq!(stream_echo(&path, &payload), payload, "{name}");
        // Several clients at once.
        let clients: Vec<_> = (0..8)
            .map(|c| {
                let path = path.clone();
                thread::spawn(move || {
                    let msg = format!("client {c}");
                    assert_eq!(stream_echo(&path, msg.as_bytes()), msg.as_bytes());
                })
            })
            .collect();
        for client in clients {
            client.join().unwrap();
        }
        running.stop();
        assert!(!path.exists(), "{name}: the socket file is removed");
    }
}

#[test]
fn datagram_echo_in_every_dispatch_mode() {
    let dir = tempfile::tempdir().unwrap();
    for (name, dispatch) in all_dispatches() {
        let path = dir.path().join(format!("{name}.sock"));
        let mut server = UnixDatagramServer::bind(&path, echo_datagram).unwrap();
        server.set_dispatch(dispatch);
        let running = spawn(server);
        let clients: Vec<_> = (0..8)
            .map(|c| {
                let client = dgram_client(dir.path(), &format!("{name}-client-{c}.sock"));
                let path = path.clone();
                thread::spawn(move || {
                    for i in 0..50 {
                        let msg = format!("client {c} datagram {i}");
                        assert_eq!(dgram_echo(&client, &path, msg.as_bytes()), msg.as_bytes());
                    }
                })
            })
            .collect();
        for client in clients {
            client
                .join()
                .unwrap_or_else(|_| panic!("a client failed in {name}"));
        }
        running.stop();
        assert!(!path.exists(), "{name}: the socket file is removed");
    }
}

#[test]
fn a_stale_socket_file_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    // A server that died without cleaning up: dropping std's sockets leaves
    // the file behind, and nobody answers on it.
    let stream_path = dir.path().join("stream.sock");
    drop(UnixListener::bind(&stream_path).unwrap());
    assert!(is_socket(&stream_path));
    let server = UnixStreamServer::bind(&stream_path, echo_stream).unwrap();
    let running = spawn(server);
    assert_eq!(stream_echo(&stream_path, b"fresh"), b"fresh");
    running.stop();
    assert!(!stream_path.exists());

    let dgram_path = dir.path().join("dgram.sock");
    drop(UnixDatagram::bind(&dgram_path).unwrap());
    assert!(is_socket(&dgram_path));
    let server = UnixDatagramServer::bind(&dgram_path, echo_datagram).unwrap();
    let running = spawn(server);
    let client = dgram_client(dir.path(), "client.sock");
    assert_eq!(dgram_echo(&client, &dgram_path, b"fresh"), b"fresh");
    running.stop();
    assert!(!dgram_path.exists());
}

#[test]
fn a_second_stream_server_on_a_live_path_fails_and_the_first_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("live.sock");
    let mut first = UnixStreamServer::bind(&path, echo_stream).unwrap();
    first.set_dispatch(Dispatch::pool(2));
    let running = spawn(first);
    assert_eq!(stream_echo(&path, b"before"), b"before");
    let err = UnixStreamServer::bind(&path, echo_stream).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    assert!(err.to_string().contains("already listening"), "{err}");
    assert_eq!(stream_echo(&path, b"after"), b"after");
    running.stop();
    assert!(!path.exists());
}

#[test]
fn a_second_datagram_server_on_a_live_path_fails_and_the_first_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("live.sock");
    let running = spawn(UnixDatagramServer::bind(&path, echo_datagram).unwrap());
    let client = dgram_client(dir.path(), "client.sock");
    assert_eq!(dgram_echo(&client, &path, b"before"), b"before");
    let err = UnixDatagramServer::bind(&path, echo_datagram).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    assert_eq!(dgram_echo(&client, &path, b"after"), b"after");
    running.stop();
    assert!(!path.exists());
}

/// Regression: probing a live listener whose backlog is full must not block
/// `bind` (a blocking `connect(2)` to a full Unix listener waits for room).
/// Linux only: the BSDs refuse such a connect instead (see `net/unix.rs`).
#[cfg(any(target_os = "linux", target_os = "android"))]
#[test]
fn a_live_listener_with_a_full_backlog_is_not_replaced_and_bind_does_not_hang() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("full.sock");
    // Backlog 0: Linux queues one connection, then connects would block.
    let live = UnixStreamServer::bind_with(
        &path,
        &BindOptions::new().request_queue_size(0),
        echo_stream,
    )
    .unwrap();
    let mut waiting = Vec::new();
    for _ in 0..64 {
        let socket =
            socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None).unwrap();
        socket.set_nonblocking(true).unwrap();
        match socket.connect(&socket2::SockAddr::unix(&path).unwrap()) {
            Ok(()) => waiting.push(socket),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("connect: {e}"),
        }
    }
    assert!(waiting.len() < 64, "the backlog never filled up");
    let (tx, rx) = mpsc::channel();
    let probe_path = path.clone();
    thread::spawn(move || {
        let _ = tx.send(UnixStreamServer::bind(&probe_path, echo_stream).map(drop));
    });
    let err = recv(&rx, "bind over a busy live listener").unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    assert!(is_socket(&path), "the live server's file is still there");
    drop(waiting);
    drop(live);
    assert!(!path.exists());
}

#[test]
fn a_path_holding_something_else_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("precious.txt");
    fs::write(&path, b"do not delete").unwrap();
    let err = UnixStreamServer::bind(&path, echo_stream).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    assert!(err.to_string().contains("not a socket"), "{err}");
    let err = UnixDatagramServer::bind(&path, echo_datagram).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    assert_eq!(fs::read(&path).unwrap(), b"do not delete");

    let sub = dir.path().join("a-directory");
    fs::create_dir(&sub).unwrap();
    let err = UnixStreamServer::bind(&sub, echo_stream).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    assert!(sub.is_dir());
}

#[test]
fn the_socket_file_is_removed_on_drop_and_on_server_close() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");

    // Dropped without ever serving.
    let server = UnixStreamServer::bind(&path, echo_stream).unwrap();
    assert!(is_socket(&path));
    drop(server);
    assert!(!path.exists());

    // server_close, idempotent; the path can be bound again at once.
    let mut server = UnixDatagramServer::bind(&path, echo_datagram).unwrap();
    server.set_dispatch(Dispatch::pool(2));
    server.server_close();
    assert!(!path.exists());
    server.server_close();
    assert!(server.local_addr().is_err());
    let again = UnixStreamServer::bind(&path, echo_stream).unwrap();
    assert!(is_socket(&path));
    drop(again);
    assert!(!path.exists());
    drop(server);
}

/// The older of two servers on one path (the newer one replaced the file
/// after it was deleted by hand) must not delete the newer server's file.
#[test]
fn closing_a_server_does_not_remove_a_newer_servers_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let old = UnixStreamServer::bind(&path, echo_stream).unwrap();
    fs::remove_file(&path).unwrap();
    let new = spawn(UnixStreamServer::bind(&path, echo_stream).unwrap());
    drop(old);
    assert!(is_socket(&path), "the newer server's file survives");
    assert_eq!(stream_echo(&path, b"still here"), b"still here");
    new.stop();
    assert!(!path.exists());
}

#[test]
fn servers_built_from_std_sockets_leave_their_files_alone() {
    let dir = tempfile::tempdir().unwrap();
    let stream_path = dir.path().join("stream.sock");
    let listener = UnixListener::bind(&stream_path).unwrap();
    let running = spawn(UnixStreamServer::from_listener(listener, echo_stream).unwrap());
    assert_eq!(stream_echo(&stream_path, b"inherited"), b"inherited");
    running.stop();
    assert!(is_socket(&stream_path), "not ours to remove");

    let dgram_path = dir.path().join("dgram.sock");
    let socket = UnixDatagram::bind(&dgram_path).unwrap();
    let running = spawn(UnixDatagramServer::from_socket(socket, echo_datagram).unwrap());
    let client = dgram_client(dir.path(), "client.sock");
    assert_eq!(dgram_echo(&client, &dgram_path, b"inherited"), b"inherited");
    running.stop();
    assert!(is_socket(&dgram_path), "not ours to remove");
}

/// A client that sends from an unbound socket has no address. Its request
/// is still handled; replying to it fails with a clear `NotConnected`, both
/// through `reply()` and through `wfile` (reported to `handle_error`).
#[test]
fn an_unbound_datagram_client_is_served_but_cannot_be_replied_to() {
    for (name, dispatch) in all_dispatches() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("srv.sock");
        let (handled_tx, handled_rx) = mpsc::channel();
        let handled_tx = Mutex::new(handled_tx);
        let mut server = UnixDatagramServer::bind(&path, move |req: &mut UnixDatagramRequest| {
            let unnamed = req.peer_addr().is_unnamed();
            let reply = req.reply(b"direct").map_err(|e| (e.kind(), e.to_string()));
            handled_tx
                .lock()
                .unwrap()
                .send((req.packet().to_vec(), unnamed, reply))
                .unwrap();
            echo_datagram(req)
        })
        .unwrap();
        server.set_dispatch(dispatch);
        let (errors_tx, errors_rx) = mpsc::channel();
        let errors_tx = Mutex::new(errors_tx);
        server.set_handle_error(
            move |peer: &std::os::unix::net::SocketAddr, err: &RequestError| {
                let kind = match err {
                    RequestError::Io(e) => Some(e.kind()),
                    _ => None,
                };
                errors_tx
                    .lock()
                    .unwrap()
                    .send((peer.is_unnamed(), kind))
                    .unwrap();
            },
        );
        let stats = server.stats();
        let running = spawn(server);

        let anonymous = UnixDatagram::unbound().unwrap();
        anonymous.send_to(b"no return address", &path).unwrap();
        let (packet, unnamed, reply) = recv(&handled_rx, "the handler to run");
        assert_eq!(packet, b"no return address", "{name}");
        assert!(unnamed, "{name}");
        let (kind, message) = reply.expect_err("a reply to nowhere fails");
        assert_eq!(kind, io::ErrorKind::NotConnected, "{name}");
        assert!(message.contains("peer has no address"), "{name}: {message}");
        // The wfile reply after finish fails the same way, to handle_error.
        assert_eq!(
            recv(&errors_rx, "handle_error for the wfile reply"),
            (true, Some(io::ErrorKind::NotConnected)),
            "{name}"
        );

        // The server goes on serving clients that can be replied to.
        let client = dgram_client(dir.path(), "client.sock");
        assert_eq!(dgram_echo(&client, &path, b"named"), b"direct", "{name}");
        let mut buf = [0; 64];
        let n = client.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"named", "{name}");
        assert!(recv(&handled_rx, "the second request").2.is_ok());
        running.stop();
        let s = stats.snapshot();
        assert_eq!((s.errors, s.completed, s.panics), (1, 1, 0), "{name}");
    }
}

/// Unix datagram sockets cannot report a datagram's real length through
/// std, so the server receives into a buffer one byte larger than
/// `max_packet_size`: an oversize datagram is still caught, never truncated.
#[test]
fn an_oversize_unix_datagram_is_reported_and_the_next_one_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("srv.sock");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut server = UnixDatagramServer::bind(&path, {
        let seen = Arc::clone(&seen);
        move |req: &mut UnixDatagramRequest| {
            seen.lock().unwrap().push(req.packet().len());
            echo_datagram(req)
        }
    })
    .unwrap();
    server.set_max_packet_size(1000);
    let (errors_tx, errors_rx) = mpsc::channel();
    let errors_tx = Mutex::new(errors_tx);
    server.set_handle_error(
        move |peer: &std::os::unix::net::SocketAddr, err: &RequestError| {
            let oversize = match err {
                RequestError::Oversize { size, limit } => Some((*size, *limit)),
                _ => None,
            };
            let peer = peer.as_pathname().map(Path::to_path_buf);
            errors_tx.lock().unwrap().send((peer, oversize)).unwrap();
        },
    );
    let stats = server.stats();
    let running = spawn(server);
    let client = dgram_client(dir.path(), "client.sock");

    client.send_to(&[b'x'; 5000], &path).unwrap();
    let (peer, oversize) = recv(&errors_rx, "the oversize report");
    assert_eq!(peer, Some(dir.path().join("client.sock")));
    let (size, limit) = oversize.expect("RequestError::Oversize");
    assert_eq!(limit, 1000);
    assert!(size > limit, "{size}");
    assert_eq!(stats.snapshot().oversize, 1);

    // Exactly the limit passes, and it is the first reply: nothing of the
    // oversize datagram was echoed.
    let exact = vec![b'e'; 1000];
    assert_eq!(dgram_echo(&client, &path, &exact), exact);
    // One byte over is caught too.
    client.send_to(&[b'y'; 1001], &path).unwrap();
    let (_, oversize) = recv(&errors_rx, "the second oversize report");
    assert_eq!(oversize, Some((1001, 1000)));
    assert_eq!(dgram_echo(&client, &path, b"after"), b"after");
    running.stop();
    assert_eq!(*seen.lock().unwrap(), [1000, 5]);
    let s = stats.snapshot();
    assert_eq!((s.oversize, s.completed, s.accepted), (2, 2, 2));
}

/// CPU time used so far by the calling thread, where the platform tells
/// (Linux: `utime` + `stime` in `/proc/thread-self/stat`, in 1/100 s).
fn thread_cpu_time() -> Option<Duration> {
    let stat = fs::read_to_string("/proc/thread-self/stat").ok()?;
    // Fields after the parenthesised command name: state is field 3, utime
    // and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// Regression: when a Unix datagram receiver's queue is full, `sendto`
/// fails with `EAGAIN`, yet `poll` reports an unconnected sender writable at
/// once, so waiting with `poll` alone spun on the CPU until the deadline.
/// The reply must give up at the write timeout with `TimedOut`, having
/// slept rather than spun.
#[test]
fn a_reply_to_a_peer_that_never_reads_times_out_without_spinning() {
    const TIMEOUT: Duration = Duration::from_millis(500);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("srv.sock");
    let (cpu_tx, cpu_rx) = mpsc::channel();
    let cpu_tx = Mutex::new(cpu_tx);
    let mut server = UnixDatagramServer::bind(&path, move |req: &mut UnixDatagramRequest| {
        // Flood the peer until its receive queue is full and a reply waits
        // out the whole timeout.
        let before = thread_cpu_time();
        let mut result = Ok(());
        for _ in 0..100_000 {
            if let Err(e) = req.reply(b"flood") {
                result = Err(e);
                break;
            }
        }
        let used = before.zip(thread_cpu_time()).map(|(b, a)| a - b);
        cpu_tx.lock().unwrap().send(used).unwrap();
        result
    })
    .unwrap();
    server.set_write_timeout(Some(TIMEOUT));
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    server.set_handle_error(
        move |_: &std::os::unix::net::SocketAddr, err: &RequestError| {
            let kind = match err {
                RequestError::Io(e) => Some(e.kind()),
                _ => None,
            };
            tx.lock().unwrap().send(kind).unwrap();
        },
    );
    let running = spawn(server);
    let silent = dgram_client(dir.path(), "silent.sock");
    silent.send_to(b"go", &path).unwrap();
    assert_eq!(
        recv(&rx, "the reply to time out"),
        Some(io::ErrorKind::TimedOut)
    );
    // A spinning wait burns (a share of) the whole timeout on the CPU; a
    // load on the machine can only make it burn less, never make a
    // sleeping wait burn more.
    if let Some(used) = recv(&cpu_rx, "the handler's CPU time") {
        assert!(used < TIMEOUT / 3, "the reply wait spun: {used:?} of CPU");
    }
    running.stop();
}

#[test]
fn a_missing_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("no-such-dir").join("s.sock");
    let err = UnixStreamServer::bind(&path, echo_stream).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::NotFound);
}
