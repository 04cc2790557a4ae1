//! The table's layout (docs/shared-memory.md gives every offset): the header, its parsing and
//! validation, a slot's words, the claim word and the stored names.
//!
//! Everything read from a segment is validated here before it is used: the header is parsed from a
//! copy of its bytes (`Header::parse`, fuzzed in the tests), and a slot's name is decoded with its
//! length checked against the room there is (`Slot::read_name`).

use crate::sync::{AtomicU64, Ordering};
use panelboard_engine::{Slots, Window};
use sha2::{Digest, Sha256};
use std::fmt;

/// `PSHMTAB1`, little-endian: the first word of every table, written last by its creator.
pub const MAGIC: u64 = u64::from_le_bytes(*b"PSHMTAB1");
pub const LAYOUT_VERSION: u64 = 5;
pub const HEADER_SIZE: usize = 4096;
pub const SLOT_SIZE: usize = 1088;
pub const MAX_CAPACITY: u64 = 1 << 20;
/// Names up to this many bytes are stored as they are; longer ones as a digest and a prefix.
pub const NAME_INLINE: usize = 128;
const NAME_WORDS: usize = NAME_INLINE / 8;
const DIGEST_BYTES: usize = 32;
const DIGEST_WORDS: usize = DIGEST_BYTES / 8;
/// Word of a long name's area holding its offset in the name heap (`NO_HEAP` when not stored).
const HEAP_OFFSET_WORD: usize = DIGEST_WORDS;
/// A long name's area: digest, heap offset, then the name's first bytes (for display).
const PREFIX_AT: usize = DIGEST_BYTES + 8;
pub const PREFIX_BYTES: usize = NAME_INLINE - PREFIX_AT;
pub const NO_HEAP: u64 = u64::MAX;
/// Bytes of long-name heap per slot, after the slots (names longer than 128 bytes are kept there
/// whole, so that every process can list them).
pub const NAME_HEAP_PER_SLOT: u64 = 256;
/// Counter stripes per slot (each a cache line): processes and threads count in different ones.
pub const STRIPES: usize = 8;

/// What the layout hash covers: change it (and the version) with any offset.
pub const LAYOUT_DESCRIPTION: &str = "panelboard shm v2: header 4096 [magic@0 version@8 \
header_size@16 slot_size@24 capacity@32 layout_hash@40 index_hash@48 creator_pid@56 \
created_at_ms@64 boot_id_len@72 boot_id@80..128 timens_len@128 timens@136..384 \
name_heap_used@384 next_lane@392]; slot 1088 [claim@0 state@8 probe_stamp@16 open_time@24 \
failure_threshold@32 reset_timeout_ms@40 half_open_max_calls@48 success_threshold@56 \
probe_timeout_ms@64 incarnation@72 times_opened@80 name_meta@88 options_seq@96 slow_call_ns@104 \
failure_rate@112 slow_call_rate@120 name@128..256 (long: sha256@0 heap_offset@32 prefix@40) \
window@256..496 (9 buckets; bucket words: generation 8 bits, index 26, count 30) window_us@496 \
min_calls@504 backoff@512 max_reset_timeout_ms@520 jitter@528 reserved@536..576 stripes@576..1088 x8 (successes failures ignored rejected)]; \
name heap capacity*256 after the slots";

// Header word offsets (bytes).
pub const OFF_MAGIC: usize = 0;
pub const OFF_VERSION: usize = 8;
pub const OFF_HEADER_SIZE: usize = 16;
pub const OFF_SLOT_SIZE: usize = 24;
pub const OFF_CAPACITY: usize = 32;
pub const OFF_LAYOUT_HASH: usize = 40;
pub const OFF_INDEX_HASH: usize = 48;
pub const OFF_CREATOR_PID: usize = 56;
pub const OFF_CREATED_AT: usize = 64;
pub const OFF_BOOT_ID_LEN: usize = 72;
pub const OFF_BOOT_ID: usize = 80;
pub const BOOT_ID_ROOM: usize = 48;
pub const OFF_TIMENS_LEN: usize = 128;
pub const OFF_TIMENS: usize = 136;
pub const TIMENS_ROOM: usize = 248;
/// Bytes of the name heap handed out so far (a bump pointer; may exceed the heap when full).
pub const OFF_NAME_HEAP_USED: usize = 384;
/// The next counter lane to hand out to a process attaching (or forked).
pub const OFF_NEXT_LANE: usize = 392;

/// FNV-1a, 64 bits: stable across builds and processes (the index of a name must be the same in
/// every process), and cheap.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

pub fn layout_hash() -> u64 {
    fnv1a(LAYOUT_DESCRIPTION.as_bytes())
}

/// How a name's home slot is chosen; stored in the header so that every process agrees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexHash {
    Fnv1a,
    /// Every name starts at slot 0: for tests that force collisions.
    Colliding,
}

