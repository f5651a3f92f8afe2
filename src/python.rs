//! Python's class names, for code ported from `socketserver`.
//!
//! Python builds a threading or forking server by mixing a class in
//! (`class ThreadingTCPServer(ThreadingMixIn, TCPServer)`); here the dispatch
//! strategy is a value set on the server, so these names are constructors:
//! each `bind` returns the plain server type with its dispatch already set.
//!
//! ```
//! use socketserver::python::ThreadingTcpServer;
//! use socketserver::TcpRequest;
//!
//! let server = ThreadingTcpServer::bind("127.0.0.1:0", |req: &mut TcpRequest| {
//!     std::io::copy(&mut req.rfile, &mut req.wfile).map(drop)
//! })?;
//! # let _ = server;
//! # std::io::Result::Ok(())
//! ```
//!
//! This module adds no behaviour of its own.

use std::io;
use std::net::ToSocketAddrs;
#[cfg(unix)]
use std::path::Path;

use crate::dispatch::Dispatch;
use crate::server::Service;
use crate::{TcpServer, UdpServer};
#[cfg(unix)]
use crate::{UnixDatagramServer, UnixStreamServer};

macro_rules! python_server {
    ($(#[$cfg:meta])* $name:ident, $python:literal, $server:ident, $transport:ty,
     $addr:ident: $addr_ty:ty, $dispatch:expr) => {
        $(#[$cfg])*
        #[doc = concat!("Python's `", $python, "`: a [`", stringify!($server), "`] whose dispatch is `", stringify!($dispatch), "`.")]
        #[derive(Debug)]
        pub struct $name;

        $(#[$cfg])*
        impl $name {
            #[doc = concat!("Binds a [`", stringify!($server), "`] and sets its dispatch to `", stringify!($dispatch), "`.")]
            ///
            /// # Errors
            ///
            /// As the plain server's `bind`.
            pub fn bind<H: Service<$transport>>($addr: $addr_ty, handler: H) -> io::Result<$server<H>> {
                let mut server = $server::bind($addr, handler)?;
                server.set_dispatch($dispatch);
                Ok(server)
            }
        }
    };
}

python_server!(ThreadingTcpServer, "ThreadingTCPServer", TcpServer, std::net::TcpListener,
    addr: impl ToSocketAddrs, Dispatch::threading());
python_server!(ThreadingUdpServer, "ThreadingUDPServer", UdpServer, std::net::UdpSocket,
    addr: impl ToSocketAddrs, Dispatch::threading());
python_server!(#[cfg(unix)] ForkingTcpServer, "ForkingTCPServer", TcpServer, std::net::TcpListener,
    addr: impl ToSocketAddrs, Dispatch::forking());
python_server!(#[cfg(unix)] ForkingUdpServer, "ForkingUDPServer", UdpServer, std::net::UdpSocket,
    addr: impl ToSocketAddrs, Dispatch::forking());
python_server!(#[cfg(unix)] ThreadingUnixStreamServer, "ThreadingUnixStreamServer",
    UnixStreamServer, crate::net::UnixListener, path: impl AsRef<Path>, Dispatch::threading());
python_server!(#[cfg(unix)] ThreadingUnixDatagramServer, "ThreadingUnixDatagramServer",
    UnixDatagramServer, crate::net::UnixDatagramSocket, path: impl AsRef<Path>, Dispatch::threading());
python_server!(#[cfg(unix)] ForkingUnixStreamServer, "ForkingUnixStreamServer",
    UnixStreamServer, crate::net::UnixListener, path: impl AsRef<Path>, Dispatch::forking());
python_server!(#[cfg(unix)] ForkingUnixDatagramServer, "ForkingUnixDatagramServer",
    UnixDatagramServer, crate::net::UnixDatagramSocket, path: impl AsRef<Path>, Dispatch::forking());
