//! A replica write that lands after the photo's delete (an upload acknowledged by one
//! replica, `write_ack = "one"`, whose other replica's write was still under way) must not
//! bring the deleted photo back on that replica.

use std::time::{Duration, Instant};

use haystack_proto::directory::PhotoInfo;
use haystack_proto::format_cookie;
use haystack_testkit::{bind_loopback, spawn_node, stopped, Cluster, ClusterOptions};

use crate::common::{get_json, jpeg, paused_at};

/// Store 1 is held at `batch-write` (its batch received, not yet written) while store 0
/// acknowledges the upload; the photo is deleted (store 1 has nothing yet: 404), then store
/// 1 goes on and writes. Before stores refused writes of deleted needles, store 1 then served
/// every variant of the deleted photo to anyone holding its URL (until anti-entropy or gc
/// came by); now the late write answers 410 `deleted` and every variant is a 404 there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_write_landing_after_the_delete_does_not_bring_the_photo_back() {
    let cl = Cluster::start(ClusterOptions::default()).await;
    let admin = cl.admin_http();
    let dir = cl.directory_url();
    let slow = cl.store_dir(1);
    let armed = slow.join("test-pause-batch-write");
    std::fs::write(&armed, b"").unwrap();

    let l = bind_loopback();
    let uploader = format!("http://{}", l.local_addr().unwrap());
    let cfg = haystack_uploader::UploaderConfig {
        directory_url: Some(dir.clone()),
        http_workers: 1,
        image_workers: 1,
        security: cl.security(),
        write_ack: haystack_client::store::WriteAck::One,
        ..Default::default()
    };
    let _uploader = spawn_node("uploader", l, move |l, rx| async move {
        haystack_uploader::run(l, cfg, stopped(rx))
            .await
            .expect("uploader runs");
    });
    let http = reqwest::Client::new();
    let up = http
        .post(format!("{uploader}/v1/photos"))
        .header("content-type", "image/jpeg")
        .body(jpeg(40))
        .send()
        .await
        .unwrap();
    assert_eq!(up.status(), 201, "{}", up.text().await.unwrap_or_default());
    let id = up.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    paused_at(&slow, "batch-write").await;
    let info: PhotoInfo =
        serde_json::from_value(get_json(&admin, format!("{dir}/v1/photos/{id}")).await).unwrap();
    let paths: Vec<String> = info
        .variants
        .iter()
        .map(|v| {
            format!(
                "/v1/needles/{}/{}/{}/{}",
                info.volume_id,
                info.id,
                v.alt,
                format_cookie(info.cookie)
            )
        })
        .collect();
    assert!(!paths.is_empty());
    let status = async |url: String| admin.get(url).send().await.unwrap().status().as_u16();
    let store0 = cl.store_url(0);
    for p in &paths {
        assert_eq!(
            status(format!("{store0}{p}")).await,
            200,
            "store 0 acknowledged {p}"
        );
    }

    let del = http
        .delete(format!("{uploader}/v1/photos/{id}"))
        .send()
        .await
        .unwrap();
    assert!(del.status().is_success(), "{}", del.status());

    // Store 1 writes the batch it was holding; it answers the uploader's background write.
    std::fs::remove_file(&armed).unwrap();
    let paused = slow.join("test-paused-batch-write");
    let deadline = Instant::now() + Duration::from_secs(30);
    while paused.exists() {
        assert!(Instant::now() < deadline, "store 1 never went on");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let store1 = cl.store_url(1);
    let metrics_settled = Instant::now() + Duration::from_secs(30);
    loop {
        let m = admin
            .get(format!("{store1}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let refused = m.lines().any(|l| {
            l.starts_with("haystack_store_writes_refused_deleted_total") && !l.ends_with(" 0")
        });
        let any_live = {
            let mut live = false;
            for p in &paths {
                let s = status(format!("{store1}{p}")).await;
                assert!(s == 404 || s == 200, "{p}: {s}");
                live |= s == 200;
            }
            live
        };
        assert!(
            !any_live,
            "store 1 serves the deleted photo after the late write"
        );
        if refused {
            break;
        }
        assert!(
            Instant::now() < metrics_settled,
            "store 1 never refused the late write"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for p in &paths {
        assert_eq!(
            status(format!("{store0}{p}")).await,
            404,
            "store 0 still serves {p}"
        );
    }
}