impl IndexHash {
    fn code(self) -> u64 {
        match self {
            IndexHash::Fnv1a => 0,
            IndexHash::Colliding => 1,
        }
    }

    pub fn home(self, key: &[u8], capacity: usize) -> usize {
        match self {
            IndexHash::Fnv1a => (fnv1a(key) % capacity.max(1) as u64) as usize,
            IndexHash::Colliding => 0,
        }
    }
}

/// Why a segment was refused. Every message names the problem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LayoutError {
    Truncated { len: usize },
    NotInitialised,
    BadMagic(u64),
    Version(u64),
    HeaderSize(u64),
    SlotSize(u64),
    LayoutHash(u64),
    Capacity(u64),
    IndexHash(u64),
    FieldLength { field: &'static str, len: u64 },
    WrongSize { expected: u64, actual: u64 },
    OtherBoot,
    OtherTimeNamespace,
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LayoutError::Truncated { len } => write!(
                f,
                "truncated: {len} bytes, shorter than the {HEADER_SIZE}-byte header"
            ),
            LayoutError::NotInitialised => write!(
                f,
                "not initialised: its magic is still 0 (its creator died while creating it?); \
                 remove it with panelboard.unlink_shared()"
            ),
            LayoutError::BadMagic(m) => write!(
                f,
                "wrong magic {m:#018x}: not a panelboard table (expected {MAGIC:#018x})"
            ),
            LayoutError::Version(v) => write!(
                f,
                "unsupported layout version {v} (this panelboard reads version {LAYOUT_VERSION})"
            ),
            LayoutError::HeaderSize(s) => {
                write!(f, "wrong header size {s} (expected {HEADER_SIZE})")
            }
            LayoutError::SlotSize(s) => write!(f, "wrong slot size {s} (expected {SLOT_SIZE})"),
            LayoutError::LayoutHash(h) => write!(
                f,
                "wrong layout hash {h:#018x}: made by a panelboard with another slot layout"
            ),
            LayoutError::Capacity(c) => {
                write!(f, "invalid capacity {c} (must be 1 to {MAX_CAPACITY})")
            }
            LayoutError::IndexHash(c) => write!(f, "unknown index hash {c}"),
            LayoutError::FieldLength { field, len } => {
                write!(f, "corrupt header: {field} length {len} is out of range")
            }
            LayoutError::WrongSize { expected, actual } => write!(
                f,
                "wrong size: the file has {actual} bytes, its header says {expected}"
            ),
            LayoutError::OtherBoot => write!(
                f,
                "created before the last reboot (its boot id differs): its clock readings mean \
                 nothing now; remove it with panelboard.unlink_shared()"
            ),
            LayoutError::OtherTimeNamespace => write!(
                f,
                "created in another time namespace: its CLOCK_MONOTONIC is offset from this \
                 process's (/proc/self/timens_offsets differ), so open and retry times would be \
                 wrong; share tables only between processes of one time namespace"
            ),
        }
    }
}

/// The host identity a table records, so that processes whose monotonic clocks differ refuse it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClockIdentity {
    pub boot_id: Vec<u8>,
    pub timens_offsets: Vec<u8>,
}

/// A parsed, validated header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub capacity: u64,
    pub index_hash: IndexHash,
    pub creator_pid: u64,
    pub created_at_ms: u64,
    pub clock: ClockIdentity,
}

fn word_at(bytes: &[u8], offset: usize) -> u64 {
    let mut word = [0u8; 8];
    if let Some(b) = bytes.get(offset..offset + 8) {
        word.copy_from_slice(b);
    }
    u64::from_le_bytes(word)
}

fn put_word(bytes: &mut [u8], offset: usize, value: u64) {
    bytes[offset..offset + 8].copy_from_slice(&value.to_le_bytes());
}

impl Header {
    pub fn new(
        capacity: u64,
        index_hash: IndexHash,
        pid: u64,
        now_ms: u64,
        clock: ClockIdentity,
    ) -> Self {
        Header {
            capacity,
            index_hash,
            creator_pid: pid,
            created_at_ms: now_ms,
            clock,
        }
    }

