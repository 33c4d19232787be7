//! The chunked transfer coding (RFC 9112 section 7.1), decoded step by step
//! from whatever bytes have arrived: size lines (with extensions), data, the
//! CRLF after each chunk, and the trailer section after the last one
//! (skipped: nothing here reads trailers).
//!
//! Size lines are parsed strictly, as hyper did, since a looser reading
//! than a front end's is a request-smuggling gap: at least one hex digit,
//! optional whitespace, extensions with no control character but HTAB, and
//! CRLF (`httparse::parse_chunk_size` takes an empty size as 0 and a bare LF
//! in an extension).
//!
//! Bounds: a size line (extensions included) of at most [`MAX_LINE_BYTES`],
//! extensions of at most [`MAX_EXTENSION_BYTES`] over a whole body, a
//! trailer section of at most [`MAX_TRAILER_BYTES`]; data is handed out as
//! it arrives, never gathered, so the decoder needs no buffer of its own.
//!
//! Pure: no I/O; the fuzz target `http1_chunked` feeds it arbitrary bytes
//! cut at arbitrary places.
//!
//! Must never: panic on any input, hand out a byte that is not chunk data,
//! or wait for more bytes than a bound allows.

/// The longest chunk size line accepted, its CRLF included.
pub const MAX_LINE_BYTES: usize = 4096;
/// The longest trailer section accepted, its final CRLF included.
pub const MAX_TRAILER_BYTES: usize = 16 * 1024;
/// Chunk extension bytes accepted over one body (framing is not data, and
/// `max_body_bytes` counts data only).
pub const MAX_EXTENSION_BYTES: usize = 16 * 1024;

/// Why a chunked body is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkedError {
    #[error("invalid chunk size line")]
    Size,
    #[error("chunk size line too long")]
    LineTooLong,
    #[error("no CRLF after chunk data")]
    DataEnd,
    #[error("invalid or oversized trailer section")]
    Trailers,
    #[error("chunk extensions over the limit for one body")]
    Extensions,
}

/// What one [`ChunkedDecoder::step`] found at the start of the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Chunk data: the first `n` bytes of the input (all consumed).
    Data(usize),
    /// `n` bytes of framing consumed, nothing to hand out; step again.
    Framing(usize),
    /// The input ends inside framing: more bytes are needed (none consumed).
    NeedMore,
    /// The body ended after `n` more bytes of framing (consumed).
    Done(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before a chunk size line.
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// After a chunk's data, before its CRLF.
    DataEnd,
    /// After the last chunk: trailer lines, then an empty line; `seen`
    /// bytes of the section so far.
    Trailers {
        seen: usize,
    },
    Done,
}

/// The decoder's state between steps.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    /// Extension bytes seen so far in this body.
    extension_bytes: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        Self {
            state: State::Size,
            extension_bytes: 0,
        }
    }

    /// Whether the last chunk and the trailer section have been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes from the start of `input` (the bytes not consumed by earlier
    /// steps). After `Done`, every step is `Done(0)`.
    pub fn step(&mut self, input: &[u8]) -> Result<Step, ChunkedError> {
        match self.state {
            State::Done => Ok(Step::Done(0)),
            State::Size => match size_line(input)? {
                Some(line) => {
                    self.extension_bytes += line.extension_bytes;
                    if self.extension_bytes > MAX_EXTENSION_BYTES {
                        return Err(ChunkedError::Extensions);
                    }
                    self.state = if line.size == 0 {
                        State::Trailers { seen: 0 }
                    } else {
                        State::Data(line.size)
                    };
                    Ok(Step::Framing(line.len))
                }
                None => Ok(Step::NeedMore),
            },
            State::Data(left) => {
                if input.is_empty() {
                    return Ok(Step::NeedMore);
                }
                let n = usize::try_from(left).map_or(input.len(), |l| l.min(input.len()));
                let rest = left - n as u64;
                self.state = if rest == 0 {
                    State::DataEnd
                } else {
                    State::Data(rest)
                };
                Ok(Step::Data(n))
            }
            State::DataEnd => match input {
                [b'\r', b'\n', ..] => {
                    self.state = State::Size;
                    Ok(Step::Framing(2))
                }
                [] | [b'\r'] => Ok(Step::NeedMore),
                _ => Err(ChunkedError::DataEnd),
            },
            State::Trailers { seen } => {
                // One line at a time: an empty one ends the section.
                let window = &input[..input.len().min(MAX_TRAILER_BYTES - seen)];
                let Some(lf) = window.iter().position(|b| *b == b'\n') else {
                    return if seen + input.len() >= MAX_TRAILER_BYTES {
                        Err(ChunkedError::Trailers)
                    } else {
                        Ok(Step::NeedMore)
                    };
                };
                if lf == 0 || input[lf - 1] != b'\r' {
                    return Err(ChunkedError::Trailers);
                }
                let line = lf + 1;
                if line == 2 {
                    self.state = State::Done;
                    return Ok(Step::Done(2));
                }
                if input[..lf - 1].iter().any(|b| *b == b'\r' || *b == 0) {
                    return Err(ChunkedError::Trailers);
                }
                self.state = State::Trailers { seen: seen + line };
                Ok(Step::Framing(line))
            }
        }
    }
}

