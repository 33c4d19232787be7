//! The chunked transfer coding (RFC 9112 section 7.1), decoded step by step
//! from whatever bytes have arrived: size lines (with extensions, parsed by
//! `httparse::parse_chunk_size`), data, the CRLF after each chunk, and the
//! trailer section after the last one (skipped: nothing here reads
//! trailers).
//!
//! Bounds: a size line (extensions included) of at most [`MAX_LINE_BYTES`],
//! a trailer section of at most [`MAX_TRAILER_BYTES`]; data is handed out
//! as it arrives, never gathered, so the decoder needs no buffer of its own.
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
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        Self { state: State::Size }
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
            State::Size => match httparse::parse_chunk_size(input) {
                Ok(httparse::Status::Complete((n, size))) => {
                    if n > MAX_LINE_BYTES {
                        return Err(ChunkedError::LineTooLong);
                    }
                    self.state = if size == 0 {
                        State::Trailers { seen: 0 }
                    } else {
                        State::Data(size)
                    };
                    Ok(Step::Framing(n))
                }
                Ok(httparse::Status::Partial) if input.len() >= MAX_LINE_BYTES => {
                    Err(ChunkedError::LineTooLong)
                }
                Ok(httparse::Status::Partial) => Ok(Step::NeedMore),
                Err(_) => Err(ChunkedError::Size),
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
