//! The S3 REST API on actix-web: one handler takes every request, finds the bucket (virtual
//! host or first path segment) and key, authenticates it (SigV4 header, presigned query, or
//! anonymous), picks the operation from method, path and query, and answers S3 XML. Errors
//! become S3 XML error bodies here, from [`S3Error::code_and_status`], and nowhere else.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::TcpListener;
use std::time::Instant;

use actix_web::http::header::{self, HeaderMap};
use actix_web::http::StatusCode;
use actix_web::{
    web, App, HttpRequest, HttpResponse, HttpResponseBuilder, HttpServer, ResponseError,
};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use haystack_client::StoreReaders;
use haystack_proto::range::{decide, RangeDecision};
use percent_encoding::percent_decode_str;

use crate::body::{BodyReader, ChecksumAlgo, Expectations, Framing};
use crate::error::S3Error;
use crate::keys::AccessKey;
use crate::meta::{Bucket, ObjectHeaders, ObjectRecord, Part};
use crate::service::{check_key, etag_matches, now_ms, SharedS3, MAX_KEYS, MAX_PARTS};
use crate::sigv4::{self, AuthHeader, Credential};
use crate::xml::{self, Xml};
use haystack_proto::directory::CommitRequest;

/// Largest XML request body (DeleteObjects of 1000 keys of 1 KiB fits).
const MAX_XML_BODY: u64 = 2 << 20;
/// Largest total of `x-amz-meta-*` names and values (S3's 2 KiB).
const MAX_META_BYTES: usize = 2048;
/// Longest a presigned URL may live (S3's 7 days).
const MAX_PRESIGN_SECS: u64 = 604_800;

impl ResponseError for S3Error {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.code_and_status().1).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        error_response(self, "", false)
    }
}

/// The S3 XML error answer (no body for HEAD and 304).
fn error_response(e: &S3Error, resource: &str, head: bool) -> HttpResponse {
    let (code, status) = e.code_and_status();
    crate::metrics::record_error(code);
    if status >= 500 {
        tracing::error!(error = %e, code, resource, "request failed");
    } else {
        tracing::debug!(error = %e, code, resource, "request refused");
    }
    let id = request_id();
    let mut r = HttpResponse::build(e.status_code());
    r.insert_header(("x-amz-request-id", id.as_str()));
    if status == 503 {
        r.insert_header(("retry-after", "1"));
    }
    if head || status == 304 {
        return r.finish();
    }
    let mut x = Xml::bare("Error");
    x.el("Code", code)
        .el("Message", e.to_string())
        .el("Resource", resource)
        .el("RequestId", id);
    r.content_type("application/xml").body(x.finish("Error"))
}

fn request_id() -> String {
    thread_local! {
        static ID: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }
    ID.with(|c| {
        let v = c.get().wrapping_add(1);
        c.set(v);
        format!("{:016X}", v ^ (std::process::id() as u64) << 40)
    })
}

struct State {
    s3: SharedS3,
}

/// Who sent the request.
enum Who {
    Anonymous,
    Key(AccessKey),
}

/// An authenticated request: who, and how its body is framed and must hash.
struct Authed {
    who: Who,
    framing: Framing,
    sha256: Option<String>,
}

/// The parsed request.
struct Ctx {
    method: String,
    bucket: Option<String>,
    key: Option<String>,
    query: BTreeMap<String, String>,
    resource: String,
    head: bool,
    /// `x-amz-copy-source` is present (CopyObject, UploadPartCopy).
    copy: bool,
}

impl Ctx {
    fn q(&self, k: &str) -> Option<&str> {
        self.query.get(k).map(String::as_str)
    }
    fn has(&self, k: &str) -> bool {
        self.query.contains_key(k)
    }
}

