//! End to end with the real clients from PyPI: boto3, awscli and s3cmd against the S3 role on
//! 127.0.0.1. `.ci/run` installs them in a venv and sets `HAYSTACK_S3_CLIENTS` to its `bin`
//! directory; without it this test says SKIPPED and passes.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;

const BOTO3_SCRIPT: &str = r#"
import hashlib, io, os, sys, urllib.request, urllib.error
import boto3, botocore
from botocore.config import Config

ep, key, secret = sys.argv[1], sys.argv[2], sys.argv[3]
s3 = boto3.client("s3", endpoint_url=ep, aws_access_key_id=key, aws_secret_access_key=secret, region_name="us-east-1")
s3.create_bucket(Bucket="boto-bucket")
s3.put_object(Bucket="boto-bucket", Key="a/one.txt", Body=b"one", ContentType="text/plain", Metadata={"k": "v"})
r = s3.get_object(Bucket="boto-bucket", Key="a/one.txt")
assert r["Body"].read() == b"one" and r["Metadata"] == {"k": "v"} and r["ContentType"] == "text/plain", r
# A multipart upload (boto3 goes multipart past 8 MiB) with its default checksums.
data = os.urandom(20 * 1024 * 1024 + 17)
s3.upload_fileobj(io.BytesIO(data), "boto-bucket", "big.bin")
h = s3.head_object(Bucket="boto-bucket", Key="big.bin")
assert h["ContentLength"] == len(data) and h["ETag"].endswith('-3"'), h
r = s3.get_object(Bucket="boto-bucket", Key="big.bin", Range="bytes=8388600-8388620")
assert r["Body"].read() == data[8388600:8388621]
buf = io.BytesIO(); s3.download_fileobj("boto-bucket", "big.bin", buf); assert buf.getvalue() == data
# Listing with a paginator and a delimiter.
for i in range(25):
    s3.put_object(Bucket="boto-bucket", Key=f"many/{i:02}", Body=b"")
keys = [o["Key"] for p in s3.get_paginator("list_objects_v2").paginate(Bucket="boto-bucket", Prefix="many/", PaginationConfig={"PageSize": 7}) for o in p.get("Contents", [])]
assert keys == [f"many/{i:02}" for i in range(25)], keys
top = s3.list_objects_v2(Bucket="boto-bucket", Delimiter="/")
assert [p["Prefix"] for p in top["CommonPrefixes"]] == ["a/", "many/"] and [o["Key"] for o in top["Contents"]] == ["big.bin"], top
# Presigned GET (boto3's default, Signature V2, and SigV4) and PUT.
for cfg in (Config(), Config(signature_version="s3v4")):
    c = boto3.client("s3", endpoint_url=ep, aws_access_key_id=key, aws_secret_access_key=secret, region_name="us-east-1", config=cfg)
    url = c.generate_presigned_url("get_object", Params={"Bucket": "boto-bucket", "Key": "a/one.txt"}, ExpiresIn=60)
    assert urllib.request.urlopen(url).read() == b"one"
c = boto3.client("s3", endpoint_url=ep, aws_access_key_id=key, aws_secret_access_key=secret, region_name="us-east-1", config=Config(signature_version="s3v4"))
url = c.generate_presigned_url("put_object", Params={"Bucket": "boto-bucket", "Key": "presigned"}, ExpiresIn=60)
urllib.request.urlopen(urllib.request.Request(url, data=b"via url", method="PUT")).read()
assert s3.get_object(Bucket="boto-bucket", Key="presigned")["Body"].read() == b"via url"
# Conditional GET, conditional PUT, copy, multi-delete.
etag = s3.head_object(Bucket="boto-bucket", Key="a/one.txt")["ETag"]
try:
    s3.get_object(Bucket="boto-bucket", Key="a/one.txt", IfNoneMatch=etag); raise SystemExit("expected 304")
except botocore.exceptions.ClientError as e:
    assert e.response["Error"]["Code"] in ("304", "NotModified"), e.response
try:
    s3.put_object(Bucket="boto-bucket", Key="a/one.txt", Body=b"x", IfNoneMatch="*"); raise SystemExit("expected 412")
except botocore.exceptions.ClientError as e:
    assert e.response["Error"]["Code"] == "PreconditionFailed", e.response
