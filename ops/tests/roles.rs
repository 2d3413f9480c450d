//! The public roles a test starts beside a testkit cluster: a cache and an uploader, each in
//! its own thread on loopback with the cluster's security settings.

use std::net::TcpListener;

use haystack_testkit::{bind_loopback, spawn_node, stopped, Cluster, Node};

/// A cache on `cache_l` and an uploader on a new loopback port, both with
/// [`Cluster::security`]. Returns them and the uploader's URL.
pub fn cache_and_uploader(cluster: &Cluster, cache_l: TcpListener) -> (Node, Node, String) {
    let ccfg = haystack_cache::CacheConfig {
        directory_urls: Some(cluster.directory_urls()),
        capacity_bytes: 16 << 20,
        http_workers: 1,
        security: cluster.security(),
        ..Default::default()
    };
    let cache = spawn_node("cache", cache_l, move |l, rx| async move {
        haystack_cache::run(l, ccfg, stopped(rx))
            .await
            .expect("cache runs");
    });
    let up_l = bind_loopback();
    let uploader_url = format!("http://{}", up_l.local_addr().expect("addr"));
    let ucfg = haystack_uploader::UploaderConfig {
        directory_urls: Some(cluster.directory_urls()),
        http_workers: 1,
        image_workers: 1,
        security: cluster.security(),
        ..Default::default()
    };
    let uploader = spawn_node("uploader", up_l, move |l, rx| async move {
        haystack_uploader::run(l, ucfg, stopped(rx))
            .await
            .expect("uploader runs");
    });
    (cache, uploader, uploader_url)
}
