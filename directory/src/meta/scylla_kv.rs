//! Ordered keyspaces on ScyllaDB: each space is cut into key ranges, each range one partition
//! that is split in two when it passes `kv_split_rows`, so no partition grows with the number
//! of keys in a space (docs/directory.md, "Ordered keyspaces on ScyllaDB").
//!
//! Tables: `kv_ranges (space, start) -> part` (the range map: a range runs from its `start` to
//! the next one's) and `kv ((space, part), key) -> version, data`, with a static `state` per
//! part: 0 open, 1 filling (a split copies into it), 2 frozen (split away), null (never made,
//! or dropped after its split). Every write is a lightweight transaction that also requires
//! `state = 0`, so a write can never land in a part being split or already replaced: the
//! writer reads the range map again and retries (helping the split along when it finds the
//! part frozen). A split: freeze the part (LWT), read it whole (no write can change it now),
//! mark the two new parts filling, copy into them with conditional batches (`IF state = 1`),
//! open them, switch the range map in one conditional batch, drop the old partition. Every
//! step is idempotent and new part ids are derived from the old one, so any writer that finds
//! a frozen part can finish a split whose splitter died. Reads check after reading that the
//! range map still points at the part they read, and read again otherwise.

use futures_util::TryStreamExt;
use scylla::client::session::Session;
use scylla::response::query_result::QueryResult;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlValue, Row};

use super::ordered::{check_key, past_prefix, scan_start};
use super::{Cas, Expect, MetaError, Stored};

const OPEN: i32 = 0;
const FILLING: i32 = 1;
const FROZEN: i32 = 2;
/// A row as read: key, version, data.
type RawRow = (String, Option<i64>, Option<Vec<u8>>);

/// Rows per conditional batch when a split copies a part.
const COPY_BATCH: usize = 100;
/// Attempts of one operation across concurrent splits.
const ATTEMPTS: usize = 50;

fn unavailable(what: &str, e: impl std::fmt::Display) -> MetaError {
    MetaError::Unavailable(format!("scylla kv {what}: {e}"))
}

/// The prepared statements of the ordered keyspaces.
pub struct KvStatements {
    locate: PreparedStatement,
    next_range: PreparedStatement,
    init_part: PreparedStatement,
    init_range: PreparedStatement,
    get: PreparedStatement,
    insert: PreparedStatement,
    update: PreparedStatement,
    delete: PreparedStatement,
    scan_incl: PreparedStatement,
    scan_excl: PreparedStatement,
    count: PreparedStatement,
    freeze: PreparedStatement,
    read_part: PreparedStatement,
    mark_filling: PreparedStatement,
    copy_row: PreparedStatement,
    open_part: PreparedStatement,
    switch_range: PreparedStatement,
    add_range: PreparedStatement,
    drop_part: PreparedStatement,
    split_rows: u64,
}

