//! The spool's on-disk format: segment files of checksummed records.
//!
//! Owns the bytes on disk and nothing else: encoding and decoding records,
//! creating, appending to, reading and scanning segment files. No threads, no
//! policy; `spool::Spool` decides when to write, read and delete.
//!
//! ```text
//! segment file  = header record*
//! header        = "BCNSPOOL" (8 bytes) | version u32 LE (= 1) | reserved u32 (0)
//! record        = body_len u32 LE | crc32c(body) u32 LE | body
//! body          = appended_unix_ms u64 LE | key_len u16 LE (0xFFFF: no key) | key | line
//! ```
//!
//! A record is valid when its length fits the file and its checksum matches;
//! the first invalid record ends the readable part of a segment (a torn write
//! at power loss, or damage), and everything before it is kept.
//!
//! Must never: panic on any file contents, or read past a length it was given.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub const SEGMENT_MAGIC: &[u8; 8] = b"BCNSPOOL";
pub const FORMAT_VERSION: u32 = 1;
pub const SEGMENT_HEADER_LEN: u64 = 16;
pub const RECORD_HEADER_LEN: u64 = 8;
/// Body bytes before the key: timestamp and key length.
const BODY_FIXED_LEN: usize = 10;
/// Larger bodies are treated as damage (no beacon comes near this).
pub const MAX_BODY_LEN: u32 = 16 << 20;
const NO_KEY: u16 = u16::MAX;

/// One spooled line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpoolRecord<'a> {
    pub appended_unix_ms: u64,
    pub key: Option<&'a [u8]>,
    pub line: &'a [u8],
}

impl SpoolRecord<'_> {
    /// Appends the record (header and body) to `out`; returns its length.
    pub fn encode(&self, out: &mut Vec<u8>) -> u64 {
        let start = out.len();
        out.extend_from_slice(&[0; RECORD_HEADER_LEN as usize]);
        let body_start = out.len();
        out.extend_from_slice(&self.appended_unix_ms.to_le_bytes());
        match self.key {
            Some(k) => {
                let len = k.len().min(NO_KEY as usize - 1);
                out.extend_from_slice(&(len as u16).to_le_bytes());
                out.extend_from_slice(&k[..len]);
            }
            None => out.extend_from_slice(&NO_KEY.to_le_bytes()),
        }
        out.extend_from_slice(self.line);
        let body_len = (out.len() - body_start) as u32;
        let crc = crc32c::crc32c(&out[body_start..]);
        out[start..start + 4].copy_from_slice(&body_len.to_le_bytes());
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
        (out.len() - start) as u64
    }

    /// Decodes a checksummed body.
    pub fn decode(body: &[u8]) -> Result<SpoolRecord<'_>, Damage> {
        if body.len() < BODY_FIXED_LEN {
            return Err(Damage::BadBody);
        }
        let appended_unix_ms =
            u64::from_le_bytes(body[0..8].try_into().map_err(|_| Damage::BadBody)?);
        let key_len = u16::from_le_bytes([body[8], body[9]]);
        let rest = &body[BODY_FIXED_LEN..];
        let (key, line) = if key_len == NO_KEY {
            (None, rest)
        } else {
            let k = key_len as usize;
            if k > rest.len() {
                return Err(Damage::BadBody);
            }
            (Some(&rest[..k]), &rest[k..])
        };
        Ok(SpoolRecord {
            appended_unix_ms,
            key,
            line,
        })
    }
}

/// What is wrong at the end of a segment's readable part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Damage {
    #[error("record header cut short")]
    TornHeader,
    #[error("record length past the end of the file")]
    TornBody,
    #[error("record length out of range")]
    BadLength,
    #[error("checksum mismatch")]
    BadChecksum,
    #[error("record body malformed")]
    BadBody,
}

#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: not a beacond spool segment (bad header)")]
    BadHeader { path: PathBuf },
}

/// `segment-<id, 20 digits>.spool`: names sort in id order.
pub fn segment_file_name(id: u64) -> String {
    format!("segment-{id:020}.spool")
}

pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("segment-")?.strip_suffix(".spool")?;
    if digits.len() != 20 {
        return None;
    }
    digits.parse().ok()
}

/// The segment being appended to.
#[derive(Debug)]
pub struct SegmentWriter {
    file: File,
    path: PathBuf,
    id: u64,
    len: u64,
}