fn hdr<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// Every request goes through here.
async fn dispatch(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<State>,
) -> HttpResponse {
    // The role's own endpoints: unsigned GETs without a query of two names that are also valid
    // bucket names (a bucket called `metrics` or `health` is listed with a signed request).
    let unsigned = !req.headers().contains_key("authorization") && req.uri().query().is_none();
    if unsigned && req.method() == actix_web::http::Method::GET {
        match req.path() {
            "/metrics" => return metrics_text().await,
            "/health" => return health(state).await,
            _ => {}
        }
    }
    let started = Instant::now();
    let head = req.method() == actix_web::http::Method::HEAD;
    let (op, result) = match parse(&req, &state.s3) {
        Ok(ctx) => {
            let op = op_name(&ctx);
            let r = handle(&req, payload, &state.s3, &ctx).await;
            (op, r.map_err(|e| (e, ctx.resource)))
        }
        Err(e) => ("Unknown", Err((e, req.path().to_string()))),
    };
    let resp = match result {
        Ok(r) => r,
        Err((e, resource)) => error_response(&e, &resource, head),
    };
    crate::metrics::record_request(
        op,
        req.method().as_str(),
        resp.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    resp
}

fn parse(req: &HttpRequest, s3: &SharedS3) -> Result<Ctx, S3Error> {
    let size: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if size > s3.cfg.max_header_bytes {
        return Err(S3Error::HeaderTooLarge);
    }
    let host = hdr(req.headers(), "host").unwrap_or("");
    let host = host.rsplit_once(':').map_or(host, |(h, p)| {
        if p.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    let vhost_bucket = s3.cfg.virtual_host_domains.iter().find_map(|d| {
        host.strip_suffix(d.as_str())
            .and_then(|b| b.strip_suffix('.'))
            .filter(|b| !b.is_empty())
            .map(str::to_string)
    });
    let path = req.uri().path();
    let decode = |s: &str| -> Result<String, S3Error> {
        percent_decode_str(s)
            .decode_utf8()
            .map(|c| c.into_owned())
            .map_err(|_| S3Error::InvalidArgument("the path is not UTF-8".into()))
    };
    let rest = path.strip_prefix('/').unwrap_or(path);
    let (bucket, key) = match vhost_bucket {
        Some(b) => (
            Some(b),
            (!rest.is_empty()).then(|| decode(rest)).transpose()?,
        ),
        None => match rest.split_once('/') {
            None if rest.is_empty() => (None, None),
            None => (Some(decode(rest)?), None),
            Some((b, k)) => (
                Some(decode(b)?),
                (!k.is_empty()).then(|| decode(k)).transpose()?,
            ),
        },
    };
    let query: BTreeMap<String, String> = sigv4::query_pairs(req.uri().query().unwrap_or(""))
        .into_iter()
        .collect();
    let resource = match (&bucket, &key) {
        (Some(b), Some(k)) => format!("/{b}/{k}"),
        (Some(b), None) => format!("/{b}"),
        _ => "/".to_string(),
    };
    Ok(Ctx {
        method: req.method().as_str().to_string(),
        head: req.method() == actix_web::http::Method::HEAD,
        copy: req.headers().contains_key("x-amz-copy-source"),
        bucket,
        key,
        query,
        resource,
    })
}

/// The operation's name (metrics route label).
fn op_name(c: &Ctx) -> &'static str {
    match (c.method.as_str(), c.bucket.is_some(), c.key.is_some()) {
        ("GET", false, _) => "ListBuckets",
        ("PUT", true, false) => "CreateBucket",
        ("HEAD", true, false) => "HeadBucket",
        ("DELETE", true, false) => "DeleteBucket",
        ("GET", true, false) if c.has("uploads") => "ListMultipartUploads",
        ("GET", true, false) if c.has("location") => "GetBucketLocation",
        ("GET", true, false) if c.q("list-type") == Some("2") => "ListObjectsV2",
        ("GET", true, false) => "ListObjects",
        ("POST", true, false) if c.has("delete") => "DeleteObjects",
        ("PUT", true, true) if c.has("uploadId") && c.copy => "UploadPartCopy",
        ("PUT", true, true) if c.has("uploadId") => "UploadPart",
        ("PUT", true, true) if c.copy => "CopyObject",
        ("PUT", true, true) => "PutObject",
        ("GET", true, true) if c.has("uploadId") => "ListParts",
        ("GET", true, true) => "GetObject",
        ("HEAD", true, true) => "HeadObject",
        ("DELETE", true, true) if c.has("uploadId") => "AbortMultipartUpload",
        ("DELETE", true, true) => "DeleteObject",
        ("POST", true, true) if c.has("uploads") => "CreateMultipartUpload",
        ("POST", true, true) if c.has("uploadId") => "CompleteMultipartUpload",
        _ => "Unknown",
    }
}

/// Sub-resources this server does not implement.
const UNSUPPORTED: &[&str] = &[
    "acl",
    "policy",
    "cors",
    "lifecycle",
    "tagging",
    "website",
    "replication",
    "logging",
    "notification",
    "encryption",
    "object-lock",
    "retention",
    "legal-hold",
    "torrent",
    "restore",
    "select",
    "accelerate",
    "requestPayment",
    "analytics",
    "inventory",
    "metrics",
    "intelligent-tiering",
    "ownershipControls",
    "publicAccessBlock",
    "attributes",
];

async fn authenticate(req: &HttpRequest, s3: &SharedS3, c: &Ctx) -> Result<Authed, S3Error> {
    let h = req.headers();
    let now = now_ms() / 1000;
    if let Some(auth) = hdr(h, "authorization") {
        let a = AuthHeader::parse(auth)?;
        let amz_date = hdr(h, "x-amz-date")
            .ok_or_else(|| S3Error::AuthorizationHeaderMalformed("x-amz-date is missing".into()))?;
        let t = sigv4::parse_amz_date(amz_date)
            .ok_or_else(|| S3Error::AuthorizationHeaderMalformed("bad x-amz-date".into()))?;
        if now.abs_diff(t) > s3.cfg.max_clock_skew_secs {
            return Err(S3Error::RequestTimeTooSkewed);
        }
        check_credential(&a.credential, amz_date)?;
        let payload = hdr(h, "x-amz-content-sha256")
            .unwrap_or(sigv4::UNSIGNED_PAYLOAD)
            .to_string();
        let (key, secret) = s3
            .access_key(&a.credential.access_key)
            .await?
            .ok_or(S3Error::InvalidAccessKeyId)?;
        let pairs = sigv4::query_pairs(req.uri().query().unwrap_or(""));
        let cq = sigv4::canonical_query(&pairs, None);
        let signed = a.signed_headers.join(";");
        let cr = canonical(req, &a.signed_headers, &cq, &signed, &payload)?;
        let sk = sigv4::signing_key(
            &secret,
            &a.credential.date,
            &a.credential.region,
            &a.credential.service,
        );
        let scope = a.credential.scope();
        let want = sigv4::signature(&sk, &sigv4::string_to_sign(amz_date, &scope, &cr));
        if !sigv4::same(&want, &a.signature) {
            return Err(S3Error::SignatureDoesNotMatch);
        }
        let (framing, sha256) = match payload.as_str() {
            sigv4::STREAMING_SIGNED | sigv4::STREAMING_SIGNED_TRAILER => (
                Framing::Signed {
                    key: sk,
                    amz_date: amz_date.to_string(),
                    scope,
                    seed: want,
                    trailer: payload == sigv4::STREAMING_SIGNED_TRAILER,
                },
                None,
            ),
            sigv4::STREAMING_UNSIGNED_TRAILER => (Framing::UnsignedTrailer, None),
            sigv4::UNSIGNED_PAYLOAD => (Framing::Plain, None),
            hexhash if hexhash.len() == 64 && hexhash.bytes().all(|b| b.is_ascii_hexdigit()) => {
                (Framing::Plain, Some(hexhash.to_string()))
            }
            other => {
                return Err(S3Error::InvalidArgument(format!(
                    "x-amz-content-sha256 {other:?} is not supported"
                )))
            }
        };
        return Ok(Authed {
            who: Who::Key(key),
            framing,
            sha256,
        });
    }
    if c.has("X-Amz-Signature") {
        if c.q("X-Amz-Algorithm") != Some(sigv4::ALGORITHM) {
            return Err(S3Error::AuthorizationHeaderMalformed(
                "X-Amz-Algorithm must be AWS4-HMAC-SHA256".into(),
            ));
        }
        let missing = |n: &str| S3Error::AuthorizationHeaderMalformed(format!("{n} is missing"));
        let cred = Credential::parse(
            c.q("X-Amz-Credential")
                .ok_or_else(|| missing("X-Amz-Credential"))?,
        )?;
        let amz_date = c.q("X-Amz-Date").ok_or_else(|| missing("X-Amz-Date"))?;
        let t = sigv4::parse_amz_date(amz_date)
            .ok_or_else(|| S3Error::AuthorizationHeaderMalformed("bad X-Amz-Date".into()))?;
        let expires: u64 = c
            .q("X-Amz-Expires")
            .ok_or_else(|| missing("X-Amz-Expires"))?
            .parse()
            .map_err(|_| S3Error::AuthorizationHeaderMalformed("bad X-Amz-Expires".into()))?;
        if expires > MAX_PRESIGN_SECS {
            return Err(S3Error::AuthorizationHeaderMalformed(
                "X-Amz-Expires must be at most 604800".into(),
            ));
        }
        check_credential(&cred, amz_date)?;
        if t > now + s3.cfg.max_clock_skew_secs {
            return Err(S3Error::RequestTimeTooSkewed);
        }
        if now > t + expires {
            return Err(S3Error::ExpiredPresign);
        }
        let signed_headers: Vec<String> = c
            .q("X-Amz-SignedHeaders")
            .ok_or_else(|| missing("X-Amz-SignedHeaders"))?
            .split(';')
            .map(str::to_string)
            .collect();
        let (key, secret) = s3
            .access_key(&cred.access_key)
            .await?
            .ok_or(S3Error::InvalidAccessKeyId)?;
        let pairs = sigv4::query_pairs(req.uri().query().unwrap_or(""));
        let cq = sigv4::canonical_query(&pairs, Some("X-Amz-Signature"));
        let payload = c
            .q("X-Amz-Content-Sha256")
            .unwrap_or(sigv4::UNSIGNED_PAYLOAD)
            .to_string();
        let cr = canonical(
            req,
            &signed_headers,
            &cq,
            &signed_headers.join(";"),
            &payload,
        )?;
        let sk = sigv4::signing_key(&secret, &cred.date, &cred.region, &cred.service);
        let want = sigv4::signature(&sk, &sigv4::string_to_sign(amz_date, &cred.scope(), &cr));
        if !sigv4::same(&want, c.q("X-Amz-Signature").unwrap_or("")) {
            return Err(S3Error::SignatureDoesNotMatch);
        }
        return Ok(Authed {
            who: Who::Key(key),
            framing: Framing::Plain,
            sha256: None,
        });
    }
    if c.has("AWSAccessKeyId") && c.has("Signature") && c.has("Expires") {
        // Signature V2 query auth: what boto3's presign makes unless told s3v4.
        let expires: u64 = c
            .q("Expires")
            .and_then(|e| e.parse().ok())
            .ok_or_else(|| S3Error::AuthorizationHeaderMalformed("bad Expires".into()))?;
        if now > expires {
            return Err(S3Error::ExpiredPresign);
        }
        let (key, secret) = s3
            .access_key(c.q("AWSAccessKeyId").unwrap_or(""))
            .await?
            .ok_or(S3Error::InvalidAccessKeyId)?;
        let amz: Vec<(String, String)> = h
            .iter()
            .filter(|(k, _)| k.as_str().starts_with("x-amz-"))
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    v.to_str().unwrap_or("").trim().to_string(),
                )
            })
            .collect();
        let pairs: Vec<(String, String)> = c.query.clone().into_iter().collect();
        let want = sigv4::v2_presign_signature(
            &secret,
            &sigv4::V2Request {
                method: req.method().as_str(),
                content_md5: hdr(h, "content-md5").unwrap_or(""),
                content_type: hdr(h, "content-type").unwrap_or(""),
                expires: c.q("Expires").unwrap_or(""),
                amz_headers: &amz,
                raw_path: req.uri().path(),
                query: &pairs,
            },
        );
        if !sigv4::same(&want, c.q("Signature").unwrap_or("")) {
            return Err(S3Error::SignatureDoesNotMatch);
        }
        return Ok(Authed {
            who: Who::Key(key),
            framing: Framing::Plain,
            sha256: None,
        });
    }
    if hdr(h, "x-amz-content-sha256").is_some_and(|p| p.starts_with("STREAMING-")) {
        return Err(S3Error::AccessDenied);
    }
    Ok(Authed {
        who: Who::Anonymous,
        framing: Framing::Plain,
        sha256: None,
    })
}

