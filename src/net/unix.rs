//! Unix-domain sockets: [`UnixStreamServer`](crate::UnixStreamServer) and
//! [`UnixDatagramServer`](crate::UnixDatagramServer).
//!
//! Both bind a filesystem path. Binding handles the socket file's life:
//!
//! - a *stale* file (left by a server that died without cleaning up: nobody
//!   answers a connect on it) is removed and replaced;
//! - a path where a *live* server answers is an `AddrInUse` error — a
//!   running server's socket is never stolen;
//! - a path holding something that is not a socket is an `AddrInUse` error
//!   and is left alone;
//! - the file is removed when the server is closed or dropped, by the
//!   process that bound it, and only if it is still the same file (a newer
//!   server may have replaced it).
//!
//! "Does a live server answer?" is decided by connecting to the path, as a
//! client would: refused means stale. The probe connects without blocking
//! and closes at once, so a live stream server sees one empty connection;
//! an answer that proves nothing either way (`EACCES`, ...) keeps the file.
//!
//! Two servers racing to replace the same stale file can still both succeed
//! in turn, the second unlinking the first's fresh socket; start one server
//! per path.
//!
//! # Platform-specific behavior
//!
//! On Linux a connect to a live listener whose backlog is full would block,
//! which the probe sees as "live". The BSDs and macOS refuse such a connect
//! with `ECONNREFUSED`, the same answer as a stale file, so there a server
//! flooded past its backlog can lose its path to a newcomer.

use std::fs;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{SocketAddr, UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};

use super::{BindOptions, DatagramSocket, Listen, private};
use crate::server::{Server, Service};

std_stream_socket!(UnixStream, SocketAddr, nodelay: |_, _| Ok(())); // no Nagle here

/// Which file a bound socket path is, so cleanup removes only our own.
#[derive(Debug, Clone)]
struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
    owner_pid: u32,
}

impl SocketFile {
    fn record(path: &Path) -> io::Result<Self> {
        let meta = fs::symlink_metadata(path)?;
        Ok(SocketFile {
            path: path.to_path_buf(),
            dev: meta.dev(),
            ino: meta.ino(),
            owner_pid: std::process::id(),
        })
    }

    /// Removes the file if this process bound it and it is still the same
    /// file. Forked children (prefork workers, forking handlers) inherit the
    /// socket but must not remove the path when they exit.
    fn remove(&self) {
        if std::process::id() != self.owner_pid {
            return;
        }
        match fs::symlink_metadata(&self.path) {
            Ok(meta) if meta.dev() == self.dev && meta.ino() == self.ino => {
                if let Err(e) = fs::remove_file(&self.path) {
                    log::warn!("cannot remove socket file {}: {e}", self.path.display());
                }
            }
            _ => {}
        }
    }
}

/// Whether a server answers on `path`: a connect that is refused means the
/// file is stale.
///
/// The probe connects without blocking: a blocking `connect(2)` to a live
/// Unix stream listener whose backlog is full waits for room, which would
/// hang `bind` behind a busy server. Would-block means a live server. Any
/// answer other than "refused" or "gone" (`EACCES`, `EPERM` from a datagram
/// socket connected elsewhere, ...) cannot prove the file stale, so the
/// caller must not remove it.
fn someone_listens(path: &Path, ty: socket2::Type) -> io::Result<bool> {
    let probe = socket2::Socket::new(socket2::Domain::UNIX, ty, None)?;
    probe.set_nonblocking(true)?;
    match probe.connect(&socket2::SockAddr::unix(path)?) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock || crate::sys::is_in_progress(&e) => {
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Ok(false),
        // The file vanished between our bind and the probe.
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "{} exists and cannot be probed ({e}); not replacing it",
                path.display()
            ),
        )),
    }
}

fn bind_unix_once(
    path: &Path,
    ty: socket2::Type,
    options: &BindOptions,
) -> io::Result<socket2::Socket> {
    let socket = socket2::Socket::new(socket2::Domain::UNIX, ty, None)?;
    socket.bind(&socket2::SockAddr::unix(path)?)?;
    if ty == socket2::Type::STREAM {
        socket.listen(options.backlog)?;
    }
    Ok(socket)
}

/// Binds a Unix socket at `path`, replacing a stale socket file but never a
/// live one.
fn bind_unix(
    path: &Path,
    ty: socket2::Type,
    options: &BindOptions,
) -> io::Result<(socket2::Socket, SocketFile)> {
    let socket = match bind_unix_once(path, ty, options) {
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            let meta = fs::symlink_metadata(path)?;
            if !meta.file_type().is_socket() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{} exists and is not a socket", path.display()),
                ));
            }
            if someone_listens(path, ty)? {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("a server is already listening on {}", path.display()),
                ));
            }
            log::info!("removing stale socket file {}", path.display());
            fs::remove_file(path)?;
            bind_unix_once(path, ty, options)?
        }
        other => other?,
    };
    let file = SocketFile::record(path)?;
    Ok((socket, file))
}

