//! panelboard's host-wide breaker table in shared memory (issue 12, docs/shared-memory.md).
//!
//! - [`layout`]: the header and slot layout, their validation (fuzzed), claim words and names;
//! - [`options`]: a breaker's numeric options in its slot, written and read without a lock, and
//!   validated when read;
//! - [`heard`]: what a process's listeners last heard of a shared breaker (once per generation);
//! - [`table`]: the lock-free slot protocol (find, create, delete, recover), over any `&[Slot]`,
//!   model-checked with loom (`tests/loom.rs`);
//! - `mapping` and `host`: the only `unsafe` of the feature (mmap, shm_open, clock_gettime, kill,
//!   pthread_atfork), each block with its SAFETY comment; not built under loom.
//!
//! The engine (`panelboard-engine`) runs unchanged over a slot's words: `Slot::machine` is the
//! engine's `Slots`, borrowed from the mapping for as long as the [`Table`] lives.
#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod heard;
pub mod layout;
pub mod options;
mod sync;
pub mod table;

#[cfg(not(loom))]
#[allow(unsafe_code)]
pub mod host;
#[cfg(not(loom))]
#[allow(unsafe_code)]
mod mapping;

#[cfg(not(loom))]
pub use self::system::*;

#[cfg(not(loom))]
mod system {
    use crate::host::{clock_identity, fork_generation, monotonic_ms, thread_number, SystemHost};
    use crate::layout::{
        name_heap_at, name_heap_size, Header, IndexHash, ReadName, Slot, StoredName, MAX_CAPACITY,
        NO_HEAP, OFF_NAME_HEAP_USED, OFF_NEXT_LANE,
    };
    use crate::mapping::{self, Segment, Target};
    pub use crate::mapping::{OpenError, SharedSlot};
    use crate::table::{self, Lookup};
    use sha2::{Digest, Sha256};
    use std::sync::atomic::AtomicU64;
    use std::sync::atomic::Ordering;

    /// A table in shared memory, mapped. Everything borrowed from it (`&Slot`s) lives as long as
    /// it does; share it with an `Arc`.
    pub struct Table {
        segment: Segment,
        name: String,
        /// This process's first counter stripe in this table, `fork generation << 32 | lane`
        /// (`u64::MAX` until chosen): handed out in order by the table, so that up to 8 processes
        /// count in different stripes; chosen again in a fork child.
        lane: AtomicU64,
    }

    /// The environment variable that makes a table created by this process send every name to
    /// slot 0 (forced collisions, for tests). Attachers follow the table's header.
    pub const FORCE_COLLISIONS_ENV: &str = "PANELBOARD_SHM_FORCE_COLLISIONS";

    impl Table {
        /// Attaches to the table `name`, creating it with `capacity` slots and file mode `mode`
        /// if it does not exist (an existing table keeps its own capacity).
        pub fn open(name: &str, capacity: u64, mode: u32) -> Result<Table, OpenError> {
            if capacity == 0 || capacity > MAX_CAPACITY {
                return Err(OpenError::InvalidName(format!(
                    "capacity must be between 1 and {MAX_CAPACITY}, got {capacity}"
                )));
            }
            let index_hash = match std::env::var_os(FORCE_COLLISIONS_ENV) {
                Some(v) if v == "1" => IndexHash::Colliding,
                _ => IndexHash::Fnv1a,
            };
            let here = clock_identity();
            let header = Header::new(
                capacity,
                index_hash,
                u64::from(std::process::id()),
                monotonic_ms(),
                here.clone(),
            );
            let segment = mapping::open(name, Some((&header, mode)), &here)?;
            Table::from_segment(name, segment)
        }

        /// Attaches to an existing table (`OpenError::NotFound` if there is none).
        pub fn attach(name: &str) -> Result<Table, OpenError> {
            let segment = mapping::open(name, None, &clock_identity())?;
            Table::from_segment(name, segment)
        }

        fn from_segment(name: &str, segment: Segment) -> Result<Table, OpenError> {
            crate::host::watch_forks();
            let table = Table {
                segment,
                name: name.to_owned(),
                lane: AtomicU64::new(u64::MAX),
            };
            // Checked once here; `slots()` relies on it.
            if table.segment.mapping.slots(table.capacity()).is_none() {
                return Err(OpenError::Layout {
                    name: name.to_owned(),
                    err: crate::layout::LayoutError::WrongSize {
                        expected: table.segment.header.segment_size(),
                        actual: 0,
                    },
                });
            }
            Ok(table)
        }

        /// The counter stripe this thread of this process counts in (modulo the stripes).
        #[inline]
        pub fn lane(&self) -> usize {
            let chosen = self.lane.load(Ordering::Relaxed);
            let process = if chosen != u64::MAX && (chosen >> 32) as usize == fork_generation() {
                chosen as u32 as usize
            } else {
                self.choose_lane()
            };
            process.wrapping_add(thread_number())
        }

        #[cold]
        fn choose_lane(&self) -> usize {
            let lane =
                self.segment
                    .mapping
                    .word(OFF_NEXT_LANE)
                    .map_or(0, |next| next.fetch_add(1, Ordering::Relaxed)) as u32;
            let generation = fork_generation() as u64 & u64::from(u32::MAX);
            self.lane
                .store(generation << 32 | u64::from(lane), Ordering::Relaxed);
            lane as usize
        }

        pub fn name(&self) -> &str {
            &self.name
        }

        pub fn capacity(&self) -> usize {
            self.segment.header.capacity as usize
        }

