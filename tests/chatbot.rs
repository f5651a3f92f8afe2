//! The chatbot and chat_client examples, run as real processes and talked
//! to over real sockets, line by line, the way an outside checker would.
//! Every read has a timeout (util::STEP), so a stalled room fails a test
//! instead of hanging it.

mod util;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;

use nix::sys::signal::Signal;
use util::{Proc, STEP, example};

fn start(extra: &[&str]) -> (Proc, SocketAddr) {
    let mut args = vec!["--bind", "127.0.0.1:0", "--log-level", "warn"];
    args.extend_from_slice(extra);
    let proc = Proc::start("chatbot", &args);
    let addr: SocketAddr = proc
        .listen_addr("tcp")
        .parse()
        .expect("first line holds a socket address");
    assert_eq!(
        proc.first_line,
        format!("listening on tcp://127.0.0.1:{}\n", addr.port())
    );
    (proc, addr)
}

/// One chat connection, read line by line.
struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    fn over(stream: TcpStream) -> Client {
        Client {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        }
    }

    /// Connects and reads the WELCOME line; returns the client and its
    /// guest name, which the welcome mentions.
    fn join(addr: SocketAddr) -> Client {
        let mut client = Client::over(util::connect(addr));
        let welcome = client.line();
        assert!(welcome.starts_with("WELCOME"), "{welcome:?}");
        client
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).expect("send");
    }

    fn send(&mut self, line: &str) {
        self.send_raw(format!("{line}\n").as_bytes());
    }

    /// The next line, without its `\n`. Fails on timeout or end of stream.
    fn line(&mut self) -> String {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).expect("read a line");
        assert!(n > 0, "the server closed the connection");
        assert!(line.ends_with('\n'), "unterminated line {line:?}");
        line.pop();
        line
    }

    fn ask(&mut self, line: &str) -> String {
        self.send(line);
        self.line()
    }

    /// The server closed the connection: nothing more arrives, then EOF.
    fn expect_closed(&mut self) {
        let mut rest = Vec::new();
        let n = self.reader.read_to_end(&mut rest).expect("read to EOF");
        assert_eq!(n, 0, "unexpected: {:?}", String::from_utf8_lossy(&rest));
    }

    fn nick(addr: SocketAddr, name: &str) -> Client {
        let mut client = Client::join(addr);
        assert_eq!(
            client.ask(&format!("/nick {name}")),
            format!("OK nick {name}")
        );
        client
    }

    /// The names `/who` lists.
    fn who(&mut self) -> Vec<String> {
        let line = self.ask("/who");
        let names = line
            .strip_prefix("USERS ")
            .unwrap_or_else(|| panic!("not a USERS line: {line:?}"));
        names.split(',').map(str::to_owned).collect()
    }
}

