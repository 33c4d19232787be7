//! A request body on an HTTP/1 connection, read from the connection only
//! as the handler polls it (the intake bounds its size and time before and
//! while reading): by `Content-Length`, or chunked ([`super::chunked`]).
//! The first poll of a body whose request sent `Expect: 100-continue`
//! writes `100 Continue` first.
//!
//! Must never: read ahead of the handler, or end a body that was cut short
//! or malformed without an error ([`BodyError`]: the intake tells
//! `Malformed` from `Incomplete`).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use super::io::{lock, BodyState, Shared};
use super::BodyError;

/// The body of a request on an HTTP/1 connection.
pub struct Http1Body {
    /// `None`: no body.
    shared: Option<Arc<Mutex<Shared>>>,
    /// Which request of the connection this body is.
    generation: u64,
}

impl Http1Body {
    /// No body.
    pub fn empty() -> Self {
        Self {
            shared: None,
            generation: 0,
        }
    }

    /// The body the connection's [`Shared::start_body`] set up.
    pub(super) fn new(shared: Arc<Mutex<Shared>>, generation: u64) -> Self {
        Self {
            shared: Some(shared),
            generation,
        }
    }
}

impl std::fmt::Debug for Http1Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http1Body")
            .field("empty", &self.shared.is_none())
            .finish_non_exhaustive()
    }
}

impl Body for Http1Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let Some(shared) = &self.shared else {
            return Poll::Ready(None);
        };
        lock(shared)
            .poll_body_of(self.generation, cx)
            .map(|next| next.map(|piece| piece.map(Frame::data)))
    }

    fn is_end_stream(&self) -> bool {
        match &self.shared {
            None => true,
            Some(shared) => matches!(lock(shared).body_of(self.generation), BodyState::Done),
        }
    }

    fn size_hint(&self) -> SizeHint {
        let Some(shared) = &self.shared else {
            return SizeHint::with_exact(0);
        };
        match lock(shared).body_of(self.generation) {
            BodyState::Length(left) => SizeHint::with_exact(*left),
            BodyState::Done => SizeHint::with_exact(0),
            BodyState::Chunked(_) | BodyState::Failed => SizeHint::default(),
        }
    }
}
