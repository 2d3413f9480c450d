//! The ScyllaDB (or Cassandra) backend over the scylla crate: the way to outgrow one machine.
//!
//! On first start it creates the keyspace (replication from the config) and one table per
//! [`Table`]: `(id bigint PRIMARY KEY, version bigint, data blob)`. Every statement is prepared
//! once. Reads and writes use the configured consistency (LOCAL_QUORUM by default); every write
//! is a lightweight transaction (`IF NOT EXISTS` or `IF version = ?`, LOCAL_SERIAL), so several
//! directory instances can race on the same record safely, and since every write of a record
//! goes through Paxos no plain write can reorder with a conditional one. Each request has a
//! client-side timeout; the driver's default retry policy retries what is safe to retry.
//!
//! u64 keys and versions are stored as bigint with the same bits (`as i64`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::TryStreamExt;
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::policies::retry::DefaultRetryPolicy;
use scylla::response::query_result::QueryResult;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, SerialConsistency};
use scylla::value::{CqlValue, Row};

use super::{Cas, Expect, MetaError, MetadataStore, Stored, Table};
use crate::config::ScyllaConfig;

struct Statements {
    get: PreparedStatement,
    insert: PreparedStatement,
    update: PreparedStatement,
    delete: PreparedStatement,
    list: PreparedStatement,
}

/// The ScyllaDB backend.
pub struct ScyllaStore {
    session: Session,
    kv: super::scylla_kv::KvStatements,
    statements: HashMap<Table, Statements>,
    ping: PreparedStatement,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> MetaError {
    MetaError::Unavailable(format!("scylla {what}: {e}"))
}

/// Parses the `consistency` setting. `one` and `local_one` are refused: a conditional write
/// is acknowledged once one replica has applied its commit at that level, and a read at it may
/// ask another replica, which still holds the record before the write (a deleted photo read
/// as live, a lease read as free). With `replication_factor` 1, `local_quorum` waits for the
/// one replica anyway.
pub fn parse_consistency(s: &str) -> Result<Consistency, String> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "local_quorum" => Consistency::LocalQuorum,
        "quorum" => Consistency::Quorum,
        "all" => Consistency::All,
        "each_quorum" => {
            return Err(
                "consistency \"each_quorum\" is refused by ScyllaDB for reads; use \
                 local_quorum, quorum or all"
                    .into(),
            )
        }
        "one" | "local_one" => {
            return Err(format!(
                "consistency {s:?} can read a record older than its last conditional write \
                 (a deleted photo read as live); use local_quorum (with replication_factor 1 \
                 it waits for the one replica), quorum or all"
            ))
        }
        other => return Err(format!("unknown consistency {other:?}")),
    })
}

/// The CQL that creates the keyspace.
pub fn keyspace_cql(keyspace: &str, cfg: &ScyllaConfig) -> String {
    let mut cql = format!(
        "CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = {}",
        cfg.replication
    );
    if !cfg.keyspace_options.trim().is_empty() {
        cql.push_str(" AND ");
        cql.push_str(cfg.keyspace_options.trim());
    }
    cql
}

