//! The one authentication layer every HTTP server wraps its whole app in ([`Guard::layer`]).
//! Each service hands it a classifier, `fn(&Method, &str) -> Access`, that names its public
//! routes; everything else needs a bearer token minted from the cluster secret
//! (haystack_proto::auth), so a route added later is protected without anyone remembering to.
//! A refusal is a 401 (no, malformed, wrong or expired token) or a 403 (a valid token whose
//! role does not reach the route) with a JSON error body, and the handler never runs. Admin
//! actions, and every refusal on an admin route, go to the audit log (a JSON line each: who,
//! what, when, answer) and to the `haystack_audit` tracing target.

use std::fs::File;
use std::future::{ready, Future, Ready};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use actix_web::body::EitherBody;
use actix_web::dev::{forward_ready, Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::http::{header, Method, StatusCode};
use actix_web::{HttpMessage, HttpResponse};
use haystack_proto::auth::{bearer, Access, Claims, ClusterKeys, TokenError, WRITE_TOKEN_HEADER};
use haystack_proto::ErrorBody;

/// A service's route classification: which class a request (method, path) falls in.
pub type Classify = fn(&Method, &str) -> Access;

/// The paths of read URLs that signed reads cover: needles (stores and caches) and whole
/// videos (caches).
pub const SIGNED_PREFIXES: [&str; 2] = [
    haystack_proto::needle::NEEDLES_PREFIX,
    haystack_proto::needle::VIDEOS_PREFIX,
];

/// The security settings of one role, filled by whoever starts it (`haystack` reads the
/// secret from `--cluster-secret-file` or `HAYSTACK_CLUSTER_SECRET`). Not part of the config
/// file's role sections: the secret is read from its own file or the environment.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Security {
    /// The cluster's keys. None: no authentication, which `run` refuses on a listener that is
    /// not loopback (a development cluster on one machine).
    pub keys: Option<ClusterKeys>,
    /// Where admin actions are appended (JSON lines); None: the `haystack_audit` log target
    /// only.
    pub audit_log: Option<PathBuf>,
    /// TLS on every listener and internal client (None: plain HTTP).
    pub tls: Option<Arc<crate::tls::Tls>>,
    /// Signed read URLs (private photos), cluster-wide: the lifetime in seconds of the read
    /// URLs the directory (and the uploader, for whole videos) hands out, each with an expiry
    /// and an HMAC; stores and caches then serve needle and video reads only on a valid,
    /// unexpired signature, or to the cluster's own callers (a bearer token). None: read URLs
    /// are plain and the cookie alone is the capability. Needs `keys`.
    pub signed_reads_ttl_secs: Option<u64>,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security")
            .field("keys", &self.keys.as_ref().map(|_| "<redacted>"))
            .field("audit_log", &self.audit_log)
            .field("tls", &self.tls)
            .field("signed_reads_ttl_secs", &self.signed_reads_ttl_secs)
            .finish()
    }
}

impl Security {
    /// Settings with `keys` and no audit file.
    pub fn with_keys(keys: ClusterKeys) -> Security {
        Security {
            keys: Some(keys),
            audit_log: None,
            tls: None,
            signed_reads_ttl_secs: None,
        }
    }

    /// `url`, a read URL of a needle or a whole video (`.../v1/needles/...` or
    /// `.../v1/videos/...`), signed until a little over `signed_reads_ttl_secs` from now when
    /// signed reads are on; unchanged otherwise. The signature covers the path from `/v1/` on
    /// (whatever base, a CDN's included, is in front) and the expiry.
    pub fn sign_read_url(&self, url: String) -> String {
        let (Some(ttl), Some(keys)) = (self.signed_reads_ttl_secs, &self.keys) else {
            return url;
        };
        let Some(at) = SIGNED_PREFIXES.iter().filter_map(|p| url.rfind(p)).max() else {
            return url;
        };
        let expires = haystack_proto::auth::read_url_expiry(unix_now(), ttl);
        let query = keys.signed_read_query(&url[at..], expires);
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}{query}")
    }

    /// A reqwest client builder for this role's internal clients: TLS with the role's CA (and
    /// certificate, under mutual TLS) when configured, plain HTTP otherwise.
    pub fn http_builder(&self) -> reqwest::ClientBuilder {
        crate::tls::http_builder(self.tls.as_deref())
    }

    /// The listener's TLS settings, if any (for [`crate::tls::listen`]).
    pub fn tls(&self) -> Option<&crate::tls::Tls> {
        self.tls.as_deref()
    }
}

/// The unix time now, seconds.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Who called, as the layer found out: put in the request's extensions for handlers.
#[derive(Clone, Debug)]
pub struct Caller(pub Option<Claims>);