fn check_credential(c: &Credential, amz_date: &str) -> Result<(), S3Error> {
    if c.service != "s3" {
        return Err(S3Error::AuthorizationHeaderMalformed(format!(
            "the service {:?} is not s3",
            c.service
        )));
    }
    if !amz_date.starts_with(&c.date) {
        return Err(S3Error::AuthorizationHeaderMalformed(
            "the credential's date is not the request's".into(),
        ));
    }
    Ok(())
}

fn canonical(
    req: &HttpRequest,
    signed: &[String],
    cq: &str,
    signed_list: &str,
    payload: &str,
) -> Result<String, S3Error> {
    if !signed.iter().any(|s| s == "host") {
        return Err(S3Error::AuthorizationHeaderMalformed(
            "the host header must be signed".into(),
        ));
    }
    let mut headers = Vec::with_capacity(signed.len());
    for name in signed {
        let values: Vec<String> = req
            .headers()
            .get_all(name.as_str())
            .filter_map(|v| v.to_str().ok())
            .map(sigv4::canonical_header_value)
            .collect();
        if values.is_empty() {
            return Err(S3Error::SignatureDoesNotMatch);
        }
        headers.push((name.to_ascii_lowercase(), values.join(",")));
    }
    Ok(sigv4::canonical_request(
        req.method().as_str(),
        &sigv4::canonical_uri(req.uri().path()),
        cq,
        &headers,
        signed_list,
        payload,
    ))
}

/// May `who` read (or write) `bucket`?
fn permit(who: &Who, bucket: &Bucket, write: bool) -> Result<(), S3Error> {
    match who {
        Who::Key(k) if k.allows(&bucket.name, write) => Ok(()),
        Who::Anonymous if !write && bucket.anonymous_read => Ok(()),
        _ => Err(S3Error::AccessDenied),
    }
}

async fn handle(
    req: &HttpRequest,
    payload: web::Payload,
    s3: &SharedS3,
    c: &Ctx,
) -> Result<HttpResponse, S3Error> {
    if let Some(u) = UNSUPPORTED.iter().find(|u| c.has(u)) {
        // Authenticate first so an unsigned probe learns nothing.
        authenticate(req, s3, c).await?;
        return Err(S3Error::NotImplemented(format!("the ?{u} sub-resource")));
    }
    let auth = authenticate(req, s3, c).await?;
    let Some(bucket_name) = &c.bucket else {
        return match c.method.as_str() {
            "GET" => list_buckets(s3, &auth.who).await,
            _ => Err(S3Error::MethodNotAllowed),
        };
    };
    let Some(key) = &c.key else {
        return bucket_op(req, payload, s3, c, &auth, bucket_name).await;
    };
    check_key(key)?;
    let bucket = s3.bucket(bucket_name).await?.value;
    match c.method.as_str() {
        "GET" | "HEAD" if c.has("uploadId") && !c.head => {
            permit(&auth.who, &bucket, false)?;
            list_parts(s3, c, &bucket, key).await
        }
        "GET" | "HEAD" => {
            permit(&auth.who, &bucket, false)?;
            get_object(req, s3, c, &bucket, key).await
        }
        "PUT" if c.has("uploadId") || c.has("partNumber") => {
            permit(&auth.who, &bucket, true)?;
            upload_part(req, payload, s3, c, &auth, &bucket, key).await
        }
        "PUT" if c.copy => {
            permit(&auth.who, &bucket, true)?;
            copy_object(req, s3, &auth, &bucket, key).await
        }
        "PUT" => {
            permit(&auth.who, &bucket, true)?;
            put_object(req, payload, s3, &auth, &bucket, key).await
        }
        "DELETE" if c.has("uploadId") => {
            permit(&auth.who, &bucket, true)?;
            s3.abort(&bucket, key, c.q("uploadId").unwrap_or(""))
                .await?;
            Ok(HttpResponse::NoContent().finish())
        }
        "DELETE" => {
            permit(&auth.who, &bucket, true)?;
            s3.delete_object(&bucket, key).await?;
            Ok(HttpResponse::NoContent().finish())
        }
        "POST" if c.has("uploads") => {
            permit(&auth.who, &bucket, true)?;
            let headers = object_headers(req.headers())?;
            let id = s3.create_upload(&bucket, key, headers).await?;
            let mut x = Xml::new("InitiateMultipartUploadResult");
            x.el("Bucket", &bucket.name)
                .el("Key", key)
                .el("UploadId", id);
            Ok(xml_ok(x.finish("InitiateMultipartUploadResult")))
        }
        "POST" if c.has("uploadId") => {
            permit(&auth.who, &bucket, true)?;
            complete(payload, s3, c, &auth, &bucket, key).await
        }
        _ => Err(S3Error::MethodNotAllowed),
    }
}

fn xml_ok(body: String) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/xml")
        .insert_header(("x-amz-request-id", request_id()))
        .body(body)
}

async fn list_buckets(s3: &SharedS3, who: &Who) -> Result<HttpResponse, S3Error> {
    let Who::Key(k) = who else {
        return Err(S3Error::AccessDenied);
    };
    let mut x = Xml::new("ListAllMyBucketsResult");
    x.open("Owner")
        .el("ID", &k.id)
        .el("DisplayName", &k.id)
        .close("Owner");
    x.open("Buckets");
    for b in s3.list_buckets().await? {
        if k.allows(&b.name, false) || k.allows(&b.name, true) {
            x.open("Bucket")
                .el("Name", &b.name)
                .el("CreationDate", sigv4::format_iso8601(b.created_ms))
                .close("Bucket");
        }
    }
    x.close("Buckets");
    Ok(xml_ok(x.finish("ListAllMyBucketsResult")))
}