/// Creates the two tables and prepares the statements.
pub async fn prepare(
    session: &Session,
    ks: &str,
    split_rows: u64,
) -> Result<KvStatements, MetaError> {
    for cql in [
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.kv_ranges \
             (space bigint, start text, part bigint, PRIMARY KEY (space, start))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.kv (space bigint, part bigint, key text, \
             version bigint, data blob, state int static, PRIMARY KEY ((space, part), key))"
        ),
    ] {
        session
            .query_unpaged(cql, ())
            .await
            .map_err(|e| unavailable("create table", e))?;
    }
    session
        .await_schema_agreement()
        .await
        .map_err(|e| unavailable("schema agreement", e))?;
    let prep = |cql: String, idempotent: bool| async move {
        let mut p = session
            .prepare(cql)
            .await
            .map_err(|e| unavailable("prepare", e))?;
        p.set_is_idempotent(idempotent);
        Ok::<_, MetaError>(p)
    };
    Ok(KvStatements {
        locate: prep(
            format!(
                "SELECT start, part FROM {ks}.kv_ranges WHERE space = ? AND start <= ? \
                 ORDER BY start DESC LIMIT 1"
            ),
            true,
        )
        .await?,
        next_range: prep(
            format!("SELECT start, part FROM {ks}.kv_ranges WHERE space = ? AND start > ? LIMIT 1"),
            true,
        )
        .await?,
        init_part: prep(
            format!(
                "UPDATE {ks}.kv SET state = {OPEN} WHERE space = ? AND part = ? IF state = null"
            ),
            false,
        )
        .await?,
        init_range: prep(
            format!(
                "INSERT INTO {ks}.kv_ranges (space, start, part) VALUES (?, '', ?) IF NOT EXISTS"
            ),
            false,
        )
        .await?,
        get: prep(
            format!("SELECT version, data FROM {ks}.kv WHERE space = ? AND part = ? AND key = ?"),
            true,
        )
        .await?,
        insert: prep(
            format!(
                "UPDATE {ks}.kv SET version = ?, data = ? WHERE space = ? AND part = ? AND key = ? \
                 IF version = null AND state = {OPEN}"
            ),
            false,
        )
        .await?,
        update: prep(
            format!(
                "UPDATE {ks}.kv SET version = ?, data = ? WHERE space = ? AND part = ? AND key = ? \
                 IF version = ? AND state = {OPEN}"
            ),
            false,
        )
        .await?,
        delete: prep(
            format!(
                "DELETE FROM {ks}.kv WHERE space = ? AND part = ? AND key = ? \
                 IF version = ? AND state = {OPEN}"
            ),
            false,
        )
        .await?,
        scan_incl: prep(
            format!(
                "SELECT key, version, data FROM {ks}.kv WHERE space = ? AND part = ? \
                 AND key >= ? LIMIT ?"
            ),
            true,
        )
        .await?,
        scan_excl: prep(
            format!(
                "SELECT key, version, data FROM {ks}.kv WHERE space = ? AND part = ? \
                 AND key > ? LIMIT ?"
            ),
            true,
        )
        .await?,
        count: prep(
            format!("SELECT COUNT(*) FROM {ks}.kv WHERE space = ? AND part = ?"),
            true,
        )
        .await?,
        freeze: prep(
            format!(
                "UPDATE {ks}.kv SET state = {FROZEN} WHERE space = ? AND part = ? \
                 IF state = {OPEN}"
            ),
            false,
        )
        .await?,
        read_part: {
            let mut p = prep(
                format!("SELECT key, version, data FROM {ks}.kv WHERE space = ? AND part = ?"),
                true,
            )
            .await?;
            p.set_page_size(1000);
            p
        },
        mark_filling: prep(
            format!(
                "UPDATE {ks}.kv SET state = {FILLING} WHERE space = ? AND part = ? \
                 IF state = null"
            ),
            false,
        )
        .await?,
        copy_row: prep(
            format!(
                "UPDATE {ks}.kv SET version = ?, data = ? WHERE space = ? AND part = ? \
                 AND key = ? IF state = {FILLING}"
            ),
            false,
        )
        .await?,
        open_part: prep(
            format!(
                "UPDATE {ks}.kv SET state = {OPEN} WHERE space = ? AND part = ? \
                 IF state = {FILLING}"
            ),
            false,
        )
        .await?,
        switch_range: prep(
            format!("UPDATE {ks}.kv_ranges SET part = ? WHERE space = ? AND start = ? IF part = ?"),
            false,
        )
        .await?,
        add_range: prep(
            format!(
                "INSERT INTO {ks}.kv_ranges (space, start, part) VALUES (?, ?, ?) IF NOT EXISTS"
            ),
            false,
        )
        .await?,
        drop_part: prep(
            format!("DELETE FROM {ks}.kv WHERE space = ? AND part = ?"),
            true,
        )
        .await?,
        split_rows: split_rows.max(2),
    })
}

