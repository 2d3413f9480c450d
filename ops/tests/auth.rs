//! The route table test of issue 17: every route of every service (store, directory, cache,
//! uploader), read from the services' own route tables in their sources, is called without
//! credentials, with a token of another secret, with an expired token and with a read token
//! where more is needed: each is refused with 401 or 403 and nothing changes; then with an
//! admin token it is accepted. A route in a source that the table does not list fails the
//! test, so a new route cannot go untested (nor unclassified: the layer protects it anyway).

use std::collections::BTreeSet;

use haystack_proto::auth::{Access, ClusterKeys, Role};
use haystack_proto::directory::PhotoInfo;
use haystack_service::auth::unix_now;
use haystack_testkit::{bind_loopback, random_secret, Cluster, Node};
use reqwest::Method;

/// One route: the service, the method, the path as its route table writes it (a scope's
/// routes as one full pattern), and its class.
struct Route {
    service: &'static str,
    method: Method,
    path: &'static str,
    access: Access,
}

fn r(service: &'static str, method: Method, path: &'static str, access: Access) -> Route {
    Route {
        service,
        method,
        path,
        access,
    }
}

/// The table: every route, and one path that is no route, per service (a route added later
/// is protected by default).
fn table() -> Vec<Route> {
    use Access::*;
    const NEEDLE: &str = "/v1/needles/{volume}/{key}/{alt}/{cookie}";
    const DELETED_NEEDLE: &str = "/v1/needles/{volume}/{key}/9/{cookie}";
    vec![
        // store
        r("store", Method::GET, NEEDLE, Public),
        r("store", Method::HEAD, NEEDLE, Public),
        r("store", Method::PUT, DELETED_NEEDLE, Internal),
        r("store", Method::DELETE, DELETED_NEEDLE, Internal),
        r("store", Method::POST, NEEDLE, Internal),
        r(
            "store",
            Method::POST,
            "/v1/volumes/{volume}/batch",
            Internal,
        ),
        r("store", Method::POST, "/v1/volumes/{volume}/verify", Admin),
        r("store", Method::GET, "/v1/volumes/{volume}/export", Admin),
        r("store", Method::POST, "/v1/volumes/{volume}/import", Admin),
        r("store", Method::GET, "/v1/volumes/{volume}/needles", Read),
        r("store", Method::GET, "/v1/volumes/{volume}/digest", Read),
        r("store", Method::POST, "/v1/volumes/{volume}/repair", Admin),
        r("store", Method::GET, "/v1/volumes/{volume}/ship", Internal),
        r("store", Method::POST, "/v1/volumes/{volume}/ship", Internal),
        r("store", Method::POST, "/v1/volumes/{volume}/promote", Admin),
        r("store", Method::DELETE, "/v1/volumes/{spare_volume}", Admin),
        r("store", Method::GET, "/v1/ec/{volume}", Read),
        r("store", Method::GET, "/v1/ec/{volume}/state", Internal),
        r("store", Method::GET, "/v1/ec/{volume}/index", Internal),
        r("store", Method::POST, "/v1/ec/{volume}/build", Internal),
        r("store", Method::POST, "/v1/ec/{volume}/install", Internal),
        r("store", Method::POST, "/v1/ec/{volume}/activate", Internal),
        r("store", Method::POST, "/v1/ec/{volume}/cleanup", Internal),
        r("store", Method::POST, "/v1/ec/{volume}/rebuild", Internal),
        r("store", Method::POST, "/v1/ec/{volume}/verify", Admin),
        r("store", Method::PUT, "/v1/ec/{volume}/manifest", Internal),
        r(
            "store",
            Method::DELETE,
            "/v1/ec/{volume}/staged/{generation}",
            Internal,
        ),
        r(
            "store",
            Method::GET,
            "/v1/ec/{volume}/staged/{generation}/{name}",
            Internal,
        ),
        r(
            "store",
            Method::GET,
            "/v1/ec/{volume}/shards/{shard}",
            Internal,
        ),
        r("store", Method::POST, "/v1/volumes/{volume}/gc", Admin),
        r("store", Method::POST, "/v1/volumes/{volume}/compact", Admin),
        r(
            "store",
            Method::POST,
            "/v1/volumes/{volume}/rebuild-index",
            Admin,
        ),
        r(
            "store",
            Method::POST,
            "/v1/volumes/{spare_volume}/seal",
            Admin,
        ),
        r("store", Method::GET, "/v1/volumes/{volume}", Read),
        r("store", Method::POST, "/v1/volumes/{spare_volume}", Admin),
        r("store", Method::GET, "/v1/volumes", Read),
        r("store", Method::GET, "/health", Public),
        r("store", Method::GET, "/metrics", Public),
        r("store", Method::GET, "/bench/memory/1/2/3/abc", Public),
        r("store", Method::POST, "/v1/not-yet-a-route", Admin),
        // directory
        r("directory", Method::GET, "/", Public),
        r("directory", Method::GET, "/dashboard", Public),
        r("directory", Method::GET, "/health", Public),
        r("directory", Method::GET, "/metrics", Public),
        r("directory", Method::POST, "/v1/stores/register", Internal),
        r("directory", Method::GET, "/v1/stores", Read),
        r(
            "directory",
            Method::POST,
            "/v1/stores/{store_id}/heartbeat",
            Internal,
        ),
        r(
            "directory",
            Method::POST,
            "/v1/stores/{store_id}/lifecycle",
            Admin,
        ),
        r("directory", Method::DELETE, "/v1/stores/{store_id}", Admin),
        r("directory", Method::GET, "/v1/volumes", Read),
        r("directory", Method::POST, "/v1/volumes", Admin),
        r("directory", Method::GET, "/v1/volumes/{volume_id}", Read),
        r(
            "directory",
            Method::POST,
            "/v1/volumes/{volume_id}/state",
            Admin,
        ),
        r(
            "directory",
            Method::POST,
            "/v1/volumes/{volume_id}/replace",
            Admin,
        ),
        r(
            "directory",
            Method::POST,
            "/v1/volumes/{volume_id}/promote",
            Admin,
        ),
        r("directory", Method::GET, "/v1/rebalance", Read),
        r("directory", Method::POST, "/v1/rebalance", Admin),
        r("directory", Method::POST, "/v1/assign", Internal),
        r("directory", Method::GET, "/v1/repairs", Read),
        r(
            "directory",
            Method::POST,
            "/v1/volumes/{volume_id}/encode",
            Admin,
        ),
        r(
            "directory",
            Method::POST,
            "/v1/volumes/{volume_id}/ec/rebuild",
            Admin,
        ),
        r("directory", Method::POST, "/v1/repairs", Internal),
        r("directory", Method::GET, "/v1/kv/{space}", Internal),
        r("directory", Method::PUT, "/v1/kv/{space}", Internal),
        r("directory", Method::DELETE, "/v1/kv/{space}", Internal),
        r("directory", Method::GET, "/v1/kv/{space}/scan", Internal),
        r("directory", Method::PUT, "/v1/kv/{space}/replace", Internal),
        r("directory", Method::POST, "/v1/photos", Internal),
        r("directory", Method::GET, "/v1/photos/{id}", Read),
        r("directory", Method::POST, "/v1/photos/live", Read),
        r(
            "directory",
            Method::DELETE,
            "/v1/photos/{other_id}",
            Internal,
        ),
        r("directory", Method::GET, "/v1/photos/{id}/url", Read),
        r(
            "directory",
            Method::POST,
            "/v1/photos/{other_id}/condemn",
            Admin,
        ),
        r("directory", Method::GET, "/v1/not-yet-a-route", Admin),
        // cache
        r("cache", Method::GET, NEEDLE, Public),
        r("cache", Method::HEAD, NEEDLE, Public),
        r("cache", Method::DELETE, NEEDLE, Internal),
        r("cache", Method::PUT, NEEDLE, Admin),
        r(
            "cache",
            Method::GET,
            "/v1/videos/{volume}/{id}/{cookie}",
            Public,
        ),
        r(
            "cache",
            Method::POST,
            "/v1/videos/{volume}/{id}/{cookie}",
            Admin,
        ),
        r("cache", Method::GET, "/health", Public),
        r("cache", Method::GET, "/v1/stats", Read),
        r("cache", Method::GET, "/metrics", Public),
        r("cache", Method::GET, "/v1/not-yet-a-route", Admin),
        // uploader: its API is public to the cluster's layer (the API key is its own)
        r("uploader", Method::POST, "/v1/photos", Public),
        r("uploader", Method::GET, "/v1/photos/{id}", Public),
        r("uploader", Method::HEAD, "/v1/photos/{id}", Public),
        r("uploader", Method::DELETE, "/v1/photos/{other_id}", Public),
        r("uploader", Method::POST, "/v1/videos", Public),
        r("uploader", Method::GET, "/health", Public),
        r("uploader", Method::GET, "/metrics", Public),
        r("uploader", Method::GET, "/v1/not-yet-a-route", Admin),
    ]
}

