//! `haystack s3 key ...` and `haystack s3 bucket ...`: access keys and bucket settings of the
//! S3 role, written to the directory's keyspaces with the master key of the `[s3]` section.

use haystack_s3::keys::Grant;
use haystack_s3::S3Config;

fn s3(cfg: S3Config) -> Result<haystack_s3::service::S3, String> {
    haystack_s3::build_with_credentials(cfg, crate::client::credentials())
        .map_err(|e| format!("s3: {e}"))
}

/// Creates a key with read and/or write on a bucket (`*`: every bucket); prints the secret
/// once.
pub async fn key_create(
    cfg: S3Config,
    bucket: &str,
    read: bool,
    write: bool,
    create_buckets: bool,
) -> Result<(), String> {
    if !read && !write && !create_buckets {
        return Err("give --read, --write or both (and/or --create-buckets)".into());
    }
    let s = s3(cfg)?;
    let grants = vec![Grant {
        bucket: bucket.to_string(),
        read,
        write,
    }];
    let (id, secret) = s
        .create_key(grants, create_buckets)
        .await
        .map_err(|e| format!("creating the key failed: {e}"))?;
    println!("access key id:     {id}");
    println!("secret access key: {secret}");
    println!("(the secret is shown only now; it is stored sealed under the master key)");
    Ok(())
}

pub async fn key_delete(cfg: S3Config, id: &str) -> Result<(), String> {
    s3(cfg)?
        .delete_key(id)
        .await
        .map_err(|e| format!("deleting key {id} failed: {e}"))?;
    println!("deleted {id}");
    Ok(())
}

pub async fn bucket_create(cfg: S3Config, name: &str) -> Result<(), String> {
    s3(cfg)?
        .create_bucket(name)
        .await
        .map_err(|e| format!("creating bucket {name} failed: {e}"))?;
    println!("created {name}");
    Ok(())
}

pub async fn bucket_anonymous_read(cfg: S3Config, name: &str, on: bool) -> Result<(), String> {
    s3(cfg)?
        .set_anonymous_read(name, on)
        .await
        .map_err(|e| format!("bucket {name}: {e}"))?;
    println!(
        "anonymous read of {name} is {}",
        if on { "on" } else { "off" }
    );
    Ok(())
}