/// `[applied]` and the `version` and `state` columns of an LWT answer.
fn lwt(result: QueryResult) -> Result<(bool, Option<u64>, Option<i32>), MetaError> {
    let rows = result
        .into_rows_result()
        .map_err(|e| unavailable("lwt result", e))?;
    let specs = rows.column_specs();
    let idx = |name: &str| specs.get_by_name(name).map(|(i, _)| i);
    let (applied_idx, version_idx, state_idx) = (idx("[applied]"), idx("version"), idx("state"));
    let row: Row = rows
        .maybe_first_row::<Row>()
        .map_err(|e| unavailable("lwt row", e))?
        .ok_or_else(|| MetaError::Unavailable("scylla kv lwt answer without a row".into()))?;
    let col = |i: Option<usize>| i.and_then(|i| row.columns.get(i)).and_then(|c| c.as_ref());
    let applied = matches!(col(applied_idx), Some(CqlValue::Boolean(true)));
    let version = match col(version_idx) {
        Some(CqlValue::BigInt(v)) => Some(*v as u64),
        _ => None,
    };
    let state = match col(state_idx) {
        Some(CqlValue::Int(v)) => Some(*v),
        _ => None,
    };
    Ok((applied, version, state))
}

/// The id of a part made by splitting `part` (`side` 1 or 2): a 64-bit mix, so ids from
/// different splits do not meet.
fn child(part: i64, side: u64) -> i64 {
    let mut z = (part as u64) ^ side.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) as i64
}

/// The range holding `key`: its start and part.
async fn locate(
    session: &Session,
    st: &KvStatements,
    space: i64,
    key: &str,
) -> Result<(String, i64), MetaError> {
    loop {
        let found = session
            .execute_unpaged(&st.locate, (space, key))
            .await
            .map_err(|e| unavailable("locate", e))?
            .into_rows_result()
            .map_err(|e| unavailable("locate", e))?
            .maybe_first_row::<(String, i64)>()
            .map_err(|e| unavailable("locate", e))?;
        if let Some(r) = found {
            return Ok(r);
        }
        // A new space: part 0 opens and takes the whole key range.
        session
            .execute_unpaged(&st.init_part, (space, 0i64))
            .await
            .map_err(|e| unavailable("init part", e))?;
        session
            .execute_unpaged(&st.init_range, (space, 0i64))
            .await
            .map_err(|e| unavailable("init range", e))?;
    }
}

async fn backoff(attempt: usize) {
    tokio::time::sleep(std::time::Duration::from_millis(5 * attempt.min(20) as u64)).await;
}

pub async fn get(
    session: &Session,
    st: &KvStatements,
    space: u64,
    key: &str,
) -> Result<Option<Stored>, MetaError> {
    let space = space as i64;
    for attempt in 0..ATTEMPTS {
        let (_, part) = locate(session, st, space, key).await?;
        let row = session
            .execute_unpaged(&st.get, (space, part, key))
            .await
            .map_err(|e| unavailable("get", e))?
            .into_rows_result()
            .map_err(|e| unavailable("get", e))?
            .maybe_first_row::<(Option<i64>, Option<Vec<u8>>)>()
            .map_err(|e| unavailable("get", e))?;
        // The map still pointing at the part after the read means the read was current.
        if locate(session, st, space, key).await?.1 == part {
            return Ok(match row {
                Some((Some(version), data)) => Some(Stored {
                    version: version as u64,
                    data: data.unwrap_or_default(),
                }),
                _ => None,
            });
        }
        backoff(attempt).await;
    }
    Err(MetaError::Unavailable(
        "scylla kv get: the key's range kept moving".into(),
    ))
}

