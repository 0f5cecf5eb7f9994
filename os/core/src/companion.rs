//! Policy `companion`: the message-log record, the snapshot file and the busy word.
//!
//! Everything here is bytes in, bytes out, so the formats and the reader's decisions (what is
//! the end of the log, what is corruption) are tested without processes. ARCHITECTURE.md
//! ("Companion policy") has the protocol these formats serve.
//!
//! **Message log** (one memfd per server, created and sealed against resizing by the kernel).
//! The server maps it and appends with plain stores — no system call per request — so the log
//! is *tamper-evident*, not out of the server's reach: every record is checksummed and carries
//! its index and the digest of the previous request's reply (a sequence chain), and the end of
//! the log is a checked word; a wild write into the log is found at the next replay and holds
//! the server. Layout: a header page, then a ring of `cap` bytes; log offsets are logical
//! (they only grow), offset `o` lives at `LOG_HEADER + o % cap`.
//!
//! ```text
//! header page:  0 magic u64 "TXCLOG02"   8 cap u64 (kernel, at creation)
//!              16 tail word u64 (server): end offset of the last complete record, checked
//!              24 accepted u64 (kernel): log offset of the newest checkpoint it accepted; the
//!                 writer may reuse ring bytes below it, never above
//! ```
//!
//! A record, little-endian, 8-byte aligned, never across the end of the ring (a record that
//! would cross it is preceded by a *pad* record (kind 2) filling the rest of the lap, or by
//! nothing if less than a header is left; a pad's index is the next request's):
//!
//! ```text
//!  0 magic u32 "TXCR"     4 flags u32 (bit 0: prev_digest is known; bits 8..16: the record's
//!                                     kind, 0 a request, 1 an outgoing call [`CallMeta`], 2 pad)
//!  8 len u32 (header + request, rounded up to 8)      12 crc u32 (crc32 of bytes 0..12 and 16..len)
//! 16 index u64 (1, 2, 3, ... over the life of the server; a checkpoint names the last it holds)
//! 24 chan u32   28 slot u32   32 seq u64              (the request's slot, as the kernel knows it)
//! 40 method u32 44 req_len u32
//! 48 prev_digest u64  digest of the reply of record index-1, as computed when it ran
//! 56 hcrc u32 (crc32 of bytes 0..12 and 16..56: the header alone)   60 reserved u32
//! 64 request bytes (req_len), zero padding to len
//! ```
//!
//! An **outgoing call record** (kind 1) follows the request whose handler made the call, one per
//! call, in the order they were made; it holds the callee's reply, so a replay answers the call
//! from it instead of sending it again. Same header and checksums; the fields say:
//!
//! ```text
//! 16 index u64 (the request's)  24 ordinal u32 (0, 1, ... within the request)  28 status u32
//! 32 call_digest u64 (of callee, method and request: a replay making another call diverges)
//! 40 method u32 (the callee's)  44 reply_len u32  48 0 u64  64 reply bytes
//! ```
//!
//! The writer copies a record past the tail, then stores the new tail word (one aligned 8-byte
//! store: never torn); only then does the handler run (or see the call's reply). So the log is
//! exactly `[start, tail)`: a writer killed while copying leaves bytes past the tail, which are
//! not log (their request never ran), and the next incarnation writes over them. The reader
//! demands that the records from the checkpoint's offset chain (consecutive indices, every
//! checksum) and end exactly at the tail; any failure — a flipped bit in a record, a tail word
//! that does not check, a tail that is not a record boundary — is **corruption**, reported with
//! its offset.
//!
//! **Snapshot** (one sealed memfd per checkpoint, written by the server's forked child):
//!
//! ```text
//!  0 magic u64 "TXCSNAP1"  8 format u32 (1)  12 state_version u32 (the server's Distill::VERSION)
//! 16 index u64  24 log_offset u64  32 payload_len u64  40 last_digest u64
//! 48 flags u32 (bit 0: last_digest known, bit 1: a delta)  52 payload_crc u32
//! 56 base_crc u32 (a delta: its base's payload_crc; a base: 0)  60 header_crc u32
//! 64 payload: the distilled state (postcard) ++ the runtime's section ++ its length u32
//! ```
//!
//! A **delta** (incremental checkpoint, [`Link::Delta`]) has the same header with flag bit 1 and
//! its base's payload checksum; its payload starts with its link, [`DELTA_LINK`] bytes (the
//! base's index u64, the index the delta starts after u64: the end of the chain it extends),
//! then the server's delta form (the changes since that index, postcard), then the runtime's
//! section. A **chain** is a base and the deltas after it, in order: each delta names the base
//! and starts exactly where the chain before it ends ([`check_next_link`]); restore applies them
//! in order.
//!
//! The **runtime's section** ([`join_payload`]) is what the companion itself must carry across
//! a checkpoint: the last call answered on each channel by call id ([`Answer`]), so that a
//! caller re-sending a call whose reply it had not recorded gets that reply again instead of a
//! second execution (ARCHITECTURE.md §16, "Calls between companion servers").

/// Size of a record header.
pub const RECORD_HEADER: usize = 64;
/// Size of a snapshot header.
pub const SNAPSHOT_HEADER: usize = 64;
/// Largest record the reader accepts (a request is at most 16 MiB).
pub const MAX_RECORD: u64 = (16 << 20) + 64;
/// Most requests the kernel remembers as skipped (poison or failed while held).
pub const MAX_SKIP: usize = 4096;
/// The log memfd's header page; the ring follows it.
pub const LOG_HEADER: usize = 4096;
/// Header word: magic.
pub const LOG_MAGIC_AT: usize = 0;
/// Header word: the ring's size.
pub const LOG_CAP_AT: usize = 8;
/// Header word: the tail word ([`tail_word`]), written by the server.
pub const LOG_TAIL_AT: usize = 16;
/// Header word: the offset of the newest accepted checkpoint, written by the kernel.
pub const LOG_ACCEPTED_AT: usize = 24;
/// Header word: a following standby's replica, `index + 1` of the last request it applied
/// (0: no replica), written by the standby as it applies; read by the kernel at a fault (the
/// replica's lag then) and by `ps`. A statistic only: nothing is decided by it (the server
/// maps this page too).
pub const LOG_REPLICA_AT: usize = 32;
/// Header word: with [`LOG_REPLICA_AT`], the log offset of the first record the replica has
/// not applied (written just before the index word; a reader may see a mixed pair: a
/// statistic only).
pub const LOG_REPLICA_OFFSET_AT: usize = 40;
/// Header word (its own cache line, away from the tail word the server stores per record): 1
/// while a following standby sleeps between two looks at the log, 0 while it works; written by
/// the standby, read on every append by the server, which swaps it to 0 and rings the standby's
/// bell (an eventfd every incarnation of the server shares) once the replica is
/// [`FOLLOW_WAKE_RECORDS`] records behind. A hint only: a lost or spurious ring costs one
/// wake-up or one timer period, and the server can scribble on it.
pub const LOG_FOLLOW_ASLEEP_AT: usize = 64;
/// How many records behind a sleeping following standby's replica may fall before the server
/// wakes it (and the standby replays at its own priority, not nice 19, once it is this far
/// behind): the bound on the lag a recovery replays, about 0.3 ms of replay of small records
/// (ARCHITECTURE.md §16, "Catch-up and log sizing").
pub const FOLLOW_WAKE_RECORDS: u64 = 1024;
/// The log's magic.
pub const LOG_MAGIC: u64 = u64::from_le_bytes(*b"TXCLOG02");
const TAIL_OFFSET_BITS: u32 = 48;

