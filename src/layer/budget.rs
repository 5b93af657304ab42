//! Decoding untrusted tables (tables of contents, index artifact layer files)
//! within a memory budget.
//!
//! Their encodings are compact and their decoded forms are not: a 22-byte
//! JSON TOC entry decodes to a struct of about 300 bytes, a 10-byte postcard
//! entry to one of about 110, so a document well within its byte limit (a
//! few KiB compressed) could still decode into gigabytes. Collections
//! deserialized through [`vec`] or [`map`] charge the memory they allocate
//! for their elements against the budget [`within`] sets, and fail the
//! decoding once it is spent. Heap bytes of strings need no charge: they are
//! never more than the document's own length. Outside [`within`] (caches
//! lazyimg wrote itself) the collections decode as usual.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::mem::size_of;

use serde::de::{Deserialize, Deserializer, Error, MapAccess, SeqAccess, Visitor};

/// What the decoding on this thread may still allocate.
#[derive(Clone, Copy, PartialEq)]
enum Budget {
    Unlimited,
    Left(u64),
    Spent,
}

thread_local! {
    static BUDGET: Cell<Budget> = const { Cell::new(Budget::Unlimited) };
}

/// Why a decoding within a budget failed.
#[derive(Debug)]
pub enum Refused<E> {
    /// The decoder's own error: the document is malformed.
    Decode(E),
    /// The document decodes to more memory than the budget.
    OverBudget { budget: u64 },
}

impl<E: fmt::Display> fmt::Display for Refused<E> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Refused::Decode(e) => e.fmt(f),
            Refused::OverBudget { budget } => write!(
                f,
                "it decodes to more than the {budget} bytes of memory lazyimg allows for one table"
            ),
        }
    }
}

/// Runs `decode` with `bytes` of memory for the collections it decodes.
/// Running out is told apart from the decoder's own errors, whose message
/// some formats (postcard) drop.
pub fn within<T, E>(bytes: u64, decode: impl FnOnce() -> Result<T, E>) -> Result<T, Refused<E>> {
    /// Restores the caller's budget, even when `decode` panics.
    struct Restore(Budget);
    impl Drop for Restore {
        fn drop(&mut self) {
            BUDGET.set(self.0);
        }
    }
    let _restore = Restore(BUDGET.replace(Budget::Left(bytes)));
    let decoded = decode();
    match BUDGET.get() {
        Budget::Spent => Err(Refused::OverBudget { budget: bytes }),
        _ => decoded.map_err(Refused::Decode),
    }
}

/// Takes `bytes` from the budget, or fails the decoding.
fn charge<E: Error>(bytes: usize) -> Result<(), E> {
    let left = match BUDGET.get() {
        Budget::Unlimited => return Ok(()),
        Budget::Left(left) => left.checked_sub(bytes as u64),
        Budget::Spent => None,
    };
    BUDGET.set(left.map_or(Budget::Spent, Budget::Left));
    left.map(drop)
        .ok_or_else(|| E::custom("over the memory budget"))
}

/// `#[serde(deserialize_with = "budget::vec")]`: a `Vec` whose allocation
/// is charged as it grows.
pub fn vec<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Elements<T>(PhantomData<T>);
    impl<'de, T: Deserialize<'de>> Visitor<'de> for Elements<T> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a sequence")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut items = Vec::new();
            while let Some(item) = seq.next_element()? {
                // No preallocation from a declared length: the capacity
                // grows with the elements that are really there.
                if items.len() == items.capacity() {
                    let grown = items.capacity().max(4);
                    charge(grown.saturating_mul(size_of::<T>()))?;
                    items.reserve_exact(grown);
                }
                items.push(item);
            }
            Ok(items)
        }
    }
    deserializer.deserialize_seq(Elements(PhantomData))
}

/// `#[serde(deserialize_with = "budget::map")]`: a `BTreeMap` charged per
/// entry, with room for its share of a B-tree node.
pub fn map<'de, D, K, V>(deserializer: D) -> Result<BTreeMap<K, V>, D::Error>
where
    D: Deserializer<'de>,
    K: Deserialize<'de> + Ord,
    V: Deserialize<'de>,
{
    struct Entries<K, V>(PhantomData<(K, V)>);
    impl<'de, K: Deserialize<'de> + Ord, V: Deserialize<'de>> Visitor<'de> for Entries<K, V> {
        type Value = BTreeMap<K, V>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a map")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<BTreeMap<K, V>, A::Error> {
            let mut entries = BTreeMap::new();
            while let Some((key, value)) = access.next_entry()? {
                // Nodes are at least half full: twice the entry, plus links.
                charge(2 * size_of::<(K, V)>() + 16)?;
                entries.insert(key, value);
            }
            Ok(entries)
        }
    }
    deserializer.deserialize_map(Entries(PhantomData))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct Doc {
        #[serde(deserialize_with = "vec")]
        items: Vec<u64>,
        #[serde(default, deserialize_with = "map")]
        names: BTreeMap<String, String>,
    }

    fn parse(json: &str) -> Result<Doc, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn collections_decode_until_the_budget_is_spent() {
        let items = format!("[{}]", vec!["1"; 1000].join(","));
        let names = (0..100)
            .map(|i| format!("\"{i}\": \"\""))
            .collect::<Vec<_>>();
        let json = format!("{{\"items\": {items}, \"names\": {{{}}}}}", names.join(","));
        // Unlimited outside `within`, as before.
        let doc = parse(&json).unwrap();
        assert_eq!((doc.items.len(), doc.names.len()), (1000, 100));
        // 1024 slots of 8 bytes, 100 entries of 2 * 48 + 16.
        let needed = 1024 * 8 + 100 * 112;
        assert_eq!(within(needed, || parse(&json)).unwrap().items.len(), 1000);
        for budget in [needed - 1, 8 * 1000] {
            let err = within(budget, || parse(&json)).err().unwrap();
            assert!(matches!(err, Refused::OverBudget { .. }), "{err}");
            assert!(
                err.to_string().contains("of memory lazyimg allows"),
                "{err}"
            );
        }
        // Malformed is not over budget; the budget ends with `within`.
        let err = within(needed, || parse(r#"{"items": [1,}"#)).err().unwrap();
        assert!(matches!(err, Refused::Decode(_)), "{err}");
        assert!(parse(&json).is_ok());
    }
}
