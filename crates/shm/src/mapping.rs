//! The segment: opening or creating it (a POSIX shared-memory object, or a file), mapping it, and
//! reading its header safely. Every `unsafe` of the shared-memory feature is here or in `host`.

use crate::layout::{segment_size, ClockIdentity, Header, LayoutError, Slot, HEADER_SIZE};
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Where a table lives: `NAME` with a `/` is a file path, any other a POSIX shm object `/NAME`.
#[derive(Clone, Debug)]
pub enum Target {
    Shm(CString),
    File(CString),
}

/// Why a table could not be opened. `Display` names the table and the problem.
#[derive(Debug)]
pub enum OpenError {
    InvalidName(String),
    NotFound(String),
    Os {
        name: String,
        doing: &'static str,
        err: io::Error,
    },
    Layout {
        name: String,
        err: LayoutError,
    },
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::InvalidName(why) => write!(f, "invalid shared table name: {why}"),
            OpenError::NotFound(name) => write!(f, "shared table {name:?} does not exist"),
            OpenError::Os { name, doing, err } => {
                write!(f, "shared table {name:?}: could not {doing}: {err}")
            }
            OpenError::Layout { name, err } => write!(f, "shared table {name:?} is {err}"),
        }
    }
}

impl Target {
    pub fn parse(name: &str) -> Result<Target, OpenError> {
        if name.is_empty() {
            return Err(OpenError::InvalidName("the name is empty".into()));
        }
        if name.contains('\0') {
            return Err(OpenError::InvalidName(
                "the name contains a NUL character".into(),
            ));
        }
        if name.contains('/') {
            return Ok(Target::File(CString::new(name).map_err(|_| {
                OpenError::InvalidName("the name contains a NUL character".into())
            })?));
        }
        if name.len() > 250 {
            return Err(OpenError::InvalidName(format!(
                "a shared-memory object name is at most 250 bytes, this one has {}",
                name.len()
            )));
        }
        if name == "." || name == ".." {
            return Err(OpenError::InvalidName(format!(
                "{name:?} is not a valid object name"
            )));
        }
        Ok(Target::Shm(CString::new(format!("/{name}")).map_err(
            |_| OpenError::InvalidName("the name contains a NUL character".into()),
        )?))
    }

    fn open(&self, create: bool, mode: u32) -> io::Result<File> {
        match self {
            Target::File(path) => {
                let path = file_path(path);
                let mut options = std::fs::OpenOptions::new();
                options.read(true).write(true);
                if create {
                    options.create_new(true).mode(mode);
                }
                options.open(path)
            }
            Target::Shm(name) => {
                let flags = libc::O_RDWR
                    | libc::O_CLOEXEC
                    | if create {
                        libc::O_CREAT | libc::O_EXCL
                    } else {
                        0
                    };
                // SAFETY: `name` is a NUL-terminated C string that outlives the call.
                let fd = unsafe { libc::shm_open(name.as_ptr(), flags, mode as libc::mode_t) };
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                // SAFETY: `fd` was just returned by shm_open, is open, and is owned by nobody else.
                Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
            }
        }
    }

    /// The first word (the magic) and the size of the object, `None` if there is none: what
    /// `unlink` checks so that it only ever removes a table (or one still being made).
    pub fn magic_and_len(&self) -> io::Result<Option<(u64, u64)>> {
        use std::os::unix::fs::FileExt;
        let file = match self.open(false, 0) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let len = file.metadata()?.len();
        let mut magic = [0u8; 8];
        if len >= 8 {
            file.read_exact_at(&mut magic, 0)?;
        }
        Ok(Some((u64::from_le_bytes(magic), len)))
    }

    /// Removes the table; `false` if there was none.
    pub fn unlink(&self) -> io::Result<bool> {
        let rc = match self {
            Target::File(path) => {
                let path = file_path(path);
                return match std::fs::remove_file(path) {
                    Ok(()) => Ok(true),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
                    Err(e) => Err(e),
                };
            }
            // SAFETY: `name` is a NUL-terminated C string that outlives the call.
            Target::Shm(name) => unsafe { libc::shm_unlink(name.as_ptr()) },
        };
        if rc == 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::NotFound {
            Ok(false)
        } else {
            Err(err)
        }
    }
}