impl ScyllaStore {
    /// Connects to `hosts`, creates the keyspace and tables if missing, prepares statements.
    /// `keyspace` must already be validated (see [`crate::config::MetadataUrl`]).
    pub async fn connect(
        hosts: &[String],
        keyspace: &str,
        cfg: &ScyllaConfig,
    ) -> Result<Self, MetaError> {
        let consistency = parse_consistency(&cfg.consistency).map_err(MetaError::Unavailable)?;
        let profile = ExecutionProfile::builder()
            .consistency(consistency)
            .serial_consistency(Some(SerialConsistency::LocalSerial))
            .request_timeout(Some(Duration::from_millis(cfg.request_timeout_ms)))
            .retry_policy(Arc::new(DefaultRetryPolicy::new()))
            .build();
        let session: Session = SessionBuilder::new()
            .known_nodes(hosts)
            .connection_timeout(Duration::from_millis(cfg.connect_timeout_ms))
            .default_execution_profile_handle(profile.into_handle())
            .build()
            .await
            .map_err(|e| unavailable("connect", e))?;

        session
            .query_unpaged(keyspace_cql(keyspace, cfg), ())
            .await
            .map_err(|e| unavailable("create keyspace", e))?;
        for t in Table::ALL {
            let cql = format!(
                "CREATE TABLE IF NOT EXISTS {keyspace}.{} \
                 (id bigint PRIMARY KEY, version bigint, data blob)",
                t.name()
            );
            session
                .query_unpaged(cql, ())
                .await
                .map_err(|e| unavailable("create table", e))?;
        }
        session
            .await_schema_agreement()
            .await
            .map_err(|e| unavailable("schema agreement", e))?;

        let mut statements = HashMap::new();
        for t in Table::ALL {
            let name = t.name();
            let prep = |cql: String| {
                let session = &session;
                async move {
                    session
                        .prepare(cql)
                        .await
                        .map_err(|e| unavailable("prepare", e))
                }
            };
            let mut get = prep(format!(
                "SELECT version, data FROM {keyspace}.{name} WHERE id = ?"
            ))
            .await?;
            get.set_is_idempotent(true);
            let insert = prep(format!(
                "INSERT INTO {keyspace}.{name} (id, version, data) VALUES (?, ?, ?) IF NOT EXISTS"
            ))
            .await?;
            let update = prep(format!(
                "UPDATE {keyspace}.{name} SET version = ?, data = ? WHERE id = ? IF version = ?"
            ))
            .await?;
            let delete = prep(format!(
                "DELETE FROM {keyspace}.{name} WHERE id = ? IF version = ?"
            ))
            .await?;
            let mut list = prep(format!("SELECT id, version, data FROM {keyspace}.{name}")).await?;
            list.set_is_idempotent(true);
            list.set_page_size(1000);
            statements.insert(
                t,
                Statements {
                    get,
                    insert,
                    update,
                    delete,
                    list,
                },
            );
        }
        let mut ping = session
            .prepare("SELECT release_version FROM system.local WHERE key = 'local'")
            .await
            .map_err(|e| unavailable("prepare", e))?;
        ping.set_is_idempotent(true);
        let kv = super::scylla_kv::prepare(&session, keyspace, cfg.kv_split_rows).await?;
        tracing::info!(?hosts, keyspace, "scylla metadata store connected");
        Ok(Self {
            session,
            kv,
            statements,
            ping,
        })
    }

    fn stmts(&self, t: Table) -> Result<&Statements, MetaError> {
        self.statements
            .get(&t)
            .ok_or_else(|| MetaError::Unavailable(format!("no statements for {}", t.name())))
    }
}

/// Reads `[applied]` and the current `version` from an LWT answer.
fn lwt_outcome(result: QueryResult, new_version: u64) -> Result<Cas, MetaError> {
    let rows = result
        .into_rows_result()
        .map_err(|e| unavailable("lwt result", e))?;
    let specs = rows.column_specs();
    let applied_idx = specs
        .get_by_name("[applied]")
        .map(|(i, _)| i)
        .ok_or_else(|| MetaError::Unavailable("scylla lwt result without [applied]".into()))?;
    let version_idx = specs.get_by_name("version").map(|(i, _)| i);
    let row: Row = rows
        .single_row::<Row>()
        .map_err(|e| unavailable("lwt row", e))?;
    let applied = matches!(
        row.columns.get(applied_idx),
        Some(Some(CqlValue::Boolean(true)))
    );
    if applied {
        return Ok(Cas::Applied {
            version: new_version,
        });
    }
    let current = version_idx
        .and_then(|i| row.columns.get(i))
        .and_then(|c| match c {
            Some(CqlValue::BigInt(v)) => Some(*v as u64),
            _ => None,
        });
    Ok(Cas::Conflict { current })
}

