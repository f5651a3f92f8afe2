//! Watching other processes through Linux's `/proc`: a server's children
//! and their states, for the forking and prefork tests; and a UDP round
//! trip that survives a lost datagram.
//!
//! Another process's state changes send the test no event, so
//! [`eventually`] polls — bounded by [`STEP`](super::STEP), every 10 ms.
//! What it waits for is itself a matter of time ("reaped promptly", "a
//! replacement appears"), so the poll is the behaviour under test, not a
//! stand-in for synchronisation.

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use super::STEP;

/// The pids of `pid`'s children, from `/proc/<pid>/task/*/children`.
pub fn children(pid: i32) -> Vec<i32> {
    let mut kids = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return kids;
    };
    for task in tasks.flatten() {
        if let Ok(list) = std::fs::read_to_string(task.path().join("children")) {
            kids.extend(
                list.split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
    }
    kids.sort_unstable();
    kids
}

/// The state letter of `pid` (`R`, `S`, `Z`, ...) from `/proc/<pid>/stat`,
/// or `None` once the process is gone.
pub fn state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name, in parentheses, may itself contain spaces.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().next()?.chars().next()
}

/// Whether `pid` is gone, or has exited and only waits to be reaped by
/// someone other than the server under test.
pub fn exited(pid: i32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists() || state(pid) == Some('Z')
}

/// `pid`'s children that are zombies.
pub fn zombie_children(pid: i32) -> Vec<i32> {
    children(pid)
        .into_iter()
        .filter(|&c| state(c) == Some('Z'))
        .collect()
}

/// Polls `check` every 10 ms until it holds, or fails the test after
/// [`STEP`] with `what`.
pub fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let give_up = Instant::now() + STEP;
    while !check() {
        assert!(Instant::now() < give_up, "timed out waiting until {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

/// Sends `message` to `server` and waits for it to come back, resending up
/// to ten times a second apart. Loopback drops datagrams when the machine
/// is saturated (the backlog of packets waiting for the receiving CPU
/// overflows), and the behaviour under test is the server's, not the
/// loopback's. Replies that are not `message` (late copies of an earlier
/// one) are skipped.
pub fn udp_round_trip(client: &UdpSocket, server: SocketAddr, message: &[u8]) {
    client
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let mut buf = [0u8; 2048];
    for _attempt in 0..10 {
        client.send_to(message, server).unwrap();
        let give_up = Instant::now() + Duration::from_secs(1);
        while Instant::now() < give_up {
            match client.recv_from(&mut buf) {
                Ok((n, from)) if from == server && &buf[..n] == message => return,
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
    panic!(
        "no reply to {:?} after ten tries",
        String::from_utf8_lossy(message)
    );
}