/// Whether a request of class [`Access::Write`] may write needle (`volume`, `key`, `alt`): a
/// cluster without keys, a caller whose bearer token the layer accepted, or a write token in
/// [`WRITE_TOKEN_HEADER`] whose scope holds the needle. Every handler of a `Write` route
/// calls it for every needle before writing.
pub fn check_write(
    req: &actix_web::HttpRequest,
    keys: Option<&ClusterKeys>,
    volume: u32,
    key: u64,
    alt: u32,
) -> Result<(), TokenError> {
    let Some(keys) = keys else {
        return Ok(());
    };
    if let Some(Caller(Some(c))) = req.extensions().get::<Caller>() {
        if c.role.permits(Access::Write) {
            return Ok(());
        }
    }
    let token = req
        .headers()
        .get(WRITE_TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or(TokenError::Malformed)?;
    keys.verify_write(token, volume, key, alt, unix_now())
        .map(drop)
}

/// The audit log file: one JSON line per admin action, appended.
struct AuditLog {
    file: Mutex<File>,
}

impl AuditLog {
    fn open(path: &Path) -> Result<AuditLog, String> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("cannot open the audit log {}: {e}", path.display()))?;
        Ok(AuditLog {
            file: Mutex::new(file),
        })
    }

    fn append(&self, line: &str) {
        let mut f = crate::sync::lock(&self.file);
        // One write call per line: with O_APPEND the line lands whole even when several
        // processes share the file.
        if let Err(e) = f.write_all(format!("{line}\n").as_bytes()) {
            tracing::error!(error = %e, "cannot append to the audit log");
        }
    }
}

/// A service's authentication: its keys, its classification and its audit log.
pub struct Guard {
    service: &'static str,
    keys: Option<ClusterKeys>,
    classify: Classify,
    audit: Option<AuditLog>,
    /// Public reads under [`SIGNED_PREFIXES`] need a signature (stores and caches with
    /// signed reads on).
    signed_reads: bool,
}

impl Guard {
    /// The guard of `service` (a name for logs) with `security`'s keys and audit file.
    pub fn new(
        service: &'static str,
        security: &Security,
        classify: Classify,
    ) -> Result<Arc<Guard>, String> {
        Guard::build(service, security, classify).map(Arc::new)
    }

    fn build(
        service: &'static str,
        security: &Security,
        classify: Classify,
    ) -> Result<Guard, String> {
        let audit = match &security.audit_log {
            Some(p) => Some(AuditLog::open(p)?),
            None => None,
        };
        Ok(Guard {
            service,
            keys: security.keys.clone(),
            classify,
            audit,
            signed_reads: false,
        })
    }

    /// The guard of a role that serves read URLs (a store, a cache): as [`Guard::new`], and
    /// when `security` turns signed reads on, public GETs and HEADs under
    /// [`SIGNED_PREFIXES`] need a valid signature or a bearer token of the cluster's.
    pub fn serving_reads(
        service: &'static str,
        security: &Security,
        classify: Classify,
    ) -> Result<Arc<Guard>, String> {
        let signed_reads = security.signed_reads_ttl_secs.is_some();
        if signed_reads && security.keys.is_none() {
            return Err(format!(
                "{service}: signed reads need the cluster secret (--cluster-secret-file or HAYSTACK_CLUSTER_SECRET)"
            ));
        }
        let mut guard = Guard::build(service, security, classify)?;
        guard.signed_reads = signed_reads;
        Ok(Arc::new(guard))
    }

    /// Refuses to serve a listener that is not loopback without keys: an open store or
    /// directory on a network is the hole this layer exists to close.
    pub fn check_listener(&self, addr: SocketAddr) -> Result<(), String> {
        if self.keys.is_none() && !addr.ip().is_loopback() {
            return Err(format!(
                "{} on {addr}: a listener that is not loopback needs the cluster secret \
                 (--cluster-secret-file or HAYSTACK_CLUSTER_SECRET)",
                self.service
            ));
        }
        if self.keys.is_none() {
            tracing::warn!(service = self.service, %addr, "no cluster secret: internal and admin routes are open (loopback only)");
        }
        Ok(())
    }

    /// The actix middleware to `wrap` the whole app in.
    pub fn layer(self: &Arc<Self>) -> Authenticate {
        Authenticate(self.clone())
    }

    /// The class of a request, as the service's classifier says.
    pub fn class(&self, method: &Method, path: &str) -> Access {
        (self.classify)(method, path)
    }