s3.copy_object(Bucket="boto-bucket", Key="copy.txt", CopySource={"Bucket": "boto-bucket", "Key": "a/one.txt"})
assert s3.get_object(Bucket="boto-bucket", Key="copy.txt")["Body"].read() == b"one"
# UploadPartCopy: a range of big.bin and all of a/one.txt as the parts of a new object.
u = s3.create_multipart_upload(Bucket="boto-bucket", Key="joined.bin")["UploadId"]
lo, hi = 1000, 1000 + 5 * 1024 * 1024 + 6
p1 = s3.upload_part_copy(Bucket="boto-bucket", Key="joined.bin", UploadId=u, PartNumber=1, CopySource={"Bucket": "boto-bucket", "Key": "big.bin"}, CopySourceRange=f"bytes={lo}-{hi}")["CopyPartResult"]
p2 = s3.upload_part_copy(Bucket="boto-bucket", Key="joined.bin", UploadId=u, PartNumber=2, CopySource="boto-bucket/a/one.txt")["CopyPartResult"]
assert p1["ETag"] == '"%s"' % hashlib.md5(data[lo:hi + 1]).hexdigest(), p1
assert p2["ETag"] == '"%s"' % hashlib.md5(b"one").hexdigest() and "LastModified" in p2, p2
s3.complete_multipart_upload(Bucket="boto-bucket", Key="joined.bin", UploadId=u, MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": p1["ETag"]}, {"PartNumber": 2, "ETag": p2["ETag"]}]})
assert s3.get_object(Bucket="boto-bucket", Key="joined.bin")["Body"].read() == data[lo:hi + 1] + b"one"
# The managed copy goes multipart past 8 MiB: UploadPartCopy with ranges, as boto3 makes them
# (6 MiB parts: 4, where the source has 3, so the ETag shows it was not a CopyObject).
from boto3.s3.transfer import TransferConfig
s3.copy({"Bucket": "boto-bucket", "Key": "big.bin"}, "boto-bucket", "big-copy.bin", Config=TransferConfig(multipart_chunksize=6 * 1024 * 1024))
h = s3.head_object(Bucket="boto-bucket", Key="big-copy.bin")
assert h["ContentLength"] == len(data) and h["ETag"].endswith('-4"'), h
assert s3.get_object(Bucket="boto-bucket", Key="big-copy.bin")["Body"].read() == data
# A wrong secret: SignatureDoesNotMatch, nothing written.
bad = boto3.client("s3", endpoint_url=ep, aws_access_key_id=key, aws_secret_access_key="wrong", region_name="us-east-1")
try:
    bad.put_object(Bucket="boto-bucket", Key="forged", Body=b"x"); raise SystemExit("expected 403")
except botocore.exceptions.ClientError as e:
    assert e.response["Error"]["Code"] == "SignatureDoesNotMatch", e.response
assert "forged" not in [o["Key"] for o in s3.list_objects_v2(Bucket="boto-bucket")["Contents"]]
objs = [{"Key": o["Key"]} for o in s3.list_objects_v2(Bucket="boto-bucket")["Contents"]]
s3.delete_objects(Bucket="boto-bucket", Delete={"Objects": objs})
s3.delete_bucket(Bucket="boto-bucket")
print("boto3 ok", boto3.__version__)
"#;

fn clients_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(std::env::var_os("HAYSTACK_S3_CLIENTS")?);
    ["python", "aws", "s3cmd"]
        .iter()
        .all(|b| dir.join(b).is_file())
        .then_some(dir)
}