#[test]
fn three_clients_nick_who_broadcast_bot_and_quit() {
    let (_server, addr) = start(&[]);
    let mut alice = Client::nick(addr, "alice");
    let mut bob = Client::nick(addr, "bob");
    let mut guest = Client::join(addr);

    let names = guest.who();
    assert_eq!(names.len(), 3, "{names:?}");
    assert_eq!(names[..2], ["alice", "bob"]);
    let guest_name = names[2].clone();
    assert!(guest_name.starts_with("guest"), "{names:?}");

    // A chat line goes to every other client, and the sender gets exactly
    // one BOT line back...
    alice.send("hello everyone");
    let reply = alice.line();
    assert!(
        reply.starts_with("BOT ") && reply.contains("Hello"),
        "{reply:?}"
    );
    assert_eq!(bob.line(), "[alice] hello everyone");
    assert_eq!(guest.line(), "[alice] hello everyone");
    // ...and no echo: the next line alice gets answers her next command.
    assert_eq!(alice.who(), ["alice", "bob", guest_name.as_str()]);

    guest.send("你好");
    let reply = guest.line();
    assert!(
        reply.starts_with("BOT ") && reply.contains("你好"),
        "{reply:?}"
    );
    assert_eq!(alice.line(), format!("[{guest_name}] 你好"));
    assert_eq!(bob.line(), format!("[{guest_name}] 你好"));

    bob.send("what time is it?");
    let reply = bob.line();
    assert!(
        reply.starts_with("BOT ") && reply.contains("UTC"),
        "{reply:?}"
    );
    assert_eq!(alice.line(), "[bob] what time is it?");
    assert_eq!(guest.line(), "[bob] what time is it?");

    for said in ["help", "the weather is nice", "/notacommand"] {
        guest.send(said);
        let reply = guest.line();
        assert!(reply.starts_with("BOT "), "{said:?} got {reply:?}");
        if said == "help" {
            assert!(reply.contains("/nick"), "{reply:?}");
        }
        assert_eq!(alice.line(), format!("[{guest_name}] {said}"));
        assert_eq!(bob.line(), format!("[{guest_name}] {said}"));
    }

    // \r\n is accepted and not part of the text.
    bob.send_raw(b"hi there\r\n");
    assert!(bob.line().starts_with("BOT "));
    assert_eq!(alice.line(), "[bob] hi there");
    assert_eq!(guest.line(), "[bob] hi there");

    assert_eq!(alice.ask("/quit"), "BYE");
    alice.expect_closed();
    assert_eq!(bob.who(), ["bob", guest_name.as_str()]);
    guest.send("bye bob");
    assert!(guest.line().starts_with("BOT "));
    assert_eq!(bob.line(), format!("[{guest_name}] bye bob"));
}

#[test]
fn nick_rules_and_conflicts() {
    let (_server, addr) = start(&[]);
    let mut a = Client::join(addr);
    let a_guest = a.who().pop().unwrap();
    let mut b = Client::join(addr);
    let b_guest = a.who().into_iter().find(|n| *n != a_guest).unwrap();
    assert!(b_guest.starts_with("guest"), "{b_guest}");

    let longest = "n".repeat(32);
    for good in ["x", "Under_score-dash", "007", longest.as_str()] {
        assert_eq!(a.ask(&format!("/nick {good}")), format!("OK nick {good}"));
    }
    let too_long = "n".repeat(33);
    for bad in [
        "",
        too_long.as_str(),
        "two words",
        "bang!",
        "comma,name",
        "dot.name",
        "ünï",
        "名字",
    ] {
        let reply = a.ask(&format!("/nick {bad}"));
        assert!(reply.starts_with("ERR"), "/nick {bad:?} got {reply:?}");
    }
    let reply = a.ask("/nick");
    assert!(reply.starts_with("ERR"), "{reply:?}");
    // A refused nick leaves the old one in place.
    assert_eq!(b.who(), [b_guest.as_str(), longest.as_str()]);

    // Taken: someone's nick, or someone's guest name.
    assert_eq!(a.ask("/nick alice"), "OK nick alice");
    let reply = b.ask("/nick alice");
    assert!(reply.starts_with("ERR"), "{reply:?}");
    let reply = a.ask(&format!("/nick {b_guest}"));
    assert!(reply.starts_with("ERR"), "{reply:?}");
    // Names are case-sensitive; taking one's own name again is fine.
    assert_eq!(b.ask("/nick Alice"), "OK nick Alice");
    assert_eq!(a.ask("/nick alice"), "OK nick alice");

    // A name is free again once its owner changes it or leaves.
    assert_eq!(a.ask("/nick alicia"), "OK nick alicia");
    assert_eq!(b.ask("/nick alice"), "OK nick alice");
    assert_eq!(a.ask("/quit"), "BYE");
    a.expect_closed();
    let mut c = Client::join(addr);
    assert_eq!(c.ask("/nick alicia"), "OK nick alicia");
    assert_eq!(c.who(), ["alice", "alicia"]);
}

