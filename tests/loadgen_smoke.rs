//! Smoke runs of the benchmark tools (examples/loadgen, naive_echo,
//! shutdown_latency) against real server processes on loopback: each mode
//! of the load generator completes requests with zero errors and reads the
//! server's CPU time. Not a speed test: nothing here asserts a rate.

mod util;

use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;

use util::{Proc, STEP, example};

/// Runs an example to completion within a bounded time and returns its
/// stdout; fails the test if it hangs or exits unsuccessfully.
fn run_example(name: &str, args: &[&str]) -> String {
    let child = Command::new(example(name))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn example");
    let pid = child.id() as i32;
    let (tx, rx) = mpsc::channel();
    let waiter = thread::spawn(move || {
        let out = child.wait_with_output();
        let _ = tx.send(());
        out
    });
    if rx.recv_timeout(3 * STEP).is_err() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = waiter.join();
        panic!("{name} {args:?} did not finish in {:?}", 3 * STEP);
    }
    let out = waiter.join().unwrap().expect("wait for example");
    let stdout = String::from_utf8(out.stdout).expect("utf-8 output");
    assert!(
        out.status.success(),
        "{name} {args:?}: {:?}\n{stdout}",
        out.status
    );
    stdout
}

/// The raw text of field `key` in a one-line JSON object.
fn field<'a>(json: &'a str, key: &str) -> &'a str {
    let pat = format!("\"{key}\":");
    let start = json
        .find(&pat)
        .unwrap_or_else(|| panic!("no {key} in {json}"))
        + pat.len();
    let rest = &json[start..];
    let end = rest.find([',', '}']).expect("field ends");
    &rest[..end]
}

fn num(json: &str, key: &str) -> f64 {
    field(json, key)
        .parse()
        .unwrap_or_else(|_| panic!("{key} is not a number in {json}"))
}

/// Runs loadgen for half a second with `--json` and checks the invariants
/// every mode shares; returns the JSON line.
fn loadgen(server: &Proc, addr: &str, extra: &[&str]) -> String {
    let pid = server.pid.to_string();
    let mut args = vec![
        "--addr",
        addr,
        "--duration",
        "0.5",
        "--warmup",
        "0.2",
        "--server-pid",
        &pid,
        "--json",
        // Generous: a slow round trip on a loaded CI machine is not an error
        // this test is about.
        "--timeout-ms",
        "10000",
    ];
    args.extend_from_slice(extra);
    let out = run_example("loadgen", &args);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "--json prints exactly one line: {out}");
    let json = lines[0].to_owned();
    assert!(json.starts_with('{') && json.ends_with('}'), "{json}");
    assert_eq!(num(&json, "errors"), 0.0, "{json}");
    assert!(num(&json, "requests") > 0.0, "{json}");
    assert!(num(&json, "rps") > 0.0, "{json}");
    assert!(
        num(&json, "p50_us") <= num(&json, "p99_us"),
        "percentiles are ordered: {json}"
    );
    // The server's CPU time was read from /proc before and after.
    assert!(num(&json, "server_cpu_s") >= 0.0, "{json}");
    assert_eq!(field(&json, "server_pid"), pid);
    json
}

fn server(name: &str, args: &[&str], scheme: &str) -> (Proc, String) {
    let proc = Proc::start(name, args);
    let addr = proc.listen_addr(scheme);
    (proc, addr)
}

#[test]
fn tcp_rr_against_echo_server_and_naive_echo() {
    let (pool, addr) = server(
        "echo_server",
        &["--bind", "127.0.0.1:0", "--mode", "pool", "--workers", "4"],
        "tcp",
    );
    let json = loadgen(&pool, &addr, &["--mode", "tcp-rr", "--connections", "4"]);
    assert_eq!(field(&json, "mode"), "\"tcp-rr\"");
    assert_eq!(num(&json, "connections"), 4.0);

    let (reactor, addr) = server(
        "echo_server",
        &["--bind", "127.0.0.1:0", "--mode", "reactor"],
        "tcp",
    );
    loadgen(&reactor, &addr, &["--mode", "tcp-rr", "--connections", "8"]);

    let (naive, addr) = server("naive_echo", &["--bind", "127.0.0.1:0"], "tcp");
    // A request larger than one socket read, so echoes arrive in pieces.
    loadgen(
        &naive,
        &addr,
        &["--mode", "tcp-rr", "--connections", "2", "--size", "100000"],
    );
}

#[test]
fn tcp_connect_opens_a_connection_per_request() {
    let (pool, addr) = server(
        "echo_server",
        &["--bind", "127.0.0.1:0", "--mode", "pool", "--workers", "4"],
        "tcp",
    );
    let json = loadgen(
        &pool,
        &addr,
        &["--mode", "tcp-connect", "--connections", "2"],
    );
    assert!(num(&json, "connects") >= num(&json, "requests"), "{json}");
}

#[test]
fn udp_rr_against_echo_server_and_naive_echo() {
    for (name, args) in [
        (
            "echo_server",
            &["--bind", "127.0.0.1:0", "--mode", "sync", "--udp"][..],
        ),
        ("naive_echo", &["--bind", "127.0.0.1:0", "--udp"][..]),
    ] {
        let (proc, addr) = server(name, args, "udp");
        let json = loadgen(&proc, &addr, &["--mode", "udp-rr", "--connections", "4"]);
        // Every datagram sent in the window was echoed or counted lost
        // (one per client may still be out when the window closes).
        let (sent, received, lost) = (
            num(&json, "sent"),
            num(&json, "received"),
            num(&json, "lost"),
        );
        assert!(received > 0.0, "{name}: {json}");
        assert!(received + lost <= sent + 4.0, "{name}: {json}");
        assert_eq!(num(&json, "requests"), received, "{name}: {json}");
    }
}

#[test]
fn idle_crowd_stays_connected_while_clients_run() {
    let (threading, addr) = server(
        "echo_server",
        &["--bind", "127.0.0.1:0", "--mode", "threading"],
        "tcp",
    );
    let json = loadgen(
        &threading,
        &addr,
        &["--mode", "idle", "--idle", "20", "--connections", "2"],
    );
    assert_eq!(num(&json, "idle"), 20.0, "{json}");
    assert_eq!(num(&json, "idle_ready"), 20.0, "{json}");
    assert_eq!(num(&json, "idle_alive_end"), 20.0, "{json}");
}

#[test]
fn loadgen_refuses_a_non_loopback_address() {
    let out = Command::new(example("loadgen"))
        .args(["--addr", "192.0.2.1:9", "--duration", "0.1"])
        .stdin(Stdio::null())
        .output()
        .expect("run loadgen");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not a loopback address"), "{stderr}");
}

#[test]
fn shutdown_latency_reports_every_mode() {
    let out = run_example("shutdown_latency", &["--rounds", "2", "--json"]);
    let json = out.trim();
    for mode in ["sync", "threading", "pool", "reactor"] {
        let at = json
            .find(&format!("\"{mode}\":{{"))
            .unwrap_or_else(|| panic!("no {mode} in {json}"));
        assert!(num(&json[at..], "max_ms") >= num(&json[at..], "p50_ms"));
    }
    assert_eq!(num(json, "rounds"), 2.0);
}