fn run(dir: &Path, what: &str, args: &[&str], env: &[(&str, &str)], cwd: &Path) -> String {
    let out = Command::new(dir.join(what))
        .args(args)
        .envs(env.iter().copied())
        .env_remove("AWS_PROFILE")
        .env("AWS_CONFIG_FILE", cwd.join("no-aws-config"))
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            cwd.join("no-aws-credentials"),
        )
        .current_dir(cwd)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what} {args:?} failed:\n{text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_awscli_and_s3cmd() {
    let Some(bin) = clients_dir() else {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "boto3_awscli_and_s3cmd: SKIPPED: HAYSTACK_S3_CLIENTS is not set to a directory \
             holding python (with boto3), aws and s3cmd (README.md says how to install them)"
        );
        return;
    };
    let h = Harness::start().await;
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path().to_path_buf();
    let (url, key, secret) = (h.url.clone(), h.key.clone(), h.secret.clone());
    // The clients block: run them off the runtime's workers.
    tokio::task::spawn_blocking(move || {
        std::fs::write(w.join("t.py"), BOTO3_SCRIPT).expect("script");
        let out = run(&bin, "python", &["t.py", &url, &key, &secret], &[], &w);
        assert!(out.contains("boto3 ok"), "{out}");

        let env = [
            ("AWS_ACCESS_KEY_ID", key.as_str()),
            ("AWS_SECRET_ACCESS_KEY", secret.as_str()),
            ("AWS_DEFAULT_REGION", "us-east-1"),
        ];
        let data: Vec<u8> = (0..12_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(w.join("f.bin"), &data).expect("file");
        let aws = |args: &[&str]| {
            let mut a = vec!["--endpoint-url", url.as_str()];
            a.extend_from_slice(args);
            run(&bin, "aws", &a, &env, &w)
        };
        aws(&["s3", "mb", "s3://cli-bucket"]);
        aws(&[
            "s3",
            "cp",
            "f.bin",
            "s3://cli-bucket/d/f.bin",
            "--only-show-errors",
        ]);
        let ls = aws(&["s3", "ls", "--recursive", "s3://cli-bucket/"]);
        assert!(ls.contains("12000000 d/f.bin"), "{ls}");
        aws(&[
            "s3",
            "cp",
            "s3://cli-bucket/d/f.bin",
            "back.bin",
            "--only-show-errors",
        ]);
        assert!(std::fs::read(w.join("back.bin")).expect("back") == data);
        // A copy past awscli's 8 MiB threshold is multipart, its parts UploadPartCopy: from a
        // single PUT, so the copy's ETag ("-2") shows it was not one CopyObject.
        aws(&[
            "s3api",
            "put-object",
            "--bucket",
            "cli-bucket",
            "--key",
            "d/single.bin",
            "--body",
            "f.bin",
        ]);
        aws(&[
            "s3",
            "cp",
            "s3://cli-bucket/d/single.bin",
            "s3://cli-bucket/d/g.bin",
            "--only-show-errors",
        ]);
        let head = aws(&[
            "s3api",
            "head-object",
            "--bucket",
            "cli-bucket",
            "--key",
            "d/g.bin",
        ]);
        assert!(head.contains("-2\\\""), "{head}");
        aws(&[
            "s3",
            "cp",
            "s3://cli-bucket/d/g.bin",
            "copy.bin",
            "--only-show-errors",
        ]);
        assert!(std::fs::read(w.join("copy.bin")).expect("copy") == data);
        aws(&[
            "s3api",
            "head-object",
            "--bucket",
            "cli-bucket",
            "--key",
            "d/f.bin",
        ]);
        aws(&[
            "s3",
            "rm",
            "--recursive",
            "s3://cli-bucket/",
            "--only-show-errors",
        ]);
        aws(&["s3", "rb", "s3://cli-bucket"]);

        let host = url.trim_start_matches("http://");
        let cfg = format!(
            "[default]\naccess_key = {key}\nsecret_key = {secret}\nhost_base = {host}\n\
             host_bucket = {host}\nuse_https = False\nsignature_v2 = False\n\
             bucket_location = us-east-1\n"
        );
        std::fs::write(w.join("s3cfg"), cfg).expect("s3cfg");
        let s3cmd = |args: &[&str]| {
            let mut a = vec!["-c", "s3cfg"];
            a.extend_from_slice(args);
            run(&bin, "s3cmd", &a, &[], &w)
        };
        s3cmd(&["mb", "s3://cmd-bucket"]);
        s3cmd(&["put", "f.bin", "s3://cmd-bucket/x/f.bin"]);
        let ls = s3cmd(&["ls", "s3://cmd-bucket/x/"]);
        assert!(ls.contains("s3://cmd-bucket/x/f.bin"), "{ls}");
        s3cmd(&["get", "--force", "s3://cmd-bucket/x/f.bin", "cmd.bin"]);
        assert!(std::fs::read(w.join("cmd.bin")).expect("back") == data);
        s3cmd(&["del", "s3://cmd-bucket/x/f.bin"]);
        s3cmd(&["rb", "s3://cmd-bucket"]);
    })
    .await
    .expect("clients ran");
}
