//! The chunked body decoder: never panics; decoding the input whole and in
//! pieces of any size gives the same data, end and verdict; the body's end
//! lies within the input.
#![no_main]

use beacond::listener::http1::chunked::{decode_all, ChunkedDecoder, ChunkedError, Step};
use libfuzzer_sys::fuzz_target;

fn in_pieces(input: &[u8], cut: usize) -> Result<(Vec<u8>, Option<usize>), ChunkedError> {
    let mut decoder = ChunkedDecoder::new();
    let mut data = Vec::new();
    let (mut at, mut avail) = (0, cut.min(input.len()));
    loop {
        match decoder.step(&input[at..avail])? {
            Step::Data(n) => {
                assert!(n > 0 && at + n <= avail);
                data.extend_from_slice(&input[at..at + n]);
                at += n;
            }
            Step::Framing(n) => {
                assert!(n > 0 && at + n <= avail);
                at += n;
            }
            Step::Done(n) => {
                assert!(at + n <= avail);
                assert!(decoder.is_done());
                return Ok((data, Some(at + n)));
            }
            Step::NeedMore if avail == input.len() => return Ok((data, None)),
            Step::NeedMore => avail = (avail + cut).min(input.len()),
        }
    }
}

fuzz_target!(|input: (u8, &[u8])| {
    let (cut, data) = input;
    let whole = decode_all(data);
    if let Ok((body, Some(end))) = &whole {
        assert!(*end <= data.len() && body.len() < *end);
    }
    assert_eq!(whole, in_pieces(data, usize::from(cut) + 1));
});
