//! A real segment (a file in the temporary directory): created with its mode, attached by a second
//! mapping that sees the same slots, long names read back from the heap, counter lanes handed out
//! in order, and a damaged file refused with a clear error.
#![cfg(not(loom))]

use panelboard_shm::layout::{segment_size, OFF_CAPACITY};
use panelboard_shm::options::TableOptions;
use panelboard_shm::{unlink, OpenError, Table};
use std::os::unix::fs::PermissionsExt;

fn path(tag: &str) -> String {
    let dir = std::env::temp_dir();
    format!("{}/pb-segment-{tag}-{}", dir.display(), std::process::id())
}

fn init(slot: &panelboard_shm::layout::Slot) {
    slot.reset_contents(&TableOptions::default(), None);
}

#[test]
fn two_mappings_share_slots_and_names() {
    let name = path("share");
    let _ = unlink(&name);
    let a = Table::open(&name, 16, 0o640).unwrap();
    let meta = std::fs::metadata(&name).unwrap();
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o640,
        "exactly the mode asked for"
    );
    assert_eq!(meta.len(), segment_size(16));
    let b = Table::open(&name, 4096, 0o600).unwrap();
    assert_eq!(b.capacity(), 16, "the first creation's capacity wins");

    let long = "l".repeat(1000);
    let (i, claim, created) = a.find_or_create(b"svc", init).unwrap();
    assert!(created);
    assert_eq!(b.find(b"svc"), Some((i, claim)));
    let (j, _, _) = a.find_or_create(long.as_bytes(), init).unwrap();
    assert!(
        b.name_of(j).as_deref() == Some(long.as_bytes()),
        "read back from the heap"
    );
    // Longer than the heap left (16 * 256 bytes in all): a breaker all the same, listed by prefix.
    let huge = "h".repeat(5000);
    let (k, _, created) = a.find_or_create(huge.as_bytes(), init).unwrap();
    assert!(created && b.find(huge.as_bytes()).is_some());
    assert!(b.name_of(k).is_none());
    assert_eq!(b.name_of(i).as_deref(), Some(&b"svc"[..]));

    // A count in one mapping is seen in the other.
    a.slot(i)
        .unwrap()
        .add(a.lane(), panelboard_shm::layout::Count::Failures);
    assert_eq!(
        b.slot(i)
            .unwrap()
            .total(panelboard_shm::layout::Count::Failures),
        1
    );
    // Each table hands this process its own lane; the second mapping counts as another process.
    assert_ne!(a.lane(), b.lane());

    assert!(b.delete(b"svc"));
    assert_eq!(a.find(b"svc"), None);
    assert_eq!(a.live().len(), 2);
    assert!(unlink(&name).unwrap());
    assert!(!unlink(&name).unwrap());
}

#[test]
fn a_damaged_file_is_refused_with_the_reason() {
    let name = path("damaged");
    let _ = unlink(&name);
    drop(Table::open(&name, 4, 0o600).unwrap());
    let mut bytes = std::fs::read(&name).unwrap();
    bytes[OFF_CAPACITY..OFF_CAPACITY + 8].copy_from_slice(&5u64.to_le_bytes());
    std::fs::write(&name, &bytes).unwrap();
    let err = Table::attach(&name).err().expect("refused");
    assert!(matches!(err, OpenError::Layout { .. }));
    assert!(err.to_string().contains("wrong size"), "{err}");
    std::fs::write(&name, b"short").unwrap();
    let err = Table::open(&name, 4, 0o600).err().expect("refused");
    assert!(err.to_string().contains("truncated"), "{err}");
    unlink(&name).unwrap();
    assert!(matches!(Table::attach(&name), Err(OpenError::NotFound(_))));
}