    /// Decides a request: Ok with the caller's claims (None on public routes or without
    /// keys), or the refusal's status and message.
    fn decide(
        &self,
        access: Access,
        authorization: Option<&str>,
        write_token: bool,
        signed_read: Option<(&str, &str)>,
    ) -> Result<Option<Claims>, (StatusCode, &'static str, String)> {
        let Some(keys) = &self.keys else {
            return Ok(None);
        };
        let token = authorization.and_then(bearer);
        if let (Access::Public, Some((path, query))) = (access, signed_read) {
            // The cluster's own readers (a cache filling, a repair, the S3 role) prove
            // themselves with a token; anyone else with the URL's signature. Every failure gets
            // the same answer, before anything about the photo is looked at.
            if let Some(c) = token.and_then(|t| keys.verify(t, unix_now()).ok()) {
                return Ok(Some(c));
            }
            return match keys.verify_read(path, query, unix_now()) {
                Ok(()) => Ok(None),
                Err(_) => Err((
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "this URL needs a valid, unexpired signature".to_string(),
                )),
            };
        }
        let Some(token) = token else {
            if access == Access::Public {
                return Ok(None);
            }
            if access == Access::Write && write_token {
                // The handler checks the write token against what it writes
                // ([`check_write`]).
                return Ok(None);
            }
            return Err((
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                format!("this route needs a bearer token ({})", access.as_str()),
            ));
        };
        match keys.verify(token, unix_now()) {
            Ok(c) if c.role.permits(access) => Ok(Some(c)),
            Ok(c) => Err((
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "role {} may not call a route of class {}",
                    c.role.as_str(),
                    access.as_str()
                ),
            )),
            // A public route ignores a bad token rather than refusing a read it would serve
            // without one.
            Err(_) if access == Access::Public => Ok(None),
            Err(e) => Err((StatusCode::UNAUTHORIZED, "unauthorized", e.to_string())),
        }
    }

    fn audit(&self, who: &str, peer: Option<SocketAddr>, method: &Method, path: &str, status: u16) {
        let line = serde_json::json!({
            "ts": unix_now(),
            "service": self.service,
            "who": who,
            "peer": peer.map(|p| p.ip().to_string()),
            "method": method.as_str(),
            "path": path,
            "status": status,
        })
        .to_string();
        tracing::info!(target: "haystack_audit", service = self.service, who, method = %method, path, status, "admin action");
        if let Some(a) = &self.audit {
            a.append(&line);
        }
    }
}

/// The actix middleware of a [`Guard`].
pub struct Authenticate(Arc<Guard>);

impl<S, B> Transform<S, ServiceRequest> for Authenticate
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Transform = AuthenticateService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(AuthenticateService {
            inner: Rc::new(service),
            guard: self.0.clone(),
        }))
    }
}

/// The service [`Authenticate`] wraps around an app.
pub struct AuthenticateService<S> {
    inner: Rc<S>,
    guard: Arc<Guard>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T>>>;

impl<S, B> Service<ServiceRequest> for AuthenticateService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    forward_ready!(inner);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        let guard = self.guard.clone();
        let access = guard.class(req.method(), req.path());
        let signed_read = (guard.signed_reads
            && matches!(*req.method(), Method::GET | Method::HEAD)
            && SIGNED_PREFIXES.iter().any(|p| req.path().starts_with(p)))
        .then(|| (req.path(), req.query_string()));
        let decision = guard.decide(
            access,
            req.headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok()),
            req.headers().contains_key(WRITE_TOKEN_HEADER),
            signed_read,
        );
        // Admin actions and deletes are audited (who deleted a photo is an operator's
        // question as much as who sealed a volume).
        let audited = guard.keys.is_some()
            && (access == Access::Admin
                || (access != Access::Public && req.method() == Method::DELETE));
        match decision {
            Ok(claims) => {
                let who = claims
                    .as_ref()
                    .map(|c| format!("{}:{}", c.role.as_str(), c.subject));
                req.extensions_mut().insert(Caller(claims));
                let inner = self.inner.clone();
                Box::pin(async move {
                    let (method, path, peer) = (
                        req.method().clone(),
                        req.path().to_string(),
                        req.peer_addr(),
                    );
                    let res = inner.call(req).await?;
                    if audited {
                        let who = who.as_deref().unwrap_or("anonymous");
                        guard.audit(who, peer, &method, &path, res.status().as_u16());
                    }
                    Ok(res.map_into_left_body())
                })
            }
            Err((status, code, message)) => {
                tracing::warn!(
                    service = guard.service,
                    method = %req.method(),
                    path = req.path(),
                    class = access.as_str(),
                    reason = %message,
                    "request refused"
                );
                if audited {
                    guard.audit(
                        "refused",
                        req.peer_addr(),
                        req.method(),
                        req.path(),
                        status.as_u16(),
                    );
                }
                metrics::counter!("haystack_auth_refused_total", "service" => guard.service, "class" => access.as_str()).increment(1);
                let mut resp = HttpResponse::build(status);
                if status == StatusCode::UNAUTHORIZED {
                    resp.insert_header((header::WWW_AUTHENTICATE, "Bearer realm=\"haystack\""));
                }
                resp.insert_header((header::CACHE_CONTROL, "no-store"));
                let resp = resp.json(ErrorBody {
                    error: code.to_string(),
                    message,
                });
                Box::pin(async move { Ok(req.into_response(resp).map_into_right_body()) })
            }
        }
    }
}