/// A put (`data` Some) or a delete (None, with `Expect::Version`).
pub async fn write(
    session: &Session,
    st: &KvStatements,
    space: u64,
    key: &str,
    expect: Expect,
    data: Option<Vec<u8>>,
) -> Result<Cas, MetaError> {
    check_key(key).map_err(MetaError::Unavailable)?;
    let space = space as i64;
    for attempt in 0..ATTEMPTS {
        let (start, part) = locate(session, st, space, key).await?;
        let (result, next) = match (&data, expect) {
            (Some(d), Expect::Absent) => {
                let first = super::first_version();
                (
                    session
                        .execute_unpaged(&st.insert, (first as i64, d.as_slice(), space, part, key))
                        .await,
                    first,
                )
            }
            (Some(d), Expect::Version(v)) => (
                session
                    .execute_unpaged(
                        &st.update,
                        ((v + 1) as i64, d.as_slice(), space, part, key, v as i64),
                    )
                    .await,
                v + 1,
            ),
            // A removal answers the removed record's version.
            (None, Expect::Version(v)) => (
                session
                    .execute_unpaged(&st.delete, (space, part, key, v as i64))
                    .await,
                v,
            ),
            (None, Expect::Absent) => return Ok(Cas::Conflict { current: None }),
        };
        let (applied, current, state) = lwt(result.map_err(|e| unavailable("write", e))?)?;
        if applied {
            if data.is_some()
                && expect == Expect::Absent
                && (st.split_rows < 1024 || rand::random::<u32>().is_multiple_of(32))
            {
                maybe_split(session, st, space, &start, part).await?;
            }
            return Ok(Cas::Applied { version: next });
        }
        match state {
            Some(OPEN) => return Ok(Cas::Conflict { current }),
            Some(FROZEN) => split(session, st, space, &start, part).await?,
            _ => backoff(attempt).await,
        }
    }
    Err(MetaError::Unavailable(
        "scylla kv write: the key's range kept moving".into(),
    ))
}

pub async fn scan(
    session: &Session,
    st: &KvStatements,
    space: u64,
    prefix: &str,
    after: &str,
    limit: usize,
) -> Result<Vec<(String, Stored)>, MetaError> {
    let space = space as i64;
    let mut out: Vec<(String, Stored)> = Vec::new();
    let mut from = scan_start(prefix, after);
    let mut attempt = 0;
    while out.len() < limit {
        let (start, part) = locate(session, st, space, &from.key).await?;
        let want = (limit - out.len()) as i32;
        let stmt = if from.inclusive {
            &st.scan_incl
        } else {
            &st.scan_excl
        };
        let rows: Vec<(String, Option<i64>, Option<Vec<u8>>)> = session
            .execute_unpaged(stmt, (space, part, from.key.as_str(), want))
            .await
            .map_err(|e| unavailable("scan", e))?
            .into_rows_result()
            .map_err(|e| unavailable("scan", e))?
            .rows::<(String, Option<i64>, Option<Vec<u8>>)>()
            .map_err(|e| unavailable("scan", e))?
            .collect::<Result<_, _>>()
            .map_err(|e| unavailable("scan", e))?;
        if locate(session, st, space, &from.key).await?.1 != part {
            attempt += 1;
            if attempt >= ATTEMPTS {
                return Err(MetaError::Unavailable(
                    "scylla kv scan: the range kept moving".into(),
                ));
            }
            backoff(attempt).await;
            continue;
        }
        let got = rows.len();
        for (key, version, data) in rows {
            if past_prefix(&key, prefix) {
                return Ok(out);
            }
            from = super::ordered::ScanStart {
                key: key.clone(),
                inclusive: false,
            };
            if let (true, Some(v)) = (key.starts_with(prefix), version) {
                out.push((
                    key,
                    Stored {
                        version: v as u64,
                        data: data.unwrap_or_default(),
                    },
                ));
            }
        }
        if got < want as usize {
            // This range is done: go on with the next one, if any.
            let next = session
                .execute_unpaged(&st.next_range, (space, start.as_str()))
                .await
                .map_err(|e| unavailable("next range", e))?
                .into_rows_result()
                .map_err(|e| unavailable("next range", e))?
                .maybe_first_row::<(String, i64)>()
                .map_err(|e| unavailable("next range", e))?;
            match next {
                Some((next_start, _)) if !past_prefix(&next_start, prefix) => {
                    from = super::ordered::ScanStart {
                        key: next_start,
                        inclusive: true,
                    };
                }
                _ => return Ok(out),
            }
        }
    }
    Ok(out)
}