/// A listening Unix stream socket that removes its file when dropped.
///
/// Created by [`UnixStreamServer::bind`](crate::UnixStreamServer). Binding
/// replaces a stale socket file (nobody answers a connect on it), refuses a
/// live server's path or a non-socket file with `AddrInUse`, and the file is
/// removed on drop — by the process that bound it, and only if it is still
/// the same file.
#[derive(Debug)]
pub struct UnixListener {
    inner: std::os::unix::net::UnixListener,
    file: Option<SocketFile>,
}

impl UnixListener {
    /// Binds `path`, replacing a stale socket file, refusing a live one.
    pub fn bind<P: AsRef<Path>>(path: P, options: &BindOptions) -> io::Result<Self> {
        let (socket, file) = bind_unix(path.as_ref(), socket2::Type::STREAM, options)?;
        Ok(UnixListener {
            inner: socket.into(),
            file: Some(file),
        })
    }

    /// Wraps an existing listener; its socket file (if any) is left alone on
    /// drop.
    pub fn from_std(listener: std::os::unix::net::UnixListener) -> Self {
        UnixListener {
            inner: listener,
            file: None,
        }
    }

    /// The socket file this listener will remove, if it manages one.
    pub fn path(&self) -> Option<&Path> {
        self.file.as_ref().map(|f| f.path.as_path())
    }

    /// The std listener.
    pub fn get_ref(&self) -> &std::os::unix::net::UnixListener {
        &self.inner
    }
}

impl Drop for UnixListener {
    fn drop(&mut self) {
        if let Some(file) = &self.file {
            file.remove();
        }
    }
}

impl AsFd for UnixListener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.as_fd()
    }
}

impl Listen for UnixListener {
    type Stream = UnixStream;

    fn accept_stream(&self) -> io::Result<(UnixStream, SocketAddr)> {
        self.inner.accept()
    }
    fn listen_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
    fn set_listen_nonblocking(&self) -> io::Result<()> {
        self.inner.set_nonblocking(true)
    }
}

stream_transport!(UnixListener => UnixStream);

/// A bound Unix datagram socket that removes its file when dropped.
///
/// Created by [`UnixDatagramServer::bind`](crate::UnixDatagramServer). The
/// socket file is managed as for [`UnixListener`].
#[derive(Debug)]
pub struct UnixDatagramSocket {
    inner: UnixDatagram,
    file: Option<SocketFile>,
}

impl UnixDatagramSocket {
    /// Binds `path`, replacing a stale socket file, refusing a live one.
    pub fn bind<P: AsRef<Path>>(path: P, options: &BindOptions) -> io::Result<Self> {
        let (socket, file) = bind_unix(path.as_ref(), socket2::Type::DGRAM, options)?;
        Ok(UnixDatagramSocket {
            inner: socket.into(),
            file: Some(file),
        })
    }

    /// Wraps an existing socket; its file (if any) is left alone on drop.
    pub fn from_std(socket: UnixDatagram) -> Self {
        UnixDatagramSocket {
            inner: socket,
            file: None,
        }
    }

    /// The socket file this socket will remove, if it manages one.
    pub fn path(&self) -> Option<&Path> {
        self.file.as_ref().map(|f| f.path.as_path())
    }

    /// The std socket.
    pub fn get_ref(&self) -> &UnixDatagram {
        &self.inner
    }
}

impl Drop for UnixDatagramSocket {
    fn drop(&mut self) {
        if let Some(file) = &self.file {
            file.remove();
        }
    }
}

impl AsFd for UnixDatagramSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.as_fd()
    }
}

impl private::Sealed for UnixDatagramSocket {}

impl DatagramSocket for UnixDatagramSocket {
    type Addr = SocketAddr;

    fn recv_datagram(&self, buf: &mut [u8]) -> io::Result<(usize, usize, SocketAddr)> {
        // std cannot pass MSG_TRUNC here; the caller's one-byte-larger
        // buffer still tells an oversize datagram apart.
        let (n, peer) = self.inner.recv_from(buf)?;
        Ok((n, n, peer))
    }

    fn send_to_peer(&self, data: &[u8], peer: &SocketAddr) -> io::Result<usize> {
        if peer.is_unnamed() {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "peer has no address: the client's socket is not bound, so it cannot be replied to",
            ));
        }
        self.inner.send_to_addr(data, peer)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        self.inner.set_nonblocking(nonblocking)
    }
}