    /// The header's bytes, magic included (the creator writes the magic word last).
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = vec![0u8; HEADER_SIZE];
        put_word(&mut bytes, OFF_MAGIC, MAGIC);
        put_word(&mut bytes, OFF_VERSION, LAYOUT_VERSION);
        put_word(&mut bytes, OFF_HEADER_SIZE, HEADER_SIZE as u64);
        put_word(&mut bytes, OFF_SLOT_SIZE, SLOT_SIZE as u64);
        put_word(&mut bytes, OFF_CAPACITY, self.capacity);
        put_word(&mut bytes, OFF_LAYOUT_HASH, layout_hash());
        put_word(&mut bytes, OFF_INDEX_HASH, self.index_hash.code());
        put_word(&mut bytes, OFF_CREATOR_PID, self.creator_pid);
        put_word(&mut bytes, OFF_CREATED_AT, self.created_at_ms);
        let boot = &self.clock.boot_id[..self.clock.boot_id.len().min(BOOT_ID_ROOM)];
        put_word(&mut bytes, OFF_BOOT_ID_LEN, boot.len() as u64);
        bytes[OFF_BOOT_ID..OFF_BOOT_ID + boot.len()].copy_from_slice(boot);
        let ns = &self.clock.timens_offsets[..self.clock.timens_offsets.len().min(TIMENS_ROOM)];
        put_word(&mut bytes, OFF_TIMENS_LEN, ns.len() as u64);
        bytes[OFF_TIMENS..OFF_TIMENS + ns.len()].copy_from_slice(ns);
        bytes
    }

    /// Parses and validates a header from any bytes (a copy of the segment's first page, possibly
    /// shorter, possibly garbage). Never panics.
    pub fn parse(bytes: &[u8]) -> Result<Header, LayoutError> {
        if bytes.len() < HEADER_SIZE {
            return Err(LayoutError::Truncated { len: bytes.len() });
        }
        let magic = word_at(bytes, OFF_MAGIC);
        if magic == 0 {
            return Err(LayoutError::NotInitialised);
        }
        if magic != MAGIC {
            return Err(LayoutError::BadMagic(magic));
        }
        let version = word_at(bytes, OFF_VERSION);
        if version != LAYOUT_VERSION {
            return Err(LayoutError::Version(version));
        }
        let header_size = word_at(bytes, OFF_HEADER_SIZE);
        if header_size != HEADER_SIZE as u64 {
            return Err(LayoutError::HeaderSize(header_size));
        }
        let slot_size = word_at(bytes, OFF_SLOT_SIZE);
        if slot_size != SLOT_SIZE as u64 {
            return Err(LayoutError::SlotSize(slot_size));
        }
        let hash = word_at(bytes, OFF_LAYOUT_HASH);
        if hash != layout_hash() {
            return Err(LayoutError::LayoutHash(hash));
        }
        let capacity = word_at(bytes, OFF_CAPACITY);
        if capacity == 0 || capacity > MAX_CAPACITY {
            return Err(LayoutError::Capacity(capacity));
        }
        let index_hash = match word_at(bytes, OFF_INDEX_HASH) {
            0 => IndexHash::Fnv1a,
            1 => IndexHash::Colliding,
            other => return Err(LayoutError::IndexHash(other)),
        };
        let text = |len_at: usize, at: usize, room: usize, field| {
            let len = word_at(bytes, len_at);
            if len > room as u64 {
                return Err(LayoutError::FieldLength { field, len });
            }
            Ok(bytes[at..at + len as usize].to_vec())
        };
        let boot_id = text(OFF_BOOT_ID_LEN, OFF_BOOT_ID, BOOT_ID_ROOM, "boot id")?;
        let timens_offsets = text(OFF_TIMENS_LEN, OFF_TIMENS, TIMENS_ROOM, "timens offsets")?;
        Ok(Header {
            capacity,
            index_hash,
            creator_pid: word_at(bytes, OFF_CREATOR_PID),
            created_at_ms: word_at(bytes, OFF_CREATED_AT),
            clock: ClockIdentity {
                boot_id,
                timens_offsets,
            },
        })
    }

    /// The segment's size as the header describes it.
    pub fn segment_size(&self) -> u64 {
        segment_size(self.capacity)
    }

    /// Refuses a table whose clock is not this process's (another boot, another time namespace),
    /// and a file whose size is not the one the header describes.
    pub fn check(&self, file_size: u64, here: &ClockIdentity) -> Result<(), LayoutError> {
        if file_size != self.segment_size() {
            return Err(LayoutError::WrongSize {
                expected: self.segment_size(),
                actual: file_size,
            });
        }
        let room = |v: &[u8], n: usize| v[..v.len().min(n)].to_vec();
        if room(&here.boot_id, BOOT_ID_ROOM) != self.clock.boot_id {
            return Err(LayoutError::OtherBoot);
        }
        if room(&here.timens_offsets, TIMENS_ROOM) != self.clock.timens_offsets {
            return Err(LayoutError::OtherTimeNamespace);
        }
        Ok(())
    }
}

/// Bytes needed for a table of `capacity` slots: header, slots, long-name heap.
pub fn segment_size(capacity: u64) -> u64 {
    name_heap_at(capacity) + name_heap_size(capacity)
}

/// Where the long-name heap starts.
pub fn name_heap_at(capacity: u64) -> u64 {
    HEADER_SIZE as u64 + capacity * SLOT_SIZE as u64
}

