//! One signal stops every server in the process (`ctrlc` allows a single
//! handler, so the library fans out), a second ends the drains, and each
//! server escalates on its own.
//!
//! Signals are sent to this very process with kill(2), which installs a
//! process-wide handler: so this file holds exactly one test. It never sends
//! a signal when no server is left to stop (that would exit the process
//! with status 130, as an unhandled Ctrl-C would).

#![cfg(unix)]

mod util;

use std::io::{self, Read, Write};
use std::net::UdpSocket;
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use socketserver::{Dispatch, TcpRequest, TcpServer, UdpRequest, UdpServer};
use util::{STEP, connect, recv, spawn};

fn signal_self(signal: Signal) {
    kill(Pid::this(), signal).expect("kill");
}

#[test]
fn one_signal_stops_every_server_a_second_forces_and_each_server_escalates_alone() {
    // Server A: a TCP echo with a client that never hangs up and a drain
    // deadline far beyond the test: only a second signal can end it.
    let (entered_tx, entered_rx) = mpsc::channel();
    let mut a = TcpServer::bind("127.0.0.1:0", move |req: &mut TcpRequest| {
        entered_tx.send(()).unwrap();
        io::copy(&mut req.rfile, &mut req.wfile).map(drop)
    })
    .unwrap();
    a.set_dispatch(Dispatch::pool(2));
    a.set_drain_timeout(Duration::from_secs(3600));
    a.set_drain_grace(STEP);
    a.shutdown_on_signals().unwrap();
    // Registered twice: still one server, so one signal does not force it.
    a.shutdown_on_signals().unwrap();
    // Server B: an idle UDP server.
    let b = UdpServer::bind("127.0.0.1:0", |req: &mut UdpRequest| {
        let packet = req.packet().to_vec();
        req.wfile.write_all(&packet)
    })
    .unwrap();
    socketserver::signal::shutdown_on_signals(&b.shutdown_handle()).unwrap();
    let a = spawn(a);
    let b = spawn(b);
    let mut client = connect(a.addr);
    client.write_all(b"hi").unwrap();
    let mut echoed = [0u8; 2];
    client.read_exact(&mut echoed).unwrap();
    recv(&entered_rx, "A's handler to start");
    let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
    probe.set_read_timeout(Some(STEP)).unwrap();
    probe.send_to(b"up", b.addr).unwrap();
    assert_eq!(probe.recv(&mut [0u8; 4]).unwrap(), 2, "B serves");

    // First signal: both begin a graceful shutdown.
    signal_self(Signal::SIGTERM);
    let a_token = a.handle.token();
    assert!(a_token.wait(STEP), "A saw the first signal");
    assert!(b.handle.token().wait(STEP), "B saw the first signal");
    let b_report = b.join_within(STEP);
    assert_eq!((b_report.drained, b_report.forced), (0, 0));
    assert!(!a_token.is_forced(), "A drains: one signal is not two");

    // Second signal: A's drain ends at once; its client is cut off.
    signal_self(Signal::SIGINT);
    assert!(a_token.wait_forced(STEP), "the second signal forced A");
    let a_report = a.join_within(STEP);
    assert_eq!((a_report.drained, a_report.forced), (0, 1));
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());

    // A server registered after the others were stopped by signals still
    // gets a graceful drain from the next one, not a forced stop.
    let latch = std::sync::Arc::new(std::sync::Barrier::new(2));
    let (entered_tx, entered_rx) = mpsc::channel();
    let mut c = TcpServer::bind("127.0.0.1:0", {
        let latch = std::sync::Arc::clone(&latch);
        move |req: &mut TcpRequest| {
            entered_tx.send(()).unwrap();
            latch.wait();
            req.wfile.write_all(b"finished")
        }
    })
    .unwrap();
    c.set_drain_timeout(Duration::from_secs(3600));
    c.set_dispatch(Dispatch::threading());
    c.shutdown_on_signals().unwrap();
    let c = spawn(c);
    let mut in_flight = connect(c.addr);
    recv(&entered_rx, "C's handler to start");
    signal_self(Signal::SIGTERM);
    let c_token = c.handle.token();
    assert!(c_token.wait(STEP), "C saw the signal");
    assert!(!c_token.is_forced(), "C drains gracefully");
    latch.wait();
    let mut reply = String::new();
    in_flight.read_to_string(&mut reply).unwrap();
    assert_eq!(reply, "finished");
    let c_report = c.join_within(STEP);
    assert_eq!((c_report.drained, c_report.forced), (1, 0));
}
