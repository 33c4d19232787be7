//! The connection's I/O state, shared by the connection loop and the body
//! of the request being handled: the stream, the read buffer, and where the
//! current request's body stands.
//!
//! Memory: the read buffer is taken only once the socket is readable (for
//! plain TCP, [`Io::poll_read_ready`] waits without a buffer), grows from
//! [`INITIAL_BUFFER`] up to the head limit, and is given back whenever it
//! holds no unread byte between requests: an idle keep-alive connection,
//! and one that never sent a byte, hold none.
//!
//! Must never: read past the head limit, read a body byte before the
//! handler asks for one, or hand out a byte of one request as another's.

use std::io;
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::chunked::{ChunkedDecoder, Step};
use super::head::{self, HeadError, HeadLimits, RequestHead, H2_PREFACE};
use super::response::CONTINUE;
use super::{BodyError, ConnError};
use crate::listener::write_timeout::WriteTimeout;
use crate::proxy_protocol::Prefixed;

/// The first size of a read buffer; it doubles as needed up to the head
/// limit.
pub const INITIAL_BUFFER: usize = 4096;

/// A stream the HTTP/1 driver serves.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {
    /// Ready once a read would not wait (bytes, EOF or an error), without a
    /// buffer. The default, for streams with buffers of their own (TLS):
    /// at once.
    fn poll_read_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl Io for WriteTimeout<Prefixed<TcpStream>> {
    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let prefixed = self.get_ref();
        if prefixed.has_buffered() {
            return Poll::Ready(Ok(()));
        }
        prefixed.get_ref().poll_read_ready(cx)
    }
}

impl<S> Io for tokio_rustls::server::TlsStream<S> where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static
{
}

/// What a fill of the read buffer did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fill {
    /// Read this many bytes.
    Read(usize),
    /// The peer closed its side.
    Eof,
    /// The buffer is at its limit, and holds no byte already consumed.
    Full,
}

/// A read buffer: unread bytes at `start..end` of `data` (which is zeroed
/// where never read into: no unsafe code).
#[derive(Debug, Default)]
pub struct ReadBuffer {
    data: Vec<u8>,
    start: usize,
    end: usize,
}

