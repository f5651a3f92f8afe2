//! Helpers shared by the integration tests (the layout mio uses).
//!
//! Every client socket gets a read and write timeout, so a server bug fails
//! a test instead of hanging it; every wait on a channel is bounded.

#![allow(dead_code, reason = "each test file uses a different subset")]
#![allow(
    unreachable_pub,
    reason = "a test helper module: pub is for the test files"
)]

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::sync::{Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::Duration;

#[cfg(target_os = "linux")]
pub mod procfs;

use socketserver::{
    Dispatch, Overflow, Pool, Server, Service, ShutdownHandle, ShutdownReport, Threading, Transport,
};

/// The longest any single step of a test may take before it counts as hung.
pub const STEP: Duration = Duration::from_secs(10);

/// Every dispatch strategy, with `Sync` first as the reference.
pub fn all_dispatches() -> Vec<(&'static str, Dispatch)> {
    vec![
        ("sync", Dispatch::Sync),
        ("threading", Dispatch::threading()),
        ("threading-capped", Threading::new().max_threads(4).into()),
        ("pool", Pool::new(4).into()),
        (
            "pool-reject",
            Pool::new(4)
                .queue_size(256)
                .overflow(Overflow::Reject)
                .into(),
        ),
    ]
}

/// A server running `serve_forever` on its own thread.
pub struct Running<A> {
    pub addr: A,
    pub handle: ShutdownHandle,
    pub thread: JoinHandle<io::Result<ShutdownReport>>,
}

impl<A> Running<A> {
    /// Shuts the server down and waits for `serve_forever` to return.
    pub fn stop(self) -> ShutdownReport {
        self.handle.shutdown();
        self.join()
    }

    /// Waits for `serve_forever` to return (someone else shut it down).
    pub fn join(self) -> ShutdownReport {
        self.thread
            .join()
            .expect("serve_forever panicked")
            .expect("serve_forever failed")
    }

    /// Waits up to `limit` for `serve_forever` to return, or fails the test
    /// (a drain that never ends is a bug, not a hang).
    pub fn join_within(self, limit: Duration) -> ShutdownReport {
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = self.thread;
        thread::spawn(move || {
            let _ = tx.send(thread.join());
        });
        rx.recv_timeout(limit)
            .unwrap_or_else(|_| panic!("serve_forever did not return within {limit:?}"))
            .expect("serve_forever panicked")
            .expect("serve_forever failed")
    }
}

/// Starts `serve_forever` on a thread.
pub fn spawn<T, H>(mut server: Server<T, H>) -> Running<T::Addr>
where
    T: Transport,
    H: Service<T>,
    Server<T, H>: Send + 'static,
{
    let addr = server.local_addr().expect("local_addr");
    let handle = server.shutdown_handle();
    let thread = thread::Builder::new()
        .name("test-serve-forever".into())
        .spawn(move || server.serve_forever())
        .expect("spawn serving thread");
    Running {
        addr,
        handle,
        thread,
    }
}

/// Connects with timeouts set.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, STEP).expect("connect");
    stream.set_read_timeout(Some(STEP)).unwrap();
    stream.set_write_timeout(Some(STEP)).unwrap();
    stream
}

/// Sends `data`, half-closes, and reads everything back.
pub fn echo_once(addr: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut stream = connect(addr);
    stream.write_all(data).unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).expect("read reply");
    reply
}

/// Receives from `rx` within [`STEP`] or fails the test.
pub fn recv<T>(rx: &Receiver<T>, what: &str) -> T {
    rx.recv_timeout(STEP)
        .unwrap_or_else(|e| panic!("waiting for {what}: {e}"))
}

/// The path of a built example binary, building it once if needed.
pub fn example(name: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    // tests run from target/<profile>/deps/<test>-<hash>
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    let path = profile_dir.join("examples").join(name);
    let built = BUILT.get_or_init(|| Mutex::new(Vec::new()));
    let mut built = built.lock().unwrap();
    if !built.iter().any(|n| n == name) {
        let release = profile_dir.ends_with("release");
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "--quiet", "--example", name]);
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "building example {name} failed");
        built.push(name.to_owned());
    }
    path
}

/// A running example process, killed on drop.
pub struct Proc {
    child: Option<Child>,
    pub pid: i32,
    pub stdout: BufReader<ChildStdout>,
    pub first_line: String,
    /// Its stderr (the log), line by line, with [`Proc::start_logged`].
    stderr: Option<Receiver<String>>,
}

impl Proc {
    /// Starts example `name` with `args` and reads its first stdout line.
    pub fn start(name: &str, args: &[&str]) -> Proc {
        Self::spawn(name, args, false)
    }

    /// Like [`Proc::start`], and collects stderr so a test can wait for a
    /// log line with [`Proc::wait_stderr`] (each line is echoed to the
    /// test's stderr too).
    pub fn start_logged(name: &str, args: &[&str]) -> Proc {
        Self::spawn(name, args, true)
    }