        pub fn header(&self) -> &Header {
            &self.segment.header
        }

        pub fn slots(&self) -> &[Slot] {
            self.segment
                .mapping
                .slots(self.capacity())
                .unwrap_or_default()
        }

        /// The slot at `index` (`None` out of range).
        pub fn slot(&self, index: usize) -> Option<&Slot> {
            self.slots().get(index)
        }

        fn home(&self, key: &[u8]) -> usize {
            self.segment.header.index_hash.home(key, self.capacity())
        }

        /// The live slot of `key`: `(index, claim)`.
        pub fn find(&self, key: &[u8]) -> Option<(usize, u64)> {
            match table::lookup(
                self.slots(),
                self.home(key),
                &StoredName::of(key),
                &SystemHost,
            ) {
                Lookup::Found { index, claim } => Some((index, claim)),
                Lookup::Absent { .. } => None,
            }
        }

        /// The live slot of `key`, created with `init` writing its contents if absent: `(index,
        /// claim, created)`; `None` when the table is full.
        pub fn find_or_create(
            &self,
            key: &[u8],
            init: impl Fn(&Slot),
        ) -> Option<(usize, u64, bool)> {
            let name = StoredName::of(key);
            table::find_or_create(self.slots(), self.home(key), &name, &SystemHost, |slot| {
                init(slot);
                if name.is_long() && slot.heap_offset().is_none() {
                    self.store_long_name(slot, key);
                }
            })
        }

        /// Copies a long name into the heap (while its slot is claimed), so that every process
        /// can read it back; when the heap is full the slot keeps only its digest and prefix.
        fn store_long_name(&self, slot: &Slot, key: &[u8]) {
            let capacity = self.segment.header.capacity;
            let (Some(used), Ok(len)) = (
                self.segment.mapping.word(OFF_NAME_HEAP_USED),
                u64::try_from(key.len()),
            ) else {
                return;
            };
            let rounded = len.div_ceil(8) * 8;
            let offset = used.fetch_add(rounded, Ordering::Relaxed);
            if offset
                .checked_add(rounded)
                .is_none_or(|end| end > name_heap_size(capacity))
            {
                return; // full: the name stays listed by its prefix
            }
            let base = name_heap_at(capacity) + offset;
            for (i, chunk) in key.chunks(8).enumerate() {
                let mut word = [0u8; 8];
                word[..chunk.len()].copy_from_slice(chunk);
                let at = usize::try_from(base + i as u64 * 8).ok();
                if let Some(w) = at.and_then(|at| self.segment.mapping.word(at)) {
                    w.store(u64::from_le_bytes(word), Ordering::Relaxed);
                }
            }
            slot.set_heap_offset(offset);
        }

        /// The whole name of slot `index`: stored in the slot, or in the heap (checked against
        /// its digest); `None` when only a prefix is known or the slot is corrupt.
        pub fn name_of(&self, index: usize) -> Option<Vec<u8>> {
            let slot = self.slot(index)?;
            let (len, offset, digest) = match slot.read_name() {
                ReadName::Whole(bytes) => return Some(bytes),
                ReadName::Corrupt => return None,
                ReadName::Prefix {
                    len,
                    heap_offset,
                    digest,
                    ..
                } => (len, heap_offset, digest),
            };
            let capacity = self.segment.header.capacity;
            if offset == NO_HEAP
                || !offset.is_multiple_of(8)
                || offset.checked_add(len)? > name_heap_size(capacity)
            {
                return None;
            }
            let mut bytes = Vec::with_capacity(usize::try_from(len).ok()?);
            let base = name_heap_at(capacity) + offset;
            for i in 0..len.div_ceil(8) {
                let word = self
                    .segment
                    .mapping
                    .word(usize::try_from(base + i * 8).ok()?)?;
                bytes.extend_from_slice(&word.load(Ordering::Relaxed).to_le_bytes());
            }
            bytes.truncate(len as usize);
            (Sha256::digest(&bytes)[..] == digest[..]).then_some(bytes)
        }

        pub fn delete(&self, key: &[u8]) -> bool {
            table::delete(
                self.slots(),
                self.home(key),
                &StoredName::of(key),
                &SystemHost,
            )
        }

        /// Every live slot: `(index, claim)`.
        pub fn live(&self) -> Vec<(usize, u64)> {
            table::live(self.slots())
        }
    }

    /// Removes the table `name`; `false` if it did not exist.
    pub fn unlink(name: &str) -> Result<bool, OpenError> {
        use crate::layout::{LayoutError, MAGIC};
        let target = Target::parse(name)?;
        let os_error = |doing, err| OpenError::Os {
            name: name.to_owned(),
            doing,
            err,
        };
        // Only a table is removed: one with the magic, or one whose creator has not written it
        // yet (a first word of zero, or shorter than a word: a creator that died early). Any
        // other file is left alone.
        match target
            .magic_and_len()
            .map_err(|err| os_error("read its header", err))?
        {
            None => return Ok(false),
            Some((MAGIC, _)) => {}
            Some((0, _)) => {}
            Some((magic, _)) => {
                return Err(OpenError::Layout {
                    name: name.to_owned(),
                    err: LayoutError::BadMagic(magic),
                })
            }
        }
        target.unlink().map_err(|err| OpenError::Os {
            name: name.to_owned(),
            doing: "remove it",
            err,
        })
    }

    pub use crate::host::monotonic_ms as host_monotonic_ms;
}
