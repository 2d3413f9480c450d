//! The S3 server's requests and answers on hyper: [`Head`] (a request's method, URI and headers,
//! and the worker's needle readers), [`Payload`] (its body as a stream of bytes) and [`Answer`]
//! (a response under construction: status, headers, then a body in memory or a stream of a
//! known length).

use bytes::Bytes;
use futures_util::Stream;
use haystack_client::StoreReaders;
use haystack_service::server::{Body, BoxError, Response};
use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::{Method, StatusCode, Uri};

/// A request's body as a stream of bytes.
pub(crate) type Payload = http_body_util::BodyDataStream<hyper::body::Incoming>;

/// A request without its body.
pub(crate) struct Head {
    pub parts: hyper::http::request::Parts,
    /// The needle readers of the worker thread serving the request.
    pub readers: StoreReaders,
}

impl Head {
    pub fn headers(&self) -> &HeaderMap {
        &self.parts.headers
    }

    pub fn method(&self) -> &Method {
        &self.parts.method
    }

    pub fn uri(&self) -> &Uri {
        &self.parts.uri
    }

    pub fn path(&self) -> &str {
        self.parts.uri.path()
    }
}

/// A response under construction.
pub(crate) struct Answer {
    status: StatusCode,
    headers: HeaderMap,
}

impl Answer {
    pub fn new(status: StatusCode) -> Answer {
        Answer {
            status,
            headers: HeaderMap::new(),
        }
    }

    pub fn ok() -> Answer {
        Answer::new(StatusCode::OK)
    }

    /// Sets a header (replacing one of that name). A name or value that is not valid HTTP is
    /// left out and logged: every value set here comes from a request's own headers, a stored
    /// record made of such values, or this server.
    pub fn insert_header<K, V>(&mut self, (name, value): (K, V)) -> &mut Answer
    where
        K: TryInto<HeaderName>,
        V: TryInto<HeaderValue>,
    {
        match (name.try_into(), value.try_into()) {
            (Ok(n), Ok(v)) => {
                self.headers.insert(n, v);
            }
            _ => tracing::warn!("an answer header that is not valid HTTP was left out"),
        }
        self
    }

    pub fn content_type(&mut self, v: &str) -> &mut Answer {
        self.insert_header((CONTENT_TYPE, v))
    }

    fn done(&mut self, body: Body) -> Response {
        let mut r = Response::new(body);
        *r.status_mut() = self.status;
        *r.headers_mut() = std::mem::take(&mut self.headers);
        r
    }

    /// The answer without a body.
    pub fn finish(&mut self) -> Response {
        self.done(Body::empty())
    }

    /// The answer with `body`.
    pub fn body(&mut self, body: impl Into<Bytes>) -> Response {
        self.done(Body::full(body))
    }

    /// The answer with `v` as JSON.
    pub fn json(&mut self, v: &serde_json::Value) -> Response {
        self.content_type("application/json");
        self.body(v.to_string())
    }

    /// The answer with `len` bytes from `stream`.
    pub fn sized_stream<E>(
        &mut self,
        len: u64,
        stream: impl Stream<Item = Result<Bytes, E>> + 'static,
    ) -> Response
    where
        E: Into<BoxError> + 'static,
    {
        self.done(Body::sized_stream(len, stream))
    }

    /// A HEAD answer: the headers of a GET, `Content-Length: len` and no body.
    pub fn head(&mut self, len: u64) -> Response {
        self.insert_header((hyper::header::CONTENT_LENGTH, len.to_string()));
        self.finish()
    }
}
