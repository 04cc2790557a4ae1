//! A breaker's name as it is stored: the bytes `pyrefs::name_key` makes of the `str` (its UTF-8,
//! lone surrogates kept), inline when short.
//!
//! Every breaker keeps its name, and the registry's map finds breakers by it (`names`), so it is
//! stored once per breaker. Most names are short (a service, a host, an endpoint): up to
//! `INLINE` bytes they sit in the breaker itself, in the 24 bytes a pointer to heap bytes would
//! take with its length, so they cost no allocation (issue 11: memory per breaker).

use std::borrow::Borrow;
use std::hash::{Hash, Hasher};
use std::ops::Deref;

/// The longest name kept inline: what fits next to the tag and the length in three words.
const INLINE: usize = 22;

#[derive(Clone)]
pub enum Name {
    Inline { len: u8, bytes: [u8; INLINE] },
    Heap(Box<[u8]>),
}

impl Name {
    pub fn new(bytes: &[u8]) -> Name {
        if bytes.len() <= INLINE {
            let mut inline = [0; INLINE];
            inline[..bytes.len()].copy_from_slice(bytes);
            Name::Inline {
                len: bytes.len() as u8,
                bytes: inline,
            }
        } else {
            Name::Heap(bytes.into())
        }
    }
}

impl Deref for Name {
    type Target = [u8];

    #[inline]
    fn deref(&self) -> &[u8] {
        match self {
            Name::Inline { len, bytes } => bytes.get(..usize::from(*len)).unwrap_or_default(),
            Name::Heap(bytes) => bytes,
        }
    }
}

/// Hashed, compared and borrowed as its bytes, so that maps keyed by names are looked up with
/// `&[u8]`.
impl Hash for Name {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (**self).hash(state)
    }
}

impl PartialEq for Name {
    fn eq(&self, other: &Name) -> bool {
        **self == **other
    }
}

impl Eq for Name {}

impl Borrow<[u8]> for Name {
    fn borrow(&self) -> &[u8] {
        self
    }
}

// Three words, as promised above (a compile-time check: this crate has no test binary).
const _: () = assert!(std::mem::size_of::<Name>() == 24);
