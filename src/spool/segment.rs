//! The spool's on-disk format: segment files of checksummed records.
//!
//! Owns the bytes on disk and nothing else: encoding and decoding records,
//! creating, appending to, reading and scanning segment files. No threads, no
//! policy; `spool::Spool` decides when to write, read and delete.
//!
//! ```text
//! segment file  = header record*
//! header        = "BCNSPOOL" (8 bytes) | version u32 LE (1 or 2) | reserved u32 (0)
//! record        = body_len u32 LE | crc32c(body) u32 LE | body
//! body (v2)     = appended_unix_ms u64 LE | role u8 | topic_len u8 | topic
//!                 | key_len u16 LE (0xFFFF: no key) | key | payload
//! body (v1)     = appended_unix_ms u64 LE | key_len u16 LE (0xFFFF: no key) | key | line
//! role          = 0 beacons (topic_len 0: `kafka.topic`) | 1 event | 2 event error
//!                 (topic_len 1..=249, the topic in UTF-8)
//! ```
//!
//! New segments are always written in version 2; version 1 segments (left by
//! an older beacond) are still read, and their records are beacons for the
//! configured topic. The version is per file: a segment never mixes them.
//!
//! A record is valid when its length fits the file and its checksum matches;
//! the first invalid record ends the readable part of a segment (a torn write
//! at power loss, or damage), and everything before it is kept.
//!
//! Must never: panic on any file contents, or read past a length it was given.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::fileops::{FileOps, OsFiles};

pub const SEGMENT_MAGIC: &[u8; 8] = b"BCNSPOOL";
/// The version new segments are written in.
pub const FORMAT_VERSION: u32 = 2;
/// The version before topics: read, never written.
pub const FORMAT_VERSION_1: u32 = 1;
pub const SEGMENT_HEADER_LEN: u64 = 16;
pub const RECORD_HEADER_LEN: u64 = 8;
/// The shortest body of either version: v1's timestamp and key length.
const MIN_BODY_LEN: usize = 10;
/// Larger bodies are treated as damage (no beacon comes near this).
pub const MAX_BODY_LEN: u32 = 16 << 20;
/// Kafka's limit on a topic name.
pub const MAX_TOPIC_LEN: usize = 249;
/// Longest key a record holds (`0xFFFF` means no key).
pub const MAX_KEY_LEN: usize = NO_KEY as usize - 1;
const NO_KEY: u16 = u16::MAX;

const ROLE_BEACONS: u8 = 0;
const ROLE_EVENT: u8 = 1;
const ROLE_EVENT_ERROR: u8 = 2;

/// Where a message goes. Beacons go to the configured `kafka.topic`, whose
/// name is not carried per message; events name their topic.
///
/// Defined here, the lowest layer that stores it, and re-exported by
/// `crate::sink` (the seam the request path uses), so neither imports the other's types in a circle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Destination<'a> {
    /// `kafka.topic`: accepted beacons.
    Beacons,
    /// A stream's topic: a valid event.
    Event { topic: &'a str },
    /// The error stream's topic: an error event for an invalid one.
    EventError { topic: &'a str },
}

impl<'a> Destination<'a> {
    /// The topic it names, `None` for beacons (the configured topic).
    pub fn topic(&self) -> Option<&'a str> {
        match *self {
            Destination::Beacons => None,
            Destination::Event { topic } | Destination::EventError { topic } => Some(topic),
        }
    }
}

/// Why a message cannot be stored (or sent): checked before anything is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("topic name of {0} bytes (1 to 249 allowed)")]
    TopicLength(usize),
    #[error("message key of {0} bytes (at most 65534 allowed)")]
    KeyTooLong(usize),
}

/// Checks that a message fits the record format (topic and key lengths).
pub fn check_record(destination: &Destination<'_>, key: Option<&[u8]>) -> Result<(), RecordError> {
    if let Some(topic) = destination.topic() {
        if topic.is_empty() || topic.len() > MAX_TOPIC_LEN {
            return Err(RecordError::TopicLength(topic.len()));
        }
    }
    match key {
        Some(k) if k.len() > MAX_KEY_LEN => Err(RecordError::KeyTooLong(k.len())),
        _ => Ok(()),
    }
}

