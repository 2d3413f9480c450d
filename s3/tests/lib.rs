//! The S3 role's one integration-test binary: a testkit cluster and the S3 role on loopback
//! ports, driven through a small SigV4 client written here (aws-sdk-s3 would double the
//! build on two cores; the real clients, boto3, awscli and s3cmd, run in `clients`).

mod api;
mod auth;
mod bad_input;
mod clients;
mod common;
mod directories;
mod lost_answers;