async fn bucket_op(
    req: &HttpRequest,
    payload: web::Payload,
    s3: &SharedS3,
    c: &Ctx,
    auth: &Authed,
    name: &str,
) -> Result<HttpResponse, S3Error> {
    match c.method.as_str() {
        "PUT" => {
            let allowed = match &auth.who {
                Who::Key(k) => k.create_buckets || k.allows(name, true),
                Who::Anonymous => false,
            };
            if !allowed {
                return Err(S3Error::AccessDenied);
            }
            let body = read_small(req, payload, auth).await?;
            if !body.iter().all(u8::is_ascii_whitespace) {
                let _: xml::CreateBucketConfiguration = xml::parse(&body)?;
            }
            s3.create_bucket(name).await?;
            Ok(HttpResponse::Ok()
                .insert_header(("location", format!("/{name}")))
                .finish())
        }
        "HEAD" => {
            let b = s3.bucket(name).await?.value;
            permit(&auth.who, &b, false)?;
            Ok(HttpResponse::Ok()
                .insert_header(("x-amz-bucket-region", s3.cfg.region.as_str()))
                .finish())
        }
        "DELETE" => {
            let b = s3.bucket(name).await?.value;
            permit(&auth.who, &b, true)?;
            s3.delete_bucket(name).await?;
            Ok(HttpResponse::NoContent().finish())
        }
        "GET" => {
            let b = s3.bucket(name).await?.value;
            permit(&auth.who, &b, false)?;
            if c.has("location") {
                let mut x = Xml::new("LocationConstraint");
                if s3.cfg.region != "us-east-1" {
                    x.el("LocationConstraint", &s3.cfg.region);
                }
                return Ok(xml_ok(x.finish("LocationConstraint")));
            }
            if c.has("versioning") {
                return Ok(xml_ok(
                    Xml::new("VersioningConfiguration").finish("VersioningConfiguration"),
                ));
            }
            if c.has("uploads") {
                return list_uploads(s3, c, &b).await;
            }
            list_objects(s3, c, &b).await
        }
        "POST" if c.has("delete") => {
            let b = s3.bucket(name).await?.value;
            permit(&auth.who, &b, true)?;
            delete_objects(req, payload, s3, auth, &b).await
        }
        _ => Err(S3Error::MethodNotAllowed),
    }
}

fn max_keys(c: &Ctx, name: &str) -> Result<usize, S3Error> {
    match c.q(name) {
        None => Ok(MAX_KEYS),
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .map(|n| (n as usize).min(MAX_KEYS))
            .ok_or_else(|| {
                S3Error::InvalidArgument(format!("{name} must be a non-negative integer"))
            }),
    }
}

async fn list_objects(s3: &SharedS3, c: &Ctx, b: &Bucket) -> Result<HttpResponse, S3Error> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let v2 = c.q("list-type") == Some("2");
    let prefix = c.q("prefix").unwrap_or("");
    let delimiter = c.q("delimiter").unwrap_or("");
    let max = max_keys(c, "max-keys")?;
    let url = c.q("encoding-type") == Some("url");
    let enc = |s: &str| {
        if url {
            sigv4::uri_encode(s).replace("%2F", "/")
        } else {
            s.to_string()
        }
    };
    let after = if v2 {
        match c.q("continuation-token") {
            Some(t) => String::from_utf8(b64.decode(t).map_err(|_| {
                S3Error::InvalidArgument("the continuation token is not valid".into())
            })?)
            .map_err(|_| S3Error::InvalidArgument("the continuation token is not valid".into()))?,
            None => c.q("start-after").unwrap_or("").to_string(),
        }
    } else {
        c.q("marker").unwrap_or("").to_string()
    };
    let page = s3.list(b, prefix, delimiter, &after, max).await?;
    let root = "ListBucketResult";
    let mut x = Xml::new(root);
    x.el("Name", &b.name).el("Prefix", enc(prefix));
    if v2 {
        if let Some(t) = c.q("continuation-token") {
            x.el("ContinuationToken", t);
        }
        if let Some(s) = c.q("start-after") {
            x.el("StartAfter", enc(s));
        }
        x.el(
            "KeyCount",
            (page.objects.len() + page.prefixes.len()).to_string(),
        );
    } else {
        x.el("Marker", enc(&after));
    }
    x.el("MaxKeys", max.to_string());
    if !delimiter.is_empty() {
        x.el("Delimiter", enc(delimiter));
    }
    if url {
        x.el("EncodingType", "url");
    }
    x.el("IsTruncated", page.truncated.to_string());
    if page.truncated {
        if let Some(last) = &page.last {
            if v2 {
                x.el("NextContinuationToken", b64.encode(last));
            } else if !delimiter.is_empty() {
                x.el("NextMarker", enc(last));
            }
        }
    }
    for (k, o) in &page.objects {
        x.open("Contents")
            .el("Key", enc(k))
            .el("LastModified", sigv4::format_iso8601(o.last_modified_ms))
            .el("ETag", format!("\"{}\"", o.etag))
            .el("Size", o.size.to_string())
            .el("StorageClass", "STANDARD")
            .close("Contents");
    }
    for p in &page.prefixes {
        x.open("CommonPrefixes")
            .el("Prefix", enc(p))
            .close("CommonPrefixes");
    }
    Ok(xml_ok(x.finish(root)))
}

async fn list_uploads(s3: &SharedS3, c: &Ctx, b: &Bucket) -> Result<HttpResponse, S3Error> {
    let prefix = c.q("prefix").unwrap_or("");
    let km = c.q("key-marker").unwrap_or("");
    let um = c.q("upload-id-marker").unwrap_or("");
    let max = max_keys(c, "max-uploads")?;
    let (ups, truncated) = s3.uploads(b, prefix, km, um, max).await?;
    let root = "ListMultipartUploadsResult";
    let mut x = Xml::new(root);
    x.el("Bucket", &b.name)
        .el("KeyMarker", km)
        .el("UploadIdMarker", um)
        .el("Prefix", prefix)
        .el("MaxUploads", max.to_string())
        .el("IsTruncated", truncated.to_string());
    if let Some(l) = ups.last() {
        x.el("NextKeyMarker", &l.key)
            .el("NextUploadIdMarker", &l.upload_id);
    }
    for u in &ups {
        x.open("Upload")
            .el("Key", &u.key)
            .el("UploadId", &u.upload_id)
            .el("Initiated", sigv4::format_iso8601(u.initiated_ms))
            .el("StorageClass", "STANDARD")
            .close("Upload");
    }
    Ok(xml_ok(x.finish(root)))
}

async fn list_parts(
    s3: &SharedS3,
    c: &Ctx,
    b: &Bucket,
    key: &str,
) -> Result<HttpResponse, S3Error> {
    let upload_id = c.q("uploadId").unwrap_or("");
    s3.upload(b, key, upload_id).await?;
    let after: u32 = match c.q("part-number-marker") {
        None => 0,
        Some(m) => m
            .parse()
            .map_err(|_| S3Error::InvalidArgument("part-number-marker must be a number".into()))?,
    };
    let max = max_keys(c, "max-parts")?.max(1);
    let mut parts = s3.parts(b, upload_id, after, max + 1).await?;
    let truncated = parts.len() > max;
    parts.truncate(max);
    let root = "ListPartsResult";
    let mut x = Xml::new(root);
    x.el("Bucket", &b.name)
        .el("Key", key)
        .el("UploadId", upload_id)
        .el("PartNumberMarker", after.to_string())
        .el("MaxParts", max.to_string())
        .el("IsTruncated", truncated.to_string());
    if let Some(l) = parts.last() {
        x.el("NextPartNumberMarker", l.value.number.to_string());
    }
    x.el("StorageClass", "STANDARD");
    for p in &parts {
        x.open("Part")
            .el("PartNumber", p.value.number.to_string())
            .el(
                "LastModified",
                sigv4::format_iso8601(p.value.last_modified_ms),
            )
            .el("ETag", format!("\"{}\"", p.value.etag))
            .el("Size", p.value.size.to_string())
            .close("Part");
    }
    Ok(xml_ok(x.finish(root)))
}

