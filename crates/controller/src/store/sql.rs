//! The one database interface the controller's records are written against (`Db`), with
//! its two backends (`sqlite`, `postgres`). Each record function (tokens, hosts, deploys,
//! runs, alerts, the audit log) is written once, in the SQL both speak: `?N`
//! placeholders (rewritten to `$N` for PostgreSQL), `ON CONFLICT` rather than `OR
//! REPLACE`, `RETURNING` rather than `last_insert_rowid`. Values cross as `Value`: an
//! integer, text, bytes or null; booleans are integers, times are unix milliseconds.

use std::fmt;

/// What a database call can fail with, sorted by what the caller can do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DbError {
    /// The database cannot be reached now (stopped, network, restarting): try again later.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// A uniqueness or other constraint refused the write.
    #[error("constraint: {0}")]
    Constraint(String),
    /// `query_row` found nothing (see `OptionalExtension`).
    #[error("no row")]
    NoRows,
    /// A column held another type than the code reads it as.
    #[error("column {column}: {message}")]
    Type { column: usize, message: String },
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = DbError> = std::result::Result<T, E>;

/// One value in or out of the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Null,
    Int(i64),
    Text(String),
    Bytes(Vec<u8>),
}

/// Which SQL a backend speaks, where the two differ (schema, `LIMIT` without a limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A database connection as the record functions use it. Calls take `&self`: a backend
/// keeps its connection in a cell, since one thread owns it (`Store`).
pub trait Db {
    /// Runs one statement; returns how many rows it changed.
    fn execute(&self, sql: &str, params: &[Value]) -> Result<u64>;
    /// Runs one query; returns every row.
    fn query(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>>;
    /// Runs statements without parameters (`BEGIN`, a schema).
    fn execute_batch(&self, sql: &str) -> Result<()>;
    fn backend(&self) -> Backend;
}

impl dyn Db + '_ {
    /// The first row of a query, mapped; `DbError::NoRows` when there is none.
    pub fn query_row<T>(
        &self,
        sql: &str,
        params: &[Value],
        map: impl FnOnce(&Row) -> Result<T>,
    ) -> Result<T> {
        let rows = self.query(sql, params)?;
        map(rows.first().ok_or(DbError::NoRows)?)
    }

    /// Every row of a query, mapped.
    pub fn query_map<T>(
        &self,
        sql: &str,
        params: &[Value],
        map: impl FnMut(&Row) -> Result<T>,
    ) -> Result<Vec<T>> {
        self.query(sql, params)?.iter().map(map).collect()
    }

    /// Runs `work` in one transaction: committed when it returns `Ok`, rolled back
    /// otherwise. SQLite takes the write lock at once (`IMMEDIATE`), so two writers
    /// never both read and then fail to upgrade.
    pub fn transaction<T>(&self, work: impl FnOnce(&dyn Db) -> Result<T>) -> Result<T> {
        self.execute_batch(match self.backend() {
            Backend::Sqlite => "BEGIN IMMEDIATE",
            Backend::Postgres => "BEGIN",
        })?;
        match work(self) {
            Ok(value) => {
                self.execute_batch("COMMIT")?;
                Ok(value)
            }
            Err(error) => {
                // The rollback's own failure (a connection gone) changes nothing: the
                // database rolls back an unfinished transaction by itself.
                let _ = self.execute_batch("ROLLBACK");
                Err(error)
            }
        }
    }

    /// A `LIMIT` for "no limit": SQLite reads -1 so, PostgreSQL refuses a negative one.
    pub fn no_limit(&self) -> i64 {
        i64::MAX
    }
}

/// `Ok(None)` for a query that found no row.
pub trait OptionalExtension<T> {
    fn optional(self) -> Result<Option<T>>;
}

impl<T> OptionalExtension<T> for Result<T> {
    fn optional(self) -> Result<Option<T>> {
        match self {
            Ok(value) => Ok(Some(value)),
            Err(DbError::NoRows) => Ok(None),
            Err(error) => Err(error),
        }
    }
}

/// One row of a query's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row(pub Vec<Value>);

impl Row {
    /// Column `index` as `T` (the second type parameter, as rusqlite's `get` has it, so
    /// `row.get::<_, i64>(0)` reads the same).
    pub fn get<I: ColumnIndex, T: FromValue>(&self, index: I) -> Result<T> {
        let index = index.column();
        let value = self.0.get(index).ok_or_else(|| DbError::Type {
            column: index,
            message: format!("the row has {} columns", self.0.len()),
        })?;
        T::from_value(value).map_err(|message| DbError::Type {
            column: index,
            message,
        })
    }
}

/// A column's position; only `usize`, so a literal `0` needs no suffix.
pub trait ColumnIndex {
    fn column(self) -> usize;
}

impl ColumnIndex for usize {
    fn column(self) -> usize {
        self
    }
}

/// Reads a `Value` as a Rust type.
pub trait FromValue: Sized {
    fn from_value(value: &Value) -> std::result::Result<Self, String>;
}