/// The tail word for a log ending at `end`: the offset in the low 48 bits, 16 bits of its
/// crc32 above (a stray write is caught with probability 1 - 2^-16, and the offset must also
/// fall on a record boundary the chain reaches).
pub fn tail_word(end: u64) -> u64 {
    let end = end & ((1 << TAIL_OFFSET_BITS) - 1);
    (u64::from(crc32fast::hash(&end.to_le_bytes()) & 0xFFFF) << TAIL_OFFSET_BITS) | end
}

/// The end offset a tail word names, if it checks.
pub fn decode_tail(word: u64) -> Option<u64> {
    let end = word & ((1 << TAIL_OFFSET_BITS) - 1);
    (tail_word(end) == word).then_some(end)
}

/// Where a record of `len` bytes appended at log offset `end` lands in a ring of `cap` bytes:
/// at `end`, or at the start of the next lap if it would cross the end of this one.
pub fn ring_place(end: u64, len: u64, cap: u64) -> u64 {
    let rem = cap - end % cap;
    if len <= rem { end } else { end + rem }
}

/// The physical byte ranges `(offset in the memfd, len)` holding log offsets `[from, to)`
/// (at most `cap` bytes: one range, or two if they wrap).
pub fn ring_ranges(from: u64, to: u64, cap: u64) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut pos = from;
    while pos < to {
        let at = pos % cap;
        let n = (cap - at).min(to - pos);
        out.push((LOG_HEADER + at as usize, n as usize));
        pos += n;
    }
    out
}

/// Appends a pad record of `len` bytes (header only: the rest of the lap is not covered by
/// its checksum) standing before request `index`, which follows it in the next lap.
pub fn encode_pad(index: u64, len: u64, out: &mut Vec<u8>) {
    let start = out.len();
    let meta = RecordMeta {
        index,
        chan: 0,
        slot: 0,
        seq: 0,
        method: 0,
        prev_digest: None,
    };
    encode_raw(KIND_PAD << KIND_SHIFT, &meta, &[], out);
    out[start + 8..start + 12].copy_from_slice(&(len as u32).to_le_bytes());
    let hcrc = header_crc(&out[start..start + 56]);
    out[start + 56..start + 60].copy_from_slice(&hcrc.to_le_bytes());
}

const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"TXCR");
const SNAPSHOT_MAGIC: u64 = u64::from_le_bytes(*b"TXCSNAP1");
const SNAPSHOT_FORMAT: u32 = 2;
const FLAG_DIGEST: u32 = 1;
/// Snapshot flag: a delta (its base's payload checksum at byte 56, its link at the head of the
/// payload).
const FLAG_DELTA: u32 = 2;
/// Bytes of a delta's link at the head of its payload: the base's index, then the index the
/// delta starts after.
pub const DELTA_LINK: usize = 16;
const KIND_SHIFT: u32 = 8;
const KIND_MASK: u32 = 0xFF << KIND_SHIFT;
const KIND_REQUEST: u32 = 0;
const KIND_CALL: u32 = 1;
const KIND_PAD: u32 = 2;

/// What a record says about its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordMeta {
    /// Position in the server's history, from 1.
    pub index: u64,
    /// The channel's index.
    pub chan: u32,
    /// The slot.
    pub slot: u32,
    /// The client's request number in that slot.
    pub seq: u64,
    /// Method number.
    pub method: u32,
    /// Digest of the reply of record `index - 1`, if the writer knew it.
    pub prev_digest: Option<u64>,
}

/// Appends the record of `request` to `out`.
pub fn encode_record(meta: &RecordMeta, request: &[u8], out: &mut Vec<u8>) {
    let flags = if meta.prev_digest.is_some() {
        FLAG_DIGEST
    } else {
        0
    };
    encode_raw(flags | KIND_REQUEST << KIND_SHIFT, meta, request, out);
}

/// What an outgoing call record says: the `ordinal`-th call made by the handler of request
/// `index`, and how the callee answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallMeta {
    /// The index of the request whose handler made the call.
    pub index: u64,
    /// Its position among that handler's calls, from 0.
    pub ordinal: u32,
    /// [`call_digest`] of the call as it was made.
    pub digest: u64,
    /// The callee's method number.
    pub method: u32,
    /// The reply's status (wire value).
    pub status: u32,
}

/// Appends the record of an outgoing call answered with `reply` to `out`.
pub fn encode_call_record(meta: &CallMeta, reply: &[u8], out: &mut Vec<u8>) {
    let raw = RecordMeta {
        index: meta.index,
        chan: meta.ordinal,
        slot: meta.status,
        seq: meta.digest,
        method: meta.method,
        prev_digest: None,
    };
    encode_raw(KIND_CALL << KIND_SHIFT, &raw, reply, out);
}

/// The digest of an outgoing call (callee, method, request) that replay compares.
pub fn call_digest(service: &str, method: u32, request: &[u8]) -> u64 {
    let mut h = crc32fast::Hasher::new();
    h.update(service.as_bytes());
    h.update(&[0]);
    h.update(&method.to_le_bytes());
    h.update(request);
    (u64::from(h.finalize()) << 32) | (request.len() as u64 & 0xFFFF_FFFF)
}

/// The header of the request record of `request` (what [`encode_record`] writes before the
/// request bytes and the zero padding to the record's length, [`record_len`]): so that a
/// writer can copy the header and the request where the record goes, with no copy of the
/// whole record in between.
pub fn record_header(meta: &RecordMeta, request: &[u8]) -> [u8; RECORD_HEADER] {
    let flags = if meta.prev_digest.is_some() {
        FLAG_DIGEST
    } else {
        0
    };
    raw_header(flags | KIND_REQUEST << KIND_SHIFT, meta, request)
}

