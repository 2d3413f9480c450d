//! The S3 role's one integration-test binary.