/// The routes a service's source registers: (method or `*` for a scope that dispatches on the
/// method itself, path pattern), from `web::resource("..")` with its `.route(web::get()..)`
/// lines, `web::scope("..")` and `.route("..", web::post()..)`.
fn source_routes(src: &str) -> BTreeSet<(String, String)> {
    // rustfmt breaks a long `.route(` call after its parenthesis and commas: join those
    // lines first, so each call is on one line.
    let mut joined: Vec<String> = Vec::new();
    let mut open = false;
    for line in src.lines() {
        let l = line.trim();
        match joined.last_mut() {
            Some(last) if open => {
                last.push(' ');
                last.push_str(l);
            }
            _ => joined.push(l.to_string()),
        }
        open = l.ends_with('(') || (open && l.ends_with(','));
    }
    let mut out = BTreeSet::new();
    let mut resource: Option<String> = None;
    // A scope's own `.route("/{..}", ..)` calls are relative to it.
    let mut scope: Option<String> = None;
    for l in &joined {
        let l = l.as_str();
        let lit = |after: &str| -> Option<String> {
            let rest = l.split(after).nth(1)?.trim_start().strip_prefix('"')?;
            Some(rest.split('"').next()?.to_string())
        };
        let method_of = |s: &str| {
            ["get", "post", "put", "delete", "head"]
                .into_iter()
                .find(|m| s.contains(&format!("web::{m}()")))
                .map(|m| m.to_uppercase())
        };
        if l.contains("web::scope(\"") {
            if let Some(p) = lit("web::scope(") {
                out.insert(("*".to_string(), p.clone()));
                scope = Some(p);
            }
            resource = None;
        } else if l.contains("web::resource(\"") {
            resource = lit("web::resource(");
            if let (Some(p), Some(m)) = (&resource, method_of(l)) {
                out.insert((m, p.clone()));
            }
        } else if l.starts_with(".route( \"") || l.starts_with(".route(\"") {
            if let (Some(p), Some(m)) = (lit(".route("), method_of(l)) {
                // Inside a scope every path is relative to it but those of the top level
                // (`/v1/...`), which end the scope.
                if p.starts_with("/v1/") {
                    scope = None;
                }
                match &scope {
                    Some(sc) => out.insert((m, format!("{sc}{p}"))),
                    None => out.insert((m, p)),
                };
            }
        } else if l.starts_with(".route(web::") {
            if let (Some(p), Some(m)) = (&resource, method_of(l)) {
                out.insert((m, p.clone()));
            }
        }
    }
    out
}