/// The length of the record of a request of `request_len` bytes (header, request, zero
/// padding to a multiple of 8).
pub fn record_len(request_len: usize) -> usize {
    (RECORD_HEADER + request_len).next_multiple_of(8)
}

fn raw_header(flags: u32, meta: &RecordMeta, request: &[u8]) -> [u8; RECORD_HEADER] {
    let len = record_len(request.len());
    let mut h = [0u8; RECORD_HEADER];
    let mut put = |at: usize, b: &[u8]| h[at..at + b.len()].copy_from_slice(b);
    put(0, &RECORD_MAGIC.to_le_bytes());
    put(4, &flags.to_le_bytes());
    put(8, &(len as u32).to_le_bytes());
    // 12..16: the record's crc, below.
    put(16, &meta.index.to_le_bytes());
    put(24, &meta.chan.to_le_bytes());
    put(28, &meta.slot.to_le_bytes());
    put(32, &meta.seq.to_le_bytes());
    put(40, &meta.method.to_le_bytes());
    put(44, &(request.len() as u32).to_le_bytes());
    put(48, &meta.prev_digest.unwrap_or(0).to_le_bytes());
    let hcrc = header_crc(&h[..56]);
    h[56..60].copy_from_slice(&hcrc.to_le_bytes());
    // 60..64 reserved (zero). The record's crc: bytes 0..12 and 16..len, the request and its
    // zero padding included, taken from the pieces.
    let mut c = crc32fast::Hasher::new();
    c.update(&h[..12]);
    c.update(&h[16..]);
    c.update(request);
    c.update(&[0u8; 8][..len - RECORD_HEADER - request.len()]);
    h[12..16].copy_from_slice(&c.finalize().to_le_bytes());
    h
}

fn encode_raw(flags: u32, meta: &RecordMeta, request: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    let len = record_len(request.len());
    out.reserve(len);
    out.extend_from_slice(&raw_header(flags, meta, request));
    out.extend_from_slice(request);
    out.resize(start + len, 0);
}

fn record_crc(rec: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&rec[..12]);
    h.update(&rec[16..]);
    h.finalize()
}

fn header_crc(h: &[u8]) -> u32 {
    let mut c = crc32fast::Hasher::new();
    c.update(&h[..12]);
    c.update(&h[16..56]);
    c.finalize()
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// One record read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// Its header.
    pub meta: RecordMeta,
    /// The request bytes.
    pub request: &'a [u8],
    /// Log offset of the record.
    pub offset: u64,
    /// Log offset just after it.
    pub end: u64,
}

/// Why the log cannot be replayed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    /// A record inside a segment fails its checks.
    #[error(
        "message log record at offset {offset} (expected index {index}) is corrupt: {what}; the server is held rather than reconstituted from a log it cannot vouch for"
    )]
    Corrupt {
        /// Where.
        offset: u64,
        /// The index the reader expected there.
        index: u64,
        /// Which check failed.
        what: String,
    },
}

/// One outgoing call record read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallRecord<'a> {
    /// Its header.
    pub meta: CallMeta,
    /// The callee's reply bytes.
    pub reply: &'a [u8],
    /// Log offset of the record.
    pub offset: u64,
}

/// What [`read_log`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogScan<'a> {
    /// The valid request records, in order, indices consecutive.
    pub records: Vec<Record<'a>>,
    /// The outgoing call records, in order; each names a request of `records` (the one just
    /// before it in the log) and its ordinals run 0, 1, ... per request.
    pub calls: Vec<CallRecord<'a>>,
}

/// Reads the records in `bytes`, which hold the log from offset `base` to its tail (so
/// `base + bytes.len()` is the tail), in a ring of `cap` bytes. The first request record must
/// have index `first_index`; the records must end exactly at the tail.
pub fn read_log<'a>(
    bytes: &'a [u8],
    base: u64,
    cap: u64,
    first_index: u64,
) -> Result<LogScan<'a>, LogError> {
    let end = base + bytes.len() as u64;
    let mut scan = LogScan {
        records: Vec::new(),
        calls: Vec::new(),
    };
    // The request the next call record must belong to, and its next ordinal.
    let mut calls_of: Option<(u64, u32)> = None;
    let mut pos = base;
    let mut index = first_index;
    while pos < end {
        let corrupt = |what: String| LogError::Corrupt {
            offset: pos,
            index,
            what,
        };
        let lap_rem = cap - pos % cap;
        if lap_rem < RECORD_HEADER as u64 {
            // The writer skipped the end of the lap without a marker (no room for one).
            pos += lap_rem;
            continue;
        }
        if pos + RECORD_HEADER as u64 > end {
            return Err(corrupt(format!(
                "the tail ({end}) falls inside a record header"
            )));
        }
        let at = (pos - base) as usize;
        let h = &bytes[at..at + RECORD_HEADER];
        if u32_at(h, 0) != RECORD_MAGIC {
            return Err(corrupt("bad magic".into()));
        }
        if header_crc(h) != u32_at(h, 56) {
            return Err(corrupt("header checksum mismatch".into()));
        }
        let len = u64::from(u32_at(h, 8));
        if len < RECORD_HEADER as u64 || len % 8 != 0 || len > MAX_RECORD || len > lap_rem {
            return Err(corrupt(format!("impossible length {len}")));
        }
        let flags = u32_at(h, 4);
        if (flags & KIND_MASK) >> KIND_SHIFT == KIND_PAD {
            if len != lap_rem || u64_at(h, 16) != index {
                return Err(corrupt(format!(
                    "a pad of {len} bytes for index {} where {lap_rem} are left in the lap",
                    u64_at(h, 16)
                )));
            }
            pos += len;
            continue;
        }
        if pos + len > end {
            return Err(corrupt(format!("the record runs past the tail ({end})")));
        }
        let rec = &bytes[at..at + len as usize];
        let crc = u32_at(h, 12);
        if record_crc(rec) != crc {
            return Err(corrupt("checksum mismatch".into()));
        }
        let req_len = u64::from(u32_at(h, 44));
        if RECORD_HEADER as u64 + req_len > len {
            return Err(corrupt(format!("request length {req_len} past the record")));
        }
        let got = u64_at(h, 16);
        match (flags & KIND_MASK) >> KIND_SHIFT {
            KIND_REQUEST => {}
            KIND_CALL => {
                let ordinal = u32_at(h, 24);
                match calls_of {
                    Some((parent, next)) if parent == got && next == ordinal => {}
                    _ => {
                        return Err(corrupt(format!(
                            "outgoing call {ordinal} of request {got} out of order"
                        )));
                    }
                }
                calls_of = Some((got, ordinal + 1));
                scan.calls.push(CallRecord {
                    meta: CallMeta {
                        index: got,
                        ordinal,
                        digest: u64_at(h, 32),
                        method: u32_at(h, 40),
                        status: u32_at(h, 28),
                    },
                    reply: &rec[RECORD_HEADER..RECORD_HEADER + req_len as usize],
                    offset: pos,
                });
                pos += len;
                continue;
            }
            k => return Err(corrupt(format!("unknown record kind {k}"))),
        }
        if got != index {
            return Err(corrupt(format!("index {got} out of order")));
        }
        calls_of = Some((index, 0));
        scan.records.push(Record {
            meta: RecordMeta {
                index,
                chan: u32_at(h, 24),
                slot: u32_at(h, 28),
                seq: u64_at(h, 32),
                method: u32_at(h, 40),
                prev_digest: (flags & FLAG_DIGEST != 0).then(|| u64_at(h, 48)),
            },
            request: &rec[RECORD_HEADER..RECORD_HEADER + req_len as usize],
            offset: pos,
            end: pos + len,
        });
        index += 1;
        pos += len;
    }
    Ok(scan)
}

