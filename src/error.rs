//! The one error type `io::Error` cannot express: what went wrong with a
//! single request, as handed to the server's `handle_error` hook.

use std::any::Any;
use std::error::Error;
use std::fmt;
use std::io;

/// An error that ended one request, passed to the `handle_error` hook.
///
/// A request error never stops the server: the hook is told, the request's
/// connection is closed, and serving goes on.
#[derive(Debug)]
#[non_exhaustive]
pub enum RequestError {
    /// `setup`, `handle` or `finish` returned an error, or the connection
    /// failed while the server was flushing or closing it.
    Io(io::Error),
    /// The handler panicked. The panic was caught; the message is the panic
    /// payload when it was a string.
    Panic(String),
    /// A datagram was larger than the server's `max_packet_size`; it was
    /// dropped, not passed on truncated.
    Oversize {
        /// The size of the datagram, when the platform reports it (Linux
        /// does, through `MSG_TRUNC`); otherwise `limit + 1`.
        size: usize,
        /// The server's `max_packet_size`.
        limit: usize,
    },
}

impl RequestError {
    pub(crate) fn from_panic(payload: Box<dyn Any + Send>) -> Self {
        let message = if let Some(s) = payload.downcast_ref::<&'static str>() {
            (*s).to_owned()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "non-string panic payload".to_owned()
        };
        RequestError::Panic(message)
    }

    /// Whether the handler panicked.
    pub fn is_panic(&self) -> bool {
        matches!(self, RequestError::Panic(_))
    }
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestError::Io(e) => write!(f, "{e}"),
            RequestError::Panic(msg) => write!(f, "handler panicked: {msg}"),
            RequestError::Oversize { size, limit } => write!(
                f,
                "datagram of {size} bytes exceeds max_packet_size ({limit} bytes); dropped"
            ),
        }
    }
}

impl Error for RequestError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            RequestError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for RequestError {
    fn from(e: io::Error) -> Self {
        RequestError::Io(e)
    }
}