/// One spooled message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpoolRecord<'a> {
    pub appended_unix_ms: u64,
    pub destination: Destination<'a>,
    pub key: Option<&'a [u8]>,
    pub payload: &'a [u8],
}

impl<'a> SpoolRecord<'a> {
    /// Appends the record (header and body, version 2) to `out`; returns its
    /// length. Nothing is written when the record does not fit the format.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<u64, RecordError> {
        check_record(&self.destination, self.key)?;
        let start = out.len();
        out.extend_from_slice(&[0; RECORD_HEADER_LEN as usize]);
        let body_start = out.len();
        out.extend_from_slice(&self.appended_unix_ms.to_le_bytes());
        let (role, topic) = match self.destination {
            Destination::Beacons => (ROLE_BEACONS, ""),
            Destination::Event { topic } => (ROLE_EVENT, topic),
            Destination::EventError { topic } => (ROLE_EVENT_ERROR, topic),
        };
        // Lengths checked above: topic <= 249, key <= 0xFFFE.
        out.push(role);
        out.push(topic.len() as u8);
        out.extend_from_slice(topic.as_bytes());
        match self.key {
            Some(k) => {
                out.extend_from_slice(&(k.len() as u16).to_le_bytes());
                out.extend_from_slice(k);
            }
            None => out.extend_from_slice(&NO_KEY.to_le_bytes()),
        }
        out.extend_from_slice(self.payload);
        let body_len = (out.len() - body_start) as u32;
        let crc = crc32c::crc32c(&out[body_start..]);
        out[start..start + 4].copy_from_slice(&body_len.to_le_bytes());
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
        Ok((out.len() - start) as u64)
    }

    /// Decodes a checksummed body of a segment of the given version.
    pub fn decode(body: &'a [u8], version: u32) -> Result<SpoolRecord<'a>, Damage> {
        match version {
            FORMAT_VERSION_1 => Self::decode_v1(body),
            FORMAT_VERSION => Self::decode_v2(body),
            _ => Err(Damage::BadBody),
        }
    }

    fn decode_v1(body: &'a [u8]) -> Result<SpoolRecord<'a>, Damage> {
        let (appended_unix_ms, rest) = take_u64(body)?;
        let (key, payload) = take_key(rest)?;
        Ok(SpoolRecord {
            appended_unix_ms,
            destination: Destination::Beacons,
            key,
            payload,
        })
    }

    fn decode_v2(body: &'a [u8]) -> Result<SpoolRecord<'a>, Damage> {
        let (appended_unix_ms, rest) = take_u64(body)?;
        let [role, topic_len, rest @ ..] = rest else {
            return Err(Damage::BadBody);
        };
        let topic_len = *topic_len as usize;
        if topic_len > rest.len() || topic_len > MAX_TOPIC_LEN {
            return Err(Damage::BadBody);
        }
        let (topic, rest) = rest.split_at(topic_len);
        let topic = std::str::from_utf8(topic).map_err(|_| Damage::BadBody)?;
        let destination = match (*role, topic_len) {
            (ROLE_BEACONS, 0) => Destination::Beacons,
            (ROLE_EVENT, 1..) => Destination::Event { topic },
            (ROLE_EVENT_ERROR, 1..) => Destination::EventError { topic },
            _ => return Err(Damage::BadBody),
        };
        let (key, payload) = take_key(rest)?;
        Ok(SpoolRecord {
            appended_unix_ms,
            destination,
            key,
            payload,
        })
    }
}

fn take_u64(bytes: &[u8]) -> Result<(u64, &[u8]), Damage> {
    let (head, rest) = bytes.split_first_chunk::<8>().ok_or(Damage::BadBody)?;
    Ok((u64::from_le_bytes(*head), rest))
}

/// `key_len u16 | key | rest`.
fn take_key(bytes: &[u8]) -> Result<(Option<&[u8]>, &[u8]), Damage> {
    let (len, rest) = bytes.split_first_chunk::<2>().ok_or(Damage::BadBody)?;
    let len = u16::from_le_bytes(*len);
    if len == NO_KEY {
        return Ok((None, rest));
    }
    let len = len as usize;
    if len > rest.len() {
        return Err(Damage::BadBody);
    }
    let (key, rest) = rest.split_at(len);
    Ok((Some(key), rest))
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

/// The segment being appended to. Its file I/O goes through a
/// [`FileOps`] (the operating system's, or a test's that fails on purpose).
#[derive(Debug)]
pub struct SegmentWriter {
    file: File,
    files: Arc<dyn FileOps>,
    path: PathBuf,
    id: u64,
    len: u64,
}

impl SegmentWriter {
    /// Creates a new, empty segment (fails if the file exists).
    pub fn create(dir: &Path, id: u64) -> Result<SegmentWriter, SegmentError> {
        Self::create_with(Arc::new(OsFiles), dir, id)
    }

    /// [`SegmentWriter::create`] through `files`. When the header cannot be
    /// written (a full disk), the file just created is removed again: a
    /// headerless file would make every later create of this id fail, and a
    /// restart set it aside as damaged.
    pub fn create_with(
        files: Arc<dyn FileOps>,
        dir: &Path,
        id: u64,
    ) -> Result<SegmentWriter, SegmentError> {
        let path = dir.join(segment_file_name(id));
        let io = |source| SegmentError::Io {
            path: path.clone(),
            source,
        };
        let mut file = files.create_new(&path).map_err(io)?;
        let mut header = [0u8; SEGMENT_HEADER_LEN as usize];
        header[..8].copy_from_slice(SEGMENT_MAGIC);
        header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        if let Err(source) = files.write_all(&mut file, &header) {
            drop(file);
            // If even this fails, the caller has moved on to the next id
            // anyway; a restart sets the leftover aside.
            let _ = files.remove_file(&path);
            return Err(io(source));
        }
        // The new file's directory entry must survive power loss too.
        super::sync_dir(dir);
        Ok(SegmentWriter {
            file,
            files,
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

    /// Appends encoded records in one write. When the write fails part way
    /// (a full disk), the file is cut back to where it was, so no torn record
    /// is left for a restart to count as damage.
    pub fn append(&mut self, encoded: &[u8]) -> Result<(), SegmentError> {
        if let Err(source) = self.files.write_all(&mut self.file, encoded) {
            let _ = self.files.set_len(&self.file, self.len);
            return Err(SegmentError::Io {
                path: self.path.clone(),
                source,
            });
        }
        self.len += encoded.len() as u64;
        Ok(())
    }

    /// Makes what was appended durable (fdatasync).
    pub fn sync(&self) -> Result<(), SegmentError> {
        self.files
            .sync_data(&self.file)
            .map_err(|source| SegmentError::Io {
                path: self.path.clone(),
                source,
            })
    }
}

/// Reads records from a segment by offset.
#[derive(Debug)]
pub struct SegmentReader {
    file: File,
    version: u32,
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
    /// Opens a segment and checks its header (version 1 or 2).
    pub fn open(path: &Path) -> Result<SegmentReader, SegmentError> {
        let file = File::open(path).map_err(|source| SegmentError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut header = [0u8; SEGMENT_HEADER_LEN as usize];
        let version = match file.read_exact_at(&mut header, 0) {
            Ok(()) if &header[..8] == SEGMENT_MAGIC => {
                u32::from_le_bytes([header[8], header[9], header[10], header[11]])
            }
            _ => 0,
        };
        if version != FORMAT_VERSION && version != FORMAT_VERSION_1 {
            return Err(SegmentError::BadHeader {
                path: path.to_path_buf(),
            });
        }
        Ok(SegmentReader { file, version })
    }

    /// The segment's format version (1 or 2).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Decodes a body [`SegmentReader::read_at`] read from this segment.
    pub fn decode<'b>(&self, body: &'b [u8]) -> Result<SpoolRecord<'b>, Damage> {
        SpoolRecord::decode(body, self.version)
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
        if len < MIN_BODY_LEN as u32 || len > MAX_BODY_LEN {
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
        self.decode(body)?;
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
                    scan.oldest_unix_ms = reader.decode(&body).ok().map(|r| r.appended_unix_ms);
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

/// The previous (version 1) format, written byte for byte as beacond wrote it
/// before records named their topic. Only for tests of the upgrade path
/// (unit and end to end); the service writes version 2 only.
#[doc(hidden)]
pub mod version_1 {
    /// A segment header: `"BCNSPOOL" | 1u32 LE | 0u32`.
    pub fn header() -> Vec<u8> {
        let mut h = super::SEGMENT_MAGIC.to_vec();
        h.extend_from_slice(&1u32.to_le_bytes());
        h.extend_from_slice(&0u32.to_le_bytes());
        h
    }

    /// A record: `body_len u32 | crc32c(body) u32 | body`, `body =
    /// appended_unix_ms u64 | key_len u16 (0xFFFF: none) | key | line`, all
    /// little-endian.
    pub fn record(appended_unix_ms: u64, key: Option<&[u8]>, line: &[u8]) -> Vec<u8> {
        let mut body = appended_unix_ms.to_le_bytes().to_vec();
        match key {
            Some(k) => {
                body.extend_from_slice(&(k.len() as u16).to_le_bytes());
                body.extend_from_slice(k);
            }
            None => body.extend_from_slice(&0xFFFFu16.to_le_bytes()),
        }
        body.extend_from_slice(line);
        let mut out = (body.len() as u32).to_le_bytes().to_vec();
        out.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("beacond-seg-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn line(i: u64) -> String {
        format!("?%7B%22i%22%3A{i}%7D;\thost\t{i}\t2026-11-28T00:00:00\t1.2.3.4\t\"ua\"")
    }

    fn record_to(i: u64, destination: Destination<'_>, key: Option<&[u8]>) -> Vec<u8> {
        let line = line(i);
        let mut out = Vec::new();
        SpoolRecord {
            appended_unix_ms: 1_000 + i,
            destination,
            key,
            payload: line.as_bytes(),
        }
        .encode(&mut out)
        .unwrap();
        out
    }

    fn record(i: u64, key: Option<&[u8]>) -> Vec<u8> {
        record_to(i, Destination::Beacons, key)
    }

    #[test]
    fn record_round_trip() {
        for key in [None, Some(&b""[..]), Some(&b"203.0.113.9"[..])] {
            for destination in [
                Destination::Beacons,
                Destination::Event {
                    topic: "eqiad.mediawiki.page_change",
                },
                Destination::EventError {
                    topic: "beacond.error.validation",
                },
            ] {
                let enc = record_to(7, destination, key);
                let body = &enc[8..];
                let len = u32::from_le_bytes(enc[0..4].try_into().unwrap());
                assert_eq!(len as usize, body.len());
                assert_eq!(
                    u32::from_le_bytes(enc[4..8].try_into().unwrap()),
                    crc32c::crc32c(body)
                );
                let r = SpoolRecord::decode(body, FORMAT_VERSION).unwrap();
                assert_eq!(r.key, key);
                assert_eq!(r.destination, destination);
                assert_eq!(r.appended_unix_ms, 1007);
                assert_eq!(r.payload, line(7).as_bytes());
            }
        }
    }

    #[test]
    fn v2_body_layout_is_as_documented() {
        let enc = record_to(1, Destination::Event { topic: "t.x" }, Some(b"k1"));
        let body = &enc[8..];
        assert_eq!(&body[..8], &1001u64.to_le_bytes());
        assert_eq!(body[8], 1, "role: event");
        assert_eq!(body[9], 3, "topic_len");
        assert_eq!(&body[10..13], b"t.x");
        assert_eq!(&body[13..15], &2u16.to_le_bytes());
        assert_eq!(&body[15..17], b"k1");
        assert_eq!(&body[17..], line(1).as_bytes());
        let beacon = record(1, None);
        assert_eq!(
            &beacon[8 + 8..8 + 12],
            &[0, 0, 0xFF, 0xFF],
            "beacons carry no topic"
        );
    }

    #[test]
    fn records_that_do_not_fit_are_refused_not_cut() {
        let long = "t".repeat(MAX_TOPIC_LEN + 1);
        let big_key = vec![b'k'; MAX_KEY_LEN + 1];
        let cases: [(Destination<'_>, Option<&[u8]>, RecordError); 4] = [
            (
                Destination::Event { topic: &long },
                None,
                RecordError::TopicLength(250),
            ),
            (
                Destination::EventError { topic: "" },
                None,
                RecordError::TopicLength(0),
            ),
            (
                Destination::Beacons,
                Some(&big_key),
                RecordError::KeyTooLong(65535),
            ),
            (
                Destination::Event { topic: "ok" },
                Some(&big_key),
                RecordError::KeyTooLong(65535),
            ),
        ];
        for (destination, key, want) in cases {
            let mut out = Vec::new();
            let r = SpoolRecord {
                appended_unix_ms: 0,
                destination,
                key,
                payload: b"x",
            };
            assert_eq!(r.encode(&mut out), Err(want));
            assert!(out.is_empty(), "nothing written");
        }
        let at_limit = "t".repeat(MAX_TOPIC_LEN);
        let key = vec![b'k'; MAX_KEY_LEN];
        let mut out = Vec::new();
        SpoolRecord {
            appended_unix_ms: 0,
            destination: Destination::Event { topic: &at_limit },
            key: Some(&key),
            payload: b"x",
        }
        .encode(&mut out)
        .unwrap();
        let r = SpoolRecord::decode(&out[8..], FORMAT_VERSION).unwrap();
        assert_eq!(r.destination.topic(), Some(at_limit.as_str()));
        assert_eq!(r.key.map(<[u8]>::len), Some(MAX_KEY_LEN));
    }

    #[test]
    fn malformed_v2_bodies_are_damage() {
        let mut good = record_to(1, Destination::Event { topic: "abc" }, None);
        let body = &mut good[8..];
        for (at, value) in [(8, 9u8), (9, 200), (9, 0)] {
            let mut b = body.to_vec();
            b[at] = value;
            assert_eq!(
                SpoolRecord::decode(&b, FORMAT_VERSION),
                Err(Damage::BadBody),
                "byte {at} = {value}"
            );
        }
        // A beacon record with a topic, a topic that is not UTF-8.
        let mut b = body.to_vec();
        b[8] = 0;
        assert_eq!(
            SpoolRecord::decode(&b, FORMAT_VERSION),
            Err(Damage::BadBody)
        );
        let mut b = body.to_vec();
        b[10] = 0xFF;
        assert_eq!(
            SpoolRecord::decode(&b, FORMAT_VERSION),
            Err(Damage::BadBody)
        );
        assert_eq!(
            SpoolRecord::decode(&body[..9], FORMAT_VERSION),
            Err(Damage::BadBody)
        );
        assert_eq!(SpoolRecord::decode(body, 3), Err(Damage::BadBody));
    }

    #[test]
    fn version_1_segments_are_read_as_beacons() {
        let dir = temp_dir("v1");
        let path = dir.join(segment_file_name(1));
        let mut bytes = version_1::header();
        for i in 0..20u64 {
            let key: Option<&[u8]> = if i % 2 == 0 {
                Some(b"198.51.100.7")
            } else {
                None
            };
            bytes.extend_from_slice(&version_1::record(5_000 + i, key, line(i).as_bytes()));
        }
        std::fs::write(&path, &bytes).unwrap();
        let r = SegmentReader::open(&path).unwrap();
        assert_eq!(r.version(), FORMAT_VERSION_1);
        let mut pos = SEGMENT_HEADER_LEN;
        let mut body = Vec::new();
        let mut n = 0;
        while let Some(span) = r.read_at(pos, bytes.len() as u64, &mut body).unwrap() {
            let rec = r.decode(&body).unwrap();
            assert_eq!(rec.destination, Destination::Beacons);
            assert_eq!(rec.appended_unix_ms, 5_000 + n);
            assert_eq!(rec.payload, line(n).as_bytes());
            let want: Option<&[u8]> = if n % 2 == 0 {
                Some(b"198.51.100.7")
            } else {
                None
            };
            assert_eq!(rec.key, want);
            pos = span.end;
            n += 1;
        }
        assert_eq!(n, 20);
        let scan = scan_segment(&path, 0).unwrap();
        assert_eq!(
            (scan.records, scan.damage, scan.oldest_unix_ms),
            (20, None, Some(5_000))
        );
        // Damage in a v1 segment: a torn tail and a flipped byte.
        let cut = bytes.len() - 3;
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let scan = scan_segment(&path, 0).unwrap();
        assert_eq!(scan.records, 19);
        assert_eq!(scan.damage.unwrap().1, Damage::TornBody);
        let rec_len = version_1::record(0, Some(b"198.51.100.7"), line(0).as_bytes()).len();
        let mut flipped = bytes.clone();
        flipped[SEGMENT_HEADER_LEN as usize + rec_len + 30] ^= 0x20;
        std::fs::write(&path, &flipped).unwrap();
        let scan = scan_segment(&path, 0).unwrap();
        assert_eq!(scan.records, 1);
        assert_eq!(scan.damage.unwrap().1, Damage::BadChecksum);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn new_segments_are_version_2() {
        let dir = temp_dir("v2hdr");
        let w = SegmentWriter::create(&dir, 1).unwrap();
        let bytes = std::fs::read(dir.join(segment_file_name(1))).unwrap();
        assert_eq!(&bytes[..8], b"BCNSPOOL");
        assert_eq!(&bytes[8..12], &2u32.to_le_bytes());
        assert_eq!(w.len(), SEGMENT_HEADER_LEN);
        // An unknown version is a bad header, not guessed at.
        let path = dir.join(segment_file_name(2));
        let mut h = version_1::header();
        h[8..12].copy_from_slice(&3u32.to_le_bytes());
        std::fs::write(&path, &h).unwrap();
        assert!(matches!(
            SegmentReader::open(&path),
            Err(SegmentError::BadHeader { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn write_then_read_back() {
        let dir = temp_dir("rw");
        let mut w = SegmentWriter::create(&dir, 3).unwrap();
        assert!(w.is_empty());
        let mut batch = Vec::new();
        for i in 0..100 {
            batch.extend_from_slice(&record_to(
                i,
                Destination::Event { topic: "ev" },
                Some(b"k"),
            ));
        }
        w.append(&batch).unwrap();
        w.sync().unwrap();
        let path = dir.join(segment_file_name(3));
        let r = SegmentReader::open(&path).unwrap();
        assert_eq!(r.version(), FORMAT_VERSION);
        let mut pos = SEGMENT_HEADER_LEN;
        let mut body = Vec::new();
        let mut n = 0;
        while let Some(span) = r.read_at(pos, w.len(), &mut body).unwrap() {
            let rec = r.decode(&body).unwrap();
            assert_eq!(rec.appended_unix_ms, 1000 + n);
            assert_eq!(rec.destination, Destination::Event { topic: "ev" });
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

            #[test]
            fn any_record_round_trips(
                role in 0u8..3,
                topic in prop_oneof![
                    prop::collection::vec(any::<char>(), 1..=62).prop_map(|c| c.into_iter().collect::<String>()),
                    "[a-zA-Z0-9._-]{1,249}",
                ],
                key in prop::option::of(prop::collection::vec(any::<u8>(), 0..300)),
                payload in prop::collection::vec(any::<u8>(), 0..4000),
                appended_unix_ms in any::<u64>(),
            ) {
                let destination = match role {
                    0 => Destination::Beacons,
                    1 => Destination::Event { topic: &topic },
                    _ => Destination::EventError { topic: &topic },
                };
                let record = SpoolRecord { appended_unix_ms, destination, key: key.as_deref(), payload: &payload };
                let mut out = Vec::new();
                let len = record.encode(&mut out).unwrap();
                prop_assert_eq!(len as usize, out.len());
                let body = &out[RECORD_HEADER_LEN as usize..];
                prop_assert_eq!(u32::from_le_bytes(out[4..8].try_into().unwrap()), crc32c::crc32c(body));
                prop_assert_eq!(SpoolRecord::decode(body, FORMAT_VERSION), Ok(record));
            }

            #[test]
            fn decoding_arbitrary_bodies_never_panics(body in prop::collection::vec(any::<u8>(), 0..600)) {
                let _ = SpoolRecord::decode(&body, FORMAT_VERSION);
                let _ = SpoolRecord::decode(&body, FORMAT_VERSION_1);
            }
        }
    }
}