/// The digest of a reply (status and bytes) that replay compares: crc32 of both in the high
/// half, the length in the low half.
pub fn reply_digest(status: u32, reply: &[u8]) -> u64 {
    let mut h = crc32fast::Hasher::new();
    h.update(&status.to_le_bytes());
    h.update(reply);
    (u64::from(h.finalize()) << 32) | (reply.len() as u64 & 0xFFFF_FFFF)
}

/// What a snapshot header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// The server's `Distill::VERSION` when it was written.
    pub state_version: u32,
    /// The last logged request it includes (0: none).
    pub index: u64,
    /// Log offset just after that request's record.
    pub log_offset: u64,
    /// Digest of that request's reply.
    pub last_digest: Option<u64>,
}

/// Why a snapshot cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// It fails its checks.
    #[error(
        "snapshot is corrupt: {0}; the server is held rather than reconstituted from state it cannot vouch for"
    )]
    Corrupt(String),
    /// It was written by another version of the server's state.
    #[error(
        "snapshot holds state version {found}, the server reads version {expected}: start it with the binary that wrote it, or migrate the state"
    )]
    Version {
        /// In the snapshot.
        found: u32,
        /// What the server reads.
        expected: u32,
    },
}

/// The header of a snapshot of `payload`.
pub fn snapshot_header(meta: &SnapshotMeta, payload: &[u8]) -> [u8; SNAPSHOT_HEADER] {
    snapshot_header_of(meta, payload.len() as u64, crc32fast::hash(payload))
}

/// The checksum of a snapshot payload written in pieces (a checkpoint writer streams the
/// state into the snapshot file rather than building it in memory first).
#[derive(Clone, Debug)]
pub struct PayloadCrc {
    crc: crc32fast::Hasher,
    len: u64,
}

impl Default for PayloadCrc {
    fn default() -> Self {
        PayloadCrc {
            crc: crc32fast::Hasher::new(),
            len: 0,
        }
    }
}

impl PayloadCrc {
    /// Adds the next piece of the payload.
    pub fn update(&mut self, piece: &[u8]) {
        self.crc.update(piece);
        self.len += piece.len() as u64;
    }

    /// Bytes so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Nothing yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The header of a snapshot whose payload was the pieces given, in order: the same bytes
    /// [`snapshot_header`] gives for the whole payload.
    pub fn header(self, meta: &SnapshotMeta) -> [u8; SNAPSHOT_HEADER] {
        snapshot_header_of(meta, self.len, self.crc.finalize())
    }

    /// The header of a delta of the base whose payload checksum is `base_crc`, whose payload
    /// (its link first) was the pieces given.
    pub fn delta_header(self, meta: &SnapshotMeta, base_crc: u32) -> [u8; SNAPSHOT_HEADER] {
        let mut h = snapshot_header_of(meta, self.len, self.crc.finalize());
        let flags = u32_at(&h, 48) | FLAG_DELTA;
        h[48..52].copy_from_slice(&flags.to_le_bytes());
        h[56..60].copy_from_slice(&base_crc.to_le_bytes());
        let crc = crc32fast::hash(&h[..60]);
        h[60..64].copy_from_slice(&crc.to_le_bytes());
        h
    }
}

/// What a snapshot is in its chain (from a header that checked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// A full snapshot; `crc`: its payload checksum, by which its deltas name it.
    Base {
        /// Its payload checksum.
        crc: u32,
    },
    /// A delta of the base whose payload checksum is `base_crc`.
    Delta {
        /// The base's payload checksum.
        base_crc: u32,
    },
}

/// The kind of the snapshot whose header `h` passed [`check_snapshot_header`].
pub fn snapshot_link(h: &[u8]) -> Link {
    if u32_at(h, 48) & FLAG_DELTA != 0 {
        Link::Delta {
            base_crc: u32_at(h, 56),
        }
    } else {
        Link::Base { crc: u32_at(h, 52) }
    }
}

/// A delta's link (the head of its payload): the base's index, and the index it starts after.
pub fn encode_delta_link(base_index: u64, after: u64) -> [u8; DELTA_LINK] {
    let mut l = [0u8; DELTA_LINK];
    l[0..8].copy_from_slice(&base_index.to_le_bytes());
    l[8..16].copy_from_slice(&after.to_le_bytes());
    l
}

/// Splits a delta's payload into its link `(base index, index it starts after)` and the rest.
pub fn decode_delta_link(payload: &[u8]) -> Result<((u64, u64), &[u8]), SnapshotError> {
    if payload.len() < DELTA_LINK {
        return Err(SnapshotError::Corrupt(format!(
            "a delta of {} bytes, shorter than its link",
            payload.len()
        )));
    }
    Ok((
        (u64_at(payload, 0), u64_at(payload, 8)),
        &payload[DELTA_LINK..],
    ))
}

/// One link of a checkpoint chain as its header (and, for a delta, its link) describe it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainLink {
    /// Its header.
    pub meta: SnapshotMeta,
    /// Base or delta.
    pub link: Link,
    /// A delta's link: the base's index and the index it starts after (a base: its own index,
    /// twice).
    pub after: (u64, u64),
}