#[test]
fn every_route_in_the_sources_is_in_the_table() {
    let sources = [
        ("store", include_str!("../../store/src/http.rs")),
        ("store", include_str!("../../store/src/http_ec.rs")),
        ("directory", include_str!("../../directory/src/http.rs")),
        ("directory", include_str!("../../directory/src/http_kv.rs")),
        ("cache", include_str!("../../cache/src/http.rs")),
        ("uploader", include_str!("../../uploader/src/http.rs")),
    ];
    let table = table();
    for (service, src) in sources {
        let found = source_routes(src);
        assert!(
            found.len() >= 5,
            "{service}: the route scan found {found:?}"
        );
        // The scanner reads calls rustfmt broke over several lines too.
        if service == "directory" && src.contains("set_volume_state") {
            let state = (
                "POST".to_string(),
                "/v1/volumes/{volume_id}/state".to_string(),
            );
            assert!(found.contains(&state), "{found:?}");
        }
        for (method, path) in &found {
            let listed = table.iter().any(|t| {
                t.service == service
                    && if method == "*" {
                        t.path.starts_with(&format!("{path}/"))
                    } else {
                        t.path == path && t.method.as_str() == method
                            || pattern_eq(t.path, path) && t.method.as_str() == method
                    }
            });
            assert!(
                listed,
                "{service} registers {method} {path}, which the auth table does not list: \
                 add it with its class (and to docs/API.md)"
            );
        }
    }
}