    fn spawn(name: &str, args: &[&str], logged: bool) -> Proc {
        let mut child = Command::new(example(name))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(if logged {
                Stdio::piped()
            } else {
                Stdio::inherit()
            })
            .spawn()
            .expect("spawn example");
        let stderr = child.stderr.take().map(|err| {
            let (tx, rx) = std::sync::mpsc::channel();
            let tag = name.to_owned();
            thread::spawn(move || {
                for line in BufReader::new(err).lines() {
                    let Ok(line) = line else { break };
                    eprintln!("[{tag}] {line}");
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            rx
        });
        let pid = child.id() as i32;
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        // Read the first line on a thread so a silent process fails the test
        // after STEP instead of hanging it.
        thread::spawn(move || {
            let mut line = String::new();
            let result = stdout.read_line(&mut line).map(|_| line);
            let _ = tx.send((result, stdout));
        });
        let (line, stdout) = match rx.recv_timeout(STEP) {
            Ok(got) => got,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("example {name} printed no first line: {e}");
            }
        };
        Proc {
            child: Some(child),
            pid,
            stdout,
            first_line: line.expect("read first line"),
            stderr,
        }
    }

    /// Waits up to `limit` for a stderr line containing `needle` (lines
    /// before it are skipped) and returns it. Needs [`Proc::start_logged`].
    pub fn wait_stderr(&self, needle: &str, limit: Duration) -> String {
        let lines = self.stderr.as_ref().expect("started with start_logged");
        let until = std::time::Instant::now() + limit;
        loop {
            let left = until.saturating_duration_since(std::time::Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(e) => panic!("no stderr line containing {needle:?} within {limit:?}: {e}"),
            }
        }
    }

    /// The address (or path) after `scheme://` in the first line.
    pub fn listen_addr(&self, scheme: &str) -> String {
        let prefix = format!("listening on {scheme}://");
        let line = self.first_line.trim_end();
        line.strip_prefix(&prefix)
            .unwrap_or_else(|| panic!("first line {line:?} does not start with {prefix:?}"))
            .to_owned()
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid), signal).expect("kill");
    }

    /// Waits up to `limit` for the process to exit and returns its status,
    /// or kills it and returns `None`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take().expect("already waited");
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = thread::spawn(move || {
            let status = child.wait();
            let _ = tx.send(());
            status
        });
        match rx.recv_timeout(limit) {
            Ok(()) => Some(waiter.join().unwrap().expect("wait")),
            Err(_) => {
                self.signal(nix::sys::signal::Signal::SIGKILL);
                let _ = waiter.join();
                None
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// How long a UDP client waits for a reply before sending again.
pub const UDP_RETRY: Duration = Duration::from_secs(2);
/// How many times a UDP client sends one request before the test fails.
/// Loopback does not lose datagrams in practice: the retries only turn a
/// lost one into a failure after a bounded wait, never a hang.
pub const UDP_ATTEMPTS: usize = 5;

/// A UDP client on the loopback address of `server`'s family, with a read
/// timeout of [`UDP_RETRY`].
pub fn udp_client(server: SocketAddr) -> UdpSocket {
    let local = if server.is_ipv6() {
        "[::1]:0"
    } else {
        "127.0.0.1:0"
    };
    let socket = UdpSocket::bind(local).expect("bind UDP client");
    socket.set_read_timeout(Some(UDP_RETRY)).unwrap();
    socket.set_write_timeout(Some(STEP)).unwrap();
    socket
}

/// Sends `data` to `to` and returns the first datagram that comes back and
/// its source, sending again up to [`UDP_ATTEMPTS`] times.
pub fn udp_request(client: &UdpSocket, to: SocketAddr, data: &[u8]) -> (Vec<u8>, SocketAddr) {
    let mut buf = vec![0; 65_536];
    for _ in 0..UDP_ATTEMPTS {
        client.send_to(data, to).expect("send datagram");
        match client.recv_from(&mut buf) {
            Ok((n, from)) => return (buf[..n].to_vec(), from),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("receive reply: {e}"),
        }
    }
    panic!("no reply from {to} after {UDP_ATTEMPTS} attempts");
}

/// A message-mode echo for the keep-alive reactor: echoes what has
/// arrived, then parks; closes at end of file.
pub struct MessageEcho;

impl<S: socketserver::StreamSocket> socketserver::MessageHandler<S> for MessageEcho {
    type State = ();

    fn connect(&self, _conn: &mut socketserver::Connection<S>) -> io::Result<()> {
        Ok(())
    }

    fn ready(
        &self,
        conn: &mut socketserver::Connection<S>,
        _: &mut (),
    ) -> io::Result<socketserver::Action> {
        let data = conn.rfile.fill_buf()?;
        if data.is_empty() {
            return Ok(socketserver::Action::Close);
        }
        let n = data.len();
        conn.wfile.write_all(data)?;
        conn.rfile.consume(n);
        Ok(socketserver::Action::Keep)
    }
}