pub fn name_heap_size(capacity: u64) -> u64 {
    capacity * NAME_HEAP_PER_SLOT
}

// ---- the claim word -------------------------------------------------------------------------

const KIND_SHIFT: u32 = 62;
const PID_SHIFT: u32 = 40;
const LOW_40: u64 = (1 << 40) - 1;
const PID_MASK: u64 = (1 << 22) - 1;
const NAME_VALID: u64 = 1 << 61;

/// Who owns a slot (see docs/shared-memory.md, "The claim word").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// Never used: ends a probe chain.
    Empty,
    /// Being created by `pid` since `ms` (host monotonic milliseconds modulo 2^40).
    Creating {
        pid: u32,
        ms: u64,
    },
    Live {
        incarnation: u64,
    },
    /// Deleted (name kept, reusable by the same name) or recovered (name invalid, never reused).
    Deleted {
        name_valid: bool,
        incarnation: u64,
    },
}

impl Claim {
    pub fn encode(self) -> u64 {
        match self {
            Claim::Empty => 0,
            Claim::Creating { pid, ms } => {
                1 << KIND_SHIFT | (u64::from(pid) & PID_MASK) << PID_SHIFT | (ms & LOW_40)
            }
            Claim::Live { incarnation } => 2 << KIND_SHIFT | (incarnation & LOW_40),
            Claim::Deleted {
                name_valid,
                incarnation,
            } => 3 << KIND_SHIFT | if name_valid { NAME_VALID } else { 0 } | (incarnation & LOW_40),
        }
    }

    /// Any 64 bits decode to some claim (a corrupt word is read as whatever it says).
    pub fn decode(bits: u64) -> Claim {
        match bits >> KIND_SHIFT {
            0 => Claim::Empty,
            1 => Claim::Creating {
                pid: ((bits >> PID_SHIFT) & PID_MASK) as u32,
                ms: bits & LOW_40,
            },
            2 => Claim::Live {
                incarnation: bits & LOW_40,
            },
            _ => Claim::Deleted {
                name_valid: bits & NAME_VALID != 0,
                incarnation: bits & LOW_40,
            },
        }
    }
}

/// Milliseconds from `since` to `now`, both modulo 2^40 (a claim's time).
pub fn claim_age_ms(now: u64, since: u64) -> u64 {
    now.wrapping_sub(since) & LOW_40
}

// ---- a slot -------------------------------------------------------------------------------

#[cfg(not(loom))]
const STRIPE_COUNT: usize = STRIPES;
// Under loom every store is a scheduling point: one stripe keeps the models small.
#[cfg(loom)]
const STRIPE_COUNT: usize = 1;

/// One cache line of counters: successes, failures, ignored, rejected.
#[repr(C, align(64))]
pub struct Stripe {
    pub counts: [AtomicU64; 4],
    _spare: [u64; 4],
}

/// One breaker's words in the table. `repr(C)`, every field an atomic or untouched padding, valid
/// for any bit pattern (all-zero = empty).
#[repr(C, align(64))]
pub struct Slot {
    pub claim: AtomicU64,
    pub machine: Slots,
    pub failure_threshold: AtomicU64,
    pub reset_timeout_ms: AtomicU64,
    pub half_open_max_calls: AtomicU64,
    pub success_threshold: AtomicU64,
    pub probe_timeout_ms: AtomicU64,
    pub incarnation: AtomicU64,
    pub times_opened: AtomicU64,
    pub name_meta: AtomicU64,
    /// Agreement of the option writers and readers (`crate::options`).
    pub options_seq: AtomicU64,
    /// `u64::MAX`: none. Read on its own by the closed fast path (whether calls are timed).
    pub slow_call_ns: AtomicU64,
    /// `f64` bits; 0: none.
    pub failure_rate: AtomicU64,
    /// `f64` bits; 0: none.
    pub slow_call_rate: AtomicU64,
    pub name: [AtomicU64; NAME_WORDS],
    /// The rate rules' sliding window (issue 11; pointer-free, all-zero is an empty window).
    pub window: Window,
    pub window_us: AtomicU64,
    pub min_calls: AtomicU64,
    /// `f64` bits.
    pub backoff: AtomicU64,
    /// `u64::MAX`: none.
    pub max_reset_timeout_ms: AtomicU64,
    /// `f64` bits.
    pub jitter: AtomicU64,
    _reserved: [u64; 5],
    pub stripes: [Stripe; STRIPE_COUNT],
}

#[cfg(not(loom))]
const _: () = {
    assert!(std::mem::size_of::<Slot>() == SLOT_SIZE);
    assert!(std::mem::align_of::<Slot>() <= 4096);
};

/// Which counter of a stripe.
#[derive(Clone, Copy, Debug)]
pub enum Count {
    Successes = 0,
    Failures = 1,
    Ignored = 2,
    Rejected = 3,
}