fn file_path(path: &CString) -> &std::path::Path {
    use std::os::unix::ffi::OsStrExt;
    std::path::Path::new(std::ffi::OsStr::from_bytes(path.as_bytes()))
}

/// A shared, read-write mapping of a whole segment; unmapped when dropped.
pub struct Mapping {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory that lives until `drop`; every access through the safe API
// goes through atomics (`&AtomicU64`, `&Slot` whose fields are atomics or untouched padding), so
// sharing it between threads is as sound as sharing those atomics.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    fn map(file: &File, len: usize) -> io::Result<Mapping> {
        use std::os::fd::AsRawFd;
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty mapping"));
        }
        // SAFETY: a fresh shared mapping of `len` bytes of an open file descriptor, at an address
        // the kernel chooses; the result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(ptr.cast::<u8>()).ok_or_else(io::Error::last_os_error)?;
        Ok(Mapping { base, len })
    }

    /// The 8-byte word at `offset` (bounds- and alignment-checked: `None` outside the mapping).
    pub fn word(&self, offset: usize) -> Option<&AtomicU64> {
        if !offset.is_multiple_of(8) || offset.checked_add(8)? > self.len {
            return None;
        }
        // SAFETY: the word lies inside the mapping (checked above), is 8-byte aligned (the base is
        // page-aligned and the offset a multiple of 8), lives as long as `self`, and any bit
        // pattern is a valid `AtomicU64`; other processes only access it atomically too.
        Some(unsafe { &*self.base.as_ptr().add(offset).cast::<AtomicU64>() })
    }

    /// The `capacity` slots after the header (`None` if they do not fit in the mapping).
    pub fn slots(&self, capacity: usize) -> Option<&[Slot]> {
        let end = capacity
            .checked_mul(std::mem::size_of::<Slot>())?
            .checked_add(HEADER_SIZE)?;
        if end > self.len {
            return None;
        }
        // SAFETY: the slots lie inside the mapping (checked above) and start at HEADER_SIZE from a
        // page-aligned base, which satisfies `Slot`'s alignment (64); a `Slot` is `repr(C)` and
        // made only of atomics and never-touched padding, so any bytes are a valid `Slot`, and all
        // shared mutation goes through its atomics. The slice lives as long as `self`.
        Some(unsafe {
            std::slice::from_raw_parts(self.base.as_ptr().add(HEADER_SIZE).cast::<Slot>(), capacity)
        })
    }

    /// A copy of the first `HEADER_SIZE` bytes (or fewer), read word by word atomically.
    fn header_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(HEADER_SIZE);
        let mut offset = 0;
        while offset < HEADER_SIZE {
            match self.word(offset) {
                Some(w) => bytes.extend_from_slice(&w.load(Ordering::Acquire).to_le_bytes()),
                None => break,
            }
            offset += 8;
        }
        bytes
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` are exactly what mmap returned; nothing borrows the mapping any more
        // (every reference into it borrows `self`).
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.len);
        }
    }
}

/// How long an attacher waits for a creator that is still sizing or initialising the segment.
const INIT_WAIT: Duration = Duration::from_secs(2);

/// A validated, mapped table.
pub struct Segment {
    pub mapping: Mapping,
    pub header: Header,
}

fn os<'a>(name: &'a str, doing: &'static str) -> impl FnOnce(io::Error) -> OpenError + 'a {
    move |err| OpenError::Os {
        name: name.to_owned(),
        doing,
        err,
    }
}

/// Opens the table `name`, creating it (`Some(new header)`) if it does not exist; `create: None`
/// only attaches.
pub fn open(
    name: &str,
    create: Option<(&Header, u32)>,
    here: &ClockIdentity,
) -> Result<Segment, OpenError> {
    let target = Target::parse(name)?;
    for _ in 0..8 {
        if let Some((header, mode)) = create {
            match target.open(true, mode) {
                Ok(file) => return initialise(name, &target, file, header, mode),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(os(name, "create it")(e)),
            }
        }
        match target.open(false, 0) {
            Ok(file) => return attach(name, &file, here),
            // Unlinked between the two opens: create it again.
            Err(e) if e.kind() == io::ErrorKind::NotFound && create.is_some() => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(OpenError::NotFound(name.to_owned()))
            }
            Err(e) => return Err(os(name, "open it")(e)),
        }
    }
    Err(OpenError::NotFound(name.to_owned()))
}

fn initialise(
    name: &str,
    target: &Target,
    file: File,
    header: &Header,
    mode: u32,
) -> Result<Segment, OpenError> {
    let result = (|| {
        // Exactly `mode`, whatever the umask.
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(os(name, "set its mode"))?;
        let size = segment_size(header.capacity);
        let len = usize::try_from(size).map_err(|_| {
            OpenError::InvalidName(format!("capacity {} is too large", header.capacity))
        })?;
        file.set_len(size).map_err(os(name, "size it"))?;
        reserve(&file, size).map_err(os(name, "reserve its memory"))?;
        let mapping = Mapping::map(&file, len).map_err(os(name, "map it"))?;
        let bytes = header.encode();
        // Every word but the magic, then the magic: attachers wait for it.
        for (i, chunk) in bytes.chunks_exact(8).enumerate().skip(1) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            if let Some(w) = mapping.word(i * 8) {
                w.store(u64::from_le_bytes(word), Ordering::Relaxed);
            }
        }
        if let Some(magic) = mapping.word(0) {
            magic.store(crate::layout::MAGIC, Ordering::Release);
        }
        Ok(Segment {
            mapping,
            header: header.clone(),
        })
    })();
    if result.is_err() {
        let _ = target.unlink();
    }
    result
}

/// Allocates the segment's memory now, so that running out of space (a full /dev/shm) is an error
/// here rather than a SIGBUS on first use.
fn reserve(file: &File, size: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let len = libc::off_t::try_from(size)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "segment too large"))?;
    // SAFETY: plain syscall on an open descriptor with in-range arguments.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) };
    match rc {
        0 => Ok(()),
        // Filesystems without fallocate: the pages are allocated on first touch instead.
        libc::EOPNOTSUPP | libc::EINVAL => Ok(()),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

fn attach(name: &str, file: &File, here: &ClockIdentity) -> Result<Segment, OpenError> {
    let layout = |err| OpenError::Layout {
        name: name.to_owned(),
        err,
    };
    let deadline = Instant::now() + INIT_WAIT;
    loop {
        let size = file.metadata().map_err(os(name, "stat it"))?.len();
        let waiting = Instant::now() < deadline;
        if size < HEADER_SIZE as u64 {
            if waiting {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            return Err(layout(LayoutError::Truncated { len: size as usize }));
        }
        let first_page = Mapping::map(file, HEADER_SIZE).map_err(os(name, "map it"))?;
        let header = match Header::parse(&first_page.header_bytes()) {
            Err(LayoutError::NotInitialised) if waiting => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            Err(err) => return Err(layout(err)),
            Ok(header) => header,
        };
        header.check(size, here).map_err(layout)?;
        let len = usize::try_from(size).map_err(|_| {
            layout(LayoutError::WrongSize {
                expected: header.segment_size(),
                actual: size,
            })
        })?;
        let mapping = Mapping::map(file, len).map_err(os(name, "map it"))?;
        return Ok(Segment { mapping, header });
    }
}

/// One slot of a table, reached without recomputing where it is: a pointer into the table's
/// mapping, with the `Arc` that keeps the mapping alive for as long as the pointer exists.
pub struct SharedSlot {
    table: std::sync::Arc<crate::Table>,
    slot: NonNull<Slot>,
}

// SAFETY: a `SharedSlot` only hands out `&Slot` (atomics and untouched padding, `Sync`) and the
// `Arc<Table>` (itself `Send + Sync`); the pointer is never written through.
unsafe impl Send for SharedSlot {}
// SAFETY: as above.
unsafe impl Sync for SharedSlot {}

impl SharedSlot {
    /// Slot `index` of `table` (`None` out of range).
    pub fn new(table: std::sync::Arc<crate::Table>, index: usize) -> Option<SharedSlot> {
        let slot = NonNull::from(table.slot(index)?);
        Some(SharedSlot { table, slot })
    }

    #[inline]
    pub fn slot(&self) -> &Slot {
        // SAFETY: the pointer was taken from a `&Slot` borrowed from `self.table`'s mapping, which
        // stays mapped, at the same address, until the `Table` is dropped; `self.table` keeps it
        // alive for at least as long as `self`, and the returned borrow cannot outlive `self`.
        unsafe { self.slot.as_ref() }
    }

    pub fn table(&self) -> &std::sync::Arc<crate::Table> {
        &self.table
    }
}