#[test]
fn an_overlong_line_or_invalid_utf8_gets_err_and_a_close_and_nobody_else_notices() {
    let (_server, addr) = start(&[]);
    let mut alice = Client::nick(addr, "alice");
    let mut bob = Client::nick(addr, "bob");

    // 4096 bytes is the limit, with or without \r.
    let mut max = Client::nick(addr, "max");
    let longest = "y".repeat(4096);
    max.send_raw(format!("{longest}\r\n").as_bytes());
    assert!(max.line().starts_with("BOT "));
    assert_eq!(alice.line(), format!("[max] {longest}"));
    assert_eq!(bob.line(), format!("[max] {longest}"));

    // One byte more is refused.
    let mut over = Client::nick(addr, "over");
    over.send(&"z".repeat(4097));
    let reply = over.line();
    assert!(reply.starts_with("ERR"), "{reply:?}");
    over.expect_closed();

    // 10 KB in one line.
    let mut big = Client::nick(addr, "big");
    big.send(&"w".repeat(10 * 1024));
    let reply = big.line();
    assert!(reply.starts_with("ERR"), "{reply:?}");
    big.expect_closed();

    // Not UTF-8.
    let mut latin1 = Client::nick(addr, "latin1");
    latin1.send_raw(b"caf\xe9 au lait\n");
    let reply = latin1.line();
    assert!(reply.starts_with("ERR"), "{reply:?}");
    latin1.expect_closed();

    // The others saw none of it: their next lines are their own session.
    alice.send("still here?");
    assert!(alice.line().starts_with("BOT "));
    assert_eq!(bob.line(), "[alice] still here?");
    assert_eq!(bob.who(), ["alice", "bob", "max"]);
}

/// Connects with a small, fixed receive buffer, so a client that stops
/// reading fills up after a known amount of data rather than whatever the
/// kernel's autotuning allows.
fn connect_small(addr: SocketAddr) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(32 * 1024).unwrap();
    socket.connect_timeout(&addr.into(), STEP).unwrap();
    let stream = TcpStream::from(socket);
    stream.set_read_timeout(Some(STEP)).unwrap();
    stream.set_write_timeout(Some(STEP)).unwrap();
    stream
}

#[test]
fn a_client_that_stops_reading_does_not_stall_the_room_and_is_dropped() {
    let (_server, addr) = start(&[]);
    let mut slow = Client::over(connect_small(addr));
    assert!(slow.line().starts_with("WELCOME"));
    assert_eq!(slow.ask("/nick slowpoke"), "OK nick slowpoke");
    // From here on `slow` reads nothing.

    let mut alice = Client::nick(addr, "alice");
    let mut bob = Client::nick(addr, "bob");
    // 2000 lines of 3000 bytes: 6 MB for slowpoke, several times what its
    // outbox (256 lines) and socket buffers (a few hundred KB) can hold. If
    // the room waited for slowpoke, a read below would time out.
    let pad = "p".repeat(3000);
    for i in 0..2000 {
        let said = format!("{i:04} {pad}");
        alice.send(&said);
        let reply = alice.line();
        assert!(reply.starts_with("BOT "), "line {i}: {reply:?}");
        assert_eq!(bob.line(), format!("[alice] {said}"), "line {i}");
    }
    assert_eq!(alice.who(), ["alice", "bob"], "slowpoke was dropped");

    // Its connection was cut off: what had reached its socket can still be
    // read, then it ends (EOF or reset) instead of timing out.
    let mut sink = vec![0; 64 * 1024];
    let mut total = 0usize;
    let ended = loop {
        match slow.reader.read(&mut sink) {
            Ok(0) => break Ok(()),
            Ok(n) => total += n,
            Err(e) => break Err(e),
        }
        assert!(total < 6_000_000, "slowpoke was sent everything");
    };
    match ended {
        Ok(()) => {}
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}"),
    }
}

#[test]
fn ctrl_c_with_connected_clients_says_bye_and_exits_0() {
    let (mut server, addr) = start(&["--drain-secs", "5"]);
    let mut alice = Client::nick(addr, "alice");
    let mut idle = Client::join(addr);
    let mut typing = Client::join(addr);
    typing.send_raw(b"half a li");
    assert_eq!(alice.who().len(), 3);

    server.signal(Signal::SIGINT);
    for client in [&mut alice, &mut idle, &mut typing] {
        let bye = client.line();
        assert!(bye.starts_with("BYE"), "{bye:?}");
        client.expect_closed();
    }
    let status = server.wait_exit(STEP).expect("exits after Ctrl-C");
    assert!(status.success(), "{status:?}");
}

