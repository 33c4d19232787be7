//! The HTTP/1 connection loop: wait for a head (within the header read
//! timeout, without a buffer while nothing arrives), hand the request to
//! the handler, write its response, then keep the connection or close it
//! (see the module docs of [`super`] for the rules).

use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tokio::sync::watch;

use super::body::Http1Body;
use super::head::{Framing, HeadLimits, RequestHead};
use super::io::{lock, BodyState, Io, Shared};
use super::response::{self, After};
use super::ConnError;
use crate::listener::RequestBody;
use crate::proxy_protocol::PeerOrigin;

/// At most this much of a request left unread is read and dropped after a
/// closing response.
pub const LINGER_BYTES: usize = 256 * 1024;
/// ... for at most this long.
pub const LINGER: Duration = Duration::from_secs(1);

/// The settings of every HTTP/1 connection of a listener.
#[derive(Debug, Clone, Copy)]
pub struct Http1Settings {
    pub limits: HeadLimits,
    pub header_timeout: Duration,
}

/// Serves one connection until it closes. `shutdown` turns true when the
/// listener stops: an idle connection closes at once, a busy one after its
/// response.
pub async fn serve<H, F>(
    io: Box<dyn Io>,
    peer: SocketAddr,
    origin: PeerOrigin,
    handler: &H,
    settings: Http1Settings,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), ConnError>
where
    H: Fn(Request<RequestBody>, SocketAddr) -> F,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let shared = Arc::new(Mutex::new(Shared::new(io, settings.limits.max_head_bytes)));
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        let head = {
            let read = poll_fn(|cx| lock(&shared).poll_head(cx, settings.limits));
            tokio::select! {
                biased;
                head = read => head,
                _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
                () = tokio::time::sleep(settings.header_timeout) => Err(ConnError::HeaderTimeout),
            }
        };
        let head = match head {
            Ok(Some(head)) => head,
            Ok(None) => return Ok(()),
            Err(ConnError::Refused(e)) => {
                Box::pin(refuse(&shared, e.status())).await;
                return Err(ConnError::Refused(e));
            }
            Err(e) => return Err(e),
        };

        // Boxed: the connection's own future stays small while it is idle
        // (the request's state lives only while it is being served).
        let after = Box::pin(answer(&shared, head, peer, origin, handler, shutdown)).await?;
        if after == After::Close {
            return Ok(());
        }
        lock(&shared).buf.release_if_empty();
    }
}

/// Serves one request whose head was read: the handler, then the response;
/// closes the connection when the answer says so.
async fn answer<H, F>(
    shared: &Arc<Mutex<Shared>>,
    head: RequestHead,
    peer: SocketAddr,
    origin: PeerOrigin,
    handler: &H,
    shutdown: &watch::Receiver<bool>,
) -> Result<After, ConnError>
where
    H: Fn(Request<RequestBody>, SocketAddr) -> F,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let body = match head.framing {
        Framing::Empty => Http1Body::empty(),
        framing => {
            let state = match framing {
                Framing::Length(n) => BodyState::Length(n),
                _ => BodyState::Chunked(Default::default()),
            };
            let generation = lock(shared).start_body(state, head.expect_continue);
            Http1Body::new(shared.clone(), generation)
        }
    };
    let (method, version, keep_alive) = (head.method, head.version, head.keep_alive);
    let mut request = Request::new(RequestBody::Http1(body));
    *request.method_mut() = method.clone();
    *request.uri_mut() = head.uri;
    *request.version_mut() = version;
    *request.headers_mut() = head.headers;
    if origin == PeerOrigin::Unnamed {
        request.extensions_mut().insert(origin);
    }
    let response = handler(request, peer).await;

    let (parts, mut body) = response.into_parts();
    let data = match body.frame().await {
        Some(Ok(frame)) => frame.into_data().unwrap_or_default(),
        _ => Bytes::new(),
    };
    let (body_finished, unread, continue_rest) = {
        let mut s = lock(shared);
        let finished = s.body_finished();
        let continue_rest = s.unfinished_continue();
        // Ends this request's body, should the handler have kept it.
        s.start_body(BodyState::Done, false);
        (finished, !s.buf.is_empty(), continue_rest)
    };
    let after =
        if keep_alive && body_finished && !response::asks_to_close(&parts) && !*shutdown.borrow() {
            After::KeepAlive
        } else {
            After::Close
        };
    let with_body = response::has_body(&method, parts.status);
    let mut out = Vec::with_capacity(256 + if with_body { data.len() } else { 0 });
    out.extend_from_slice(continue_rest);
    response::encode_head(&mut out, &parts, version, &method, data.len(), after);
    if with_body {
        out.extend_from_slice(&data);
    }
    write_all(shared, &out).await?;
    drop(out);
    if after == After::Close {
        close(shared, !body_finished || unread).await;
    }
    Ok(after)
}

/// Answers a refused head with `status` and closes.
async fn refuse(shared: &Mutex<Shared>, status: http::StatusCode) {
    let mut out = Vec::with_capacity(128);
    response::encode_refusal(&mut out, status);
    let _ = write_all(shared, &out).await;
    close(shared, true).await;
}

async fn write_all(shared: &Mutex<Shared>, bytes: &[u8]) -> std::io::Result<()> {
    let mut written = 0;
    poll_fn(|cx| lock(shared).poll_write_all(cx, bytes, &mut written)).await
}

/// Ends the connection: FIN (close_notify with TLS), then, when the client
/// may still be sending a request we did not read, a bounded lingering read
/// so that our answer is not lost to a reset.
async fn close(shared: &Mutex<Shared>, linger: bool) {
    let finish = async {
        let _ = poll_fn(|cx| lock(shared).poll_shutdown(cx)).await;
        if linger {
            let mut budget = LINGER_BYTES;
            poll_fn(|cx| lock(shared).poll_discard(cx, &mut budget)).await;
        }
    };
    let _ = tokio::time::timeout(LINGER, finish).await;
}