/// A name as a table stores and compares it: length and kind, and the 128 bytes of its area.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredName {
    pub meta: u64,
    pub words: [u64; NAME_WORDS],
}

const HASHED: u64 = 1 << 63;
const LEN_MASK: u64 = u32::MAX as u64;

impl StoredName {
    pub fn of(key: &[u8]) -> StoredName {
        let mut area = [0u8; NAME_INLINE];
        let meta = if key.len() <= NAME_INLINE {
            area[..key.len()].copy_from_slice(key);
            key.len() as u64
        } else {
            area[..DIGEST_BYTES].copy_from_slice(&Sha256::digest(key));
            area[DIGEST_BYTES..PREFIX_AT].copy_from_slice(&NO_HEAP.to_le_bytes());
            area[PREFIX_AT..].copy_from_slice(&key[..PREFIX_BYTES]);
            HASHED | (key.len() as u64).min(LEN_MASK)
        };
        let mut words = [0u64; NAME_WORDS];
        for (word, chunk) in words.iter_mut().zip(area.chunks_exact(8)) {
            let mut b = [0u8; 8];
            b.copy_from_slice(chunk);
            *word = u64::from_le_bytes(b);
        }
        StoredName { meta, words }
    }

    /// Whether the name is stored as a digest (longer than 128 bytes).
    pub fn is_long(&self) -> bool {
        self.meta & HASHED != 0
    }

    /// The words that identify the name: its bytes, or its digest (the heap offset and prefix of
    /// a long name are not compared).
    fn identity_words(&self) -> usize {
        if self.is_long() {
            DIGEST_WORDS
        } else {
            self.used_words()
        }
    }

    /// Words of the area in use (the rest is zero).
    fn used_words(&self) -> usize {
        if self.meta & HASHED != 0 {
            NAME_WORDS
        } else {
            ((self.meta & LEN_MASK) as usize)
                .div_ceil(8)
                .min(NAME_WORDS)
        }
    }
}

/// A name read back from a slot, for listings: the text when stored whole, or a prefix of it
/// (names longer than 128 bytes are stored as a digest and their first 96 bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadName {
    Whole(Vec<u8>),
    Prefix {
        prefix: Vec<u8>,
        len: u64,
        /// Where the whole name is in the heap (`NO_HEAP`: it is not), and its digest to check it.
        heap_offset: u64,
        digest: [u8; DIGEST_BYTES],
    },
    /// The metadata is out of range (a corrupt slot).
    Corrupt,
}

impl Slot {
    /// Writes the name (while the slot is claimed for its creation from empty: the words past the
    /// name are still zero, since a slot that held a name is only ever reused for that name).
    pub fn write_name(&self, name: &StoredName) {
        for (word, value) in self.name.iter().zip(&name.words[..name.used_words()]) {
            word.store(*value, Ordering::Relaxed);
        }
        self.name_meta.store(name.meta, Ordering::Relaxed);
    }

    /// Whether the slot holds `name` (read after an acquiring load of the claim that made the
    /// name visible).
    pub fn holds(&self, name: &StoredName) -> bool {
        if self.name_meta.load(Ordering::Relaxed) != name.meta {
            return false;
        }
        (0..name.identity_words()).all(|i| self.name[i].load(Ordering::Relaxed) == name.words[i])
    }

    pub fn read_name(&self) -> ReadName {
        let meta = self.name_meta.load(Ordering::Relaxed);
        let mut area = Vec::with_capacity(NAME_INLINE);
        for word in &self.name {
            area.extend_from_slice(&word.load(Ordering::Relaxed).to_le_bytes());
        }
        let len = meta & LEN_MASK;
        if meta & HASHED != 0 {
            if meta & !(HASHED | LEN_MASK) != 0 || len <= NAME_INLINE as u64 {
                return ReadName::Corrupt;
            }
            let mut digest = [0u8; DIGEST_BYTES];
            digest.copy_from_slice(&area[..DIGEST_BYTES]);
            ReadName::Prefix {
                prefix: area[PREFIX_AT..].to_vec(),
                len,
                heap_offset: self.name[HEAP_OFFSET_WORD].load(Ordering::Relaxed),
                digest,
            }
        } else if len > NAME_INLINE as u64 || meta & !LEN_MASK != 0 {
            ReadName::Corrupt
        } else {
            area.truncate(len as usize);
            ReadName::Whole(area)
        }
    }

    /// Records where a long name's bytes are in the heap (while the slot is claimed).
    pub fn set_heap_offset(&self, offset: u64) {
        self.name[HEAP_OFFSET_WORD].store(offset, Ordering::Relaxed);
    }

