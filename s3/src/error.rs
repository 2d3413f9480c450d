//! The S3 role's error type and its one mapping to S3 error codes and HTTP statuses
//! ([`S3Error::code_and_status`]); `http` renders it as the S3 XML error body.

use haystack_client::ClientError;

#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    #[error("The specified bucket does not exist")]
    NoSuchBucket,
    #[error("The specified key does not exist.")]
    NoSuchKey,
    #[error("The specified multipart upload does not exist.")]
    NoSuchUpload,
    #[error("The requested bucket name is not available.")]
    BucketAlreadyExists,
    #[error("Your previous request to create the named bucket succeeded and you already own it.")]
    BucketAlreadyOwnedByYou,
    #[error("The bucket you tried to delete is not empty")]
    BucketNotEmpty,
    #[error("The specified bucket is not valid: {0}")]
    InvalidBucketName(String),
    #[error("Access Denied")]
    AccessDenied,
    #[error("The AWS access key Id you provided does not exist in our records.")]
    InvalidAccessKeyId,
    #[error("The request signature we calculated does not match the signature you provided.")]
    SignatureDoesNotMatch,
    #[error("Request has expired")]
    ExpiredPresign,
    #[error("The difference between the request time and the server's time is too large.")]
    RequestTimeTooSkewed,
    #[error("{0}")]
    AuthorizationHeaderMalformed(String),
    #[error("The requested range is not satisfiable")]
    InvalidRange,
    #[error("At least one of the pre-conditions you specified did not hold")]
    PreconditionFailed,
    #[error("Not Modified")]
    NotModified,
    #[error("The Content-MD5 you specified did not match what we received.")]
    BadDigest,
    #[error("The Content-MD5 you specified is not valid.")]
    InvalidDigest,
    #[error("The provided '{0}' checksum does not match what was computed.")]
    BadChecksum(String),
    #[error("The provided 'x-amz-content-sha256' header does not match what was computed.")]
    ContentSha256Mismatch,
    #[error(
        "You did not provide the number of bytes specified by the Content-Length HTTP header."
    )]
    IncompleteBody,
    #[error("Your socket connection to the server was not read from or written to within the timeout period.")]
    RequestTimeout,
    #[error("Your proposed upload exceeds the maximum allowed size")]
    EntityTooLarge,
    #[error("Your proposed upload is smaller than the minimum allowed size")]
    EntityTooSmall,
    #[error("The XML you provided was not well-formed or did not validate against our published schema: {0}")]
    MalformedXML(String),
    #[error("One or more of the specified parts could not be found.")]
    InvalidPart,
    #[error("The list of parts was not in ascending order.")]
    InvalidPartOrder,
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("Your metadata headers exceed the maximum allowed metadata size.")]
    MetadataTooLarge,
    #[error("Your request header section exceeds the maximum allowed size.")]
    HeaderTooLarge,
    #[error("Your key is too long")]
    KeyTooLong,
    #[error("You must provide the Content-Length HTTP header.")]
    MissingContentLength,
    #[error("The specified method is not allowed against this resource.")]
    MethodNotAllowed,
    #[error("{0} is not implemented")]
    NotImplemented(String),
    #[error("A conflicting conditional operation is currently in progress against this resource.")]
    ConditionalRequestConflict,
    #[error("Please reduce your request rate: {0}")]
    SlowDown(String),
    #[error("We encountered an internal error: {0}")]
    Internal(String),
    /// The directory did not answer a request (or failed with a 5xx): whether it acted on it
    /// is not known ([`S3Error::may_have_applied`]).
    #[error("We encountered an internal error: {0}")]
    Uncertain(String),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl S3Error {
    /// The S3 error code and HTTP status of every error: the one place they are decided.
    pub fn code_and_status(&self) -> (&'static str, u16) {
        use S3Error::*;
        match self {
            NoSuchBucket => ("NoSuchBucket", 404),
            NoSuchKey => ("NoSuchKey", 404),
            NoSuchUpload => ("NoSuchUpload", 404),
            BucketAlreadyExists => ("BucketAlreadyExists", 409),
            BucketAlreadyOwnedByYou => ("BucketAlreadyOwnedByYou", 409),
            BucketNotEmpty => ("BucketNotEmpty", 409),
            InvalidBucketName(_) => ("InvalidBucketName", 400),
            AccessDenied => ("AccessDenied", 403),
            InvalidAccessKeyId => ("InvalidAccessKeyId", 403),
            SignatureDoesNotMatch => ("SignatureDoesNotMatch", 403),
            ExpiredPresign => ("AccessDenied", 403),
            RequestTimeTooSkewed => ("RequestTimeTooSkewed", 403),
            AuthorizationHeaderMalformed(_) => ("AuthorizationHeaderMalformed", 400),
            InvalidRange => ("InvalidRange", 416),
            PreconditionFailed => ("PreconditionFailed", 412),
            NotModified => ("NotModified", 304),
            BadDigest => ("BadDigest", 400),
            InvalidDigest => ("InvalidDigest", 400),
            BadChecksum(_) => ("BadDigest", 400),
            ContentSha256Mismatch => ("XAmzContentSHA256Mismatch", 400),
            IncompleteBody => ("IncompleteBody", 400),
            RequestTimeout => ("RequestTimeout", 400),
            EntityTooLarge => ("EntityTooLarge", 400),
            EntityTooSmall => ("EntityTooSmall", 400),
            MalformedXML(_) => ("MalformedXML", 400),
            InvalidPart => ("InvalidPart", 400),
            InvalidPartOrder => ("InvalidPartOrder", 400),
            InvalidArgument(_) => ("InvalidArgument", 400),
            InvalidRequest(_) => ("InvalidRequest", 400),
            MetadataTooLarge => ("MetadataTooLarge", 400),
            KeyTooLong => ("KeyTooLongError", 400),
            HeaderTooLarge => ("RequestHeaderSectionTooLarge", 400),
            MissingContentLength => ("MissingContentLength", 411),
            MethodNotAllowed => ("MethodNotAllowed", 405),
            NotImplemented(_) => ("NotImplemented", 501),
            ConditionalRequestConflict => ("ConditionalRequestConflict", 409),
            SlowDown(_) => ("SlowDown", 503),
            Internal(_) | Uncertain(_) | Config(_) | Io(_) => ("InternalError", 500),
        }
    }
}

impl From<ClientError> for S3Error {
    fn from(e: ClientError) -> Self {
        match e.status() {
            Some(503) => S3Error::SlowDown(e.to_string()),
            Some(400..=499) => S3Error::Internal(e.to_string()),
            // No answer, or a server error: the write may have been done all the same.
            _ => S3Error::Uncertain(e.to_string()),
        }
    }
}

impl S3Error {
    /// Whether a write that failed with this may still have been applied by the directory (no
    /// answer, a timeout, a 5xx): the data its record would name must then be kept, never
    /// deleted, as the record may name it.
    pub fn may_have_applied(&self) -> bool {
        matches!(self, S3Error::Uncertain(_) | S3Error::SlowDown(_))
    }
}