#[async_trait]
impl MetadataStore for ScyllaStore {
    fn backend(&self) -> &'static str {
        "scylla"
    }

    async fn get(&self, table: Table, key: u64) -> Result<Option<Stored>, MetaError> {
        let s = self.stmts(table)?;
        let result = self
            .session
            .execute_unpaged(&s.get, (key as i64,))
            .await
            .map_err(|e| unavailable("get", e))?;
        let rows = result
            .into_rows_result()
            .map_err(|e| unavailable("get result", e))?;
        let row = rows
            .maybe_first_row::<(i64, Vec<u8>)>()
            .map_err(|e| unavailable("get row", e))?;
        Ok(row.map(|(version, data)| Stored {
            version: version as u64,
            data,
        }))
    }

    async fn put_if(
        &self,
        table: Table,
        key: u64,
        expect: Expect,
        data: Vec<u8>,
    ) -> Result<Cas, MetaError> {
        let s = self.stmts(table)?;
        match expect {
            Expect::Absent => {
                let first = super::first_version();
                let result = self
                    .session
                    .execute_unpaged(&s.insert, (key as i64, first as i64, data.as_slice()))
                    .await
                    .map_err(|e| unavailable("insert", e))?;
                lwt_outcome(result, first)
            }
            Expect::Version(v) => {
                let next = v + 1;
                let result = self
                    .session
                    .execute_unpaged(
                        &s.update,
                        (next as i64, data.as_slice(), key as i64, v as i64),
                    )
                    .await
                    .map_err(|e| unavailable("update", e))?;
                lwt_outcome(result, next)
            }
        }
    }

    async fn delete_if(&self, table: Table, key: u64, version: u64) -> Result<Cas, MetaError> {
        let s = self.stmts(table)?;
        let result = self
            .session
            .execute_unpaged(&s.delete, (key as i64, version as i64))
            .await
            .map_err(|e| unavailable("delete", e))?;
        lwt_outcome(result, version)
    }

    async fn list(&self, table: Table) -> Result<Vec<(u64, Stored)>, MetaError> {
        let s = self.stmts(table)?;
        let pager = self
            .session
            .execute_iter(s.list.clone(), ())
            .await
            .map_err(|e| unavailable("list", e))?;
        let mut stream = pager
            .rows_stream::<(i64, i64, Vec<u8>)>()
            .map_err(|e| unavailable("list types", e))?;
        let mut out = Vec::new();
        while let Some((id, version, data)) = stream
            .try_next()
            .await
            .map_err(|e| unavailable("list", e))?
        {
            out.push((
                id as u64,
                Stored {
                    version: version as u64,
                    data,
                },
            ));
        }
        Ok(out)
    }

    async fn kv_get(&self, space: u64, key: &str) -> Result<Option<Stored>, MetaError> {
        super::scylla_kv::get(&self.session, &self.kv, space, key).await
    }

    async fn kv_put_if(
        &self,
        space: u64,
        key: &str,
        expect: Expect,
        data: Vec<u8>,
    ) -> Result<Cas, MetaError> {
        super::scylla_kv::write(&self.session, &self.kv, space, key, expect, Some(data)).await
    }

    async fn kv_delete_if(&self, space: u64, key: &str, version: u64) -> Result<Cas, MetaError> {
        super::scylla_kv::write(
            &self.session,
            &self.kv,
            space,
            key,
            Expect::Version(version),
            None,
        )
        .await
    }

    async fn kv_scan(
        &self,
        space: u64,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(String, Stored)>, MetaError> {
        super::scylla_kv::scan(&self.session, &self.kv, space, prefix, after, limit).await
    }

    async fn ping(&self) -> Result<(), MetaError> {
        self.session
            .execute_unpaged(&self.ping, ())
            .await
            .map(|_| ())
            .map_err(|e| unavailable("ping", e))
    }
}