/// Checks that `next` may extend the chain that starts with `base` and ends with `end` (the
/// same link when the chain is a base alone): a delta of that very base (its checksum and
/// index), starting exactly where the chain ends, and ending later. Says what is wrong: a
/// delta of another base, a gap (or an overlap) in the chain, a link that goes backwards.
pub fn check_next_link(
    base: &ChainLink,
    end: &ChainLink,
    next: &ChainLink,
) -> Result<(), SnapshotError> {
    let Link::Base { crc } = base.link else {
        return Err(SnapshotError::Corrupt(
            "the checkpoint chain does not start with a full snapshot".into(),
        ));
    };
    let Link::Delta { base_crc } = next.link else {
        return Err(SnapshotError::Corrupt(
            "a full snapshot in the middle of a checkpoint chain".into(),
        ));
    };
    let (base_index, after) = next.after;
    if base_crc != crc || base_index != base.meta.index {
        return Err(SnapshotError::Corrupt(format!(
            "a delta of another base (base {base_index}, checksum {base_crc:#010x}; the chain's base is {} with {crc:#010x})",
            base.meta.index
        )));
    }
    if after != end.meta.index {
        return Err(SnapshotError::Corrupt(format!(
            "a gap in the checkpoint chain: the delta starts after request {after}, the chain ends at request {}",
            end.meta.index
        )));
    }
    if next.meta.index <= end.meta.index || next.meta.log_offset < end.meta.log_offset {
        return Err(SnapshotError::Corrupt(format!(
            "a delta that goes backwards (to request {} at offset {}, from {} at {})",
            next.meta.index, next.meta.log_offset, end.meta.index, end.meta.log_offset
        )));
    }
    Ok(())
}

/// The header of a snapshot whose payload has `len` bytes with crc32 `crc`.
fn snapshot_header_of(meta: &SnapshotMeta, len: u64, crc: u32) -> [u8; SNAPSHOT_HEADER] {
    let mut h = [0u8; SNAPSHOT_HEADER];
    h[0..8].copy_from_slice(&SNAPSHOT_MAGIC.to_le_bytes());
    h[8..12].copy_from_slice(&SNAPSHOT_FORMAT.to_le_bytes());
    h[12..16].copy_from_slice(&meta.state_version.to_le_bytes());
    h[16..24].copy_from_slice(&meta.index.to_le_bytes());
    h[24..32].copy_from_slice(&meta.log_offset.to_le_bytes());
    h[32..40].copy_from_slice(&len.to_le_bytes());
    h[40..48].copy_from_slice(&meta.last_digest.unwrap_or(0).to_le_bytes());
    let flags = if meta.last_digest.is_some() {
        FLAG_DIGEST
    } else {
        0
    };
    h[48..52].copy_from_slice(&flags.to_le_bytes());
    h[52..56].copy_from_slice(&crc.to_le_bytes());
    let crc = crc32fast::hash(&h[..60]);
    h[60..64].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Checks only the header of a snapshot (what the kernel does when it receives one): returns
/// its meta and the payload length.
pub fn check_snapshot_header(h: &[u8]) -> Result<(SnapshotMeta, u64), SnapshotError> {
    if h.len() < SNAPSHOT_HEADER {
        return Err(SnapshotError::Corrupt(format!(
            "{} bytes, shorter than its header",
            h.len()
        )));
    }
    if u64_at(h, 0) != SNAPSHOT_MAGIC {
        return Err(SnapshotError::Corrupt("bad magic".into()));
    }
    if crc32fast::hash(&h[..60]) != u32_at(h, 60) {
        return Err(SnapshotError::Corrupt("header checksum mismatch".into()));
    }
    if u32_at(h, 8) != SNAPSHOT_FORMAT {
        return Err(SnapshotError::Corrupt(format!(
            "unknown format {}",
            u32_at(h, 8)
        )));
    }
    let meta = SnapshotMeta {
        state_version: u32_at(h, 12),
        index: u64_at(h, 16),
        log_offset: u64_at(h, 24),
        last_digest: (u32_at(h, 48) & FLAG_DIGEST != 0).then(|| u64_at(h, 40)),
    };
    Ok((meta, u64_at(h, 32)))
}

/// Checks a whole snapshot (header, payload checksum, state version) and returns its meta and
/// payload.
pub fn decode_snapshot(
    bytes: &[u8],
    state_version: u32,
) -> Result<(SnapshotMeta, &[u8]), SnapshotError> {
    let (meta, len) = check_snapshot_header(bytes)?;
    let payload = &bytes[SNAPSHOT_HEADER..];
    if payload.len() as u64 != len {
        return Err(SnapshotError::Corrupt(format!(
            "payload of {} bytes, header says {len}",
            payload.len()
        )));
    }
    if crc32fast::hash(payload) != u32_at(bytes, 52) {
        return Err(SnapshotError::Corrupt("payload checksum mismatch".into()));
    }
    if meta.state_version != state_version {
        return Err(SnapshotError::Version {
            found: meta.state_version,
            expected: state_version,
        });
    }
    Ok((meta, payload))
}

/// The last call a companion server answered on one channel, by call id: a caller re-sending it
/// gets this reply again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The channel it came on.
    pub chan: u32,
    /// The call id: the caller's log offset of its request, and the call's ordinal in it.
    pub id: (u64, u32),
    /// The reply's status (wire value).
    pub status: u32,
    /// The reply.
    pub reply: Vec<u8>,
}

/// Builds a snapshot payload from the server's distilled state and the runtime's answers.
pub fn join_payload(state: &[u8], answers: &[Answer], out: &mut Vec<u8>) {
    out.extend_from_slice(state);
    answers_section(answers, out);
}

/// Appends the runtime's section of a snapshot payload (what follows the server's state:
/// the answers, then the section's length), as [`join_payload`] does.
pub fn answers_section(answers: &[Answer], out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&(answers.len() as u32).to_le_bytes());
    for a in answers {
        out.extend_from_slice(&a.chan.to_le_bytes());
        out.extend_from_slice(&a.id.0.to_le_bytes());
        out.extend_from_slice(&a.id.1.to_le_bytes());
        out.extend_from_slice(&a.status.to_le_bytes());
        out.extend_from_slice(&(a.reply.len() as u32).to_le_bytes());
        out.extend_from_slice(&a.reply);
    }
    let section = (out.len() - start) as u32;
    out.extend_from_slice(&section.to_le_bytes());
}