/// Whether two path patterns differ only in the names of their `{placeholders}` (the table
/// names some differently to pick other values).
fn pattern_eq(a: &str, b: &str) -> bool {
    let (a, b): (Vec<&str>, Vec<&str>) = (a.split('/').collect(), b.split('/').collect());
    a.len() == b.len()
        && a.iter()
            .zip(&b)
            .all(|(x, y)| x == y || (x.starts_with('{') && y.starts_with('{')))
}

/// The running services and the values the paths are filled with.
struct World {
    cluster: Cluster,
    _cache: Node,
    _uploader: Node,
    cache_url: String,
    uploader_url: String,
    photo: PhotoInfo,
    store_id: u64,
    spare_volume: u32,
}

impl World {
    fn base(&self, service: &str) -> String {
        match service {
            "store" => self.photo.replicas[0].url.clone(),
            "directory" => self.cluster.directory_url(),
            "cache" => self.cache_url.clone(),
            _ => self.uploader_url.clone(),
        }
    }

    fn url(&self, route: &Route) -> String {
        let p = &self.photo;
        let path = route
            .path
            .replace("{volume}", &p.volume_id.to_string())
            .replace("{volume_id}", &p.volume_id.to_string())
            .replace("{spare_volume}", &self.spare_volume.to_string())
            .replace("{key}", &p.id.to_string())
            .replace("{id}", &p.id.to_string())
            .replace("{other_id}", "12345")
            .replace("{alt}", "0")
            .replace("{cookie}", &haystack_proto::format_cookie(p.cookie))
            .replace("{store_id}", &self.store_id.to_string())
            .replace("{space}", "authtest")
            .replace("{generation}", "0")
            .replace("{name}", "index")
            .replace("{shard}", "0");
        format!("{}{path}", self.base(route.service))
    }

