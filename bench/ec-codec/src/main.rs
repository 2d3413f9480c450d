//! Measures encode and reconstruct throughput of two Reed-Solomon crates.
use std::time::Instant;

fn data(k: usize, len: usize) -> Vec<Vec<u8>> {
    let mut x: u64 = 0x9e3779b97f4a7c15;
    (0..k)
        .map(|_| {
            (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect()
        })
        .collect()
}

fn main() {
    let len: usize = std::env::args().nth(1).map(|s| s.parse().unwrap()).unwrap_or(1 << 20);
    let rounds = ((64usize << 20) / len).max(1);
    for &(k, m) in &[(2usize, 1usize), (4, 2), (10, 4)] {
        let d = data(k, len);
        // reed-solomon-simd
        let t = Instant::now();
        let mut parity = Vec::new();
        for _ in 0..rounds {
            parity = reed_solomon_simd::encode(k, m, &d).unwrap();
        }
        let s = t.elapsed().as_secs_f64();
        let mb = (k * len * rounds) as f64 / 1e6;
        let enc_simd = mb / s;
        // reconstruct m lost data shards (simd)
        let t = Instant::now();
        for _ in 0..rounds {
            let orig: Vec<(usize, &Vec<u8>)> = d.iter().enumerate().skip(m.min(k - 1).max(0)).collect();
            let need = k - orig.len();
            let rec: Vec<(usize, &Vec<u8>)> = parity.iter().enumerate().take(need).collect();
            let r = reed_solomon_simd::decode(k, m, orig, rec).unwrap();
            assert_eq!(r.len(), need);
        }
        let dec_simd = mb / t.elapsed().as_secs_f64();
        let mut dec = reed_solomon_simd::ReedSolomonDecoder::new(k, m, len).unwrap();
        let t = Instant::now();
        for _ in 0..rounds {
            dec.reset(k, m, len).unwrap();
            let skip = m.min(k - 1);
            for (i, s) in d.iter().enumerate().skip(skip) { dec.add_original_shard(i, s).unwrap(); }
            for (i, s) in parity.iter().enumerate().take(skip) { dec.add_recovery_shard(i, s).unwrap(); }
            let r = dec.decode().unwrap();
            assert_eq!(r.restored_original_iter().count(), skip);
        }
        let dec_simd_reuse = mb / t.elapsed().as_secs_f64();
        println!("  simd reconstruct with a reused decoder: {dec_simd_reuse:.0} MB/s");
        // reed-solomon-erasure
        let rs = reed_solomon_erasure::galois_8::ReedSolomon::new(k, m).unwrap();
        let t = Instant::now();
        for _ in 0..rounds {
            let mut shards: Vec<Vec<u8>> = d.clone();
            shards.extend((0..m).map(|_| vec![0u8; len]));
            rs.encode(&mut shards).unwrap();
        }
        let enc_era = mb / t.elapsed().as_secs_f64();
        let mut full: Vec<Vec<u8>> = d.clone();
        full.extend((0..m).map(|_| vec![0u8; len]));
        rs.encode(&mut full).unwrap();
        let t = Instant::now();
        for _ in 0..rounds {
            let lose = m.min(k - 1).max(1).min(m);
            let mut opt: Vec<Option<Vec<u8>>> = full.iter().cloned().map(Some).collect();
            for o in opt.iter_mut().take(lose) {
                *o = None;
            }
            rs.reconstruct_data(&mut opt).unwrap();
        }
        let dec_era = mb / t.elapsed().as_secs_f64();
        println!("{k}+{m} {len}-byte shards: encode simd {enc_simd:.0} MB/s, erasure {enc_era:.0} MB/s; reconstruct simd {dec_simd:.0} MB/s, erasure {dec_era:.0} MB/s (MB of data per second, one core)");
    }
}