impl SegmentWriter {
    /// Creates a new, empty segment (fails if the file exists).
    pub fn create(dir: &Path, id: u64) -> Result<SegmentWriter, SegmentError> {
        let path = dir.join(segment_file_name(id));
        let io = |source| SegmentError::Io {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(io)?;
        let mut header = [0u8; SEGMENT_HEADER_LEN as usize];
        header[..8].copy_from_slice(SEGMENT_MAGIC);
        header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        file.write_all(&header).map_err(io)?;
        // The new file's directory entry must survive power loss too.
        super::sync_dir(dir);
        Ok(SegmentWriter {
            file,
            path,
            id,
            len: SEGMENT_HEADER_LEN,
        })
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// Bytes in the file, header included.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == SEGMENT_HEADER_LEN
    }

    /// Appends encoded records in one write.
    pub fn append(&mut self, encoded: &[u8]) -> Result<(), SegmentError> {
        self.file
            .write_all(encoded)
            .map_err(|source| SegmentError::Io {
                path: self.path.clone(),
                source,
            })?;
        self.len += encoded.len() as u64;
        Ok(())
    }

    /// Makes what was appended durable (fdatasync).
    pub fn sync(&self) -> Result<(), SegmentError> {
        self.file.sync_data().map_err(|source| SegmentError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

/// Reads records from a segment by offset.
#[derive(Debug)]
pub struct SegmentReader {
    file: File,
}

/// A record read from a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordSpan {
    /// Offset of the record's header in the file.
    pub offset: u64,
    /// Offset just past the record.
    pub end: u64,
}

impl SegmentReader {
    /// Opens a segment and checks its header.
    pub fn open(path: &Path) -> Result<SegmentReader, SegmentError> {
        let file = File::open(path).map_err(|source| SegmentError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut header = [0u8; SEGMENT_HEADER_LEN as usize];
        let ok = file.read_exact_at(&mut header, 0).is_ok()
            && &header[..8] == SEGMENT_MAGIC
            && header[8..12] == FORMAT_VERSION.to_le_bytes();
        if !ok {
            return Err(SegmentError::BadHeader {
                path: path.to_path_buf(),
            });
        }
        Ok(SegmentReader { file })
    }

    /// Reads the record at `offset` into `body`, not looking past `limit`
    /// (the length known to be written). `Ok(None)` at `limit`.
    pub fn read_at(
        &self,
        offset: u64,
        limit: u64,
        body: &mut Vec<u8>,
    ) -> Result<Option<RecordSpan>, Damage> {
        if offset >= limit {
            return Ok(None);
        }
        if limit - offset < RECORD_HEADER_LEN {
            return Err(Damage::TornHeader);
        }
        let mut header = [0u8; RECORD_HEADER_LEN as usize];
        self.file
            .read_exact_at(&mut header, offset)
            .map_err(|_| Damage::TornHeader)?;
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if len < BODY_FIXED_LEN as u32 || len > MAX_BODY_LEN {
            return Err(Damage::BadLength);
        }
        let end = offset + RECORD_HEADER_LEN + len as u64;
        if end > limit {
            return Err(Damage::TornBody);
        }
        body.clear();
        body.resize(len as usize, 0);
        self.file
            .read_exact_at(body, offset + RECORD_HEADER_LEN)
            .map_err(|_| Damage::TornBody)?;
        if crc32c::crc32c(body) != crc {
            return Err(Damage::BadChecksum);
        }
        SpoolRecord::decode(body)?;
        Ok(Some(RecordSpan { offset, end }))
    }
}

/// What a scan of a segment found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentScan {
    /// End of the last valid record: the readable part is `[header, valid_len)`.
    pub valid_len: u64,
    pub records: u64,
    /// Set when the file goes on past `valid_len`: where and why it stopped,
    /// and how many bytes are lost after it.
    pub damage: Option<(u64, Damage, u64)>,
    pub oldest_unix_ms: Option<u64>,
}

/// Reads a whole segment from `from` and reports its valid part.
pub fn scan_segment(path: &Path, from: u64) -> Result<SegmentScan, SegmentError> {
    let reader = SegmentReader::open(path)?;
    let file_len = reader
        .file
        .metadata()
        .map_err(|source| SegmentError::Io {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    let mut pos = from.max(SEGMENT_HEADER_LEN);
    let mut body = Vec::new();
    let mut scan = SegmentScan {
        valid_len: pos.min(file_len),
        records: 0,
        damage: None,
        oldest_unix_ms: None,
    };
    loop {
        match reader.read_at(pos, file_len, &mut body) {
            Ok(Some(span)) => {
                if scan.oldest_unix_ms.is_none() {
                    scan.oldest_unix_ms =
                        SpoolRecord::decode(&body).ok().map(|r| r.appended_unix_ms);
                }
                scan.records += 1;
                pos = span.end;
                scan.valid_len = pos;
            }
            Ok(None) => break,
            Err(damage) => {
                scan.damage = Some((pos, damage, file_len - pos));
                break;
            }
        }
    }
    Ok(scan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("beacond-seg-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn record(i: u64, key: Option<&[u8]>) -> Vec<u8> {
        let line =
            format!("?%7B%22i%22%3A{i}%7D;\thost\t{i}\t2026-11-28T00:00:00\t1.2.3.4\t\"ua\"");
        let mut out = Vec::new();
        SpoolRecord {
            appended_unix_ms: 1_000 + i,
            key,
            line: line.as_bytes(),
        }
        .encode(&mut out);
        out
    }

    #[test]
    fn record_round_trip() {
        for key in [None, Some(&b""[..]), Some(&b"203.0.113.9"[..])] {
            let enc = record(7, key);
            let body = &enc[8..];
            let len = u32::from_le_bytes(enc[0..4].try_into().unwrap());
            assert_eq!(len as usize, body.len());
            assert_eq!(
                u32::from_le_bytes(enc[4..8].try_into().unwrap()),
                crc32c::crc32c(body)
            );
            let r = SpoolRecord::decode(body).unwrap();
            assert_eq!(r.key, key);
            assert_eq!(r.appended_unix_ms, 1007);
            assert!(r.line.starts_with(b"?%7B"));
        }
    }

    #[test]
    fn write_then_read_back() {
        let dir = temp_dir("rw");
        let mut w = SegmentWriter::create(&dir, 3).unwrap();
        assert!(w.is_empty());
        let mut batch = Vec::new();
        for i in 0..100 {
            batch.extend_from_slice(&record(i, Some(b"k")));
        }
        w.append(&batch).unwrap();
        w.sync().unwrap();
        let path = dir.join(segment_file_name(3));
        let r = SegmentReader::open(&path).unwrap();
        let mut pos = SEGMENT_HEADER_LEN;
        let mut body = Vec::new();
        let mut n = 0;
        while let Some(span) = r.read_at(pos, w.len(), &mut body).unwrap() {
            let rec = SpoolRecord::decode(&body).unwrap();
            assert_eq!(rec.appended_unix_ms, 1000 + n);
            pos = span.end;
            n += 1;
        }
        assert_eq!(n, 100);
        let scan = scan_segment(&path, 0).unwrap();
        assert_eq!(scan.records, 100);
        assert_eq!(scan.valid_len, w.len());
        assert_eq!(scan.damage, None);
        assert_eq!(scan.oldest_unix_ms, Some(1000));
        // Creating the same segment again is refused.
        assert!(SegmentWriter::create(&dir, 3).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn torn_tail_keeps_what_precedes_it() {
        let dir = temp_dir("torn");
        let mut w = SegmentWriter::create(&dir, 1).unwrap();
        for i in 0..10 {
            w.append(&record(i, None)).unwrap();
        }
        let good_len = w.len();
        let partial = record(10, None);
        w.append(&partial[..partial.len() - 5]).unwrap();
        let scan = scan_segment(&dir.join(segment_file_name(1)), 0).unwrap();
        assert_eq!(scan.records, 10);
        assert_eq!(scan.valid_len, good_len);
        let (at, damage, lost) = scan.damage.unwrap();
        assert_eq!(
            (at, damage, lost),
            (good_len, Damage::TornBody, partial.len() as u64 - 5)
        );
        // A header cut short.
        let mut w = SegmentWriter::create(&dir, 2).unwrap();
        w.append(&record(0, None)).unwrap();
        w.append(&[1, 2, 3]).unwrap();
        let scan = scan_segment(&dir.join(segment_file_name(2)), 0).unwrap();
        assert_eq!(scan.records, 1);
        assert_eq!(scan.damage.unwrap().1, Damage::TornHeader);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn checksum_failure_is_detected() {
        let dir = temp_dir("crc");
        let mut w = SegmentWriter::create(&dir, 1).unwrap();
        let mut all = Vec::new();
        for i in 0..5 {
            all.extend_from_slice(&record(i, None));
        }
        w.append(&all).unwrap();
        let path = dir.join(segment_file_name(1));
        // Flip one byte inside the third record's line.
        let rec_len = record(0, None).len() as u64;
        let mut bytes = std::fs::read(&path).unwrap();
        let at = (SEGMENT_HEADER_LEN + 2 * rec_len + 20) as usize;
        bytes[at] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        let scan = scan_segment(&path, 0).unwrap();
        assert_eq!(scan.records, 2);
        assert_eq!(scan.damage.unwrap().1, Damage::BadChecksum);
        // A wild length.
        let mut bytes = std::fs::read(&path).unwrap();
        let at = SEGMENT_HEADER_LEN as usize;
        bytes[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        let scan = scan_segment(&path, 0).unwrap();
        assert_eq!(scan.records, 0);
        assert_eq!(scan.damage.unwrap().1, Damage::BadLength);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_header_and_names() {
        let dir = temp_dir("hdr");
        let path = dir.join(segment_file_name(9));
        std::fs::write(&path, b"not a segment at all").unwrap();
        assert!(matches!(
            SegmentReader::open(&path),
            Err(SegmentError::BadHeader { .. })
        ));
        assert_eq!(parse_segment_file_name(&segment_file_name(42)), Some(42));
        assert_eq!(parse_segment_file_name("segment-42.spool"), None);
        assert_eq!(parse_segment_file_name("ledger"), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn scanning_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..2000)) {
                let dir = temp_dir("prop");
                let mut w = SegmentWriter::create(&dir, 1).unwrap();
                w.append(&record(1, None)).unwrap();
                w.append(&bytes).unwrap();
                let scan = scan_segment(&dir.join(segment_file_name(1)), 0).unwrap();
                prop_assert!(scan.records >= 1);
                prop_assert!(scan.valid_len <= w.len());
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
    }
}