    /// What a refused request could have changed: the directory's volumes and photo, every
    /// store's volumes (needle counts, sizes, states), the photo's bytes.
    async fn snapshot(&self, admin: &reqwest::Client) -> Vec<String> {
        let mut out = Vec::new();
        let get = |u: String| {
            let admin = admin.clone();
            async move {
                let r = admin.get(&u).send().await.expect("snapshot GET");
                format!("{u} {} {}", r.status(), r.text().await.expect("body"))
            }
        };
        let dir = self.cluster.directory_url();
        out.push(get(format!("{dir}/v1/photos/{}", self.photo.id)).await);
        let vols: serde_json::Value = admin
            .get(format!("{dir}/v1/volumes"))
            .send()
            .await
            .expect("volumes")
            .json()
            .await
            .expect("volumes JSON");
        for v in vols.as_array().expect("list") {
            out.push(format!("{} {} {}", v["id"], v["state"], v["replicas"]));
        }
        for s in self.cluster.store_urls() {
            out.push(get(format!("{s}/v1/volumes")).await);
        }
        out.push(
            get(format!(
                "{}/v1/needles/{}/{}/0/{}",
                self.photo.replicas[0].url,
                self.photo.volume_id,
                self.photo.id,
                haystack_proto::format_cookie(self.photo.cookie)
            ))
            .await,
        );
        out
    }
}

fn client_with(token: Option<&str>) -> reqwest::Client {
    let mut h = reqwest::header::HeaderMap::new();
    if let Some(t) = token {
        h.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {t}").parse().expect("header"),
        );
    }
    reqwest::Client::builder()
        .default_headers(h)
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .expect("client")
}