/// The stored headers of a PUT, copy with REPLACE or multipart create.
fn object_headers(h: &HeaderMap) -> Result<ObjectHeaders, S3Error> {
    let get = |n: &str| hdr(h, n).map(str::to_string);
    let mut meta = BTreeMap::new();
    let mut meta_bytes = 0;
    for (k, v) in h {
        if let Some(name) = k.as_str().strip_prefix("x-amz-meta-") {
            let v = v
                .to_str()
                .map_err(|_| S3Error::InvalidArgument(format!("x-amz-meta-{name} is not ASCII")))?;
            meta_bytes += name.len() + v.len();
            meta.insert(name.to_string(), v.to_string());
        }
    }
    if meta_bytes > MAX_META_BYTES {
        return Err(S3Error::MetadataTooLarge);
    }
    // aws-chunked is the framing of this request, not an encoding of the object.
    let content_encoding = get("content-encoding").and_then(|e| {
        let rest: Vec<&str> = e
            .split(',')
            .map(str::trim)
            .filter(|p| !p.eq_ignore_ascii_case("aws-chunked") && !p.is_empty())
            .collect();
        (!rest.is_empty()).then(|| rest.join(", "))
    });
    Ok(ObjectHeaders {
        content_type: get("content-type"),
        content_encoding,
        cache_control: get("cache-control"),
        content_disposition: get("content-disposition"),
        content_language: get("content-language"),
        expires: get("expires"),
        meta,
    })
}

/// The expectations a request's headers set on its body.
fn expectations(
    req: &HttpRequest,
    s3: &SharedS3,
    auth: &Authed,
    max: u64,
) -> Result<Expectations, S3Error> {
    let h = req.headers();
    let chunked = !matches!(auth.framing, Framing::Plain);
    let length = if chunked {
        Some(
            hdr(h, "x-amz-decoded-content-length")
                .ok_or(S3Error::MissingContentLength)?
                .parse::<u64>()
                .map_err(|_| S3Error::InvalidArgument("bad x-amz-decoded-content-length".into()))?,
        )
    } else {
        match hdr(h, "content-length") {
            Some(l) => Some(
                l.parse::<u64>()
                    .map_err(|_| S3Error::InvalidArgument("bad Content-Length".into()))?,
            ),
            None => None,
        }
    };
    if length.is_some_and(|l| l > max) {
        return Err(S3Error::EntityTooLarge);
    }
    let mut checksum = None;
    for (k, v) in h {
        if let Some(algo) = k.as_str().strip_prefix("x-amz-checksum-") {
            if algo == "type" || algo == "algorithm" || algo == "mode" {
                continue;
            }
            let a = ChecksumAlgo::parse(algo).ok_or_else(|| {
                S3Error::InvalidRequest(format!("the checksum algorithm {algo} is not supported"))
            })?;
            checksum = Some((a, Some(v.to_str().unwrap_or("").to_string())));
        }
    }
    if checksum.is_none() {
        if let Some(t) = hdr(h, "x-amz-trailer") {
            if let Some(algo) = t.trim().strip_prefix("x-amz-checksum-") {
                let a = ChecksumAlgo::parse(algo).ok_or_else(|| {
                    S3Error::InvalidRequest(format!(
                        "the checksum algorithm {algo} is not supported"
                    ))
                })?;
                checksum = Some((a, None));
            }
        }
    }
    let _ = s3;
    Ok(Expectations {
        length,
        md5_b64: hdr(h, "content-md5").map(str::to_string),
        sha256_hex: auth.sha256.clone(),
        checksum,
        max,
    })
}

/// Reads a small body (XML) whole, checked like any other.
async fn read_small(
    req: &HttpRequest,
    payload: web::Payload,
    auth: &Authed,
) -> Result<Vec<u8>, S3Error> {
    let mut exp = Expectations {
        max: MAX_XML_BODY,
        ..Default::default()
    };
    let h = req.headers();
    exp.md5_b64 = hdr(h, "content-md5").map(str::to_string);
    exp.sha256_hex = auth.sha256.clone();
    if let Some(l) = hdr(h, "content-length") {
        let l: u64 = l
            .parse()
            .map_err(|_| S3Error::InvalidArgument("bad Content-Length".into()))?;
        if l > MAX_XML_BODY {
            return Err(S3Error::EntityTooLarge);
        }
        if matches!(auth.framing, Framing::Plain) {
            exp.length = Some(l);
        }
    }
    let mut r = BodyReader::new(payload, auth.framing.clone(), exp);
    let mut out = Vec::new();
    while let Some(b) = r.next().await? {
        out.extend_from_slice(&b);
    }
    r.finish()?;
    Ok(out)
}

/// Streams a body to the stores and checks it; its id is left for the caller to commit.
async fn store_body_uncommitted(
    req: &HttpRequest,
    payload: web::Payload,
    s3: &SharedS3,
    auth: &Authed,
) -> Result<(Option<crate::data::Written>, crate::body::Finished), S3Error> {
    let exp = expectations(req, s3, auth, s3.cfg.max_object_bytes)?;
    let hint = exp.length.unwrap_or(s3.cfg.chunk_bytes);
    let mut r = BodyReader::new(payload, auth.framing.clone(), exp);
    let mut w = s3.data.writer(hint);
    while let Some(b) = r.next().await? {
        w.write(b).await?;
    }
    let fin = r.finish()?;
    let written = w.finish_uncommitted().await?;
    Ok((written, fin))
}

async fn put_object(
    req: &HttpRequest,
    payload: web::Payload,
    s3: &SharedS3,
    auth: &Authed,
    b: &Bucket,
    key: &str,
) -> Result<HttpResponse, S3Error> {
    let h = req.headers();
    let if_none_match = match hdr(h, "if-none-match") {
        None => false,
        Some(v) if v.trim() == "*" => true,
        Some(_) => {
            return Err(S3Error::NotImplemented(
                "If-None-Match other than * on PUT".into(),
            ))
        }
    };
    let if_match = hdr(h, "if-match").map(str::to_string);
    let headers = object_headers(h)?;
    // A conditional create fails fast before any byte is written.
    if if_none_match && s3.object(b, key).await.is_ok() {
        return Err(S3Error::PreconditionFailed);
    }
    let (written, fin) = store_body_uncommitted(req, payload, s3, auth).await?;
    let (data, commit) = split(written);
    let rec = ObjectRecord {
        size: fin.len,
        etag: hex::encode(fin.md5),
        last_modified_ms: now_ms(),
        headers,
        data: data.iter().cloned().collect(),
        part_sizes: Vec::new(),
        checksum: fin
            .checksum
            .as_ref()
            .map(|(a, v)| (a.header().to_string(), v.clone())),
    };
    if let Err(e) = s3
        .put_object(b, key, &rec, if_none_match, if_match.as_deref(), commit)
        .await
    {
        s3.forget_unless_applied(data, &e).await;
        return Err(e);
    }
    let mut r = HttpResponse::Ok();
    r.insert_header(("etag", format!("\"{}\"", rec.etag)));
    if let Some((name, v)) = &rec.checksum {
        r.insert_header((name.as_str(), v.as_str()));
    }
    Ok(r.finish())
}

async fn upload_part(
    req: &HttpRequest,
    payload: web::Payload,
    s3: &SharedS3,
    c: &Ctx,
    auth: &Authed,
    b: &Bucket,
    key: &str,
) -> Result<HttpResponse, S3Error> {
    if c.copy {
        return upload_part_copy(req, s3, c, auth, b, key).await;
    }
    let (upload_id, number) = part_target(c)?;
    s3.upload(b, key, upload_id).await?;
    let (written, fin) = store_body_uncommitted(req, payload, s3, auth).await?;
    let (data, commit) = split(written);
    let part = Part {
        number,
        etag: hex::encode(fin.md5),
        size: fin.len,
        last_modified_ms: now_ms(),
        data,
    };
    record_part(s3, b, key, upload_id, &part, commit).await?;
    let mut r = HttpResponse::Ok();
    r.insert_header(("etag", format!("\"{}\"", part.etag)));
    if let Some((a, v)) = &fin.checksum {
        r.insert_header((a.header(), v.as_str()));
    }
    Ok(r.finish())
}