/// Splits the part when it holds more than `split_rows` rows (asked now and then by inserts).
async fn maybe_split(
    session: &Session,
    st: &KvStatements,
    space: i64,
    start: &str,
    part: i64,
) -> Result<(), MetaError> {
    let count = session
        .execute_unpaged(&st.count, (space, part))
        .await
        .map_err(|e| unavailable("count", e))?
        .into_rows_result()
        .map_err(|e| unavailable("count", e))?
        .maybe_first_row::<(i64,)>()
        .map_err(|e| unavailable("count", e))?
        .map_or(0, |(n,)| n as u64);
    if count > st.split_rows {
        let frozen = lwt(session
            .execute_unpaged(&st.freeze, (space, part))
            .await
            .map_err(|e| unavailable("freeze", e))?)?;
        if frozen.0 || frozen.2 == Some(FROZEN) {
            split(session, st, space, start, part).await?;
        }
    }
    Ok(())
}

/// Carries out (or finishes) the split of a frozen part. Idempotent, see the module doc.
async fn split(
    session: &Session,
    st: &KvStatements,
    space: i64,
    start: &str,
    part: i64,
) -> Result<(), MetaError> {
    if locate(session, st, space, start).await?.1 != part {
        // Switched already: only the old rows may be left to drop.
        session
            .execute_unpaged(&st.drop_part, (space, part))
            .await
            .map_err(|e| unavailable("split drop", e))?;
        return Ok(());
    }
    let mut rows: Vec<RawRow> = Vec::new();
    let mut stream = session
        .execute_iter(st.read_part.clone(), (space, part))
        .await
        .map_err(|e| unavailable("split read", e))?
        .rows_stream::<(String, Option<i64>, Option<Vec<u8>>)>()
        .map_err(|e| unavailable("split read", e))?;
    while let Some(r) = stream
        .try_next()
        .await
        .map_err(|e| unavailable("split read", e))?
    {
        if r.1.is_some() {
            rows.push(r);
        }
    }
    let mid = rows.len() / 2;
    let mid_key = rows.get(mid).map(|r| r.0.clone()).filter(|_| mid > 0);
    let (left, right) = (child(part, 1), child(part, 2));
    let halves: Vec<(i64, &[RawRow])> = match &mid_key {
        Some(_) => vec![(left, &rows[..mid]), (right, &rows[mid..])],
        None => vec![(left, &rows[..])],
    };
    for (new_part, slice) in halves.iter() {
        let (applied, _, state) = lwt(session
            .execute_unpaged(&st.mark_filling, (space, *new_part))
            .await
            .map_err(|e| unavailable("split mark", e))?)?;
        if !applied && state != Some(FILLING) {
            continue; // already opened (or dropped): this half is done
        }
        for chunk in slice.chunks(COPY_BATCH) {
            let mut batch = Batch::new(BatchType::Unlogged);
            let mut values = Vec::with_capacity(chunk.len());
            for (key, version, data) in chunk {
                batch.append_statement(st.copy_row.clone());
                values.push((
                    version.unwrap_or(1),
                    data.clone().unwrap_or_default(),
                    space,
                    *new_part,
                    key.clone(),
                ));
            }
            session
                .batch(&batch, values)
                .await
                .map_err(|e| unavailable("split copy", e))?;
        }
        session
            .execute_unpaged(&st.open_part, (space, *new_part))
            .await
            .map_err(|e| unavailable("split open", e))?;
    }
    // Switch the range map in one conditional batch (both rows are in the space's partition).
    let mut batch = Batch::new(BatchType::Unlogged);
    batch.append_statement(st.switch_range.clone());
    let switched = match &mid_key {
        Some(mid) => {
            batch.append_statement(st.add_range.clone());
            session
                .batch(
                    &batch,
                    ((left, space, start, part), (space, mid.as_str(), right)),
                )
                .await
        }
        None => session.batch(&batch, ((left, space, start, part),)).await,
    }
    .map_err(|e| unavailable("split switch", e))?;
    let _ = lwt(switched)?;
    // Whoever switched or found it switched: the old part's rows are garbage now.
    if locate(session, st, space, start).await?.1 != part {
        session
            .execute_unpaged(&st.drop_part, (space, part))
            .await
            .map_err(|e| unavailable("split drop", e))?;
    }
    Ok(())
}
