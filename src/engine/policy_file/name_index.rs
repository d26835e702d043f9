//! A compact map from names to rule positions for large policy files.
//!
//! All names live in one byte buffer (each behind a two-byte length); the
//! hash table holds only `(offset, rule)` pairs. 100,000 names take about
//! 3 MB this way, against about 10 MB for a `HashMap<Box<str>, u32>` with
//! one heap allocation per name.

use std::hash::BuildHasher;

use hashbrown::{DefaultHashBuilder, HashTable};

/// Longest name the index stores (a two-byte length prefix).
pub const MAX_INDEXED_NAME: usize = u16::MAX as usize;

#[derive(Debug, Default)]
pub struct NameIndex {
    names: Vec<u8>,
    table: HashTable<(u32, u32)>,
    /// A fast seeded hash: names are inserted only from the operator's
    /// policy file, so lookups of hostile keys cannot build collision
    /// chains; a lookup walks up to a name's parents, hashing each.
    hasher: DefaultHashBuilder,
}

/// The name stored at `offset` in the buffer.
fn name_in(names: &[u8], offset: u32) -> &[u8] {
    let at = offset as usize;
    let len = usize::from(u16::from_le_bytes([names[at], names[at + 1]]));
    &names[at + 2..at + 2 + len]
}

impl NameIndex {
    fn name_at(&self, offset: u32) -> &[u8] {
        name_in(&self.names, offset)
    }

    /// The rule position for a name.
    pub fn get(&self, name: &str) -> Option<u32> {
        let hash = self.hasher.hash_one(name.as_bytes());
        self.table
            .find(hash, |&(off, _)| self.name_at(off) == name.as_bytes())
            .map(|&(_, rule)| rule)
    }

    /// Add a name; if it is already there, its rule position is returned
    /// and nothing changes.
    pub fn insert(&mut self, name: &str, rule: u32) -> Result<(), u32> {
        if let Some(existing) = self.get(name) {
            return Err(existing);
        }
        let len = u16::try_from(name.len()).expect("names are checked to be short");
        let offset = u32::try_from(self.names.len()).expect("policy files are limited in size");
        self.names.extend_from_slice(&len.to_le_bytes());
        self.names.extend_from_slice(name.as_bytes());
        let hash = self.hasher.hash_one(name.as_bytes());
        let Self {
            names,
            table,
            hasher,
        } = self;
        table.insert_unique(hash, (offset, rule), |&(off, _)| {
            hasher.hash_one(name_in(names, off))
        });
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Every name with its rule position, in the order they were added.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u32)> + '_ {
        let mut at = 0usize;
        std::iter::from_fn(move || {
            if at >= self.names.len() {
                return None;
            }
            let name = name_in(&self.names, at as u32);
            at += 2 + name.len();
            // Names come from `&str`s, so they are UTF-8.
            let name = std::str::from_utf8(name).ok()?;
            Some((name, self.get(name)?))
        })
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Drop spare capacity once loading is done.
    pub fn shrink_to_fit(&mut self) {
        self.names.shrink_to_fit();
        let Self {
            names,
            table,
            hasher,
        } = self;
        table.shrink_to_fit(|&(off, _)| hasher.hash_one(name_in(names, off)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_get_duplicate() {
        let mut ix = NameIndex::default();
        assert_eq!(ix.insert("bank.example", 0), Ok(()));
        assert_eq!(ix.insert("other.example", 1), Ok(()));
        assert_eq!(ix.insert("bank.example", 5), Err(0));
        assert_eq!(ix.get("bank.example"), Some(0));
        assert_eq!(ix.get("other.example"), Some(1));
        assert_eq!(ix.get("bank.exampl"), None);
        assert_eq!(ix.get(""), None);
        assert_eq!(ix.len(), 2);
    }

    #[test]
    fn many_names_survive_growth_and_shrink() {
        let mut ix = NameIndex::default();
        for i in 0..50_000u32 {
            ix.insert(&format!("d{i}.example"), i).unwrap();
        }
        ix.shrink_to_fit();
        for i in (0..50_000u32).step_by(97) {
            assert_eq!(ix.get(&format!("d{i}.example")), Some(i));
        }
        assert_eq!(ix.get("d50000.example"), None);
    }

    #[test]
    fn iterates_in_insertion_order() {
        let mut i = NameIndex::default();
        i.insert("b.example", 2).unwrap();
        i.insert("a.example", 1).unwrap();
        let all: Vec<_> = i.iter().collect();
        assert_eq!(all, vec![("b.example", 2), ("a.example", 1)]);
        assert_eq!(NameIndex::default().iter().count(), 0);
    }

    #[test]
    fn long_names() {
        let mut ix = NameIndex::default();
        let long = "a".repeat(300);
        ix.insert(&long, 7).unwrap();
        assert_eq!(ix.get(&long), Some(7));
    }
}