async fn start() -> World {
    let cluster = Cluster::start(haystack_testkit::ClusterOptions {
        stores: 3,
        ..Default::default()
    })
    .await;
    let cache_l = bind_loopback();
    let cache_url = format!("http://{}", cache_l.local_addr().expect("addr"));
    let (cache, uploader, uploader_url) = crate::roles::cache_and_uploader(&cluster, cache_l);
    let admin = cluster.admin_http();
    // A photo through the public API, and its record through the directory.
    let jpeg = crate::common::jpeg(7);
    let mut posted = None;
    for _ in 0..200 {
        if let Ok(r) = reqwest::Client::new()
            .post(format!("{uploader_url}/v1/photos"))
            .header("content-type", "image/jpeg")
            .body(jpeg.clone())
            .send()
            .await
        {
            if r.status() == 201 {
                posted = Some(r.json::<serde_json::Value>().await.expect("JSON"));
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let posted = posted.expect("an upload through the uploader");
    let id = posted["id"].as_str().expect("id").to_string();
    let photo: PhotoInfo = admin
        .get(format!("{}/v1/photos/{id}", cluster.directory_url()))
        .send()
        .await
        .expect("lookup")
        .json()
        .await
        .expect("PhotoInfo");
    let stores: serde_json::Value = admin
        .get(format!("{}/v1/stores", cluster.directory_url()))
        .send()
        .await
        .expect("stores")
        .json()
        .await
        .expect("stores JSON");
    let store_id: u64 = stores[0]["store_id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("store id");
    World {
        cluster,
        _cache: cache,
        _uploader: uploader,
        cache_url,
        uploader_url,
        photo,
        store_id,
        spare_volume: 4000,
    }
}

fn refused(status: u16) -> bool {
    status == 401 || status == 403
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_refuses_wrong_credentials_and_accepts_right_ones() {
    let w = start().await;
    let keys = w.cluster.keys().clone();
    let admin = w.cluster.admin_http();
    let other = ClusterKeys::from_secret(&random_secret()).expect("keys");
    let now = unix_now();
    let credentials: Vec<(&str, Option<String>)> = vec![
        ("no token", None),
        (
            "another secret",
            Some(other.mint(Role::Admin, "x", now + 600)),
        ),
        ("expired", Some(keys.mint(Role::Admin, "x", now - 1))),
        ("garbage", Some("hs1.admin.x.1.00".into())),
    ];
    let read = keys.mint(Role::Read, "reader", now + 600);
    let ops = keys.mint(Role::Ops, "operator", now + 600);
    let before = w.snapshot(&admin).await;
    let mut checked = 0;
    for route in table() {
        let url = w.url(&route);
        for (what, token) in &credentials {
            let c = client_with(token.as_deref());
            let resp = c
                .request(route.method.clone(), &url)
                .body(Vec::<u8>::new())
                .send()
                .await
                .expect("request");
            let status = resp.status().as_u16();
            if route.access == Access::Public {
                assert!(
                    !refused(status),
                    "{} {} {url} ({what}) is public but answered {status}",
                    route.service,
                    route.method
                );
            } else {
                assert!(
                    refused(status),
                    "{} {} {url} ({what}) answered {status}, not 401/403",
                    route.service,
                    route.method
                );
                let body: serde_json::Value = resp.json().await.expect("a JSON error body");
                assert!(
                    body["error"] == "unauthorized" || body["error"] == "forbidden",
                    "{body}"
                );
                checked += 1;
            }
        }
        // Roles below the route's class are refused with 403.
        for (role, token) in [(Role::Read, &read), (Role::Ops, &ops)] {
            if role.permits(route.access) {
                continue;
            }
            let status = client_with(Some(token))
                .request(route.method.clone(), &url)
                .send()
                .await
                .expect("request")
                .status()
                .as_u16();
            assert_eq!(
                status,
                403,
                "{} {} {url} with a {} token",
                route.service,
                route.method,
                role.as_str()
            );
        }
    }
    assert!(checked > 100, "only {checked} refusals checked");
    let after = w.snapshot(&admin).await;
    assert_eq!(before, after, "a refused request changed something");

    // With an admin token every route is accepted: the handler answers (any status but 401
    // and 403: a 400 for a missing body counts, it was the handler's).
    for route in table() {
        let url = w.url(&route);
        let status = admin
            .request(route.method.clone(), &url)
            .send()
            .await
            .expect("request")
            .status()
            .as_u16();
        assert!(
            !refused(status),
            "{} {} {url} refused an admin token: {status}",
            route.service,
            route.method
        );
    }
}

/// Issue 17's token scope: the write token the directory issues with an assignment for
/// (volume V, key K) writes K's needles on V's replicas, alone (no bearer), and nothing else:
/// not K+1, not volume V+1, not after it expires; nor does a token of another secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_token_writes_its_needles_only() {
    use haystack_proto::auth::{WriteScope, WRITE_TOKEN_HEADER};
    use haystack_proto::directory::{AssignRequest, AssignResponse};
    let cluster = Cluster::start(Default::default()).await;
    let admin = cluster.admin_http();
    let a: AssignResponse = admin
        .post(format!("{}/v1/assign", cluster.directory_url()))
        .json(&AssignRequest::default())
        .send()
        .await
        .expect("assign")
        .json()
        .await
        .expect("AssignResponse");
    let token = a
        .write_token
        .clone()
        .expect("the assignment carries a write token");
    let store = a.replicas[0].url.clone();
    let cookie = haystack_proto::format_cookie(a.cookie);
    let plain = reqwest::Client::new();
    let put = |volume: u32, key: u64, alt: u32, token: Option<String>| {
        let url = format!("{store}/v1/needles/{volume}/{key}/{alt}/{cookie}");
        let plain = plain.clone();
        async move {
            let mut r = plain.put(&url).body(b"abc".to_vec());
            if let Some(t) = token {
                r = r.header(WRITE_TOKEN_HEADER, t);
            }
            r.send().await.expect("PUT").status().as_u16()
        }
    };
    let (v, k) = (a.volume_id, a.id);
    assert_eq!(put(v, k, 0, Some(token.clone())).await, 201);
    assert_eq!(
        put(v, k, 3, Some(token.clone())).await,
        201,
        "any alternate key"
    );
    assert_eq!(put(v, k + 1, 0, Some(token.clone())).await, 403, "key K+1");
    assert_eq!(
        put(v + 1, k, 0, Some(token.clone())).await,
        403,
        "volume V+1"
    );
    let scope = WriteScope {
        volume: v,
        key: k,
        alt_min: 0,
        alt_max: u32::MAX,
    };
    let expired = cluster.keys().mint_write(scope, unix_now() - 1);
    assert_eq!(put(v, k, 0, Some(expired)).await, 403, "expired");
    let other = ClusterKeys::from_secret(&random_secret()).expect("keys");
    let foreign = other.mint_write(scope, unix_now() + 600);
    assert_eq!(put(v, k, 0, Some(foreign)).await, 403, "another secret");
    assert_eq!(put(v, k, 0, None).await, 401, "no token at all");
    // A batch is checked needle by needle: one needle of another key refuses the whole batch.
    let batch = |key: u64| {
        haystack_client::store::encode_batch(
            key,
            a.cookie,
            &[haystack_client::store::Needle {
                alt: 1,
                content_type: "image/jpeg".into(),
                data: bytes::Bytes::from_static(b"xyz"),
            }],
        )
    };
    let post_batch = |key: u64| {
        plain
            .post(format!("{store}/v1/volumes/{v}/batch"))
            .header(WRITE_TOKEN_HEADER, token.clone())
            .body(batch(key))
            .send()
    };
    assert_eq!(post_batch(k + 1).await.expect("batch").status(), 403);
    assert_eq!(post_batch(k).await.expect("batch").status(), 201);
    // Nothing of K+1 was written.
    let got = plain
        .get(format!("{store}/v1/needles/{v}/{}/0/{cookie}", k + 1))
        .send()
        .await
        .expect("GET");
    assert_eq!(got.status(), 404);
}

/// A slowloris client (one header byte a second, never finishing its head) is cut off by
/// every server of the cluster (the directory, a store and the S3 role) within the request head timeout, while other clients are
/// served meanwhile. Bounded: at most 40 bytes (40 s) per server; no assertion on speed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_header_client_is_cut_off_while_others_are_served() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cluster = Cluster::start(Default::default()).await;
    // The S3 role too (it takes no cluster tokens; its own head timeout must hold).
    let keys = tempfile::tempdir().expect("tempdir");
    let s3_l = haystack_testkit::bind_loopback();
    let s3_url = format!("http://{}", s3_l.local_addr().expect("addr"));
    let s3cfg = haystack_s3::S3Config {
        directory_urls: Some(cluster.directory_urls()),
        master_key_file: keys.path().join("master.key"),
        http_workers: 1,
        security: cluster.security(),
        ..Default::default()
    };
    let _s3 = haystack_testkit::spawn_node("s3", s3_l, move |l, rx| async move {
        haystack_s3::run(l, s3cfg, haystack_testkit::stopped(rx))
            .await
            .expect("s3 runs");
    });
    let plain = reqwest::Client::new();
    for _ in 0..100 {
        if plain.get(format!("{s3_url}/health")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    for base in [cluster.directory_url(), cluster.store_url(0), s3_url] {
        let addr = base.trim_start_matches("http://").to_string();
        let mut slow = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .expect("write the start of a head");
        let mut closed = false;
        let mut served_meanwhile = 0;
        for _ in 0..40 {
            if slow.write_all(b"a").await.is_err() {
                closed = true;
                break;
            }
            // Whatever comes back (a 408, or EOF) ends the slow request.
            let mut buf = [0u8; 256];
            match tokio::time::timeout(std::time::Duration::from_secs(1), slow.read(&mut buf)).await
            {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    closed = true;
                    break;
                }
                Ok(Ok(n)) => {
                    let head = String::from_utf8_lossy(&buf[..n]).to_string();
                    assert!(head.contains("408"), "{base}: {head}");
                    closed = true;
                    break;
                }
                Err(_) => {}
            }
            let r = plain
                .get(format!("{base}/health"))
                .send()
                .await
                .expect("another client");
            assert!(r.status().is_success());
            served_meanwhile += 1;
        }
        assert!(closed, "{base} kept a slowloris connection for 40 s");
        assert!(served_meanwhile > 0, "{base} served nobody meanwhile");
    }
}
