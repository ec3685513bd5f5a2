//! Helpers every table module uses: error mapping, column decoding, queries, the `meta`
//! table.

use rusqlite::{Connection, OptionalExtension, Params, Row, Transaction, params};

use super::super::StoreError;

/// Map a rusqlite error. Messages name tables and columns, never values.
pub(super) fn db(e: rusqlite::Error) -> StoreError {
    match e {
        rusqlite::Error::InvalidColumnType(..)
        | rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::IntegralValueOutOfRange(..) => StoreError::Decode(e.to_string()),
        _ => StoreError::Database(e.to_string()),
    }
}

/// Read one column.
pub(super) fn col<T: rusqlite::types::FromSql>(row: &Row<'_>, idx: usize) -> Result<T, StoreError> {
    row.get(idx).map_err(db)
}

/// u64 values are stored bit-for-bit as SQLite's i64 (lossless round trip).
pub(super) fn u64_to_sql(v: u64) -> i64 {
    v as i64
}

/// Inverse of [`u64_to_sql`].
pub(super) fn u64_from_sql(v: i64) -> u64 {
    v as u64
}

/// A limit as a SQL integer (saturating).
pub(super) fn limit(max: u64) -> i64 {
    i64::try_from(max).unwrap_or(i64::MAX)
}

/// Read a column holding an identifier or a protocol string (user, room or event id, which
/// parse strictly; device ids, memberships, withheld codes and event types, which take any
/// string): a value that does not parse is a decoding error (a corrupted or tampered row),
/// never a panic and never a silently wrong value.
pub(super) fn parsed<T>(row: &Row<'_>, idx: usize) -> Result<T, StoreError>
where
    T: TryFrom<String>,
    T::Error: std::fmt::Display,
{
    let raw: String = col(row, idx)?;
    T::try_from(raw).map_err(|e| StoreError::Decode(format!("column {idx}: {e}")))
}

/// [`parsed`] for a nullable column.
pub(super) fn parsed_opt<T>(row: &Row<'_>, idx: usize) -> Result<Option<T>, StoreError>
where
    T: TryFrom<String>,
    T::Error: std::fmt::Display,
{
    let raw: Option<String> = col(row, idx)?;
    raw.map(|raw| T::try_from(raw).map_err(|e| StoreError::Decode(format!("column {idx}: {e}"))))
        .transpose()
}

/// [`parsed`] for a `NOT NULL` column that keeps an unknown value as `""` (`None`).
pub(super) fn parsed_non_empty<T>(row: &Row<'_>, idx: usize) -> Result<Option<T>, StoreError>
where
    T: TryFrom<String>,
    T::Error: std::fmt::Display,
{
    let raw: String = col(row, idx)?;
    non_empty(raw)
        .map(|raw| T::try_from(raw).map_err(|e| StoreError::Decode(format!("column {idx}: {e}"))))
        .transpose()
}

/// An optional id as kept in a `NOT NULL` column: `""` for `None`.
pub(super) fn or_empty<T: AsRef<str>>(value: &Option<T>) -> &str {
    value.as_ref().map_or("", AsRef::as_ref)
}

/// A list of keys as one JSON array, for `IN (SELECT value FROM json_each(?))`.
pub(super) fn json_list<K: serde::Serialize>(keys: &[K]) -> Result<String, StoreError> {
    serde_json::to_string(keys).map_err(|e| StoreError::Decode(e.to_string()))
}

/// `""` (how SQLite keeps an unknown value in a `NOT NULL` column) as `None`.
pub(super) fn non_empty(value: String) -> Option<String> {
    (!value.is_empty()).then_some(value)
}

pub(super) fn get_meta<T: rusqlite::types::FromSql>(
    conn: &Connection,
    key: &str,
) -> Result<Option<T>, StoreError> {
    conn.prepare_cached("SELECT value FROM meta WHERE key = ?1")
        .and_then(|mut st| st.query_row([key], |r| r.get(0)).optional())
        .map_err(db)
}

pub(super) fn set_meta<T: rusqlite::ToSql>(
    conn: &Connection,
    key: &str,
    value: T,
) -> Result<(), StoreError> {
    conn.prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")
        .and_then(|mut st| st.execute(params![key, value]))
        .map_err(db)?;
    Ok(())
}

/// All rows of a query, each decoded by `f`.
pub(super) fn query_all<T, P: Params>(
    conn: &Connection,
    sql: &str,
    params: P,
    mut f: impl FnMut(&Row<'_>) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let mut st = conn.prepare_cached(sql).map_err(db)?;
    let mut rows = st.query(params).map_err(db)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(db)? {
        out.push(f(row)?);
    }
    Ok(out)
}

/// The first row of a query, decoded by `f`.
pub(super) fn query_opt<T, P: Params>(
    conn: &Connection,
    sql: &str,
    params: P,
    f: impl FnOnce(&Row<'_>) -> Result<T, StoreError>,
) -> Result<Option<T>, StoreError> {
    let mut st = conn.prepare_cached(sql).map_err(db)?;
    let mut rows = st.query(params).map_err(db)?;
    match rows.next().map_err(db)? {
        Some(row) => f(row).map(Some),
        None => Ok(None),
    }
}

/// The number a `SELECT count(*) ...` answers.
pub(super) fn count<P: Params>(conn: &Connection, sql: &str, params: P) -> Result<u64, StoreError> {
    let n: i64 = query_opt(conn, sql, params, |r| col(r, 0))?.unwrap_or(0);
    Ok(u64_from_sql(n))
}

/// Run `sql` once per item, with the parameters `f` gives.
pub(super) fn each<'a, T, P: Params>(
    tx: &Transaction<'_>,
    sql: &str,
    items: &'a [T],
    mut f: impl FnMut(&'a T) -> Result<P, StoreError>,
) -> Result<(), StoreError> {
    if items.is_empty() {
        return Ok(());
    }
    let mut st = tx.prepare_cached(sql).map_err(db)?;
    for item in items {
        st.execute(f(item)?).map_err(db)?;
    }
    Ok(())
}
