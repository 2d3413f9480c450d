//! The S3 role given two directory URLs, the first dead (a port bound, then closed): buckets,
//! PUTs and GETs (the `/v1/kv` records, assign and commit of the data, lookups on reads) go
//! on through the live one, and the failovers are counted in
//! `haystack_s3_directory_failovers_total`, once per client before it sticks to the live
//! directory.

use haystack_testkit::ClusterOptions;

use crate::common::Harness;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puts_and_gets_go_on_past_a_dead_first_directory() {
    let h = Harness::start_with(ClusterOptions {
        volume_bytes: 64 << 20,
        dead_directory_first: true,
        ..Default::default()
    })
    .await;
    let urls = h.cluster.directory_urls();
    assert_eq!(urls.len(), 2);
    assert_eq!(urls[1], h.cluster.directory_url());
    let c = h.client();
    c.create_bucket("listed").await;
    let body = |i: usize| {
        (0..3000 + i * 1000)
            .map(|b| (b * 7 + i) as u8)
            .collect::<Vec<u8>>()
    };
    for i in 0..5 {
        let r = c.put("listed", &format!("k{i}"), body(i)).await;
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    }
    for i in 0..5 {
        let r = c.get("listed", &format!("k{i}")).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().await.expect("body").as_ref(), body(i).as_slice());
    }
    let metrics = reqwest::get(format!("{}/metrics", h.url))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    let failovers: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("haystack_s3_directory_failovers_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum();
    // The server's client and the harness's key tool each fail over once; dozens of
    // directory requests went to the live one without another.
    assert!((1..=2).contains(&failovers), "{failovers}: {metrics}");
}
