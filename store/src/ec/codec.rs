//! The Reed-Solomon code of erasure-coded volumes (reed-solomon-simd: why this crate is in
//! docs/ARCHITECTURE.md). Every range given here is a multiple of 64 bytes long and, within
//! its row, starts on a multiple of 64, so a range codes exactly like the same bytes of the
//! whole row: parity and reconstruction can work on only the bytes a read needs.

/// Computes the `m` parity ranges of `k` data ranges of equal length (a multiple of 64).
pub fn parity(k: usize, m: usize, data: &[&[u8]]) -> Result<Vec<Vec<u8>>, String> {
    if data.len() != k {
        return Err(format!("{} data ranges for k = {k}", data.len()));
    }
    reed_solomon_simd::encode(k, m, data).map_err(|e| format!("erasure encode: {e}"))
}

/// Rebuilds data shard `want`'s range from any `k` of the shards' ranges (indices
/// 0..k are data, k..k+m parity; `None`: not available). All given ranges have one length.
pub fn reconstruct(
    k: usize,
    m: usize,
    shards: &[Option<&[u8]>],
    want: usize,
) -> Result<Vec<u8>, String> {
    if shards.len() != k + m || want >= k + m {
        return Err("shard index out of range".into());
    }
    if let Some(s) = shards[want] {
        return Ok(s.to_vec());
    }
    let have = shards.iter().filter(|s| s.is_some()).count();
    if have < k {
        return Err(format!("{have} shards available, {k} needed"));
    }
    let originals = shards[..k]
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.map(|s| (i, s)));
    let recovery = shards[k..]
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.map(|s| (i, s)));
    if want < k {
        let mut restored = reed_solomon_simd::decode(k, m, originals, recovery)
            .map_err(|e| format!("erasure decode: {e}"))?;
        return restored
            .remove(&want)
            .ok_or_else(|| "the decoder did not restore the shard".to_string());
    }
    // A parity range: restore every data range, then encode again.
    let restored = reed_solomon_simd::decode(k, m, originals, recovery)
        .map_err(|e| format!("erasure decode: {e}"))?;
    let data: Vec<&[u8]> = (0..k)
        .map(|i| match shards[i] {
            Some(s) => Ok(s),
            None => restored
                .get(&i)
                .map(|v| v.as_slice())
                .ok_or_else(|| "the decoder did not restore a shard".to_string()),
        })
        .collect::<Result<_, String>>()?;
    let mut p = parity(k, m, &data)?;
    Ok(std::mem::take(&mut p[want - k]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn any_k_shards_rebuild_any_shard() {
        for (k, m) in [(2usize, 1usize), (4, 2), (10, 4)] {
            let data: Vec<Vec<u8>> = (0..k).map(|i| bytes(i as u64 + 7, 4096)).collect();
            let refs: Vec<&[u8]> = data.iter().map(|d| d.as_slice()).collect();
            let par = parity(k, m, &refs).unwrap();
            let all: Vec<&[u8]> = refs
                .iter()
                .copied()
                .chain(par.iter().map(|p| p.as_slice()))
                .collect();
            for want in 0..k + m {
                // Lose `want` and m - 1 others (the ones after it).
                let mut given: Vec<Option<&[u8]>> = all.iter().map(|s| Some(*s)).collect();
                for j in 0..m {
                    given[(want + j) % (k + m)] = None;
                }
                let got = reconstruct(k, m, &given, want).unwrap();
                assert_eq!(got, all[want], "{k}+{m}, shard {want}");
            }
            // One more loss than m cannot be survived.
            let mut given: Vec<Option<&[u8]>> = all.iter().map(|s| Some(*s)).collect();
            for g in given.iter_mut().take(m + 1) {
                *g = None;
            }
            assert!(reconstruct(k, m, &given, 0).is_err());
        }
    }

    #[test]
    fn an_aligned_range_codes_like_the_whole_row() {
        let (k, m) = (4, 2);
        let data: Vec<Vec<u8>> = (0..k).map(|i| bytes(i as u64 + 99, 64 * 40)).collect();
        let refs: Vec<&[u8]> = data.iter().map(|d| d.as_slice()).collect();
        let whole = parity(k, m, &refs).unwrap();
        for (start, len) in [(0usize, 64usize), (64 * 3, 64 * 5), (64 * 39, 64)] {
            let part: Vec<&[u8]> = data.iter().map(|d| &d[start..start + len]).collect();
            let p = parity(k, m, &part).unwrap();
            for j in 0..m {
                assert_eq!(p[j], whole[j][start..start + len], "range {start}+{len}");
            }
            // And a data range rebuilt from a sub-range of the others.
            let mut given: Vec<Option<&[u8]>> = part.iter().map(|s| Some(*s)).collect();
            given.push(Some(&whole[0][start..start + len]));
            given.push(Some(&whole[1][start..start + len]));
            given[2] = None;
            given[0] = None;
            assert_eq!(
                reconstruct(k, m, &given, 2).unwrap(),
                data[2][start..start + len]
            );
        }
    }
}