/// The upload id and part number of an UploadPart or UploadPartCopy.
fn part_target(c: &Ctx) -> Result<(&str, u32), S3Error> {
    let upload_id = c
        .q("uploadId")
        .ok_or_else(|| S3Error::InvalidArgument("uploadId is missing".into()))?;
    let number: i64 = c
        .q("partNumber")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| S3Error::InvalidArgument("partNumber must be an integer".into()))?;
    if !(1..=MAX_PARTS).contains(&number) {
        return Err(S3Error::InvalidArgument(format!(
            "Part number must be an integer between 1 and {MAX_PARTS}, inclusive"
        )));
    }
    Ok((upload_id, number as u32))
}

/// A written run's data reference and the commit that makes it an id (None for no bytes).
fn split(w: Option<crate::data::Written>) -> (Option<crate::meta::DataRef>, Option<CommitRequest>) {
    match w {
        Some(w) => (Some(w.data), Some(w.commit)),
        None => (None, None),
    }
}

/// Commits a part's data and records the part; on a failure the data is forgotten, unless
/// the directory may have written the part's record all the same.
async fn record_part(
    s3: &SharedS3,
    b: &Bucket,
    key: &str,
    upload_id: &str,
    part: &Part,
    commit: Option<CommitRequest>,
) -> Result<(), S3Error> {
    // The upload may have been completed or aborted meanwhile, or be completing: nothing is
    // committed then (the needles written are an uncommitted id, gc's).
    match s3.upload(b, key, upload_id).await {
        Err(_) => return Err(S3Error::NoSuchUpload),
        Ok(u) if u.value.completing(crate::service::now_ms()) => {
            return Err(S3Error::ConditionalRequestConflict)
        }
        Ok(_) => {}
    }
    if let Err(e) = s3.put_part(b, key, part, upload_id, commit).await {
        s3.forget_unless_applied(part.data.clone(), &e).await;
        return Err(e);
    }
    Ok(())
}

/// UploadPartCopy: part `partNumber` of the upload is bytes of another object (all of it, or
/// `x-amz-copy-source-range`), copied into new data as CopyObject copies (records never share
/// data ids); the part's ETag is the MD5 of the bytes copied.
async fn upload_part_copy(
    req: &HttpRequest,
    s3: &SharedS3,
    c: &Ctx,
    auth: &Authed,
    b: &Bucket,
    key: &str,
) -> Result<HttpResponse, S3Error> {
    let h = req.headers();
    let (upload_id, number) = part_target(c)?;
    let (sb, src_key) = copy_source(h)?;
    s3.upload(b, key, upload_id).await?;
    let sb = s3.bucket(&sb).await?.value;
    permit(&auth.who, &sb, false)?;
    let so = s3.object(&sb, &src_key).await?.value;
    copy_source_conditions(h, &so)?;
    let (first, len) = match copy_source_range(h, so.size)? {
        Some((first, last)) => (first, last - first + 1),
        None => (0, so.size),
    };
    if len > s3.cfg.max_object_bytes {
        return Err(S3Error::EntityTooLarge);
    }
    let (written, md5) = copy_bytes(s3, &so, first, len).await?;
    let (data, commit) = split(written);
    let part = Part {
        number,
        etag: hex::encode(md5),
        size: len,
        last_modified_ms: now_ms(),
        data,
    };
    record_part(s3, b, key, upload_id, &part, commit).await?;
    tracing::debug!(
        bucket = %b.name,
        key,
        upload_id,
        part = number,
        source = %format!("{}/{src_key}", sb.name),
        first,
        bytes = len,
        "part copied"
    );
    let root = "CopyPartResult";
    let mut x = Xml::new(root);
    x.el("ETag", format!("\"{}\"", part.etag))
        .el("LastModified", sigv4::format_iso8601(part.last_modified_ms));
    Ok(xml_ok(x.finish(root)))
}

async fn complete(
    payload: web::Payload,
    s3: &SharedS3,
    c: &Ctx,
    auth: &Authed,
    b: &Bucket,
    key: &str,
) -> Result<HttpResponse, S3Error> {
    let upload_id = c.q("uploadId").unwrap_or("");
    let mut exp = Expectations {
        max: MAX_XML_BODY,
        ..Default::default()
    };
    exp.sha256_hex = auth.sha256.clone();
    let mut r = BodyReader::new(payload, auth.framing.clone(), exp);
    let mut body = Vec::new();
    while let Some(p) = r.next().await? {
        body.extend_from_slice(&p);
    }
    r.finish()?;
    let parsed: xml::CompleteMultipartUpload = xml::parse(&body)?;
    let listed: Vec<(i64, String)> = parsed
        .parts
        .into_iter()
        .map(|p| (p.number, p.etag))
        .collect();
    let rec = s3.complete(b, key, upload_id, &listed).await?;
    let root = "CompleteMultipartUploadResult";
    let mut x = Xml::new(root);
    x.el("Location", format!("/{}/{key}", b.name))
        .el("Bucket", &b.name)
        .el("Key", key)
        .el("ETag", format!("\"{}\"", rec.etag));
    Ok(xml_ok(x.finish(root)))
}

async fn delete_objects(
    req: &HttpRequest,
    payload: web::Payload,
    s3: &SharedS3,
    auth: &Authed,
    b: &Bucket,
) -> Result<HttpResponse, S3Error> {
    let body = read_small(req, payload, auth).await?;
    let d: xml::Delete = xml::parse(&body)?;
    if d.objects.len() > 1000 {
        return Err(S3Error::MalformedXML("more than 1000 keys".into()));
    }
    let root = "DeleteResult";
    let mut x = Xml::new(root);
    for o in &d.objects {
        let r = match check_key(&o.key) {
            Ok(()) => s3.delete_object(b, &o.key).await,
            Err(e) => Err(e),
        };
        match r {
            Ok(()) if !d.quiet => {
                x.open("Deleted").el("Key", &o.key).close("Deleted");
            }
            Ok(()) => {}
            Err(e) => {
                x.open("Error")
                    .el("Key", &o.key)
                    .el("Code", e.code_and_status().0)
                    .el("Message", e.to_string())
                    .close("Error");
            }
        }
    }
    Ok(xml_ok(x.finish(root)))
}

async fn copy_object(
    req: &HttpRequest,
    s3: &SharedS3,
    auth: &Authed,
    b: &Bucket,
    key: &str,
) -> Result<HttpResponse, S3Error> {
    let h = req.headers();
    let (src_bucket, src_key) = copy_source(h)?;
    let src_key = src_key.as_str();
    let sb = s3.bucket(&src_bucket).await?.value;
    permit(&auth.who, &sb, false)?;
    let so = s3.object(&sb, src_key).await?.value;
    copy_source_conditions(h, &so)?;
    let replace = match hdr(h, "x-amz-metadata-directive") {
        None | Some("COPY") => false,
        Some("REPLACE") => true,
        Some(other) => {
            return Err(S3Error::InvalidArgument(format!(
                "unknown metadata directive {other}"
            )))
        }
    };
    if !replace && sb.id == b.id && src_key == key {
        return Err(S3Error::InvalidRequest(
            "This copy request is illegal because it is trying to copy an object to itself \
             without changing the object's metadata, storage class, website redirect location \
             or encryption attributes."
                .into(),
        ));
    }
    let headers = if replace {
        object_headers(h)?
    } else {
        so.headers.clone()
    };
    // The bytes are copied: records never share data ids, so deleting one never loses another.
    let (written, _) = copy_bytes(s3, &so, 0, so.size).await?;
    let (data, commit) = split(written);
    let rec = ObjectRecord {
        size: so.size,
        etag: so.etag.clone(),
        last_modified_ms: now_ms(),
        headers,
        data: data.iter().cloned().collect(),
        part_sizes: so.part_sizes.clone(),
        checksum: so.checksum.clone(),
    };
    if let Err(e) = s3.put_object(b, key, &rec, false, None, commit).await {
        s3.forget_unless_applied(data, &e).await;
        return Err(e);
    }
    let root = "CopyObjectResult";
    let mut x = Xml::new(root);
    x.el("LastModified", sigv4::format_iso8601(rec.last_modified_ms))
        .el("ETag", format!("\"{}\"", rec.etag));
    Ok(xml_ok(x.finish(root)))
}

