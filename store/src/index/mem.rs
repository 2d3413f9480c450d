//! TEMPORARY stand-in for the compact in-memory index (being written); same API.
use super::Loc;
use std::collections::BTreeMap;

#[derive(Default)]
pub struct MemIndex {
    m: BTreeMap<(u64, u32), Loc>,
}

impl MemIndex {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn from_sorted(entries: impl IntoIterator<Item = (u64, u32, Loc)>) -> Self {
        MemIndex {
            m: entries.into_iter().map(|(k, a, l)| ((k, a), l)).collect(),
        }
    }
    pub fn get(&self, key: u64, alt: u32) -> Option<Loc> {
        self.m.get(&(key, alt)).copied()
    }
    pub fn insert(&mut self, key: u64, alt: u32, loc: Loc) -> Option<Loc> {
        self.m.insert((key, alt), loc)
    }
    pub fn mark_deleted(&mut self, key: u64, alt: u32) -> Option<Loc> {
        let l = self.m.get_mut(&(key, alt))?;
        let old = *l;
        l.deleted = true;
        Some(old)
    }
    pub fn remove(&mut self, key: u64, alt: u32) -> Option<Loc> {
        self.m.remove(&(key, alt))
    }
    pub fn len(&self) -> usize {
        self.m.len()
    }
    pub fn is_empty(&self) -> bool {
        self.m.is_empty()
    }
    pub fn iter(&self) -> impl Iterator<Item = (u64, u32, Loc)> + '_ {
        self.m.iter().map(|(&(k, a), &l)| (k, a, l))
    }
    pub fn heap_bytes(&self) -> usize {
        self.m.len() * 40
    }
}