/// Splits a snapshot payload (checksum already verified) into the server's state and the
/// runtime's answers.
pub fn split_payload(payload: &[u8]) -> Result<(&[u8], Vec<Answer>), SnapshotError> {
    let bad = |what: &str| SnapshotError::Corrupt(format!("runtime section: {what}"));
    if payload.len() < 8 {
        return Err(bad("missing"));
    }
    let section = u32_at(payload, payload.len() - 4) as usize;
    if section + 4 > payload.len() || section < 4 {
        return Err(bad("impossible length"));
    }
    let state_len = payload.len() - 4 - section;
    let mut b = &payload[state_len..payload.len() - 4];
    let mut take = |n: usize| -> Result<&[u8], SnapshotError> {
        if b.len() < n {
            return Err(bad("cut short"));
        }
        let (h, t) = b.split_at(n);
        b = t;
        Ok(h)
    };
    let count = u32::from_le_bytes(take(4)?.try_into().expect("4"));
    let mut answers = Vec::new();
    for _ in 0..count {
        let chan = u32::from_le_bytes(take(4)?.try_into().expect("4"));
        let off = u64::from_le_bytes(take(8)?.try_into().expect("8"));
        let ord = u32::from_le_bytes(take(4)?.try_into().expect("4"));
        let status = u32::from_le_bytes(take(4)?.try_into().expect("4"));
        let len = u32::from_le_bytes(take(4)?.try_into().expect("4")) as usize;
        let reply = take(len)?.to_vec();
        answers.push(Answer {
            chan,
            id: (off, ord),
            status,
            reply,
        });
    }
    if !b.is_empty() {
        return Err(bad("trailing bytes"));
    }
    Ok((&payload[..state_len], answers))
}

/// The status page's busy word while a companion server runs the request in `(chan, slot,
/// seq)`: the kernel charges a fault to that request (poison accounting). Bit 63 marks the
/// encoding; bit 62 is [`BUSY_IN_CALL`], bit 61 [`BUSY_CALLED`]; then 18 bits of channel, 8 of
/// slot, 35 of seq.
pub fn busy_word(chan: u32, slot: u32, seq: u64) -> u64 {
    (1 << 63)
        | (u64::from(chan & CHAN_MASK) << 43)
        | (u64::from(slot & 0xFF) << 35)
        | (seq & SEQ_MASK)
}

/// Busy-word flag: the handler is waiting for the reply of a call to another server. A fault
/// now is not the request's doing (the server waits on its callee, which has its own
/// recovery): it is not charged to the request, and the watchdog does not take the wait for
/// a hang of this server.
pub const BUSY_IN_CALL: u64 = 1 << 62;
/// Busy-word flag: the request's handler has sent (or, replaying, been answered) a call to
/// another server, whose effect stands at the callee whatever happens here. Such a request is
/// never failed alone as poison: the server is held (ARCHITECTURE.md §16).
pub const BUSY_CALLED: u64 = 1 << 61;

/// Mask of the channel bits a busy word keeps.
pub const CHAN_MASK: u32 = (1 << 18) - 1;

/// Mask of the seq bits a busy word keeps.
pub const SEQ_MASK: u64 = (1 << 35) - 1;

/// The request a busy word names: `(chan & CHAN_MASK, slot, seq & SEQ_MASK)`.
pub fn decode_busy(word: u64) -> Option<(u32, u32, u64)> {
    if word >> 63 != 1 {
        return None;
    }
    Some((
        ((word >> 43) & u64::from(CHAN_MASK)) as u32,
        ((word >> 35) & 0xFF) as u32,
        word & SEQ_MASK,
    ))
}

/// Whether a companion server's busy word says it waits in a call to another server.
pub fn busy_in_call(word: u64) -> bool {
    word >> 63 == 1 && word & BUSY_IN_CALL != 0
}