datagram_transport!(UnixDatagramSocket);

/// Constructors for [`UnixStreamServer`](crate::UnixStreamServer).
impl<H> Server<UnixListener, H>
where
    H: Service<UnixListener>,
{
    /// Binds a Unix stream server to the filesystem `path` (Python's
    /// `UnixStreamServer(path, Handler)`). A stale socket file is replaced;
    /// a live server's is not (`AddrInUse`). The file is removed when the
    /// server is closed or dropped.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::io::{Read, Write};
    /// use socketserver::{UnixStreamRequest, UnixStreamServer};
    ///
    /// let dir = std::env::temp_dir().join(format!("socketserver-doc-{}", std::process::id()));
    /// std::fs::create_dir_all(&dir)?;
    /// let path = dir.join("echo.sock");
    /// let mut server = UnixStreamServer::bind(&path, |req: &mut UnixStreamRequest| {
    ///     std::io::copy(&mut req.rfile, &mut req.wfile).map(drop)
    /// })?;
    /// let mut client = std::os::unix::net::UnixStream::connect(&path)?;
    /// client.write_all(b"hi")?;
    /// client.shutdown(std::net::Shutdown::Write)?;
    /// assert!(server.handle_request()?);
    /// let mut reply = String::new();
    /// client.read_to_string(&mut reply)?;
    /// assert_eq!(reply, "hi");
    /// drop(server);
    /// assert!(!path.exists());
    /// # std::fs::remove_dir_all(&dir)?;
    /// # std::io::Result::Ok(())
    /// ```
    pub fn bind<P: AsRef<Path>>(path: P, handler: H) -> io::Result<Self> {
        Self::bind_with(path, &BindOptions::new(), handler)
    }

    /// Binds with explicit options (the backlog; IP options are ignored).
    pub fn bind_with<P: AsRef<Path>>(
        path: P,
        options: &BindOptions,
        handler: H,
    ) -> io::Result<Self> {
        Server::new_bound(UnixListener::bind(path, options)?, handler)
    }

    /// Serves an existing, listening socket (its file is not removed).
    pub fn from_listener(
        listener: std::os::unix::net::UnixListener,
        handler: H,
    ) -> io::Result<Self> {
        Server::new(UnixListener::from_std(listener), handler)
    }
}

/// Constructors for [`UnixDatagramServer`](crate::UnixDatagramServer).
impl<H> Server<UnixDatagramSocket, H>
where
    H: Service<UnixDatagramSocket>,
{
    /// Binds a Unix datagram server to the filesystem `path` (Python's
    /// `UnixDatagramServer(path, Handler)`). Socket-file handling is as for
    /// [`UnixStreamServer::bind`](crate::UnixStreamServer). Clients that did
    /// not bind an address are still served, but cannot be replied to.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::io::Write;
    /// use std::os::unix::net::UnixDatagram;
    /// use socketserver::{UnixDatagramRequest, UnixDatagramServer};
    ///
    /// let dir = std::env::temp_dir().join(format!("socketserver-doc-dgram-{}", std::process::id()));
    /// std::fs::create_dir_all(&dir)?;
    /// let mut server = UnixDatagramServer::bind(dir.join("srv.sock"), |req: &mut UnixDatagramRequest| {
    ///     let packet = req.packet().to_vec();
    ///     req.wfile.write_all(&packet)
    /// })?;
    /// let client = UnixDatagram::bind(dir.join("client.sock"))?;
    /// client.send_to(b"ping", dir.join("srv.sock"))?;
    /// assert!(server.handle_request()?);
    /// let mut buf = [0; 16];
    /// let n = client.recv(&mut buf)?;
    /// assert_eq!(&buf[..n], b"ping");
    /// # drop(server);
    /// # std::fs::remove_dir_all(&dir)?;
    /// # std::io::Result::Ok(())
    /// ```
    pub fn bind<P: AsRef<Path>>(path: P, handler: H) -> io::Result<Self> {
        Self::bind_with(path, &BindOptions::new(), handler)
    }

    /// Binds with explicit options.
    pub fn bind_with<P: AsRef<Path>>(
        path: P,
        options: &BindOptions,
        handler: H,
    ) -> io::Result<Self> {
        Server::new(UnixDatagramSocket::bind(path, options)?, handler)
    }

    /// Serves an existing, bound socket (its file is not removed).
    pub fn from_socket(socket: UnixDatagram, handler: H) -> io::Result<Self> {
        Server::new(UnixDatagramSocket::from_std(socket), handler)
    }
}