    /// The heap offset of a long name stored there, `None` otherwise.
    pub fn heap_offset(&self) -> Option<u64> {
        let meta = self.name_meta.load(Ordering::Relaxed);
        let offset = self.name[HEAP_OFFSET_WORD].load(Ordering::Relaxed);
        (meta & HASHED != 0 && offset != NO_HEAP).then_some(offset)
    }

    /// Counts one event in stripe `lane` (taken modulo the number of stripes).
    #[inline]
    pub fn add(&self, lane: usize, count: Count) {
        self.stripes[lane % STRIPE_COUNT].counts[count as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn total(&self, count: Count) -> u64 {
        self.stripes
            .iter()
            .map(|s| s.counts[count as usize].load(Ordering::Relaxed))
            .fold(0u64, u64::wrapping_add)
    }

    /// Fresh state, counters and options for a new breaker (while the slot is claimed): the
    /// options of the process that creates it, which every process then follows; the window's
    /// width is sized for the lag of the host's published clock readings (`TableOptions::bucket_word`).
    pub fn reset_contents(&self, options: &crate::options::TableOptions, lag_us: Option<u64>) {
        self.store_options(&crate::options::OptionsPatch::from(options));
        self.window.set_bucket_us(options.bucket_word(lag_us));
        let limits = options.limits();
        let machine = self.machine.machine(&limits);
        machine.set_mode(panelboard_engine::Mode::Closed);
        for stripe in &self.stripes {
            for count in &stripe.counts {
                count.store(0, Ordering::Relaxed);
            }
        }
        self.times_opened.store(0, Ordering::Relaxed);
    }

    /// A slot of zeros (tests and loom models; a mapping's slots are zero-filled by the kernel).
    pub fn zeroed() -> Slot {
        Slot {
            claim: AtomicU64::new(0),
            machine: Slots::new(),
            failure_threshold: AtomicU64::new(0),
            reset_timeout_ms: AtomicU64::new(0),
            half_open_max_calls: AtomicU64::new(0),
            success_threshold: AtomicU64::new(0),
            probe_timeout_ms: AtomicU64::new(0),
            incarnation: AtomicU64::new(0),
            times_opened: AtomicU64::new(0),
            name_meta: AtomicU64::new(0),
            options_seq: AtomicU64::new(0),
            slow_call_ns: AtomicU64::new(0),
            failure_rate: AtomicU64::new(0),
            slow_call_rate: AtomicU64::new(0),
            name: std::array::from_fn(|_| AtomicU64::new(0)),
            window: Window::new(0),
            window_us: AtomicU64::new(0),
            min_calls: AtomicU64::new(0),
            backoff: AtomicU64::new(0),
            max_reset_timeout_ms: AtomicU64::new(0),
            jitter: AtomicU64::new(0),
            _reserved: [0; 5],
            stripes: std::array::from_fn(|_| Stripe {
                counts: std::array::from_fn(|_| AtomicU64::new(0)),
                _spare: [0; 4],
            }),
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::mem::offset_of;

    #[test]
    fn slot_offsets_are_the_documented_ones() {
        assert_eq!(offset_of!(Slot, claim), 0);
        assert_eq!(offset_of!(Slot, machine), 8);
        assert_eq!(offset_of!(Slot, failure_threshold), 32);
        assert_eq!(offset_of!(Slot, reset_timeout_ms), 40);
        assert_eq!(offset_of!(Slot, half_open_max_calls), 48);
        assert_eq!(offset_of!(Slot, success_threshold), 56);
        assert_eq!(offset_of!(Slot, probe_timeout_ms), 64);
        assert_eq!(offset_of!(Slot, incarnation), 72);
        assert_eq!(offset_of!(Slot, times_opened), 80);
        assert_eq!(offset_of!(Slot, name_meta), 88);
        assert_eq!(offset_of!(Slot, options_seq), 96);
        assert_eq!(offset_of!(Slot, slow_call_ns), 104);
        assert_eq!(offset_of!(Slot, failure_rate), 112);
        assert_eq!(offset_of!(Slot, slow_call_rate), 120);
        assert_eq!(offset_of!(Slot, name), 128);
        assert_eq!(offset_of!(Slot, window), 256);
        assert_eq!(offset_of!(Slot, window_us), 496);
        assert_eq!(offset_of!(Slot, min_calls), 504);
        assert_eq!(offset_of!(Slot, backoff), 512);
        assert_eq!(offset_of!(Slot, max_reset_timeout_ms), 520);
        assert_eq!(offset_of!(Slot, jitter), 528);
        assert_eq!(offset_of!(Slot, stripes), 576);
        assert_eq!(std::mem::size_of::<Stripe>(), 64);
        assert_eq!(std::mem::size_of::<Slot>(), SLOT_SIZE);
    }

    #[test]
    fn the_doc_gives_the_same_offsets() {
        let doc = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/shared-memory.md"
        ))
        .expect("docs/shared-memory.md");
        for (offset, field) in [
            (OFF_MAGIC, "magic"),
            (OFF_VERSION, "layout_version"),
            (OFF_HEADER_SIZE, "header_size"),
            (OFF_SLOT_SIZE, "slot_size"),
            (OFF_CAPACITY, "capacity"),
            (OFF_LAYOUT_HASH, "layout_hash"),
            (OFF_INDEX_HASH, "index_hash"),
            (OFF_BOOT_ID_LEN, "boot_id_len"),
            (OFF_TIMENS_LEN, "timens_len"),
        ] {
            assert!(
                doc.contains(&format!("| {offset} | `{field}` |")),
                "docs/shared-memory.md: {field} at {offset}"
            );
        }
        for (offset, field) in [
            (offset_of!(Slot, failure_threshold), "failure_threshold"),
            (offset_of!(Slot, options_seq), "options_seq"),
            (offset_of!(Slot, slow_call_ns), "slow_call_ns"),
            (offset_of!(Slot, failure_rate), "failure_rate"),
            (offset_of!(Slot, slow_call_rate), "slow_call_rate"),
            (offset_of!(Slot, window_us), "window_us"),
            (offset_of!(Slot, min_calls), "min_calls"),
            (offset_of!(Slot, backoff), "backoff"),
            (
                offset_of!(Slot, max_reset_timeout_ms),
                "max_reset_timeout_ms",
            ),
            (offset_of!(Slot, jitter), "jitter"),
        ] {
            assert!(
                doc.contains(&format!("| {offset} | `{field}` |")),
                "docs/shared-memory.md: slot field {field} at {offset}"
            );
        }
        assert!(doc.contains(&format!("## Layout (version {LAYOUT_VERSION})")));
        assert!(doc.contains("PSHMTAB1") && doc.contains("0x3142_4154_4d48_5350"));
        assert_eq!(MAGIC, 0x3142_4154_4d48_5350);
    }

    #[test]
    fn header_round_trips_and_every_field_is_checked() {
        let clock = ClockIdentity {
            boot_id: b"boot".to_vec(),
            timens_offsets: b"monotonic 0 0\n".to_vec(),
        };
        let header = Header::new(16, IndexHash::Colliding, 42, 7, clock.clone());
        let bytes = header.encode();
        assert_eq!(Header::parse(&bytes), Ok(header.clone()));
        assert_eq!(header.check(segment_size(16), &clock), Ok(()));
        let corrupt = |offset: usize, value: u64| {
            let mut b = bytes.clone();
            put_word(&mut b, offset, value);
            Header::parse(&b)
        };
        assert_eq!(corrupt(OFF_MAGIC, 0), Err(LayoutError::NotInitialised));
        assert_eq!(corrupt(OFF_MAGIC, 1), Err(LayoutError::BadMagic(1)));
        for other in (1..LAYOUT_VERSION).chain([LAYOUT_VERSION + 1]) {
            assert_eq!(
                corrupt(OFF_VERSION, other),
                Err(LayoutError::Version(other))
            );
        }
        assert_eq!(corrupt(OFF_HEADER_SIZE, 1), Err(LayoutError::HeaderSize(1)));
        assert_eq!(corrupt(OFF_SLOT_SIZE, 8), Err(LayoutError::SlotSize(8)));
        assert_eq!(corrupt(OFF_LAYOUT_HASH, 3), Err(LayoutError::LayoutHash(3)));
        assert_eq!(corrupt(OFF_CAPACITY, 0), Err(LayoutError::Capacity(0)));
        assert_eq!(
            corrupt(OFF_CAPACITY, MAX_CAPACITY + 1),
            Err(LayoutError::Capacity(MAX_CAPACITY + 1))
        );
        assert_eq!(corrupt(OFF_INDEX_HASH, 9), Err(LayoutError::IndexHash(9)));
        assert!(matches!(
            corrupt(OFF_TIMENS_LEN, u64::MAX),
            Err(LayoutError::FieldLength { .. })
        ));
        assert_eq!(
            Header::parse(&bytes[..100]),
            Err(LayoutError::Truncated { len: 100 })
        );
        assert!(matches!(
            header.check(segment_size(16) - 1, &clock),
            Err(LayoutError::WrongSize { .. })
        ));
        let other_ns = ClockIdentity {
            timens_offsets: b"monotonic 100 0\n".to_vec(),
            ..clock.clone()
        };
        assert_eq!(
            header.check(segment_size(16), &other_ns),
            Err(LayoutError::OtherTimeNamespace)
        );
        let other_boot = ClockIdentity {
            boot_id: b"other".to_vec(),
            ..clock
        };
        assert_eq!(
            header.check(segment_size(16), &other_boot),
            Err(LayoutError::OtherBoot)
        );
    }

    #[test]
    fn claims_round_trip() {
        for claim in [
            Claim::Empty,
            Claim::Creating {
                pid: 4_000_000,
                ms: (1 << 40) - 1,
            },
            Claim::Live { incarnation: 12345 },
            Claim::Deleted {
                name_valid: true,
                incarnation: 9,
            },
            Claim::Deleted {
                name_valid: false,
                incarnation: 0,
            },
        ] {
            assert_eq!(Claim::decode(claim.encode()), claim);
        }
        assert_eq!(claim_age_ms(5, (1 << 40) - 5), 10);
    }

    #[test]
    fn names_short_and_long() {
        let slot = Slot::zeroed();
        let short = StoredName::of("ünïcode name".as_bytes());
        slot.write_name(&short);
        assert!(slot.holds(&short));
        assert_eq!(
            slot.read_name(),
            ReadName::Whole("ünïcode name".as_bytes().to_vec())
        );
        assert!(!slot.holds(&StoredName::of(b"other")));
        let long: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        let mut other = long.clone();
        other[999] ^= 1; // same length, same prefix, other digest
        let stored = StoredName::of(&long);
        let slot = Slot::zeroed();
        slot.write_name(&stored);
        assert!(slot.holds(&stored));
        assert!(!slot.holds(&StoredName::of(&other)));
        assert!(!slot.holds(&short));
        match slot.read_name() {
            ReadName::Prefix {
                prefix,
                len,
                heap_offset,
                digest,
            } => {
                assert_eq!(len, 1000);
                assert_eq!(prefix, long[..PREFIX_BYTES].to_vec());
                assert_eq!(heap_offset, NO_HEAP);
                assert_eq!(digest[..], Sha256::digest(&long)[..]);
            }
            other => panic!("{other:?}"),
        }
        let exactly = vec![b'x'; NAME_INLINE];
        let slot = Slot::zeroed();
        slot.write_name(&StoredName::of(&exactly));
        assert_eq!(slot.read_name(), ReadName::Whole(exactly));
        slot.name_meta
            .store(NAME_INLINE as u64 + 1, Ordering::Relaxed);
        assert_eq!(slot.read_name(), ReadName::Corrupt);
        slot.name_meta.store(HASHED | 5, Ordering::Relaxed);
        assert_eq!(slot.read_name(), ReadName::Corrupt);
    }

    /// Random and truncated headers, and random slot words: parsing never panics, and whatever it
    /// accepts is in range.
    #[test]
    fn fuzz_header_and_slot_parsing() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let good = Header::new(64, IndexHash::Fnv1a, 1, 1, ClockIdentity::default()).encode();
        for round in 0..20_000 {
            let mut bytes = good.clone();
            // Flip a few words, sometimes to extreme values, sometimes truncate.
            for _ in 0..(next() % 4) {
                let offset = (next() as usize % (HEADER_SIZE / 8)) * 8;
                let value = match next() % 4 {
                    0 => 0,
                    1 => u64::MAX,
                    2 => next() % 300,
                    _ => next(),
                };
                put_word(&mut bytes, offset, value);
            }
            if round % 7 == 0 {
                bytes.truncate(next() as usize % (HEADER_SIZE + 1));
            }
            if round % 11 == 0 {
                bytes = (0..(next() as usize % 5000))
                    .map(|_| next() as u8)
                    .collect();
            }
            if let Ok(h) = Header::parse(&bytes) {
                assert!(h.capacity >= 1 && h.capacity <= MAX_CAPACITY);
                assert!(h.clock.boot_id.len() <= BOOT_ID_ROOM);
                assert!(h.clock.timens_offsets.len() <= TIMENS_ROOM);
                let _ = h.check(next(), &ClockIdentity::default());
            }
        }
        let slot = Slot::zeroed();
        for _ in 0..20_000 {
            slot.name_meta.store(next(), Ordering::Relaxed);
            slot.claim.store(next(), Ordering::Relaxed);
            for w in slot.option_words() {
                w.store(next(), Ordering::Relaxed);
            }
            slot.options_seq.store(next(), Ordering::Relaxed);
            match slot.read_name() {
                ReadName::Whole(b) => assert!(b.len() <= NAME_INLINE),
                ReadName::Prefix { prefix, .. } => assert_eq!(prefix.len(), PREFIX_BYTES),
                ReadName::Corrupt => {}
            }
            let _ = Claim::decode(slot.claim.load(Ordering::Relaxed));
            let limits = slot.limits();
            assert!(limits.failure_threshold >= 1 && limits.half_open_max_calls >= 1);
            // The engine runs over any words (the window's too) without panicking.
            let now = next();
            slot.machine
                .machine(&limits)
                .with_window(&slot.window)
                .observe(|| now);
        }
    }
}
