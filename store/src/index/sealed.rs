//! TEMPORARY stand-in for the mapped sorted index (being written); same API.
use super::{Loc, MemIndex};
use std::path::Path;

pub struct SortedIndex {
    m: MemIndex,
}

impl SortedIndex {
    pub fn write(
        path: &Path,
        entries: impl IntoIterator<Item = (u64, u32, Loc)>,
    ) -> std::io::Result<()> {
        let mut s = String::new();
        for (k, a, l) in entries {
            s.push_str(&format!(
                "{k} {a} {} {} {}\n",
                l.offset, l.extent, l.deleted as u8
            ));
        }
        std::fs::write(path, s)
    }
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let s = std::fs::read_to_string(path)?;
        let mut v = vec![];
        for line in s.lines() {
            let p: Vec<u64> = line.split(' ').map(|x| x.parse().unwrap()).collect();
            v.push((
                p[0],
                p[1] as u32,
                Loc {
                    offset: p[2],
                    extent: p[3] as u32,
                    deleted: p[4] == 1,
                },
            ));
        }
        Ok(SortedIndex {
            m: MemIndex::from_sorted(v),
        })
    }
    pub fn get(&self, key: u64, alt: u32) -> Option<Loc> {
        self.m.get(key, alt)
    }
    pub fn mark_deleted(&mut self, key: u64, alt: u32) -> Option<Loc> {
        self.m.mark_deleted(key, alt)
    }
    pub fn len(&self) -> usize {
        self.m.len()
    }
    pub fn is_empty(&self) -> bool {
        self.m.is_empty()
    }
    pub fn iter(&self) -> impl Iterator<Item = (u64, u32, Loc)> + '_ {
        self.m.iter()
    }
    pub fn heap_bytes(&self) -> usize {
        0
    }
}