/// The bucket and key `x-amz-copy-source` names: `[/]BUCKET/KEY`, URL-encoded, optionally
/// `?versionId=null` (the current object; this server keeps no other versions, so any other
/// version id is refused rather than silently answered with the current object).
fn copy_source(h: &HeaderMap) -> Result<(String, String), S3Error> {
    let raw = hdr(h, "x-amz-copy-source")
        .ok_or_else(|| S3Error::InvalidArgument("x-amz-copy-source is not ASCII".into()))?;
    let decode = |s: &str| {
        percent_decode_str(s)
            .decode_utf8()
            .map(|c| c.into_owned())
            .map_err(|_| S3Error::InvalidArgument("x-amz-copy-source is not UTF-8".into()))
    };
    let (path, query) = raw.split_once('?').unwrap_or((raw, ""));
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k != "versionId" {
            return Err(S3Error::InvalidArgument(format!(
                "x-amz-copy-source: unknown parameter {k:?} (only versionId is taken)"
            )));
        }
        let v = decode(v)?;
        if v != "null" {
            return Err(S3Error::InvalidArgument(format!(
                "Invalid version id specified: {v:?} (this server keeps no object versions; \
                 only versionId=null, the current object, is accepted)"
            )));
        }
    }
    let src = decode(path.strip_prefix('/').unwrap_or(path))?;
    let (bucket, key) = src
        .split_once('/')
        .filter(|(b, k)| !b.is_empty() && !k.is_empty())
        .ok_or_else(|| S3Error::InvalidArgument("x-amz-copy-source must be BUCKET/KEY".into()))?;
    check_key(key)?;
    Ok((bucket.to_string(), key.to_string()))
}

/// The copy-source conditions (`x-amz-copy-source-if-match`, `-if-none-match`,
/// `-if-modified-since`, `-if-unmodified-since`), ordered as GET's; any that fails is 412.
fn copy_source_conditions(h: &HeaderMap, o: &ObjectRecord) -> Result<(), S3Error> {
    match conditions(h, o, &COPY_SOURCE_CONDITIONS) {
        Err(S3Error::NotModified) => Err(S3Error::PreconditionFailed),
        r => r,
    }
}