/// A complete chunk size line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SizeLine {
    size: u64,
    /// Its length, CRLF included.
    len: usize,
    /// The bytes from the first `;` to the CR.
    extension_bytes: usize,
}

/// `1*HEXDIG *(SP / HTAB) [";" extension] CRLF` at the start of `input`;
/// `None` while the line is incomplete (and within [`MAX_LINE_BYTES`]). The
/// extension may hold any byte but a control character other than HTAB;
/// its syntax is not checked further (nothing here reads extensions).
fn size_line(input: &[u8]) -> Result<Option<SizeLine>, ChunkedError> {
    let window = &input[..input.len().min(MAX_LINE_BYTES)];
    let mut size: u64 = 0;
    let mut digits = 0;
    let mut at = 0;
    while let Some(&c) = window.get(at) {
        let Some(d) = (c as char).to_digit(16) else {
            break;
        };
        size = size
            .checked_mul(16)
            .and_then(|s| s.checked_add(u64::from(d)))
            .ok_or(ChunkedError::Size)?;
        digits += 1;
        at += 1;
    }
    if at == window.len() {
        return incomplete(input);
    }
    if digits == 0 {
        return Err(ChunkedError::Size);
    }
    while matches!(window.get(at), Some(b' ' | b'\t')) {
        at += 1;
    }
    let mut extension_bytes = 0;
    if window.get(at) == Some(&b';') {
        let start = at;
        while let Some(&c) = window.get(at) {
            if c == b'\r' {
                break;
            }
            if (c < 0x20 && c != b'\t') || c == 0x7f {
                return Err(ChunkedError::Size);
            }
            at += 1;
        }
        extension_bytes = at - start;
    }
    match (window.get(at), window.get(at + 1)) {
        (Some(b'\r'), Some(b'\n')) => Ok(Some(SizeLine {
            size,
            len: at + 2,
            extension_bytes,
        })),
        (None, _) | (Some(b'\r'), None) => incomplete(input),
        _ => Err(ChunkedError::Size),
    }
}

/// An unfinished size line: wait for more, unless it is already too long.
fn incomplete(input: &[u8]) -> Result<Option<SizeLine>, ChunkedError> {
    if input.len() >= MAX_LINE_BYTES {
        Err(ChunkedError::LineTooLong)
    } else {
        Ok(None)
    }
}

/// Decodes a whole body held in `input`: the data, and how many bytes the
/// body took (`None` if incomplete). For tests and the fuzz target.
pub fn decode_all(input: &[u8]) -> Result<(Vec<u8>, Option<usize>), ChunkedError> {
    let mut decoder = ChunkedDecoder::new();
    let mut data = Vec::new();
    let mut at = 0;
    loop {
        match decoder.step(&input[at..])? {
            Step::Data(n) => {
                data.extend_from_slice(&input[at..at + n]);
                at += n;
            }
            Step::Framing(n) => at += n,
            Step::NeedMore => return Ok((data, None)),
            Step::Done(n) => return Ok((data, Some(at + n))),
        }
    }
}