fn mismatch(wanted: &str, value: &Value) -> String {
    let found = match value {
        Value::Null => "null",
        Value::Int(_) => "an integer",
        Value::Text(_) => "text",
        Value::Bytes(_) => "bytes",
    };
    format!("expected {wanted}, found {found}")
}

impl FromValue for i64 {
    fn from_value(value: &Value) -> std::result::Result<Self, String> {
        match value {
            Value::Int(v) => Ok(*v),
            other => Err(mismatch("an integer", other)),
        }
    }
}

impl FromValue for u32 {
    fn from_value(value: &Value) -> std::result::Result<Self, String> {
        let v = i64::from_value(value)?;
        u32::try_from(v).map_err(|_| format!("{v} does not fit 32 bits"))
    }
}

impl FromValue for bool {
    fn from_value(value: &Value) -> std::result::Result<Self, String> {
        Ok(i64::from_value(value)? != 0)
    }
}

impl FromValue for String {
    fn from_value(value: &Value) -> std::result::Result<Self, String> {
        match value {
            Value::Text(v) => Ok(v.clone()),
            other => Err(mismatch("text", other)),
        }
    }
}

impl FromValue for Vec<u8> {
    fn from_value(value: &Value) -> std::result::Result<Self, String> {
        match value {
            Value::Bytes(v) => Ok(v.clone()),
            other => Err(mismatch("bytes", other)),
        }
    }
}

impl FromValue for Value {
    fn from_value(value: &Value) -> std::result::Result<Self, String> {
        Ok(value.clone())
    }
}

impl<T: FromValue> FromValue for Option<T> {
    fn from_value(value: &Value) -> std::result::Result<Self, String> {
        match value {
            Value::Null => Ok(None),
            other => T::from_value(other).map(Some),
        }
    }
}

/// Turns a Rust value into a `Value` (what `params!` calls on each argument).
pub trait ToValue {
    fn to_value(&self) -> Value;
}

impl<T: ToValue + ?Sized> ToValue for &T {
    fn to_value(&self) -> Value {
        (**self).to_value()
    }
}

impl ToValue for i64 {
    fn to_value(&self) -> Value {
        Value::Int(*self)
    }
}

impl ToValue for u32 {
    fn to_value(&self) -> Value {
        Value::Int(i64::from(*self))
    }
}

impl ToValue for bool {
    fn to_value(&self) -> Value {
        Value::Int(i64::from(*self))
    }
}

impl ToValue for str {
    fn to_value(&self) -> Value {
        Value::Text(self.to_owned())
    }
}

impl ToValue for String {
    fn to_value(&self) -> Value {
        Value::Text(self.clone())
    }
}

impl ToValue for [u8] {
    fn to_value(&self) -> Value {
        Value::Bytes(self.to_vec())
    }
}

impl ToValue for Vec<u8> {
    fn to_value(&self) -> Value {
        Value::Bytes(self.clone())
    }
}

impl ToValue for Value {
    fn to_value(&self) -> Value {
        self.clone()
    }
}

impl<T: ToValue> ToValue for Option<T> {
    fn to_value(&self) -> Value {
        self.as_ref().map_or(Value::Null, ToValue::to_value)
    }
}

/// `params![a, b]`: the arguments of a statement, each borrowed and turned into a `Value`.
#[macro_export]
macro_rules! params {
    () => { &[] as &[$crate::store::Value] };
    ($($value:expr),+ $(,)?) => {
        &[$($crate::store::ToValue::to_value(&$value)),+] as &[$crate::store::Value]
    };
}

/// `?N` placeholders as PostgreSQL writes them (`$N`). The record functions' SQL never
/// holds a `?` inside a string literal, and a `?` not followed by digits is left alone.
pub fn dollar_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '?' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgresql",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_dollars_only_where_followed_by_digits() {
        assert_eq!(
            dollar_placeholders("SELECT a FROM t WHERE b = ?1 AND (?12 IS NULL OR c = ?)"),
            "SELECT a FROM t WHERE b = $1 AND ($12 IS NULL OR c = ?)"
        );
    }

    #[test]
    fn values_read_back_as_the_type_asked_for_or_say_why_not() {
        let row = Row(vec![
            Value::Int(7),
            Value::Null,
            Value::Text("x".into()),
            Value::Bytes(vec![1]),
        ]);
        assert_eq!(row.get::<_, i64>(0).unwrap(), 7);
        assert!(row.get::<_, bool>(0).unwrap());
        assert_eq!(row.get::<_, Option<i64>>(1).unwrap(), None);
        assert_eq!(row.get::<_, String>(2).unwrap(), "x");
        assert_eq!(row.get::<_, Vec<u8>>(3).unwrap(), vec![1]);
        let error = row.get::<_, String>(0).unwrap_err();
        assert!(error.to_string().contains("expected text"), "{error}");
        assert!(row.get::<_, i64>(9).is_err());
        let params: &[Value] = params![1i64, "a", Some(2u32), None::<i64>, true, vec![9u8]];
        assert_eq!(
            params,
            [
                Value::Int(1),
                Value::Text("a".into()),
                Value::Int(2),
                Value::Null,
                Value::Int(1),
                Value::Bytes(vec![9])
            ]
        );
    }
}