/// `x-amz-copy-source-range: bytes=FIRST-LAST` (inclusive, both given) within an object of
/// `size` bytes: (first, last), None when absent. A malformed value, or one outside the
/// source, is InvalidArgument, as S3 answers it.
fn copy_source_range(h: &HeaderMap, size: u64) -> Result<Option<(u64, u64)>, S3Error> {
    let Some(v) = h.get("x-amz-copy-source-range") else {
        return Ok(None);
    };
    let num = |s: &str| {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    let parsed = v
        .to_str()
        .ok()
        .and_then(|v| v.trim().strip_prefix("bytes="))
        .and_then(|r| r.split_once('-'))
        .and_then(|(a, b)| Some((num(a)?, num(b)?)));
    let Some((first, last)) = parsed else {
        return Err(S3Error::InvalidArgument(
            "The x-amz-copy-source-range value must be of the form bytes=first-last where \
             first and last are the zero-based offsets of the first and last bytes to copy"
                .into(),
        ));
    };
    if first > last || last >= size {
        return Err(S3Error::InvalidArgument(format!(
            "Range specified is not valid for source object of size: {size}"
        )));
    }
    Ok(Some((first, last)))
}

/// Copies `len` bytes of `so` from `first` into new data, streamed a chunk at a time through
/// the writer (never the whole run in memory); the data (None when empty) and the MD5 of the
/// bytes copied. A whole copy of a single-PUT object is checked against its ETag. On failure
/// nothing is committed (written chunks are an uncommitted id, `haystack gc`'s).
async fn copy_bytes(
    s3: &SharedS3,
    so: &ObjectRecord,
    first: u64,
    len: u64,
) -> Result<(Option<crate::data::Written>, [u8; 16]), S3Error> {
    use md5::{Digest as _, Md5};
    let mut md5 = Md5::new();
    let mut w = s3.data.writer(len);
    if len > 0 {
        let mut stream = Box::pin(s3.data.read(so.data.clone(), first, first + len - 1, None));
        while let Some(piece) = stream.next().await {
            let piece = piece?;
            md5.update(&piece);
            w.write(piece).await?;
        }
    }
    let digest: [u8; 16] = md5.finalize().into();
    let whole = first == 0 && len == so.size && !so.etag.contains('-');
    if whole && hex::encode(digest) != so.etag {
        // Checked before the commit: a source that does not read back as written is not copied.
        return Err(S3Error::Internal(format!(
            "the copy source read back with MD5 {} instead of its ETag {}",
            hex::encode(digest),
            so.etag
        )));
    }
    Ok((w.finish_uncommitted().await?, digest))
}

/// Seconds of an HTTP date header, if it parses.
fn http_date(h: &HeaderMap, name: &str) -> Option<u64> {
    hdr(h, name).and_then(date_secs)
}

/// Seconds of an HTTP date, if it is one.
fn date_secs(v: &str) -> Option<u64> {
    httpdate::parse_http_date(v)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
}

/// The conditional headers of GET and HEAD, in S3's order.
fn preconditions(h: &HeaderMap, o: &ObjectRecord) -> Result<(), S3Error> {
    conditions(h, o, &CONDITIONS)
}

/// The names of the four conditional headers: if-match, if-unmodified-since, if-none-match,
/// if-modified-since (a GET's own, or a copy's about its source).
type ConditionNames = [&'static str; 4];

const CONDITIONS: ConditionNames = [
    "if-match",
    "if-unmodified-since",
    "if-none-match",
    "if-modified-since",
];

const COPY_SOURCE_CONDITIONS: ConditionNames = [
    "x-amz-copy-source-if-match",
    "x-amz-copy-source-if-unmodified-since",
    "x-amz-copy-source-if-none-match",
    "x-amz-copy-source-if-modified-since",
];

/// `if-match` (else `if-unmodified-since`) failing is PreconditionFailed, `if-none-match`
/// (else `if-modified-since`) failing is NotModified: S3's order, for the names given.
fn conditions(h: &HeaderMap, o: &ObjectRecord, names: &ConditionNames) -> Result<(), S3Error> {
    let [if_match, if_unmodified_since, if_none_match, if_modified_since] = *names;
    let modified = o.last_modified_ms / 1000;
    if let Some(m) = hdr(h, if_match) {
        if !etag_matches(m, &o.etag) {
            return Err(S3Error::PreconditionFailed);
        }
    } else if let Some(t) = http_date(h, if_unmodified_since) {
        if modified > t {
            return Err(S3Error::PreconditionFailed);
        }
    }
    if let Some(m) = hdr(h, if_none_match) {
        if etag_matches(m, &o.etag) {
            return Err(S3Error::NotModified);
        }
    } else if let Some(t) = http_date(h, if_modified_since) {
        if modified <= t {
            return Err(S3Error::NotModified);
        }
    }
    Ok(())
}

/// Whether an `If-Range` value names this object (RFC 9110 §13.1.5, as S3 honours it): its
/// ETag compared strongly (quoted, or bare as `If-Match` takes it; a weak `W/` tag never
/// matches), or an HTTP date equal to Last-Modified to the second. Anything else does not.
fn if_range(v: &str, o: &ObjectRecord) -> bool {
    let v = v.trim();
    if v.starts_with("W/") {
        return false;
    }
    if let Some(tag) = v.strip_prefix('"') {
        return tag.strip_suffix('"') == Some(o.etag.as_str());
    }
    match date_secs(v) {
        Some(t) => t == o.last_modified_ms / 1000,
        None => v == o.etag,
    }
}

async fn get_object(
    req: &HttpRequest,
    s3: &SharedS3,
    c: &Ctx,
    b: &Bucket,
    key: &str,
) -> Result<HttpResponse, S3Error> {
    check_overrides(c)?;
    let o = s3.object(b, key).await?.value;
    let h = req.headers();
    let etag = format!("\"{}\"", o.etag);
    let last_modified = httpdate::fmt_http_date(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(o.last_modified_ms),
    );
    if let Err(e) = preconditions(h, &o) {
        if matches!(e, S3Error::NotModified) {
            return Ok(HttpResponse::NotModified()
                .insert_header(("etag", etag))
                .insert_header(("last-modified", last_modified))
                .finish());
        }
        return Err(e);
    }
    // If-Range that does not name this object ignores the Range: the whole object, 200.
    let range = hdr(h, "range").filter(|_| hdr(h, "if-range").is_none_or(|v| if_range(v, &o)));
    let (status, first, last) = match decide(range, o.size) {
        RangeDecision::Full => (StatusCode::OK, 0, o.size.saturating_sub(1)),
        RangeDecision::Partial { start, end } => (StatusCode::PARTIAL_CONTENT, start, end),
        RangeDecision::Unsatisfiable => return Err(S3Error::InvalidRange),
    };
    let len = if o.size == 0 { 0 } else { last - first + 1 };
    let mut r = HttpResponseBuilder::new(status);
    r.insert_header(("etag", etag))
        .insert_header(("last-modified", last_modified))
        .insert_header(("accept-ranges", "bytes"))
        .insert_header(("x-amz-request-id", request_id()));
    if status == StatusCode::PARTIAL_CONTENT {
        r.insert_header(("content-range", format!("bytes {first}-{last}/{}", o.size)));
    }
    set_object_headers(&mut r, &o, c);
    if status == StatusCode::OK {
        if let Some((name, v)) = &o.checksum {
            r.insert_header((name.as_str(), v.as_str()));
        }
    }
    if !o.part_sizes.is_empty() {
        r.insert_header(("x-amz-mp-parts-count", o.part_sizes.len().to_string()));
    }
    if c.head || len == 0 {
        let empty = futures_util::stream::empty::<Result<Bytes, S3Error>>();
        return Ok(r.no_chunking(len).streaming(empty));
    }
    let readers = req
        .app_data::<web::Data<StoreReaders>>()
        .map(|r| r.get_ref().clone());
    let stream = s3.data.read(o.data.clone(), first, last, readers);
    Ok(r.no_chunking(len).streaming(log_errors(stream)))
}

/// A read that fails after the status went out can only cut the body: say so in the log.
fn log_errors(
    s: impl Stream<Item = Result<Bytes, S3Error>> + 'static,
) -> impl Stream<Item = Result<Bytes, S3Error>> + 'static {
    s.inspect(|r| {
        if let Err(e) = r {
            tracing::error!(error = %e, "object read failed mid-body");
        }
    })
}

/// The `response-*` query parameters of a GET or HEAD (`set_object_headers` applies them).
const OVERRIDES: [&str; 6] = [
    "response-content-type",
    "response-content-encoding",
    "response-cache-control",
    "response-content-disposition",
    "response-content-language",
    "response-expires",
];

/// Every `response-*` override must be a valid header value (no CR, LF or other control
/// character): refused with InvalidArgument before anything is read, not a 500 from the
/// response builder.
fn check_overrides(c: &Ctx) -> Result<(), S3Error> {
    for q in OVERRIDES {
        if let Some(v) = c.q(q) {
            if header::HeaderValue::from_str(v).is_err() {
                return Err(S3Error::InvalidArgument(format!(
                    "{q} is not a valid header value"
                )));
            }
        }
    }
    Ok(())
}

fn set_object_headers(r: &mut HttpResponseBuilder, o: &ObjectRecord, c: &Ctx) {
    let hd = &o.headers;
    let pick =
        |q: &str, stored: &Option<String>| c.q(q).map(str::to_string).or_else(|| stored.clone());
    let ct = pick("response-content-type", &hd.content_type)
        .unwrap_or_else(|| "binary/octet-stream".to_string());
    r.insert_header((header::CONTENT_TYPE, ct));
    for (name, q, v) in [
        (
            "content-encoding",
            "response-content-encoding",
            &hd.content_encoding,
        ),
        ("cache-control", "response-cache-control", &hd.cache_control),
        (
            "content-disposition",
            "response-content-disposition",
            &hd.content_disposition,
        ),
        (
            "content-language",
            "response-content-language",
            &hd.content_language,
        ),
        ("expires", "response-expires", &hd.expires),
    ] {
        if let Some(v) = pick(q, v) {
            r.insert_header((name, v));
        }
    }
    for (k, v) in &hd.meta {
        r.insert_header((format!("x-amz-meta-{k}"), v.as_str()));
    }
}

/// Serves `s3` on `listener` until `shutdown` resolves, then lets in-flight requests finish.
pub(crate) async fn serve(
    listener: TcpListener,
    s3: SharedS3,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), S3Error> {
    crate::metrics::install();
    let addr = listener.local_addr()?;
    let workers = s3.cfg.http_workers;
    let timeout = s3.cfg.shutdown_timeout_secs;
    let tls = s3.cfg.security.tls.clone();
    let state = web::Data::new(State { s3 });
    let server = HttpServer::new(move || {
        // Each worker's needle readers: their connections live on the worker's runtime.
        let readers = web::Data::new(state.s3.data.readers());
        App::new()
            .app_data(state.clone())
            .app_data(readers)
            .app_data(web::PayloadConfig::new(usize::MAX))
            .default_service(web::to(dispatch))
    })
    .disable_signals()
    // An object's answer is written as its head, then its body as it streams from the
    // stores: with Nagle on, a keep-alive client's delayed ACK held the body ~40 ms (GET
    // 4 KiB p50 44 ms at 32 in flight, bench/results/45-s3.md).
    .tcp_nodelay(true)
    .client_request_timeout(haystack_service::REQUEST_HEAD_TIMEOUT)
    .workers(workers)
    .shutdown_timeout(timeout);
    let server = haystack_service::tls::listen(server, listener, tls.as_deref())?.run();
    let handle = server.handle();
    tracing::info!(%addr, "s3 listening");
    tokio::spawn(async move {
        shutdown.await;
        handle.stop(true).await;
    });
    server.await?;
    tracing::info!("s3 stopped");
    Ok(())
}

async fn metrics_text() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(crate::metrics::render())
}

async fn health(state: web::Data<State>) -> HttpResponse {
    match state.s3.meta.directory().health().await {
        Ok(_) => {
            HttpResponse::Ok().json(serde_json::json!({"status": "ok", "pid": std::process::id()}))
        }
        Err(e) => HttpResponse::ServiceUnavailable().json(serde_json::json!({
            "status": "degraded",
            "error": e.to_string(),
            "pid": std::process::id()
        })),
    }
}
