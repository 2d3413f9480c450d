//! The TOML configuration file shared by every role (`--config FILE`), and
//! `haystack config example`, which prints every option with its default.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The example printed by `haystack config example`; a test checks that it parses to exactly
/// the defaults, so it cannot drift from the code.
pub const EXAMPLE: &str = include_str!("haystack.example.toml");

/// The whole file: one section per role.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HaystackConfig {
    pub server: ServerSection,
    pub store: haystack_store::StoreConfig,
    pub directory: haystack_directory::DirectoryConfig,
    pub cache: haystack_cache::CacheConfig,
    pub uploader: haystack_uploader::UploaderConfig,
    pub s3: haystack_s3::S3Config,
}

/// `[server]`: the layout of `haystack server`'s local cluster.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSection {
    pub data_dir: PathBuf,
    pub stores: u16,
    pub replication: usize,
    pub directory_port: u16,
    pub store_port: u16,
    pub cache_port: u16,
    pub uploader_port: u16,
    pub s3_port: u16,
    pub max_volume_bytes: u64,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            data_dir: PathBuf::from("./data"),
            stores: 3,
            replication: 2,
            directory_port: 8082,
            store_port: 8090,
            cache_port: 8081,
            uploader_port: 8080,
            s3_port: 8083,
            max_volume_bytes: 1 << 30,
        }
    }
}

/// Reads the file at `path` (`None`: every default). Unknown keys are an error, so a typo
/// does not pass silently.
pub fn load(path: Option<&Path>) -> Result<HaystackConfig, String> {
    let Some(path) = path else {
        return Ok(HaystackConfig::default());
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the config file {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("config file {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_is_exactly_the_defaults() {
        let parsed: HaystackConfig = toml::from_str(EXAMPLE).expect("the example parses");
        assert_eq!(parsed, HaystackConfig::default());
    }

    /// Every option the code has (set, not commented out) appears in the example, so the
    /// example documents all of them.
    #[test]
    fn the_example_names_every_option() {
        fn keys(v: &toml::Value, path: String, out: &mut Vec<String>) {
            if let toml::Value::Table(t) = v {
                for (k, v) in t {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    out.push(p.clone());
                    keys(v, p, out);
                }
            }
        }
        let (mut want, mut have) = (Vec::new(), Vec::new());
        let defaults = toml::Value::try_from(HaystackConfig::default()).expect("serialize");
        keys(&defaults, String::new(), &mut want);
        keys(
            &toml::from_str(EXAMPLE).expect("parse"),
            String::new(),
            &mut have,
        );
        let commented: Vec<&str> = EXAMPLE
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter_map(|l| l.split_once(" = ").map(|(k, _)| k))
            .collect();
        for k in want {
            let leaf = k.rsplit('.').next().unwrap_or(&k);
            assert!(
                have.contains(&k) || commented.contains(&leaf),
                "option {k} is missing from haystack.example.toml"
            );
        }
    }

    #[test]
    fn a_typo_is_an_error_that_names_it() {
        let e = toml::from_str::<HaystackConfig>("[store]\nmax_volum_bytes = 5\n")
            .expect_err("unknown key refused");
        assert!(e.to_string().contains("max_volum_bytes"), "{e}");
    }

    #[test]
    fn a_partial_file_keeps_the_other_defaults() {
        let c: HaystackConfig =
            toml::from_str("[server]\nstores = 5\n[directory]\nreplication_factor = 2\n").unwrap();
        assert_eq!(c.server.stores, 5);
        assert_eq!(c.directory.replication_factor, 2);
        assert_eq!(c.store, haystack_store::StoreConfig::default());
    }
}