/// Encodes `chunks` (empty ones skipped) as a chunked body. For tests.
pub fn encode(chunks: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for c in chunks.iter().filter(|c| !c.is_empty()) {
        out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        out.extend_from_slice(c);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn valid_bodies() {
        let (data, used) = decode_all(b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\nNEXT").unwrap();
        assert_eq!(data, b"hello world");
        assert_eq!(used, Some(32));
        let (data, used) = decode_all(b"0\r\nX-Trailer: a\r\nY: b\r\n\r\n").unwrap();
        assert!(data.is_empty());
        assert_eq!(used, Some(25));
        let (data, used) = decode_all(b"A\r\n0123456789\r\n").unwrap();
        assert_eq!((data.as_slice(), used), (&b"0123456789"[..], None));
    }

    #[test]
    fn malformed_bodies() {
        assert_eq!(
            decode_all(b"zz\r\n{}\r\n0\r\n\r\n"),
            Err(ChunkedError::Size)
        );
        assert_eq!(
            decode_all(b"5\r\nhelloXX0\r\n\r\n"),
            Err(ChunkedError::DataEnd)
        );
        assert_eq!(decode_all(b"0\r\nbad\n\r\n"), Err(ChunkedError::Trailers));
        assert_eq!(
            decode_all(b"fffffffffffffffffff\r\n"),
            Err(ChunkedError::Size)
        );
        let long = format!("1;{}\r\n", "e".repeat(MAX_LINE_BYTES));
        assert_eq!(decode_all(long.as_bytes()), Err(ChunkedError::LineTooLong));
        let endless = format!("1;{}", "e".repeat(MAX_LINE_BYTES));
        assert_eq!(
            decode_all(endless.as_bytes()),
            Err(ChunkedError::LineTooLong)
        );
        // What httparse's parse_chunk_size lets through and hyper refused:
        // no size digit (read as the last chunk), a bare LF or a NUL in an
        // extension.
        for body in [
            &b"\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n"[..],
            b" \r\n\r\n",
            b";x\r\n\r\n",
            b"5;a\nXXXXX\r\nhello\r\n0\r\n\r\n",
            b"5;a\0b\r\nhello\r\n0\r\n\r\n",
            b"5\n",
            b"5\rx",
            b"5 x\r\n",
        ] {
            assert_eq!(decode_all(body), Err(ChunkedError::Size), "{body:?}");
        }
        // Whitespace after the size, HTAB in an extension, uppercase hex.
        let (data, _) =
            decode_all(b"5 \t;a=\"b\tc\"\r\nhello\r\nA\r\n0123456789\r\n0\r\n\r\n").unwrap();
        assert_eq!(data, b"hello0123456789");
        // Extensions add up over a body.
        let line = format!("1;{}\r\nA\r\n", "e".repeat(1000));
        let many = format!("{}0\r\n\r\n", line.repeat(MAX_EXTENSION_BYTES / 1000 + 1));
        assert_eq!(decode_all(many.as_bytes()), Err(ChunkedError::Extensions));
        let trailers = format!("0\r\nX: {}\r\n\r\n", "t".repeat(MAX_TRAILER_BYTES));
        assert_eq!(decode_all(trailers.as_bytes()), Err(ChunkedError::Trailers));
    }

    /// Feeds `input` in pieces of `cut` bytes, as a connection would (the
    /// unconsumed rest kept in front of the next piece).
    fn decode_in_pieces(
        input: &[u8],
        cut: usize,
    ) -> Result<(Vec<u8>, Option<usize>), ChunkedError> {
        let mut decoder = ChunkedDecoder::new();
        let mut data = Vec::new();
        let (mut at, mut avail) = (0, cut.min(input.len()));
        loop {
            match decoder.step(&input[at..avail])? {
                Step::Data(n) => {
                    data.extend_from_slice(&input[at..at + n]);
                    at += n;
                }
                Step::Framing(n) => at += n,
                Step::Done(n) => return Ok((data, Some(at + n))),
                Step::NeedMore if avail == input.len() => return Ok((data, None)),
                Step::NeedMore => avail = (avail + cut).min(input.len()),
            }
        }
    }

    proptest! {
        #[test]
        fn encoded_bodies_decode_whole_at_any_cut(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8),
            cut in 1usize..64,
        ) {
            let refs: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
            let wire = encode(&refs);
            let (data, used) = decode_in_pieces(&wire, cut).unwrap();
            prop_assert_eq!(data, chunks.concat());
            prop_assert_eq!(used, Some(wire.len()));
        }

        #[test]
        fn any_bytes_never_panic_and_cuts_agree(
            data in proptest::collection::vec(any::<u8>(), 0..400),
            cut in 1usize..32,
        ) {
            let whole = decode_all(&data);
            let pieces = decode_in_pieces(&data, cut);
            prop_assert_eq!(whole, pieces);
        }
    }
}