#[test]
fn max_clients_caps_the_clients_and_the_next_one_is_told() {
    let (_server, addr) = start(&["--max-clients", "2", "--workers", "1"]);
    let mut a = Client::nick(addr, "a");
    let mut b = Client::nick(addr, "b");
    let mut third = Client::over(util::connect(addr));
    let reply = third.line();
    assert!(reply.starts_with("ERR"), "{reply:?}");
    third.expect_closed();
    a.send("hi");
    assert!(a.line().starts_with("BOT "));
    assert_eq!(b.line(), "[a] hi");
}

/// A chat_client process with its stdout delivered line by line through a
/// channel (so every wait has a timeout). Killed on drop.
struct ChatClient {
    child: Option<Child>,
    lines: Receiver<String>,
}

impl ChatClient {
    fn start(addr: SocketAddr) -> ChatClient {
        let mut child = Command::new(example("chat_client"))
            .args(["--connect", &addr.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn chat_client");
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in stdout.lines() {
                if tx.send(line.expect("chat_client stdout")).is_err() {
                    break;
                }
            }
        });
        ChatClient {
            child: Some(child),
            lines,
        }
    }

    fn type_line(&mut self, line: &str) {
        let child = self.child.as_mut().unwrap();
        let stdin = child.stdin.as_mut().unwrap();
        stdin.write_all(format!("{line}\n").as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    fn line(&self) -> String {
        util::recv(&self.lines, "a line from chat_client")
    }

    /// Waits for the process to exit by itself — its stdin is still open —
    /// and returns whether it succeeded.
    fn exits_ok(mut self) -> bool {
        let mut child = self.child.take().unwrap();
        let pid = child.id() as i32;
        let (tx, rx) = mpsc::channel();
        let waiter = thread::spawn(move || {
            let status = child.wait();
            let _ = tx.send(());
            (status, child)
        });
        if rx.recv_timeout(STEP).is_err() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
            let _ = waiter.join();
            panic!("chat_client did not exit");
        }
        let (status, _child) = waiter.join().unwrap();
        // Its stdout ended with it, with nothing more printed.
        assert!(self.lines.recv_timeout(STEP).is_err(), "output after exit");
        status.unwrap().success()
    }
}

impl Drop for ChatClient {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn chat_client_sends_typed_lines_prints_arrivals_and_exits_on_quit() {
    let (_server, addr) = start(&[]);
    let mut observer = Client::nick(addr, "observer");
    let mut client = ChatClient::start(addr);
    assert!(client.line().starts_with("WELCOME"));

    client.type_line("/nick carol");
    assert_eq!(client.line(), "OK nick carol");
    client.type_line("hello from carol");
    assert!(client.line().starts_with("BOT "));
    assert_eq!(observer.line(), "[carol] hello from carol");

    // Lines arrive while nothing is typed.
    observer.send("hi carol");
    assert!(observer.line().starts_with("BOT "));
    assert_eq!(client.line(), "[observer] hi carol");

    client.type_line("/quit");
    assert_eq!(client.line(), "BYE");
    assert!(client.exits_ok(), "exit status 0 after /quit");
    assert_eq!(observer.who(), ["observer"]);
}

#[test]
fn chat_client_exits_when_the_server_shuts_down() {
    let (mut server, addr) = start(&[]);
    let client = ChatClient::start(addr);
    assert!(client.line().starts_with("WELCOME"));
    server.signal(Signal::SIGTERM);
    assert!(client.line().starts_with("BYE"));
    assert!(client.exits_ok());
    let status = server.wait_exit(STEP).expect("exits after SIGTERM");
    assert!(status.success(), "{status:?}");
}
