//! beacond's own HTTP/1.1 server connection driver (HTTP/2 stays with
//! hyper): heads parsed by `httparse` ([`head`]), bodies read as the
//! handler polls them ([`body`], [`chunked`]), responses written from the
//! handler's `Response<Full<Bytes>>` ([`response`]), and the connection
//! loop ([`conn`]).
//!
//! Why not hyper: hyper 1.12 keeps an 8 KiB write buffer and an 8 KiB read
//! buffer for a connection's whole life, idle keep-alive included (about
//! 12 KB of RSS per idle connection). Here an idle connection holds no
//! buffer: the read buffer is taken once the socket is readable and given
//! back when a response is written and nothing more is buffered
//! ([`io::ReadBuffer`]), and each response is written from a vector of its
//! own.
//!
//! The rules hyper applied are kept: a head of at most `max_buf_size`
//! bytes and `http.max_headers` lines (431), a request target of at most
//! 65534 bytes (414), anything unparseable 400; these answers close the
//! connection and are counted under the route `none`. The header read
//! timeout runs from the moment the connection waits for a head (after
//! accepting, and after each response), so it also ends idle keep-alive
//! connections; when it fires the connection closes without an answer.
//! Requests are served one at a time in order; a pipelined request waits
//! in the read buffer (bounded by the head limit) and the kernel's.
//! Keep-alive: HTTP/1.1 by default, HTTP/1.0 only with
//! `Connection: keep-alive`; `Connection: close` from either side closes
//! after the response, which then says `connection: close`.
//!
//! A body the handler left unread: a `Content-Length` remainder already in
//! the read buffer is skipped and the connection kept; otherwise the
//! connection closes after the response, reading and dropping at most
//! [`conn::LINGER_BYTES`] for at most [`conn::LINGER`] after its FIN (so
//! the client reads the answer rather than a reset). Never unbounded.
//!
//! Shutdown: an idle connection (waiting for a head, a partial one
//! included) closes at once; a busy one finishes its request, answers it
//! with `connection: close` and closes.
//!
//! Must never: read a body ahead of the handler, hold a buffer while idle
//! on plain TCP, read a head past its limits, or answer a request after
//! the one whose framing it could not follow.

pub(super) mod body;
pub mod chunked;
pub(super) mod conn;
pub mod head;
pub(super) mod io;
pub mod response;

use http::StatusCode;

pub use body::Http1Body;

/// Why a request body could not be read to its end (what
/// [`crate::intake`]'s body reads classify).
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Broken chunked framing: the next request cannot be found.
    #[error("malformed chunked request body: {0}")]
    Malformed(#[source] chunked::ChunkedError),
    /// The client closed its side before the body ended.
    #[error("connection closed before the request body ended")]
    Incomplete,
    /// The socket failed (reset, or a write of `100 Continue` timed out).
    #[error("request body read failed: {0}")]
    Io(#[source] std::io::Error),
}

/// Why an HTTP/1 connection ended other than by a close between requests.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// A head the driver refused, answered with [`ConnError::answered`].
    #[error("{0}")]
    Refused(head::HeadError),
    /// No whole head within the header read timeout.
    #[error("request head not received within the header read timeout")]
    HeaderTimeout,
    /// The client closed in the middle of a head.
    #[error("connection closed in the middle of a request head")]
    HeadCut,
    /// An HTTP/2 client without TLS (prior knowledge): closed, unanswered.
    #[error("HTTP/2 connection preface on an HTTP/1 connection")]
    H2Preface,
    #[error("connection I/O failed: {0}")]
    Io(#[from] std::io::Error),
}

impl ConnError {
    /// The status of the answer the driver wrote itself, if it wrote one.
    pub fn answered(&self) -> Option<StatusCode> {
        match self {
            ConnError::Refused(e) => Some(e.status()),
            _ => None,
        }
    }

    /// The I/O error it ended with, if any.
    pub fn io(&self) -> Option<&std::io::Error> {
        match self {
            ConnError::Io(e) => Some(e),
            _ => None,
        }
    }
}
