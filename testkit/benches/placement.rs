//! How the read load of a lost store spreads under each placement (issue 16): a cluster of
//! `--stores` stores, replication 2, `--volumes-per-store` volumes per store created once
//! every store has registered, photos on every volume; `--reads` random reads (a random
//! volume, photo and up replica, one read at a time) counted per store, then one store
//! stopped and the same reads again. Prints, per placement, the reads each store served
//! before and after, the share of the lost store's reads each survivor took, the survivors'
//! max/mean, and how many other stores share a volume with each store (a second failure
//! among those loses data). Counts, not speeds: the profile does not change them.
//!
//!     cargo bench -p haystack-testkit --bench placement -- --stores 8 --reads 4000

use std::collections::{BTreeMap, BTreeSet};

use haystack_directory::placement::Policy;
use haystack_testkit::placement::{create_volumes, read_load, stores, upload, wait_down};
use haystack_testkit::{Cluster, ClusterOptions};

struct Args {
    stores: usize,
    volumes_per_store: usize,
    reads: usize,
    lost: usize,
}

fn args() -> Args {
    let mut a = Args {
        stores: 8,
        volumes_per_store: 4,
        reads: 4000,
        lost: 3,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.iter();
    while let Some(k) = it.next() {
        let mut val = || {
            it.next()
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or_else(|| panic!("{k} wants a number"))
        };
        match k.as_str() {
            "--stores" => a.stores = val(),
            "--volumes-per-store" => a.volumes_per_store = val(),
            "--reads" => a.reads = val().min(100_000),
            "--lost" => a.lost = val(),
            _ => {} // cargo bench's own flags (--bench)
        }
    }
    a
}

fn main() {
    let a = args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "{} stores, replication 2, {} volumes, {} reads before and after store #{} stops\n",
        a.stores,
        a.stores * a.volumes_per_store,
        a.reads,
        a.lost
    );
    for policy in [Policy::Spread, Policy::Chained] {
        rt.block_on(run(&a, policy));
    }
}

fn max_mean(v: &[u64]) -> (u64, f64, f64) {
    let max = v.iter().copied().max().unwrap_or(0);
    let mean = v.iter().sum::<u64>() as f64 / v.len().max(1) as f64;
    (max, mean, max as f64 / mean.max(1e-9))
}

async fn run(a: &Args, policy: Policy) {
    let mut c = Cluster::start(ClusterOptions {
        stores: a.stores,
        replication: 2,
        min_writable_volumes: 0,
        volume_bytes: 8 << 20,
        placement: policy,
        ..Default::default()
    })
    .await;
    let nvol = a.stores * a.volumes_per_store;
    let vols = create_volumes(&c, a.stores, nvol).await;
    let ring: Vec<u64> = stores(&c).await.iter().map(|s| s.store_id).collect();
    let pos = |id: u64| ring.iter().position(|r| *r == id).unwrap_or(usize::MAX);
    // Partners: the other stores sharing a volume with each store.
    let mut partners: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    for v in &vols {
        for r in &v.replicas {
            for o in &v.replicas {
                if o.store_id != r.store_id {
                    partners.entry(r.store_id).or_default().insert(o.store_id);
                }
            }
        }
    }
    let photos = upload(&c, nvol, 8, 1024).await;
    let before = read_load(&c, &photos, a.reads, 1).await;
    let lost_url = c.store_url(a.lost);
    let lost = stores(&c)
        .await
        .iter()
        .find(|s| s.url == lost_url)
        .map(|s| s.store_id)
        .expect("registered");
    c.stop_store(a.lost);
    wait_down(&c, lost).await;
    let after = read_load(&c, &photos, a.reads, 1).await;

    println!("### placement = {policy:?}\n");
    println!(
        "{} volumes on {} stores; {} photos; store lost: ring position {} (holds {} volumes)\n",
        vols.len(),
        ring.len(),
        photos.len(),
        pos(lost),
        vols.iter()
            .filter(|v| v.replicas.iter().any(|r| r.store_id == lost))
            .count()
    );
    println!("| ring position | volumes | shares a volume with | reads before | reads after | share of the lost store's reads |");
    println!("|---|---|---|---|---|---|");
    let lost_before = before.by_store.get(&lost).copied().unwrap_or(0);
    let mut sb = Vec::new();
    let mut sa = Vec::new();
    for id in &ring {
        let b = before.by_store.get(id).copied().unwrap_or(0);
        let af = after.by_store.get(id).copied().unwrap_or(0);
        let held = vols
            .iter()
            .filter(|v| v.replicas.iter().any(|r| r.store_id == *id))
            .count();
        let mut with: Vec<usize> = partners
            .get(id)
            .map(|p| p.iter().map(|o| pos(*o)).collect())
            .unwrap_or_default();
        with.sort();
        let with: Vec<String> = with.iter().map(|p| p.to_string()).collect();
        let share = if *id == lost {
            "(lost)".to_string()
        } else {
            sb.push(b);
            sa.push(af);
            format!(
                "{:.1} %",
                100.0 * (af as f64 - b as f64) / lost_before.max(1) as f64
            )
        };
        println!(
            "| {}{} | {held} | {} | {b} | {af} | {share} |",
            pos(*id),
            if *id == lost { " (lost)" } else { "" },
            with.join(" "),
        );
    }
    let (bmax, bmean, bratio) = max_mean(&sb);
    let (amax, amean, aratio) = max_mean(&sa);
    let took = sa
        .iter()
        .zip(&sb)
        .filter(|(a, b)| (**a as f64 - **b as f64) > 0.10 * lost_before as f64)
        .count();
    let pairs = partners.values().map(|p| p.len()).sum::<usize>() / 2;
    let all_pairs = ring.len() * (ring.len() - 1) / 2;
    println!(
        "\nsurvivors before: max {bmax}, mean {bmean:.0}, max/mean {bratio:.2}; after: max {amax}, mean {amean:.0}, max/mean {aratio:.2}"
    );
    println!(
        "survivors taking more than 10 % of the lost store's {lost_before} reads: {took}; failed reads: {} before, {} after",
        before.failed, after.failed
    );
    println!(
        "store pairs sharing a volume (a second failure among them loses a volume): {pairs} of {all_pairs}\n"
    );
}
