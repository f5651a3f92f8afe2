//! The echo hot path allocates nothing per request once a connection is set
//! up: buffers are reused. Counted with a global allocator, so this file
//! holds a single test (allocations are process-wide).

mod util;

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use socketserver::{Dispatch, Messages, Pool, Reactor, TcpRequest, TcpServer};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every method forwards to `System`, which upholds GlobalAlloc's
// contract; the counter has no effect on the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same layout contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn echo(req: &mut TcpRequest) -> io::Result<()> {
    io::copy(&mut req.rfile, &mut req.wfile)?;
    Ok(())
}

/// Allocations made, process-wide, while `rounds` 64-byte round trips run
/// on an already open connection.
fn allocations_during(stream: &mut TcpStream, rounds: usize) -> u64 {
    let request = [7u8; 64];
    let mut reply = [0u8; 64];
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    for _ in 0..rounds {
        stream.write_all(&request).unwrap();
        stream.read_exact(&mut reply).unwrap();
        assert_eq!(reply, request);
    }
    ALLOCATIONS.load(Ordering::SeqCst) - before
}

fn check(addr: SocketAddr, what: &str) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.set_nodelay(true).unwrap();
    // Warm up: the connection's buffers, the worker's first event, lazy
    // statics.
    allocations_during(&mut stream, 100);
    let few = allocations_during(&mut stream, 100);
    let many = allocations_during(&mut stream, 2100);
    assert!(
        many <= few + 10,
        "{what}: {few} allocations for 100 round trips but {many} for 2100: the echo path allocates per request"
    );
    // (A handful may come from elsewhere in the process; per-request
    // allocation would add ~2000.)
}

#[test]
fn the_echo_path_does_not_allocate_per_request() {
    let modes: [(&str, Dispatch); 2] = [("sync", Dispatch::Sync), ("pool", Pool::new(2).into())];
    for (name, dispatch) in modes {
        let mut server = TcpServer::bind("127.0.0.1:0", echo).unwrap();
        server.set_dispatch(dispatch);
        let addr = server.local_addr().unwrap();
        let handle = server.shutdown_handle();
        let serving = std::thread::spawn(move || server.serve_forever());
        check(addr, name);
        handle.shutdown();
        serving.join().unwrap().unwrap();
    }
    for workers in [1, 2] {
        let mut server = TcpServer::bind("127.0.0.1:0", Messages(util::MessageEcho)).unwrap();
        server.set_dispatch(Reactor::new(workers));
        let addr = server.local_addr().unwrap();
        let handle = server.shutdown_handle();
        let serving = std::thread::spawn(move || server.serve_forever());
        check(addr, &format!("reactor with {workers} workers"));
        handle.shutdown();
        serving.join().unwrap().unwrap();
    }
}