/// Whether a companion server's busy word says its request has made calls to other servers.
pub fn busy_called(word: u64) -> bool {
    word >> 63 == 1 && word & BUSY_CALLED != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(index: u64) -> RecordMeta {
        RecordMeta {
            index,
            chan: 3,
            slot: 1,
            seq: 100 + index,
            method: 2,
            prev_digest: (index > 1).then_some(index * 7),
        }
    }

    const CAP: u64 = 1 << 20;

    /// Appends records 1..=n the way the runtime does, into a ring of `cap` bytes starting at
    /// log offset `from`; returns the ring (without the header page) and the tail.
    fn make_ring(n: u64, cap: u64, from: u64) -> (Vec<u8>, u64) {
        let mut ring = vec![0xA5u8; cap as usize];
        let mut end = from;
        for i in 1..=n {
            let mut rec = Vec::new();
            encode_record(&meta(i), &vec![i as u8; (i * 13) as usize], &mut rec);
            let at = ring_place(end, rec.len() as u64, cap);
            if at != end && at - end >= RECORD_HEADER as u64 {
                let mut pad = Vec::new();
                encode_pad(i, at - end, &mut pad);
                let p = (end % cap) as usize;
                ring[p..p + pad.len()].copy_from_slice(&pad);
            }
            let p = (at % cap) as usize;
            ring[p..p + rec.len()].copy_from_slice(&rec);
            end = at + rec.len() as u64;
        }
        (ring, end)
    }

    fn linear(ring: &[u8], from: u64, to: u64, cap: u64) -> Vec<u8> {
        let mut out = Vec::new();
        for (at, n) in ring_ranges(from, to, cap) {
            let at = at - LOG_HEADER;
            out.extend_from_slice(&ring[at..at + n]);
        }
        out
    }

    #[test]
    fn records_roundtrip() {
        let (ring, tail) = make_ring(5, CAP, 0);
        let bytes = linear(&ring, 0, tail, CAP);
        let scan = read_log(&bytes, 0, CAP, 1).unwrap();
        assert_eq!(scan.records.len(), 5);
        for (i, r) in scan.records.iter().enumerate() {
            let i = i as u64 + 1;
            assert_eq!(r.meta, meta(i));
            assert_eq!(r.request, &vec![i as u8; (i * 13) as usize][..]);
        }
        // From the middle.
        let third = scan.records[2].offset;
        let scan = read_log(&bytes[third as usize..], third, CAP, 3).unwrap();
        assert_eq!(scan.records.len(), 3);
    }

    #[test]
    fn records_wrap_around_the_ring_with_and_without_a_pad() {
        // Every starting point across a lap end: a pad where a header fits, nothing where not.
        let cap = 4096u64;
        for from in (cap - 400..cap + 8).step_by(8) {
            let (ring, tail) = make_ring(6, cap, from);
            assert!(tail - from <= cap);
            let bytes = linear(&ring, from, tail, cap);
            let scan = read_log(&bytes, from, cap, 1).unwrap();
            assert_eq!(scan.records.len(), 6, "from {from}");
            for (i, r) in scan.records.iter().enumerate() {
                assert_eq!(r.request, &vec![i as u8 + 1; (i + 1) * 13][..]);
                assert!(
                    r.offset / cap == (r.end - 1) / cap,
                    "no record crosses a lap"
                );
            }
        }
    }

    #[test]
    fn the_log_ends_at_the_tail_and_what_lies_past_it_is_not_read() {
        let (ring, tail) = make_ring(4, CAP, 0);
        // A writer killed while copying record 5 leaves bytes past the tail: not read.
        let bytes = linear(&ring, 0, tail, CAP);
        let scan = read_log(&bytes, 0, CAP, 1).unwrap();
        assert_eq!(scan.records.len(), 4);
        // A tail that is not a record boundary (a wild write in the tail word that passed its
        // check) is corruption, never a shorter log.
        let r4 = scan.records[3];
        for t in (r4.offset + 8..r4.end).step_by(8) {
            assert!(
                read_log(&linear(&ring, 0, t, CAP), 0, CAP, 1).is_err(),
                "tail {t}"
            );
        }
        // The tail word.
        for end in [0, 8, 4096, 1 << 40] {
            assert_eq!(decode_tail(tail_word(end)), Some(end));
        }
        let w = tail_word(tail);
        let caught = (0..64)
            .filter(|b| decode_tail(w ^ (1 << b)).is_none())
            .count();
        assert_eq!(caught, 64, "every flipped bit of the tail word is caught");
        assert_eq!(decode_tail(0), None);
    }

    #[test]
    fn corruption_before_the_tail_is_an_error() {
        let (ring, tail) = make_ring(4, CAP, 0);
        let bytes = linear(&ring, 0, tail, CAP);
        let recs = read_log(&bytes, 0, CAP, 1).unwrap().records;
        for at in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[at] ^= 0x10;
            // Every flipped bit is caught, in the record that holds it (the length too: the
            // header has its own checksum).
            match read_log(&bad, 0, CAP, 1) {
                Err(LogError::Corrupt { offset, .. }) => {
                    let rec = recs
                        .iter()
                        .find(|r| r.offset <= at as u64 && (at as u64) < r.end);
                    assert_eq!(Some(offset), rec.map(|r| r.offset), "byte {at}");
                }
                Ok(_) => panic!("byte {at} flipped went unnoticed"),
            }
        }
        assert!(read_log(&bytes, 0, CAP, 2).is_err(), "index out of order");
        // A stale lap's records (older indices) where the chain expects new ones.
        assert!(read_log(&bytes, 0, CAP, 9).is_err());
    }

    /// A log where request 2 made two outgoing calls and request 3 one.
    fn log_with_calls() -> (Vec<u8>, Vec<CallMeta>) {
        let mut out = Vec::new();
        let mut calls = Vec::new();
        for i in 1..=4u64 {
            encode_record(&meta(i), &[i as u8; 5], &mut out);
            let n = match i {
                2 => 2,
                3 => 1,
                _ => 0,
            };
            for k in 0..n {
                let c = CallMeta {
                    index: i,
                    ordinal: k,
                    digest: call_digest("account-0", 1, &[k as u8; 3]),
                    method: 1,
                    status: 0,
                };
                encode_call_record(&c, &[7; 11], &mut out);
                calls.push(c);
            }
        }
        (out, calls)
    }

    #[test]
    fn outgoing_call_records_roundtrip_in_order_of_their_request() {
        let (bytes, calls) = log_with_calls();
        let scan = read_log(&bytes, 0, CAP, 1).unwrap();
        assert_eq!(scan.records.len(), 4);
        assert_eq!(scan.calls.iter().map(|c| c.meta).collect::<Vec<_>>(), calls);
        assert!(scan.calls.iter().all(|c| c.reply == [7; 11]));
        // Each call record lies between its request's record and the next request's.
        for c in &scan.calls {
            let r = &scan.records[c.meta.index as usize - 1];
            assert!(c.offset >= r.end);
            if let Some(next) = scan.records.get(c.meta.index as usize) {
                assert!(c.offset < next.offset);
            }
        }
        assert_ne!(
            call_digest("account-0", 1, b"x"),
            call_digest("account-1", 1, b"x")
        );
        assert_ne!(call_digest("a", 1, b"x"), call_digest("a", 2, b"x"));
        // Every flipped bit is still caught.
        for at in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[at] ^= 0x04;
            assert!(read_log(&bad, 0, CAP, 1).is_err(), "byte {at}");
        }
        // A call record of another request, or out of order, is corruption.
        let mut wrong = Vec::new();
        encode_record(&meta(1), b"r", &mut wrong);
        let mut c = calls[0];
        c.index = 1;
        c.ordinal = 1;
        encode_call_record(&c, b"", &mut wrong);
        assert!(read_log(&wrong, 0, CAP, 1).is_err());
        let mut orphan = Vec::new();
        encode_call_record(&calls[0], b"", &mut orphan);
        assert!(read_log(&orphan, 0, CAP, 2).is_err());
    }

    #[test]
    fn a_call_record_past_the_tail_is_not_log() {
        let (bytes, _) = log_with_calls();
        let scan = read_log(&bytes, 0, CAP, 1).unwrap();
        let last_call = scan.calls.last().unwrap().offset;
        // Its writer died copying it: the tail is still before it.
        let scan = read_log(&bytes[..last_call as usize], 0, CAP, 1).unwrap();
        assert_eq!(scan.calls.len(), 2);
        // A tail inside it is corruption.
        assert!(read_log(&bytes[..last_call as usize + 72], 0, CAP, 1).is_err());
    }

    #[test]
    fn answers_travel_in_the_snapshot_payload() {
        let answers = vec![
            Answer {
                chan: 3,
                id: (4096, 1),
                status: 0,
                reply: vec![1, 2, 3],
            },
            Answer {
                chan: 9,
                id: (u64::MAX, 0),
                status: 5,
                reply: Vec::new(),
            },
        ];
        for state in [&b""[..], b"state bytes"] {
            let mut p = Vec::new();
            join_payload(state, &answers, &mut p);
            let (s, a) = split_payload(&p).unwrap();
            assert_eq!(s, state);
            assert_eq!(a, answers);
            for cut in 0..p.len() {
                // Cut anywhere: never a panic, never a wrong answer passed as right.
                if let Ok((s2, a2)) = split_payload(&p[..cut]) {
                    assert!(s2 != state || a2 != answers);
                }
            }
        }
    }

    #[test]
    fn snapshots_roundtrip_and_corruption_is_caught() {
        let payload = b"some distilled state".to_vec();
        let m = SnapshotMeta {
            state_version: 3,
            index: 77,
            log_offset: 4096,
            last_digest: Some(5),
        };
        let mut snap = snapshot_header(&m, &payload).to_vec();
        snap.extend_from_slice(&payload);
        let (back, p) = decode_snapshot(&snap, 3).unwrap();
        assert_eq!(back, m);
        assert_eq!(p, &payload[..]);
        assert!(matches!(
            decode_snapshot(&snap, 4),
            Err(SnapshotError::Version {
                found: 3,
                expected: 4
            })
        ));
        for at in 0..snap.len() {
            let mut bad = snap.clone();
            bad[at] ^= 1;
            assert!(decode_snapshot(&bad, 3).is_err(), "byte {at}");
        }
        assert!(decode_snapshot(&snap[..snap.len() - 1], 3).is_err());
    }

    #[test]
    fn a_checkpoint_chain_is_checked_link_by_link() {
        let meta = |index: u64| SnapshotMeta {
            state_version: 1,
            index,
            log_offset: index * 100,
            last_digest: Some(index),
        };
        // A base at 10, a delta 10 → 20, written as a writer does.
        let base_payload = b"the whole state".to_vec();
        let mut base = snapshot_header(&meta(10), &base_payload).to_vec();
        base.extend_from_slice(&base_payload);
        let (bm, _) = check_snapshot_header(&base).unwrap();
        let base_crc = crc32fast::hash(&base_payload);
        assert_eq!(snapshot_link(&base), Link::Base { crc: base_crc });
        let mut crc = PayloadCrc::default();
        let link = encode_delta_link(10, 10);
        crc.update(&link);
        crc.update(b"changes");
        let mut delta = crc.delta_header(&meta(20), base_crc).to_vec();
        delta.extend_from_slice(&link);
        delta.extend_from_slice(b"changes");
        let (dm, payload) = decode_snapshot(&delta, 1).unwrap();
        assert_eq!(dm, meta(20));
        assert_eq!(snapshot_link(&delta), Link::Delta { base_crc });
        let (after, rest) = decode_delta_link(payload).unwrap();
        assert_eq!((after, rest), ((10, 10), &b"changes"[..]));
        // Every bit of a delta is covered (header checksum, payload checksum).
        for at in 0..delta.len() {
            let mut bad = delta.clone();
            bad[at] ^= 1;
            assert!(decode_snapshot(&bad, 1).is_err(), "byte {at}");
        }
        let b = ChainLink {
            meta: bm,
            link: snapshot_link(&base),
            after: (10, 10),
        };
        let d = ChainLink {
            meta: dm,
            link: snapshot_link(&delta),
            after,
        };
        check_next_link(&b, &b, &d).unwrap();
        // The next delta, 20 → 30, extends the chain that ends with `d`.
        let d2 = ChainLink {
            meta: meta(30),
            after: (10, 20),
            ..d
        };
        check_next_link(&b, &d, &d2).unwrap();
        let err = |r: Result<(), SnapshotError>| r.unwrap_err().to_string();
        // A gap: 20 → 30 straight after the base.
        assert!(err(check_next_link(&b, &b, &d2)).contains("a gap in the checkpoint chain"));
        // An overlap is a gap too: 10 → 20 again after `d`.
        assert!(err(check_next_link(&b, &d, &d)).contains("a gap"));
        // A delta of another base: another checksum, or another index.
        let other = ChainLink {
            link: Link::Delta {
                base_crc: base_crc ^ 1,
            },
            ..d
        };
        assert!(err(check_next_link(&b, &b, &other)).contains("a delta of another base"));
        let other = ChainLink {
            after: (9, 10),
            ..d
        };
        assert!(err(check_next_link(&b, &b, &other)).contains("a delta of another base"));
        // Backwards, a base in the middle, a delta with no base.
        let back = ChainLink {
            meta: meta(10),
            ..d
        };
        assert!(err(check_next_link(&b, &b, &back)).contains("goes backwards"));
        assert!(err(check_next_link(&b, &b, &b)).contains("in the middle"));
        assert!(err(check_next_link(&d, &d, &d2)).contains("does not start with a full"));
        assert!(decode_delta_link(&link[..15]).is_err());
    }

    #[test]
    fn a_payload_checksummed_in_pieces_gives_the_same_header() {
        let m = SnapshotMeta {
            state_version: 1,
            index: 9,
            log_offset: 8192,
            last_digest: None,
        };
        let state: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let answers = vec![Answer {
            chan: 2,
            id: (4096, 1),
            status: 0,
            reply: b"ok".to_vec(),
        }];
        let mut whole = Vec::new();
        join_payload(&state, &answers, &mut whole);
        let mut crc = PayloadCrc::default();
        assert!(crc.is_empty());
        for piece in state.chunks(333) {
            crc.update(piece);
        }
        let mut section = Vec::new();
        answers_section(&answers, &mut section);
        crc.update(&section);
        assert_eq!(crc.len(), whole.len() as u64);
        let h = crc.header(&m);
        assert_eq!(h, snapshot_header(&m, &whole));
        let mut snap = h.to_vec();
        snap.extend_from_slice(&whole);
        let (_, p) = decode_snapshot(&snap, 1).unwrap();
        assert_eq!(split_payload(p).unwrap(), (&state[..], answers));
    }

    #[test]
    fn busy_words() {
        let w = busy_word(5, 255, (1 << 40) + 9);
        assert_eq!(decode_busy(w), Some((5, 255, ((1 << 40) + 9) & SEQ_MASK)));
        assert!(!busy_in_call(w) && !busy_called(w));
        // The flags leave the request the word names as it was.
        let f = w | BUSY_IN_CALL | BUSY_CALLED;
        assert_eq!(decode_busy(f), decode_busy(w));
        assert!(busy_in_call(f) && busy_called(f));
        assert!(busy_called(w | BUSY_CALLED) && !busy_in_call(w | BUSY_CALLED));
        let big = busy_word(CHAN_MASK + 7, 3, SEQ_MASK);
        assert_eq!(decode_busy(big), Some((6, 3, SEQ_MASK)));
        assert!(!busy_in_call(big) && !busy_called(big));
        assert!(!busy_in_call(BUSY_IN_CALL) && !busy_called(BUSY_CALLED));
        assert_eq!(decode_busy(17), None);
        assert_eq!(decode_busy(0), None);
        assert_ne!(reply_digest(0, b"a"), reply_digest(1, b"a"));
        assert_ne!(reply_digest(0, b"a"), reply_digest(0, b"b"));
    }
}