impl ReadBuffer {
    /// The unread bytes.
    pub fn filled(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Marks `n` unread bytes as read.
    pub fn consume(&mut self, n: usize) {
        self.start = self.start.saturating_add(n).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Gives the memory back when nothing is unread.
    pub fn release_if_empty(&mut self) {
        if self.is_empty() {
            self.data = Vec::new();
            self.start = 0;
            self.end = 0;
        }
    }

    /// Bytes of memory held.
    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.data.capacity()
    }

    /// Reads once from `io` into the buffer, making room first (moving the
    /// unread bytes to the front, or growing up to `limit`).
    pub fn poll_fill<R: AsyncRead + Unpin + ?Sized>(
        &mut self,
        io: &mut R,
        cx: &mut Context<'_>,
        limit: usize,
    ) -> Poll<io::Result<Fill>> {
        if self.end == self.data.len() {
            if self.start > 0 {
                self.data.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.end == self.data.len() {
                if self.data.len() >= limit {
                    return Poll::Ready(Ok(Fill::Full));
                }
                let grown = (self.data.len() * 2).clamp(INITIAL_BUFFER.min(limit), limit);
                self.data.reserve_exact(grown - self.data.len());
                self.data.resize(grown, 0);
            }
        }
        let mut read = ReadBuf::new(&mut self.data[self.end..]);
        ready!(Pin::new(io).poll_read(cx, &mut read))?;
        let n = read.filled().len();
        self.end += n;
        Poll::Ready(Ok(if n == 0 { Fill::Eof } else { Fill::Read(n) }))
    }
}

/// Where the current request's body stands.
#[derive(Debug)]
pub enum BodyState {
    /// No body, or all of it read.
    Done,
    /// `Content-Length`: this many bytes left.
    Length(u64),
    Chunked(ChunkedDecoder),
    /// Broken or cut short: the connection cannot go on.
    Failed,
}

/// The connection's I/O, behind the lock the body shares.
pub struct Shared {
    pub io: Box<dyn Io>,
    pub buf: ReadBuffer,
    /// The read buffer's limit (the head limit).
    limit: usize,
    pub body: BodyState,
    /// With `Expect: 100-continue`, how much of `100 Continue` is written
    /// once the handler asks for the body.
    continue_written: Option<usize>,
    /// Counts requests: a body kept past its request reads nothing.
    generation: u64,
}

/// Locks `shared`; a poisoned lock (a panic while it was held) is taken as
/// is: the connection ends soon after anyway.
pub fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    pub fn new(io: Box<dyn Io>, limit: usize) -> Self {
        Self {
            io,
            buf: ReadBuffer::default(),
            limit,
            body: BodyState::Done,
            continue_written: None,
            generation: 0,
        }
    }

    /// Sets up the next request's body; returns its generation.
    pub fn start_body(&mut self, body: BodyState, expect_continue: bool) -> u64 {
        let waits = !matches!(body, BodyState::Done);
        self.body = body;
        self.continue_written = (waits && expect_continue).then_some(0);
        self.generation += 1;
        self.generation
    }

    /// The state of the body of generation `generation`: a body kept past
    /// its request is done.
    pub fn body_of(&self, generation: u64) -> &BodyState {
        if generation == self.generation {
            &self.body
        } else {
            &BodyState::Done
        }
    }

    /// [`Shared::poll_body`] for the body of generation `generation`.
    pub fn poll_body_of(
        &mut self,
        generation: u64,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, BodyError>>> {
        if generation != self.generation {
            return Poll::Ready(None);
        }
        self.poll_body(cx)
    }

    /// Reads until a whole head is buffered: `Ok(None)` when the peer
    /// closed between requests. Holds no buffer while waiting for a first
    /// byte.
    pub fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        limits: HeadLimits,
    ) -> Poll<Result<Option<RequestHead>, ConnError>> {
        loop {
            if self.buf.is_empty() {
                self.buf.release_if_empty();
                ready!(self.io.poll_read_ready(cx))?;
            } else {
                let bytes = self.buf.filled();
                let n = bytes.len().min(H2_PREFACE.len());
                if bytes.len() >= 3 && bytes[..n] == H2_PREFACE[..n] {
                    if n == H2_PREFACE.len() {
                        return Poll::Ready(Err(ConnError::H2Preface));
                    }
                } else {
                    match head::parse(bytes, limits) {
                        Ok(Some(h)) => {
                            self.buf.consume(h.len);
                            return Poll::Ready(Ok(Some(h)));
                        }
                        Ok(None) => {}
                        Err(e) => return Poll::Ready(Err(ConnError::Refused(e))),
                    }
                }
            }
            let fill = match self.buf.poll_fill(&mut *self.io, cx, self.limit) {
                Poll::Pending => {
                    // Readiness that was not (or TLS without a record yet):
                    // wait again without the buffer.
                    self.buf.release_if_empty();
                    return Poll::Pending;
                }
                Poll::Ready(fill) => fill?,
            };
            match fill {
                Fill::Read(_) => {}
                Fill::Eof if self.buf.is_empty() => return Poll::Ready(Ok(None)),
                Fill::Eof => return Poll::Ready(Err(ConnError::HeadCut)),
                Fill::Full => return Poll::Ready(Err(ConnError::Refused(HeadError::TooLarge))),
            }
        }
    }

    /// The next piece of the body, read as the handler asks for it.
    pub fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, BodyError>>> {
        if let Some(written) = self.continue_written {
            if let Err(e) = ready!(self.poll_continue(cx, written)) {
                self.body = BodyState::Failed;
                return Poll::Ready(Some(Err(BodyError::Io(e))));
            }
        }
        loop {
            match &mut self.body {
                BodyState::Done | BodyState::Failed => return Poll::Ready(None),
                BodyState::Length(left) => {
                    if !self.buf.is_empty() {
                        let bytes = self.buf.filled();
                        let n = usize::try_from(*left).map_or(bytes.len(), |l| l.min(bytes.len()));
                        let data = Bytes::copy_from_slice(&bytes[..n]);
                        self.buf.consume(n);
                        *left -= n as u64;
                        if *left == 0 {
                            self.body = BodyState::Done;
                        }
                        return Poll::Ready(Some(Ok(data)));
                    }
                }
                BodyState::Chunked(decoder) => match decoder.step(self.buf.filled()) {
                    Ok(Step::Data(n)) => {
                        let data = Bytes::copy_from_slice(&self.buf.filled()[..n]);
                        self.buf.consume(n);
                        return Poll::Ready(Some(Ok(data)));
                    }
                    Ok(Step::Framing(n)) => {
                        self.buf.consume(n);
                        continue;
                    }
                    Ok(Step::Done(n)) => {
                        self.buf.consume(n);
                        self.body = BodyState::Done;
                        return Poll::Ready(None);
                    }
                    Ok(Step::NeedMore) => {}
                    Err(e) => {
                        self.body = BodyState::Failed;
                        return Poll::Ready(Some(Err(BodyError::Malformed(e))));
                    }
                },
            }
            let fill = ready!(self.buf.poll_fill(&mut *self.io, cx, self.limit));
            match fill {
                Ok(Fill::Read(_)) => {}
                Ok(Fill::Eof) => {
                    self.body = BodyState::Failed;
                    return Poll::Ready(Some(Err(BodyError::Incomplete)));
                }
                Ok(Fill::Full) => {
                    // Only framing waits for more, and one piece of it is
                    // far smaller than the buffer.
                    self.body = BodyState::Failed;
                    return Poll::Ready(Some(Err(BodyError::Malformed(
                        super::chunked::ChunkedError::LineTooLong,
                    ))));
                }
                Err(e) => {
                    self.body = BodyState::Failed;
                    return Poll::Ready(Some(Err(BodyError::Io(e))));
                }
            }
        }
    }

    fn poll_continue(&mut self, cx: &mut Context<'_>, mut written: usize) -> Poll<io::Result<()>> {
        while written < CONTINUE.len() {
            let n = match Pin::new(&mut *self.io).poll_write(cx, &CONTINUE[written..]) {
                Poll::Ready(r) => r?,
                Poll::Pending => {
                    self.continue_written = Some(written);
                    return Poll::Pending;
                }
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            written += n;
        }
        self.continue_written = Some(written);
        ready!(Pin::new(&mut *self.io).poll_flush(cx))?;
        self.continue_written = None;
        Poll::Ready(Ok(()))
    }

    /// The rest of a `100 Continue` the client got only part of (its write
    /// stalled, then the handler answered): written ahead of the response,
    /// so the client never reads a cut interim response. Empty otherwise.
    pub fn unfinished_continue(&self) -> &'static [u8] {
        match self.continue_written {
            Some(k) if k > 0 && k < CONTINUE.len() => &CONTINUE[k..],
            _ => &[],
        }
    }

    /// After the handler: whether the body was read to its end. A
    /// `Content-Length` remainder already in the buffer is skipped; anything
    /// else unread means the connection closes after the response.
    pub fn body_finished(&mut self) -> bool {
        if let BodyState::Length(left) = self.body {
            let buffered = self.buf.filled().len() as u64;
            if left <= buffered {
                self.buf.consume(left as usize);
                self.body = BodyState::Done;
            }
        }
        matches!(self.body, BodyState::Done)
    }

    /// Writes all of `bytes`.
    pub fn poll_write_all(
        &mut self,
        cx: &mut Context<'_>,
        bytes: &[u8],
        written: &mut usize,
    ) -> Poll<io::Result<()>> {
        while *written < bytes.len() {
            let n = ready!(Pin::new(&mut *self.io).poll_write(cx, &bytes[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        Pin::new(&mut *self.io).poll_flush(cx)
    }

    /// Reads and drops up to `budget` bytes (what a closing connection
    /// leaves unread), until EOF or an error; for a lingering close.
    pub fn poll_discard(&mut self, cx: &mut Context<'_>, budget: &mut usize) -> Poll<()> {
        let mut scratch = [0u8; 2048];
        loop {
            self.buf.consume(usize::MAX);
            if *budget == 0 {
                return Poll::Ready(());
            }
            let want = scratch.len().min(*budget);
            let mut read = ReadBuf::new(&mut scratch[..want]);
            match ready!(Pin::new(&mut *self.io).poll_read(cx, &mut read)) {
                Ok(()) if !read.filled().is_empty() => *budget -= read.filled().len(),
                _ => return Poll::Ready(()),
            }
        }
    }

    pub fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    impl Io for tokio::io::DuplexStream {}

    const LIMITS: HeadLimits = HeadLimits {
        max_headers: 100,
        max_head_bytes: 8192,
    };

    #[tokio::test]
    async fn a_connection_waiting_for_a_head_holds_no_buffer() {
        let (a, mut b) = tokio::io::duplex(4096);
        let mut shared = Shared::new(Box::new(a), LIMITS.max_head_bytes);
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        // Nothing sent yet (a stream without readiness of its own: the
        // buffer taken for the read is given back when it waits).
        assert!(shared.poll_head(&mut cx, LIMITS).is_pending());
        assert_eq!(shared.buf.capacity(), 0);
        // Two pipelined requests: the second stays buffered after the first.
        b.write_all(b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let Poll::Ready(Ok(Some(h))) = shared.poll_head(&mut cx, LIMITS) else {
            panic!("no head");
        };
        assert_eq!(h.uri.path(), "/a");
        shared.buf.release_if_empty();
        assert!(shared.buf.capacity() > 0);
        let Poll::Ready(Ok(Some(h))) = shared.poll_head(&mut cx, LIMITS) else {
            panic!("no second head");
        };
        assert_eq!(h.uri.path(), "/b");
        shared.buf.release_if_empty();
        assert_eq!(shared.buf.capacity(), 0);
        // The client closes between requests: a clean end.
        drop(b);
        assert!(matches!(
            shared.poll_head(&mut cx, LIMITS),
            Poll::Ready(Ok(None))
        ));
    }

    #[tokio::test]
    async fn a_body_is_read_only_when_polled_and_a_kept_body_reads_nothing() {
        let (a, mut b) = tokio::io::duplex(4096);
        let mut shared = Shared::new(Box::new(a), LIMITS.max_head_bytes);
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        b.write_all(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhel")
            .await
            .unwrap();
        let Poll::Ready(Ok(Some(h))) = shared.poll_head(&mut cx, LIMITS) else {
            panic!("no head");
        };
        assert_eq!(h.framing, head::Framing::Length(5));
        let generation = shared.start_body(BodyState::Length(5), false);
        let Poll::Ready(Some(Ok(piece))) = shared.poll_body_of(generation, &mut cx) else {
            panic!("no body piece");
        };
        assert_eq!(&piece[..], b"hel");
        assert!(shared.poll_body_of(generation, &mut cx).is_pending());
        b.write_all(b"lo").await.unwrap();
        let Poll::Ready(Some(Ok(piece))) = shared.poll_body_of(generation, &mut cx) else {
            panic!("no body piece");
        };
        assert_eq!(&piece[..], b"lo");
        assert!(matches!(
            shared.poll_body_of(generation, &mut cx),
            Poll::Ready(None)
        ));
        assert!(shared.body_finished());
        // The next request's body: the old one reads nothing of it.
        let next = shared.start_body(BodyState::Length(3), false);
        assert_ne!(next, generation);
        b.write_all(b"abc").await.unwrap();
        assert!(matches!(
            shared.poll_body_of(generation, &mut cx),
            Poll::Ready(None)
        ));
        // Cut short: incomplete.
        drop(b);
        let Poll::Ready(Some(Ok(piece))) = shared.poll_body_of(next, &mut cx) else {
            panic!("no body piece");
        };
        assert_eq!(&piece[..], b"abc");
        let fresh = shared.start_body(BodyState::Length(1), false);
        assert!(matches!(
            shared.poll_body_of(fresh, &mut cx),
            Poll::Ready(Some(Err(BodyError::Incomplete)))
        ));
        assert!(!shared.body_finished());
    }

    #[tokio::test]
    async fn the_buffer_grows_to_its_limit_and_compacts() {
        let (mut a, mut b) = tokio::io::duplex(64 * 1024);
        tokio::io::AsyncWriteExt::write_all(&mut b, &[7u8; 20_000])
            .await
            .unwrap();
        let mut buf = ReadBuffer::default();
        assert_eq!(buf.capacity(), 0);
        let limit = 10_000;
        let mut total = 0;
        loop {
            match std::future::poll_fn(|cx| buf.poll_fill(&mut a, cx, limit))
                .await
                .unwrap()
            {
                Fill::Read(n) => total += n,
                Fill::Full => break,
                Fill::Eof => panic!("eof"),
            }
        }
        assert_eq!(total, limit);
        assert_eq!(buf.capacity(), limit);
        buf.consume(6000);
        assert_eq!(
            std::future::poll_fn(|cx| buf.poll_fill(&mut a, cx, limit))
                .await
                .unwrap(),
            Fill::Read(6000)
        );
        assert_eq!(buf.filled().len(), limit);
        buf.consume(limit);
        buf.release_if_empty();
        assert_eq!(buf.capacity(), 0);
    }
}
