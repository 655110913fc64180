//! The PostgreSQL backend: the storage traits over tables that several
//! hosts share, so that any of them may fire a task, start a run or send
//! an email. Every step the traits call atomic is one transaction; the
//! steps that must happen once (a fire, a run's start) are conditional
//! writes whose row count says whether this caller won.
//!
//! The traits are synchronous, as the embedded store is; the driver is
//! async. The store owns a small runtime for the connections, and each
//! call waits for its statements on the calling thread, whichever runtime
//! (if any) that thread belongs to.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use deadpool_postgres::{ClientWrapper, GenericClient, Transaction};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

mod connection;
mod tls;

use super::{
    AccountStore, AuditStore, CollectionSpec, Drift, Error, Finish, Firing, LedgerStore, Lookup, Maintenance,
    OutboxStore, OutboxUpdate, PluginStore, QueueKey, RecordStore, Result, RuleStore, RunId, RunStore, SCHEMA_VERSION,
    SourceStore, StoreConfig, StoredRecord, TaskStore, check_name, decode, encode, index_drift, index_text,
};
use crate::audit::AuditEntry;
use crate::imports::ImportPlan;
use crate::notify::{LedgerEntry, OutboxEntry};
use crate::plugins::PluginEntry;
use crate::records::Record;
use crate::rules::RuleVersion;
use crate::runs::{Approval, Run, TaskMessage};
use crate::sources::Source;
use crate::tasks::Task;
use crate::users::{Token, User};
use crate::views::SavedView;

/// The migrations, in order: released ones never change.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "tables", include_str!("postgres_store/migrations/0001_tables.sql")),
    (2, "hosts", include_str!("postgres_store/migrations/0002_hosts.sql")),
    (3, "rules", include_str!("postgres_store/migrations/0003_rules.sql")),
];

/// How long a host keeps an outbox entry it claimed before others may
/// send it: longer than sending a batch takes, even to a slow relay. A
/// claim also ends when its host stops beating for a lease.
const OUTBOX_CLAIM_MS: i64 = 5 * 60 * 1000;

/// Rows `store copy` writes per transaction.
const COPY_BATCH: usize = 1000;

/// The last migration this build has.
fn latest() -> i32 {
    MIGRATIONS.last().map_or(0, |(v, _, _)| *v)
}

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// The Schoolbell store in a PostgreSQL schema.
pub struct PgStore {
    /// Drives the connection that listens for work; `None` only while
    /// dropping.
    runtime: Option<tokio::runtime::Runtime>,
    pool: connection::Pool,
    schema: String,
    /// This host's id among those sharing the database.
    host: String,
    /// How long a run's lease lasts, in milliseconds.
    lease_ms: i64,
    /// The connection settings, for the connection that listens for work.
    pg: tokio_postgres::Config,
    tls: tls::Tls,
}

/// The channel a host notifies when it queues work, so that idle hosts
/// wake at once instead of at their next look.
const WORK_CHANNEL: &str = "schoolbell_queue";

/// How long a call waits for a database server that went away (a restart,
/// a failover) before its caller sees the error. In that time a statement
/// that cannot have taken effect is sent again on a new connection; what
/// must not be lost is tried for longer above (`store::patiently`).
const RECONNECT: Duration = Duration::from_secs(20);

/// A driver's error, shown with its causes: the driver shows only its own
/// words ("db error"), and what the server said is in the cause.
#[derive(Debug)]
struct Driver<E>(E);

impl<E: std::error::Error> std::fmt::Display for Driver<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(e) = cause {
            write!(f, ": {e}")?;
            cause = e.source();
        }
        Ok(())
    }
}

impl<E: std::error::Error> std::error::Error for Driver<E> {}

fn db(table: &'static str) -> impl Fn(tokio_postgres::Error) -> Error {
    move |source| Error::Io { tree: table, source: Box::new(Driver(source)) }
}

fn pool_error(e: connection::PoolError) -> Error {
    Error::Io { tree: "connection", source: Box::new(Driver(e)) }
}

/// The driver's error under a store error, if that is what it is.
fn driver_error(e: &Error) -> Option<&tokio_postgres::Error> {
    let Error::Io { source, .. } = e else { return None };
    if let Some(Driver(e)) = source.downcast_ref::<Driver<tokio_postgres::Error>>() {
        return Some(e);
    }
    match source.downcast_ref::<Driver<connection::PoolError>>() {
        Some(Driver(deadpool::managed::PoolError::Backend(connection::ConnectError::Driver(e)))) => Some(e),
        _ => None,
    }
}

/// Whether the server ended the session under the statement (shutting
/// down, restarting, or not yet accepting connections), which rolls back
/// whatever the statement did.
fn ended_by_server(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| {
        let c = c.code();
        c.starts_with("08") || matches!(c, "57P01" | "57P02" | "57P03")
    })
}

/// Whether the connection to the server was lost or never made: the
/// server is away, not refusing what was asked.
fn connection_lost(e: &tokio_postgres::Error) -> bool {
    e.is_closed()
        || ended_by_server(e)
        || std::error::Error::source(e).is_some_and(|cause| cause.is::<std::io::Error>())
}

/// Where a failed attempt stopped, which says whether to send it again.
enum Stopped {
    /// Before anything could take effect: no connection, or the statement
    /// never ran, or its transaction was rolled back.
    Before(Error),
    /// Perhaps after a write took effect, or for a reason that another try
    /// does not change.
    After(Error),
}

impl Stopped {
    /// Where `e` leaves an attempt that may not have taken effect yet.
    fn before_commit(e: Error) -> Stopped {
        match driver_error(&e) {
            Some(d) if connection_lost(d) => Stopped::Before(e),
            _ => Stopped::After(e),
        }
    }

    /// Where `e` leaves an attempt whose statement was sent: a read, or
    /// a write the server says it ended, is as if not sent.
    fn sent(e: Error, reads: bool) -> Stopped {
        match driver_error(&e) {
            Some(d) if ended_by_server(d) || (reads && connection_lost(d)) => Stopped::Before(e),
            _ => Stopped::After(e),
        }
    }
}

/// Whether `sql` only reads.
fn reads(sql: &str) -> bool {
    sql.trim_start().get(..6).is_some_and(|word| word.eq_ignore_ascii_case("select"))
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn from_ms(v: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(v).unwrap_or_default()
}

/// A count or id as PostgreSQL's `bigint`; ours never reach 2^63.
fn big(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn limit(v: usize) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl PgStore {
    /// Connects to the database `config` names, and checks that its schema
    /// has this build's migrations.
    pub fn open(config: &StoreConfig, data: &Path) -> Result<PgStore> {
        let store = PgStore::connect(config, data)?;
        let found = store.applied()?;
        let wanted = latest();
        let schema = store.schema.clone();
        match found {
            f if f < wanted => Err(Error::Unmigrated { schema, found: f, wanted }),
            f if f > wanted => Err(Error::NewerMigration { schema, found: f, wanted }),
            _ if !store.query("meta", "SELECT 1 FROM meta WHERE key = 'copy'", &[])?.is_empty() => {
                Err(Error::Config(format!(
                    "a `schoolbell store copy` into the PostgreSQL schema `{schema}` did not finish: drop the schema (DROP SCHEMA {schema} CASCADE) and copy again"
                )))
            }
            _ => Ok(store),
        }
    }

    /// Applies the migrations the schema lacks (creating it), one host at
    /// a time; returns the migration it was at and the one it is at now.
    pub fn migrate(config: &StoreConfig, data: &Path) -> Result<(i32, i32)> {
        let store = PgStore::connect(config, data)?;
        let schema = store.schema.clone();
        let mut conn = store.connection().map_err(pool_error)?;
        conn.drive(async |client| {
            let tx = client.transaction().await.map_err(db("migrations"))?;
            // Two hosts upgraded together: the second waits, then finds
            // nothing left to do.
            tx.batch_execute(&format!(
                "SELECT pg_advisory_xact_lock(hashtext('schoolbell migrate')); \
                 CREATE SCHEMA IF NOT EXISTS \"{schema}\"; \
                 CREATE TABLE IF NOT EXISTS \"{schema}\".schoolbell_migrations \
                 (version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            ))
            .await
            .map_err(db("migrations"))?;
            let row = tx
                .query_one(&format!("SELECT COALESCE(max(version), 0) FROM \"{schema}\".schoolbell_migrations"), &[])
                .await
                .map_err(db("migrations"))?;
            let from: i32 = row.get(0);
            if from > latest() {
                return Err(Error::NewerMigration { schema: schema.clone(), found: from, wanted: latest() });
            }
            for (version, name, sql) in MIGRATIONS.iter().filter(|(v, _, _)| *v > from) {
                tx.batch_execute(sql).await.map_err(db("migrations"))?;
                tx.execute(
                    &format!("INSERT INTO \"{schema}\".schoolbell_migrations (version, name) VALUES ($1, $2)"),
                    &[version, name],
                )
                .await
                .map_err(db("migrations"))?;
            }
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', $1) ON CONFLICT (key) DO NOTHING",
                &[&SCHEMA_VERSION.to_be_bytes().as_slice()],
            )
            .await
            .map_err(db("meta"))?;
            tx.commit().await.map_err(db("migrations"))?;
            Ok((from, latest()))
        })
    }

    fn connect(config: &StoreConfig, data: &Path) -> Result<PgStore> {
        let schema = config.schema.clone();
        if schema.is_empty()
            || !schema.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            || schema.starts_with(|c: char| c.is_ascii_digit())
        {
            return Err(Error::Config(format!(
                "schema `{schema}` is not a plain name: use lowercase letters, digits and `_`"
            )));
        }
        if config.url.trim().is_empty() {
            return Err(Error::Config("backend is `postgres` but `url` is empty: name the database".into()));
        }
        let (url, sslmode) = tls::take_sslmode(config.url.trim())?;
        let mut pg: tokio_postgres::Config =
            url.parse().map_err(|e| Error::Config(format!("url cannot be read as a PostgreSQL connection: {e}")))?;
        let ca_file = config.ca_file.as_ref().map(|f| if f.is_relative() { data.join(f) } else { f.clone() });
        let tls = tls::configure(&mut pg, sslmode, ca_file.as_deref())?;
        if let Some(file) = &config.password_file {
            let file = if file.is_relative() { data.join(file) } else { file.clone() };
            let password = std::fs::read_to_string(&file)
                .map_err(|e| Error::Config(format!("cannot read password_file {}: {e}", file.display())))?;
            pg.password(password.trim_end_matches(['\r', '\n']));
        }
        // The search path puts the tables first, so statements name them bare.
        pg.options(format!("-c search_path=\"{schema}\""));
        pg.application_name("schoolbell");
        let target = shown(&pg);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("schoolbell-postgres")
            .enable_all()
            .build()
            .map_err(|e| Error::Connect { target: target.clone(), source: Box::new(e) })?;
        // No call waits for ever on a database that does not answer.
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(std::time::Duration::from_secs(10));
        }
        let listen = pg.clone();
        let pool = connection::Pool::builder(connection::Connector { pg, tls: tls.clone() })
            .max_size(config.pool_size.max(1) as usize)
            .build()
            .map_err(|e| Error::Connect { target: target.clone(), source: Box::new(e) })?;
        let store = PgStore {
            runtime: Some(runtime),
            pool,
            schema,
            host: host_id(),
            lease_ms: big(config.lease_secs.max(1).saturating_mul(1000)),
            pg: listen,
            tls,
        };
        // Connect now, so a wrong url fails at start, not at first use.
        store.connection().map(drop).map_err(|e| Error::Connect { target, source: Box::new(e) })?;
        Ok(store)
    }

    /// The last migration applied to the schema (0: none).
    fn applied(&self) -> Result<i32> {
        let rows = self.query(
            "migrations",
            "SELECT COALESCE(max(version), 0) FROM schoolbell_migrations WHERE to_regclass('schoolbell_migrations') IS NOT NULL",
            &[],
        );
        match rows {
            Ok(rows) => Ok(rows.first().map_or(0, |r| r.get(0))),
            // No bookkeeping table: nothing was ever migrated here.
            Err(Error::Io { source, .. })
                if source
                    .downcast_ref::<Driver<tokio_postgres::Error>>()
                    .and_then(|Driver(e)| e.code())
                    .is_some_and(|c| *c == tokio_postgres::error::SqlState::UNDEFINED_TABLE) =>
            {
                Ok(0)
            }
            Err(e) => Err(e),
        }
    }

    /// Makes `attempt` until it succeeds, fails after it may have taken
    /// effect, or the server has been away for [`RECONNECT`].
    fn again<T>(
        &self,
        what: &str,
        mut attempt: impl AsyncFnMut(&mut ClientWrapper) -> std::result::Result<T, Stopped>,
    ) -> Result<T> {
        let deadline = Instant::now() + RECONNECT;
        let tried = super::backing_off(
            Duration::from_millis(50),
            Duration::from_secs(2),
            || self.on_connection(&mut attempt),
            |stopped, wait| match stopped {
                Stopped::Before(e) if Instant::now() + wait < deadline => {
                    tracing::debug!("The database is away ({e}); trying {what} again in {wait:?}.");
                    true
                }
                _ => false,
            },
        );
        tried.map_err(|(Stopped::Before(e) | Stopped::After(e))| e)
    }

    /// Makes `attempt` once, on a connection from the pool, on this thread.
    fn on_connection<T>(
        &self,
        attempt: &mut impl AsyncFnMut(&mut ClientWrapper) -> std::result::Result<T, Stopped>,
    ) -> std::result::Result<T, Stopped> {
        // None could be made means nothing ran.
        let mut conn = self.connection().map_err(|e| Stopped::before_commit(pool_error(e)))?;
        conn.drive(async |client| attempt(client).await)
    }

    /// A connection from the pool: at once, or when another thread returns
    /// one.
    fn connection(
        &self,
    ) -> std::result::Result<deadpool::managed::Object<connection::Connector>, connection::PoolError> {
        tokio::task::block_in_place(|| futures_executor::block_on(self.pool.get()))
    }

    fn query(&self, table: &'static str, sql: &str, params: Params<'_>) -> Result<Vec<Row>> {
        self.again(table, async |client| {
            let statement = client.prepare_cached(sql).await.map_err(|e| Stopped::before_commit(db(table)(e)))?;
            client.query(&statement, params).await.map_err(|e| Stopped::sent(db(table)(e), reads(sql)))
        })
    }

    fn execute(&self, table: &'static str, sql: &str, params: Params<'_>) -> Result<u64> {
        self.again(table, async |client| {
            let statement = client.prepare_cached(sql).await.map_err(|e| Stopped::before_commit(db(table)(e)))?;
            client.execute(&statement, params).await.map_err(|e| Stopped::sent(db(table)(e), reads(sql)))
        })
    }

    /// Runs `work` in one transaction: it commits when `work` succeeds, and
    /// rolls back when it fails or says no. A transaction the server went
    /// away under before its commit is run again from the start.
    fn transaction<T>(
        &self,
        table: &'static str,
        mut work: impl AsyncFnMut(&Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        self.again(table, async |client| {
            let tx = client.transaction().await.map_err(|e| Stopped::before_commit(db(table)(e)))?;
            let out = work(&tx).await.map_err(Stopped::before_commit)?;
            tx.commit().await.map_err(|e| Stopped::sent(db(table)(e), false))?;
            Ok(out)
        })
    }

    /// One value by its key, decoded.
    fn value<T: serde::de::DeserializeOwned>(
        &self,
        table: &'static str,
        sql: &str,
        key: &(dyn ToSql + Sync),
    ) -> Result<Option<T>> {
        let rows = self.query(table, sql, &[key])?;
        rows.first().map(|row| decode(table, b"", row.get::<_, &[u8]>(0))).transpose()
    }

    /// Every value a query returns, decoded.
    fn values<T: serde::de::DeserializeOwned>(
        &self,
        table: &'static str,
        sql: &str,
        params: Params<'_>,
    ) -> Result<Vec<T>> {
        self.query(table, sql, params)?.iter().map(|row| decode(table, b"", row.get::<_, &[u8]>(0))).collect()
    }

    // Tables of one value per key: tasks, users, sources and plugins by
    // name, import plans and approvals by run.

    fn keyed<T: serde::de::DeserializeOwned>(
        &self,
        table: &'static str,
        column: &'static str,
        key: &(dyn ToSql + Sync),
    ) -> Result<Option<T>> {
        self.value(table, &format!("SELECT value FROM {table} WHERE {column} = $1"), key)
    }

    fn put_keyed<T: serde::Serialize>(
        &self,
        table: &'static str,
        column: &'static str,
        key: &(dyn ToSql + Sync),
        value: &T,
    ) -> Result<()> {
        self.execute(
            table,
            &format!(
                "INSERT INTO {table} ({column}, value) VALUES ($1, $2) \
                 ON CONFLICT ({column}) DO UPDATE SET value = excluded.value"
            ),
            &[key, &encode(value)],
        )
        .map(drop)
    }

    /// Whether there was a value under `key`.
    fn remove_keyed(&self, table: &'static str, column: &'static str, key: &(dyn ToSql + Sync)) -> Result<bool> {
        Ok(self.execute(table, &format!("DELETE FROM {table} WHERE {column} = $1"), &[key])? > 0)
    }

    fn named<T: serde::de::DeserializeOwned>(&self, table: &'static str, name: &str) -> Result<Option<T>> {
        self.keyed(table, "name", &name)
    }

    fn all_named<T: serde::de::DeserializeOwned>(&self, table: &'static str) -> Result<Vec<T>> {
        self.values(table, &format!("SELECT value FROM {table} ORDER BY name"), &[])
    }

    /// Writes `value` under `name`, a plain name of its `kind`.
    fn put_named<T: serde::Serialize>(
        &self,
        table: &'static str,
        kind: &'static str,
        name: &str,
        value: &T,
    ) -> Result<()> {
        check_name(kind, name)?;
        self.put_keyed(table, "name", &name, value)
    }

    fn remove_named(&self, table: &'static str, name: &str) -> Result<bool> {
        self.remove_keyed(table, "name", &name)
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        // Dropping a runtime waits for its threads, which may not be done
        // on a thread of another runtime; letting them go may.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Listens on the work channel, calling `wake` at each notification,
/// until the connection ends.
async fn listen(
    pg: &tokio_postgres::Config,
    tls: tls::Tls,
    wake: &(dyn Fn() + Send + Sync),
) -> std::result::Result<(), tokio_postgres::Error> {
    let (client, mut connection) = pg.connect(tls).await?;
    let statement = format!("LISTEN {WORK_CHANNEL}");
    let listening = client.batch_execute(&statement);
    let mut listening = std::pin::pin!(listening);
    let mut listened = false;
    loop {
        // The connection carries the LISTEN and, after it, the notifications.
        let message = std::future::poll_fn(|cx| {
            if !listened && let std::task::Poll::Ready(done) = listening.as_mut().poll(cx) {
                listened = true;
                if let Err(e) = done {
                    return std::task::Poll::Ready(Some(Err(e)));
                }
            }
            connection.poll_message(cx)
        })
        .await;
        match message {
            Some(Ok(tokio_postgres::AsyncMessage::Notification(_))) => wake(),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e),
            None => return Ok(()),
        }
    }
}

/// The machine's name.
pub(crate) fn machine_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|n| n.trim().to_string()).unwrap_or_else(|_| "host".into())
}

/// A new id for this process among the hosts: machine, process, and a
/// random suffix, since a restarted process may get the same pid.
fn host_id() -> String {
    let mut suffix = [0u8; 3];
    let _ = getrandom::fill(&mut suffix);
    format!("{}-{}-{}", machine_name(), std::process::id(), hex::encode(suffix))
}

/// A connection's target, without its password, for messages.
fn shown(pg: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = pg
        .get_hosts()
        .iter()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    format!(
        "`{}` on {} as `{}`",
        pg.get_dbname().unwrap_or("(the user's database)"),
        if hosts.is_empty() { "localhost".to_string() } else { hosts.join(", ") },
        pg.get_user().unwrap_or("(this system user)")
    )
}

async fn run_sql(tx: &Transaction<'_>, table: &'static str, sql: &str, params: Params<'_>) -> Result<u64> {
    let statement = tx.prepare_cached(sql).await.map_err(db(table))?;
    tx.execute(&statement, params).await.map_err(db(table))
}

async fn rows_of(tx: &Transaction<'_>, table: &'static str, sql: &str, params: Params<'_>) -> Result<Vec<Row>> {
    let statement = tx.prepare_cached(sql).await.map_err(db(table))?;
    tx.query(&statement, params).await.map_err(db(table))
}

/// Saves a run: the statement the three below share.
macro_rules! upsert_run {
    () => {
        "INSERT INTO runs (id, value, finished_ms) VALUES ($1, $2, $3) \
         ON CONFLICT (id) DO UPDATE SET value = excluded.value, finished_ms = COALESCE(excluded.finished_ms, runs.finished_ms)"
    };
}

/// Adds run `$1`'s messages from three arrays: sequence numbers, statuses
/// and values, at the placeholders given.
macro_rules! add_messages {
    ($seqs:literal, $statuses:literal, $values:literal) => {
        concat!(
            "INSERT INTO run_messages (run, seq, status, value) SELECT $1, s, st, v FROM unnest(",
            $seqs,
            "::bigint[], ",
            $statuses,
            "::text[], ",
            $values,
            "::bytea[]) AS t(s, st, v) \
             ON CONFLICT (run, seq) DO UPDATE SET status = excluded.status, value = excluded.value"
        )
    };
}

const UPSERT_RUN: &str = upsert_run!();

/// Saves a finished run and ends its lease, in one statement (a finished
/// run holds no lease).
const FINISH_RUN: &str = concat!("WITH ended AS (DELETE FROM run_leases WHERE run_id = $1) ", upsert_run!());

/// Adds a run's messages: run, sequence numbers, statuses, values.
const ADD_MESSAGES: &str = add_messages!("$2", "$3", "$4");

/// [`FINISH_RUN`] with the run's messages as $4-$6, one round trip for a
/// run's whole outcome.
const FINISH_RUN_WITH_MESSAGES: &str = concat!(
    "WITH ended AS (DELETE FROM run_leases WHERE run_id = $1), said AS (",
    add_messages!("$4", "$5", "$6"),
    ") ",
    upsert_run!()
);

/// A batch of messages as the three arrays [`ADD_MESSAGES`] takes.
fn message_columns(first_seq: u64, messages: &[(&str, &TaskMessage)]) -> (Vec<i64>, Vec<String>, Vec<Vec<u8>>) {
    let seqs = (0..messages.len()).map(|i| big(first_seq + i as u64)).collect();
    let statuses = messages.iter().map(|(s, _)| s.to_string()).collect();
    let values = messages.iter().map(|(_, m)| encode(m)).collect();
    (seqs, statuses, values)
}

async fn save_run(tx: &Transaction<'_>, run: &Run, finished: Option<DateTime<Utc>>) -> Result<()> {
    let sql = if finished.is_some() { FINISH_RUN } else { UPSERT_RUN };
    run_sql(tx, "runs", sql, &[&big(run.id), &encode(run), &finished.map(ms)]).await.map(drop)
}

/// Queues a run with its record; the entry names its task, for the overlap
/// policy on every host.
async fn queue(tx: &Transaction<'_>, key: &QueueKey, run: &Run) -> Result<()> {
    run_sql(
        tx,
        "queue",
        "INSERT INTO queue (key, run_id, task) VALUES ($1, $2, $3)",
        &[&key.0, &big(run.id), &run.task],
    )
    .await?;
    // Delivered when the transaction commits; several in one are one.
    run_sql(tx, "queue", "SELECT pg_notify('schoolbell_queue', '')", &[]).await?;
    save_run(tx, run, None).await
}

/// An index entry: the index's fields joined by `+`, the record's folded
/// text for them, and the record's key.
type Entry = (String, String, String);

fn entries(spec: &CollectionSpec, record: &Record, key: &str) -> Vec<Entry> {
    spec.indexes
        .iter()
        .filter_map(|fields| Some((fields.join("+"), index_text(record, fields)?, key.to_string())))
        .collect()
}

/// Index entries to drop and to add, as three columns each.
#[derive(Default)]
struct IndexChanges {
    wanted: BTreeMap<Entry, bool>,
}

impl IndexChanges {
    fn set(&mut self, entries: Vec<Entry>, present: bool) {
        for e in entries {
            self.wanted.insert(e, present);
        }
    }

    async fn apply(self, tx: &Transaction<'_>, collection: &str) -> Result<()> {
        let columns = |present: bool| {
            let mut cols: (Vec<&str>, Vec<&str>, Vec<&str>) = Default::default();
            for ((f, v, k), _) in self.wanted.iter().filter(|(_, p)| **p == present) {
                cols.0.push(f);
                cols.1.push(v);
                cols.2.push(k);
            }
            cols
        };
        let (f, v, k) = columns(false);
        if !f.is_empty() {
            run_sql(
                tx,
                "record_index",
                "DELETE FROM record_index i USING unnest($2::text[], $3::text[], $4::text[]) AS d(f, v, k) \
                 WHERE i.collection = $1 AND i.fields = d.f AND i.value = d.v AND i.key = d.k",
                &[&collection, &f, &v, &k],
            )
            .await?;
        }
        let (f, v, k) = columns(true);
        if !f.is_empty() {
            run_sql(
                tx,
                "record_index",
                "INSERT INTO record_index (collection, fields, value, key) \
                 SELECT $1, f, v, k FROM unnest($2::text[], $3::text[], $4::text[]) AS t(f, v, k) ON CONFLICT DO NOTHING",
                &[&collection, &f, &v, &k],
            )
            .await?;
        }
        Ok(())
    }
}

/// Drops a collection's index entries and writes them again from its records.
async fn rebuild_index(tx: &Transaction<'_>, name: &str, spec: &CollectionSpec) -> Result<()> {
    run_sql(tx, "record_index", "DELETE FROM record_index WHERE collection = $1", &[&name]).await?;
    let mut index = IndexChanges::default();
    for row in rows_of(tx, "records", "SELECT key, value FROM records WHERE collection = $1", &[&name]).await? {
        let key: &str = row.get(0);
        let record: Record = decode("records", key.as_bytes(), row.get::<_, &[u8]>(1))?;
        index.set(entries(spec, &record, key), true);
    }
    index.apply(tx, name).await
}

impl PgStore {
    /// Copies the embedded store `from` into this schema, which must hold
    /// no data yet, and returns the rows copied per table. The copy goes in
    /// steps; until it ends, the schema is marked so that no host opens
    /// half of it.
    pub fn copy_from(&self, from: &super::Store) -> Result<BTreeMap<&'static str, u64>> {
        let held = self.query(
            "meta",
            "SELECT (SELECT count(*) FROM tasks) + (SELECT count(*) FROM runs) + (SELECT count(*) FROM users) \
             + (SELECT count(*) FROM collections) + (SELECT count(*) FROM plugins) + (SELECT count(*) FROM meta WHERE key = 'copy')",
            &[],
        )?;
        if held.first().is_some_and(|r| r.get::<_, i64>(0) > 0) {
            return Err(Error::Config(format!(
                "the PostgreSQL schema `{}` holds data already; copy into an empty one (name a new schema with --schema)",
                self.schema
            )));
        }
        self.execute("meta", "INSERT INTO meta (key, value) VALUES ('copy', '')", &[])?;
        let mut counts = BTreeMap::new();
        let mut pending = Vec::with_capacity(COPY_BATCH);
        from.export(&mut |row| {
            *counts.entry(row.table).or_insert(0) += 1;
            pending.push(row);
            if pending.len() >= COPY_BATCH {
                self.insert_rows(&mut pending)?;
            }
            Ok(())
        })?;
        self.insert_rows(&mut pending)?;
        for name in self.collection_names()? {
            let Some(spec) = self.collection(&name)? else { continue };
            self.transaction("record_index", async |tx| rebuild_index(tx, &name, &spec).await)?;
        }
        self.execute("meta", "DELETE FROM meta WHERE key = 'copy'", &[])?;
        Ok(counts)
    }

    fn insert_rows(&self, rows: &mut Vec<super::Row>) -> Result<()> {
        use super::Cell;
        self.transaction("copy", async |tx| {
            for row in rows.iter() {
                let placeholders: Vec<String> = (1..=row.columns.len()).map(|i| format!("${i}")).collect();
                let sql = format!(
                    "INSERT INTO {} ({}) VALUES ({})",
                    row.table,
                    row.columns.join(", "),
                    placeholders.join(", ")
                );
                let params: Vec<&(dyn ToSql + Sync)> = row
                    .values
                    .iter()
                    .map(|cell| -> &(dyn ToSql + Sync) {
                        match cell {
                            Cell::Text(t) => t,
                            Cell::Bytes(b) => b,
                            Cell::Int(i) => i,
                            Cell::Null => &None::<i64>,
                        }
                    })
                    .collect();
                run_sql(tx, row.table, &sql, &params).await?;
            }
            Ok(())
        })?;
        // Kept until committed: a transaction the server ended is run again.
        rows.clear();
        Ok(())
    }

    fn commit_records(
        &self,
        collection: &str,
        records: &[Record],
        removes: &[String],
        ledger: Option<(&str, &str)>,
    ) -> Result<usize> {
        check_name("collection", collection)?;
        self.transaction("records", async |tx| {
            // The collection's row is the writers' lock: record writes read
            // old values to keep the indexes and the count.
            let row = rows_of(tx, "collections", "SELECT spec FROM collections WHERE name = $1 FOR UPDATE", &[&collection])
                .await?;
            let Some(row) = row.first() else { return Err(Error::UnknownCollection(collection.into())) };
            let spec: CollectionSpec = decode("collections", collection.as_bytes(), row.get::<_, &[u8]>(0))?;
            let mut keys = Vec::with_capacity(records.len());
            for (i, record) in records.iter().enumerate() {
                keys.push(spec.key_of(collection, record, i + 1)?);
            }
            let mut wanted: Vec<&str> = keys.iter().map(String::as_str).chain(removes.iter().map(String::as_str)).collect();
            wanted.sort_unstable();
            wanted.dedup();
            let mut current: HashMap<String, Record> = HashMap::new();
            for row in rows_of(
                tx,
                "records",
                "SELECT key, value FROM records WHERE collection = $1 AND key = ANY($2) FOR UPDATE",
                &[&collection, &wanted],
            )
            .await?
            {
                let key: String = row.get(0);
                let record = decode("records", key.as_bytes(), row.get::<_, &[u8]>(1))?;
                current.insert(key, record);
            }
            let mut index = IndexChanges::default();
            let mut written: BTreeMap<&str, Vec<u8>> = BTreeMap::new();
            let mut added: i64 = 0;
            for (record, key) in records.iter().zip(&keys) {
                let new = entries(&spec, record, key);
                match current.insert(key.clone(), record.clone()) {
                    Some(old) => {
                        // Only the entries that changed: most updates keep
                        // every one, and each written again is a wasted write.
                        let old = entries(&spec, &old, key);
                        index.set(old.iter().filter(|e| !new.contains(e)).cloned().collect(), false);
                        index.set(new.into_iter().filter(|e| !old.contains(e)).collect(), true);
                    }
                    None => {
                        added += 1;
                        index.set(new, true);
                    }
                }
                written.insert(key, encode(record));
            }
            let mut removed: i64 = 0;
            let mut gone: Vec<&str> = Vec::new();
            for key in removes {
                // A key that is already gone is no error: removing is idempotent.
                if let Some(old) = current.remove(key) {
                    index.set(entries(&spec, &old, key), false);
                    written.remove(key.as_str());
                    gone.push(key);
                    removed += 1;
                }
            }
            let (wk, wv): (Vec<&str>, Vec<&[u8]>) = written.iter().map(|(k, v)| (*k, v.as_slice())).unzip();
            if !wk.is_empty() {
                run_sql(
                    tx,
                    "records",
                    "INSERT INTO records (collection, key, value) SELECT $1, k, v FROM unnest($2::text[], $3::bytea[]) AS t(k, v) \
                     ON CONFLICT (collection, key) DO UPDATE SET value = excluded.value",
                    &[&collection, &wk, &wv],
                )
                .await?;
            }
            if !gone.is_empty() {
                run_sql(tx, "records", "DELETE FROM records WHERE collection = $1 AND key = ANY($2)", &[&collection, &gone])
                    .await?;
            }
            index.apply(tx, collection).await?;
            run_sql(
                tx,
                "collections",
                "UPDATE collections SET count = GREATEST(count + $2 - $3, 0) WHERE name = $1",
                &[&collection, &added, &removed],
            )
            .await?;
            if let Some((hash, entry)) = ledger {
                run_sql(
                    tx,
                    "import_ledger",
                    "INSERT INTO import_ledger (key, entry) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET entry = excluded.entry",
                    &[&hash, &entry],
                )
                .await?;
            }
            Ok(records.len() + removed as usize)
        })
    }

    fn page(&self, sql: &str, params: Params<'_>, limit: usize) -> Result<(Vec<StoredRecord>, Option<String>)> {
        let rows = self.query("records", sql, params)?;
        let more = rows.len() > limit;
        let out: Vec<StoredRecord> = rows
            .into_iter()
            .take(limit)
            .map(|row| StoredRecord::owned(row.get::<_, String>(0).into_bytes(), row.get(1)))
            .collect();
        let next = more.then(|| out.last().map(|r| String::from_utf8_lossy(&r.key).into_owned())).flatten();
        Ok((out, next))
    }
}

impl RecordStore for PgStore {
    fn define_collection(&self, name: &str, spec: &CollectionSpec) -> Result<()> {
        check_name("collection", name)?;
        check_name("field", &spec.key_field)?;
        self.transaction("collections", async |tx| {
            let old = rows_of(tx, "collections", "SELECT spec FROM collections WHERE name = $1 FOR UPDATE", &[&name]).await?;
            if let Some(row) = old.first() {
                let old: CollectionSpec = decode("collections", name.as_bytes(), row.get::<_, &[u8]>(0))?;
                if old == *spec {
                    return Ok(());
                }
            }
            run_sql(
                tx,
                "collections",
                "INSERT INTO collections (name, spec) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET spec = excluded.spec",
                &[&name, &encode(spec)],
            )
            .await?;
            rebuild_index(tx, name, spec).await
        })
    }

    fn collection(&self, name: &str) -> Result<Option<CollectionSpec>> {
        self.value("collections", "SELECT spec FROM collections WHERE name = $1", &name)
    }

    fn collection_names(&self) -> Result<Vec<String>> {
        Ok(self
            .query("collections", "SELECT name FROM collections ORDER BY name", &[])?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    fn put_records(&self, collection: &str, records: &[Record]) -> Result<usize> {
        self.commit_records(collection, records, &[], None)
    }

    fn commit_import(
        &self,
        collection: &str,
        writes: &[Record],
        removes: &[String],
        ledger_key: &str,
        entry: &str,
    ) -> Result<usize> {
        self.commit_records(collection, writes, removes, Some((ledger_key, entry)))
    }

    fn import_ledger(&self, ledger_key: &str) -> Result<Option<String>> {
        let rows = self.query("import_ledger", "SELECT entry FROM import_ledger WHERE key = $1", &[&ledger_key])?;
        Ok(rows.first().map(|r| r.get(0)))
    }

    fn get_record(&self, collection: &str, key: &str) -> Result<Option<Record>> {
        let rows = self.query(
            "records",
            "SELECT value FROM records WHERE collection = $1 AND key = $2",
            &[&collection, &key],
        )?;
        rows.first().map(|r| decode("records", key.as_bytes(), r.get::<_, &[u8]>(0))).transpose()
    }

    fn lookup_records(&self, collection: &str, wanted: &[(String, &Record)]) -> Result<Vec<Lookup>> {
        // One round trip for the batch: a round trip per row made a
        // million-row import wait on the socket for most of its time.
        let keys: Vec<&str> = wanted.iter().map(|(key, _)| key.as_str()).collect();
        let rows = self.query(
            "records",
            "SELECT key, value FROM records WHERE collection = $1 AND key = ANY($2)",
            &[&collection, &keys],
        )?;
        let stored: HashMap<&str, &[u8]> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        use rayon::prelude::*;
        wanted
            .par_iter()
            .map(|(key, candidate)| {
                Ok(match stored.get(key.as_str()) {
                    None => Lookup::Missing,
                    Some(v) if *v == encode(candidate).as_slice() => Lookup::Same,
                    Some(v) => Lookup::Differs(decode("records", key.as_bytes(), v)?),
                })
            })
            .collect()
    }

    fn scan_records(
        &self,
        collection: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Record>, Option<String>)> {
        let (stored, next) = self.scan_stored(collection, after, limit)?;
        let records = stored.iter().map(StoredRecord::record).collect::<Result<_>>()?;
        Ok((records, next))
    }

    fn count_records(&self, collection: &str) -> Result<u64> {
        let rows = self.query("collections", "SELECT count FROM collections WHERE name = $1", &[&collection])?;
        Ok(rows.first().map_or(0, |r| r.get::<_, i64>(0).max(0) as u64))
    }

    fn find_by_index(&self, collection: &str, fields: &[String], record: &Record) -> Result<Vec<String>> {
        let Some(text) = index_text(record, fields) else { return Ok(Vec::new()) };
        let rows = self.query(
            "record_index",
            "SELECT key FROM record_index WHERE collection = $1 AND fields = $2 AND value = $3 ORDER BY key",
            &[&collection, &fields.join("+"), &text],
        )?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn find_by_indexes(&self, collection: &str, asks: &[(&[String], &Record)]) -> Result<Vec<Vec<String>>> {
        let mut found = vec![Vec::new(); asks.len()];
        let (mut at, mut fields, mut values) = (Vec::new(), Vec::new(), Vec::new());
        for (i, (f, record)) in asks.iter().enumerate() {
            if let Some(text) = index_text(record, f) {
                at.push(i as i64);
                fields.push(f.join("+"));
                values.push(text);
            }
        }
        if at.is_empty() {
            return Ok(found);
        }
        for row in self.query(
            "record_index",
            "SELECT t.at, i.key FROM unnest($2::bigint[], $3::text[], $4::text[]) AS t(at, f, v) \
             JOIN record_index i ON i.collection = $1 AND i.fields = t.f AND i.value = t.v ORDER BY t.at, i.key",
            &[&collection, &at, &fields, &values],
        )? {
            found[row.get::<_, i64>(0) as usize].push(row.get(1));
        }
        Ok(found)
    }

    fn scan_stored(
        &self,
        collection: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<StoredRecord>, Option<String>)> {
        self.page(
            "SELECT key, value FROM records WHERE collection = $1 AND ($2::text IS NULL OR key > $2) ORDER BY key LIMIT $3",
            &[&collection, &after, &self::limit(limit.saturating_add(1))],
            limit,
        )
    }

    fn scan_index(
        &self,
        collection: &str,
        fields: &[String],
        record: &Record,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<StoredRecord>, Option<String>)> {
        let Some(text) = index_text(record, fields) else { return Ok((Vec::new(), None)) };
        self.page(
            "SELECT r.key, r.value FROM record_index i JOIN records r ON r.collection = i.collection AND r.key = i.key \
             WHERE i.collection = $1 AND i.fields = $2 AND i.value = $3 AND ($4::text IS NULL OR i.key > $4) ORDER BY i.key LIMIT $5",
            &[&collection, &fields.join("+"), &text, &after, &self::limit(limit.saturating_add(1))],
            limit,
        )
    }
}

impl TaskStore for PgStore {
    fn task(&self, name: &str) -> Result<Option<Task>> {
        self.named("tasks", name)
    }

    fn tasks_named(&self, names: &[&str]) -> Result<Vec<Option<Task>>> {
        let rows = self.query(
            "tasks",
            "SELECT t.name, s.value FROM unnest($1::text[]) WITH ORDINALITY AS t(name, at) \
             LEFT JOIN tasks s ON s.name = t.name ORDER BY t.at",
            &[&names],
        )?;
        rows.iter()
            .map(|r| {
                let value: Option<&[u8]> = r.get(1);
                value.map(|v| decode("tasks", r.get::<_, &str>(0).as_bytes(), v)).transpose()
            })
            .collect()
    }

    fn all_tasks(&self) -> Result<Vec<Task>> {
        self.all_named("tasks")
    }

    fn put_task(&self, task: &Task, _old_due: Option<DateTime<Utc>>, new_due: Option<DateTime<Utc>>) -> Result<()> {
        check_name("task", &task.name)?;
        self.execute(
            "tasks",
            "INSERT INTO tasks (name, value, due_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET value = excluded.value, due_ms = excluded.due_ms",
            &[&task.name, &encode(task), &new_due.map(ms)],
        )
        .map(drop)
    }

    fn remove_task(&self, name: &str, _due: Option<DateTime<Utc>>) -> Result<()> {
        self.remove_named("tasks", name).map(drop)
    }

    fn due_tasks(&self, up_to: DateTime<Utc>, limit: usize) -> Result<Vec<(DateTime<Utc>, String)>> {
        let rows = self.query(
            "tasks",
            "SELECT due_ms, name FROM tasks WHERE due_ms <= $1 ORDER BY due_ms, name LIMIT $2",
            &[&ms(up_to), &self::limit(limit)],
        )?;
        Ok(rows.iter().map(|r| (from_ms(r.get(0)), r.get(1))).collect())
    }

    fn next_due(&self) -> Result<Option<DateTime<Utc>>> {
        let rows = self.query("tasks", "SELECT min(due_ms) FROM tasks", &[])?;
        Ok(rows.first().and_then(|r| r.get::<_, Option<i64>>(0)).map(from_ms))
    }

    fn fire(
        &self,
        task: &Task,
        due: DateTime<Utc>,
        next: Option<DateTime<Utc>>,
        queued: Option<(u8, &Run)>,
    ) -> Result<bool> {
        Ok(self.fire_all(&[Firing { task, due, next, queued }])?.first().copied().unwrap_or(false))
    }

    fn fire_all(&self, fires: &[Firing<'_>]) -> Result<Vec<bool>> {
        if fires.is_empty() {
            return Ok(Vec::new());
        }
        let names: Vec<&str> = fires.iter().map(|f| f.task.name.as_str()).collect();
        let tasks: Vec<Vec<u8>> = fires.iter().map(|f| encode(f.task)).collect();
        let next: Vec<Option<i64>> = fires.iter().map(|f| f.next.map(ms)).collect();
        let due: Vec<i64> = fires.iter().map(|f| ms(f.due)).collect();
        // The run each queues, if any: its queue key, id and value.
        let keys: Vec<Option<Vec<u8>>> =
            fires.iter().map(|f| f.queued.map(|(priority, run)| QueueKey::new(priority, f.due, run.id).0)).collect();
        let ids: Vec<Option<i64>> = fires.iter().map(|f| f.queued.map(|(_, run)| big(run.id))).collect();
        let runs: Vec<Option<Vec<u8>>> = fires.iter().map(|f| f.queued.map(|(_, run)| encode(run))).collect();
        // Each conditional on the due time it fires for: of two hosts
        // firing a task together, the second finds its row moved on, or
        // locked by the first, and does nothing. Locked rows are skipped,
        // not waited for: two hosts taking the same rows in different
        // orders would deadlock, and the first fires them anyway (or, if
        // it fails, they are still due at the next look). One statement,
        // so one round trip: the tasks moved on, their runs saved and
        // queued (each entry naming its task, for the overlap policy on
        // every host), and idle hosts woken at the commit when a run was
        // queued.
        let moved = self.query(
            "tasks",
            "WITH fires AS (\
                 SELECT * FROM unnest($1::text[], $2::bytea[], $3::bigint[], $4::bigint[], $5::bytea[], $6::bigint[], $7::bytea[]) \
                 WITH ORDINALITY AS f(name, task, next, due, key, run_id, run, at)), \
             locked AS (\
                 SELECT t.name FROM tasks t JOIN fires f ON t.name = f.name AND t.due_ms = f.due \
                 FOR UPDATE OF t SKIP LOCKED), \
             moved AS (\
                 UPDATE tasks t SET value = f.task, due_ms = f.next FROM fires f, locked l \
                 WHERE t.name = f.name AND t.due_ms = f.due AND l.name = t.name RETURNING f.*), \
             queued AS (\
                 INSERT INTO queue (key, run_id, task) SELECT key, run_id, name FROM moved WHERE run_id IS NOT NULL), \
             saved AS (\
                 INSERT INTO runs (id, value, finished_ms) SELECT run_id, run, NULL FROM moved WHERE run_id IS NOT NULL \
                 ON CONFLICT (id) DO UPDATE SET value = excluded.value) \
             SELECT m.at, w.woken FROM moved m \
             LEFT JOIN LATERAL (SELECT pg_notify('schoolbell_queue', '')::text AS woken WHERE m.run_id IS NOT NULL) w ON true",
            &[&names, &tasks, &next, &due, &keys, &ids, &runs],
        )?;
        let mut fired = vec![false; fires.len()];
        for row in moved {
            // Counted from 1.
            if let Some(f) = usize::try_from(row.get::<_, i64>(0) - 1).ok().and_then(|i| fired.get_mut(i)) {
                *f = true;
            }
        }
        Ok(fired)
    }
}

impl RunStore for PgStore {
    fn next_sequence(&self, name: &str) -> Result<u64> {
        let rows = self.query(
            "sequences",
            "INSERT INTO sequences (name, value) VALUES ($1, 1) \
             ON CONFLICT (name) DO UPDATE SET value = sequences.value + 1 RETURNING value",
            &[&name],
        )?;
        Ok(rows.first().map_or(1, |r| r.get::<_, i64>(0) as u64))
    }

    fn new_run_id(&self) -> Result<RunId> {
        self.next_sequence("runs")
    }

    fn new_run_ids(&self, n: usize) -> Result<Vec<RunId>> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let rows = self.query(
            "sequences",
            "INSERT INTO sequences (name, value) VALUES ('runs', $1) \
             ON CONFLICT (name) DO UPDATE SET value = sequences.value + $1 RETURNING value",
            &[&big(n as u64)],
        )?;
        let last = rows.first().map_or(n as u64, |r| r.get::<_, i64>(0) as u64);
        Ok((last + 1 - n as u64..=last).collect())
    }

    fn enqueue(&self, priority: u8, due: DateTime<Utc>, run: &Run) -> Result<QueueKey> {
        let key = QueueKey::new(priority, due, run.id);
        self.transaction("queue", async |tx| queue(tx, &key, run).await)?;
        Ok(key)
    }

    fn queued(&self) -> Result<Vec<(QueueKey, RunId)>> {
        let rows = self.query("queue", "SELECT key, run_id FROM queue ORDER BY key", &[])?;
        Ok(rows.iter().map(|r| (QueueKey(r.get(0)), r.get::<_, i64>(1) as u64)).collect())
    }

    fn queued_after(&self, after: Option<&QueueKey>) -> Result<Option<(QueueKey, RunId)>> {
        let after: &[u8] = after.map_or(&[], |k| k.0.as_slice());
        // By priority, then due time (the key's order), past entries another
        // host is starting now.
        let rows = self.query(
            "queue",
            "SELECT key, run_id FROM queue WHERE key > $1 ORDER BY key LIMIT 1 FOR UPDATE SKIP LOCKED",
            &[&after],
        )?;
        Ok(rows.first().map(|r| (QueueKey(r.get(0)), r.get::<_, i64>(1) as u64)))
    }

    fn queued_run_after(&self, after: Option<&QueueKey>) -> Result<Option<(QueueKey, RunId, Option<Run>)>> {
        let after: &[u8] = after.map_or(&[], |k| k.0.as_slice());
        // The entry and its run in one round trip.
        let rows = self.query(
            "queue",
            "SELECT q.key, q.run_id, r.value FROM queue q LEFT JOIN runs r ON r.id = q.run_id \
             WHERE q.key > $1 ORDER BY q.key LIMIT 1 FOR UPDATE OF q SKIP LOCKED",
            &[&after],
        )?;
        let Some(row) = rows.first() else { return Ok(None) };
        let run = row.get::<_, Option<&[u8]>>(2).map(|v| decode("runs", b"", v)).transpose()?;
        Ok(Some((QueueKey(row.get(0)), row.get::<_, i64>(1) as u64, run)))
    }

    fn queue_len(&self) -> usize {
        // The figure is for gauges and pacing; a failed count reads as none.
        self.query("queue", "SELECT count(*) FROM queue", &[])
            .ok()
            .and_then(|rows| rows.first().map(|r| r.get::<_, i64>(0).max(0) as usize))
            .unwrap_or(0)
    }

    fn dequeue(&self, key: &QueueKey) -> Result<bool> {
        Ok(self.execute("queue", "DELETE FROM queue WHERE key = $1", &[&key.0])? > 0)
    }

    fn start_run(&self, key: &QueueKey, run: &Run) -> Result<bool> {
        // One statement, so one round trip: whoever deletes the entry
        // starts the run (saved, and this host's while it renews the
        // lease); the others find it gone. An entry another host is
        // starting now is skipped, not waited for.
        let rows = self.query(
            "queue",
            "WITH taken AS (\
                 DELETE FROM queue WHERE key = (SELECT key FROM queue WHERE key = $1 FOR UPDATE SKIP LOCKED) \
                 RETURNING run_id), \
             saved AS (\
                 INSERT INTO runs (id, value, finished_ms) SELECT $2::bigint, $3::bytea, NULL FROM taken \
                 ON CONFLICT (id) DO UPDATE SET value = excluded.value), \
             leased AS (\
                 INSERT INTO run_leases (run_id, host, task, until_ms) SELECT $2::bigint, $4::text, $5::text, now_ms() + $6::bigint FROM taken \
                 ON CONFLICT (run_id) DO UPDATE SET host = excluded.host, task = excluded.task, until_ms = excluded.until_ms) \
             SELECT count(*) FROM taken",
            &[&key.0, &big(run.id), &encode(run), &self.host, &run.task, &self.lease_ms],
        )?;
        Ok(rows.first().is_some_and(|r| r.get::<_, i64>(0) > 0))
    }

    fn put_run(&self, run: &Run, finished: Option<DateTime<Utc>>) -> Result<()> {
        let sql = if finished.is_some() { FINISH_RUN } else { UPSERT_RUN };
        self.execute("runs", sql, &[&big(run.id), &encode(run), &finished.map(ms)]).map(drop)
    }

    fn finish_run(
        &self,
        run: &Run,
        finished: DateTime<Utc>,
        writes: &Finish<'_, LedgerEntry, OutboxEntry>,
    ) -> Result<()> {
        let (seqs, statuses, values) = message_columns(0, writes.messages);
        if writes.state.is_empty() && writes.ledger.is_empty() && writes.outbox.is_empty() {
            // The run and its messages alone: one statement, no transaction around it.
            let (id, value, finished) = (big(run.id), encode(run), Some(ms(finished)));
            return self
                .execute("runs", FINISH_RUN_WITH_MESSAGES, &[&id, &value, &finished, &seqs, &statuses, &values])
                .map(drop);
        }
        self.transaction("runs", async |tx| {
            save_run(tx, run, Some(finished)).await?;
            if !seqs.is_empty() {
                run_sql(tx, "run_messages", ADD_MESSAGES, &[&big(run.id), &seqs, &statuses, &values]).await?;
            }
            write_state(tx, &run.task, writes.state).await?;
            for (key, entry) in writes.ledger {
                match entry {
                    Some(entry) => {
                        run_sql(
                            tx,
                            "notified",
                            "INSERT INTO notified (task, key, value) VALUES ($1, $2, $3) \
                             ON CONFLICT (task, key) DO UPDATE SET value = excluded.value",
                            &[&run.task, key, &encode(entry)],
                        )
                        .await?
                    }
                    None => {
                        run_sql(tx, "notified", "DELETE FROM notified WHERE task = $1 AND key = $2", &[&run.task, key])
                            .await?
                    }
                };
            }
            for (id, due, entry) in writes.outbox {
                run_sql(
                    tx,
                    "outbox",
                    "INSERT INTO outbox (id, value, due_ms) VALUES ($1, $2, $3) \
                     ON CONFLICT (id) DO UPDATE SET value = excluded.value, due_ms = excluded.due_ms",
                    &[&big(*id), &encode(entry), &ms(*due)],
                )
                .await?;
            }
            Ok(())
        })
    }

    fn run(&self, id: RunId) -> Result<Option<Run>> {
        self.value("runs", "SELECT value FROM runs WHERE id = $1", &big(id))
    }

    fn runs(&self, before: Option<RunId>, limit: usize) -> Result<Vec<Run>> {
        self.values(
            "runs",
            "SELECT value FROM runs WHERE id < $1 ORDER BY id DESC LIMIT $2",
            &[&before.map_or(i64::MAX, big), &self::limit(limit)],
        )
    }

    fn all_runs(&self) -> Result<Vec<Run>> {
        self.values("runs", "SELECT value FROM runs ORDER BY id DESC", &[])
    }

    fn finished_before(&self, cutoff: DateTime<Utc>) -> Result<Vec<RunId>> {
        let rows =
            self.query("runs", "SELECT id FROM runs WHERE finished_ms <= $1 ORDER BY finished_ms, id", &[&ms(cutoff)])?;
        Ok(rows.iter().map(|r| r.get::<_, i64>(0) as u64).collect())
    }

    fn delete_run(&self, id: RunId, _finished: Option<DateTime<Utc>>) -> Result<()> {
        self.transaction("runs", async |tx| {
            for (table, column) in [
                ("run_messages", "run"),
                ("run_message_rows", "run"),
                ("import_plans", "run"),
                ("approvals", "run"),
                ("run_leases", "run_id"),
            ] {
                run_sql(tx, "runs", &format!("DELETE FROM {table} WHERE {column} = $1"), &[&big(id)]).await?;
            }
            run_sql(tx, "runs", "DELETE FROM runs WHERE id = $1", &[&big(id)]).await.map(drop)
        })
    }

    fn add_messages(&self, run: RunId, first_seq: u64, messages: &[(&str, &TaskMessage)]) -> Result<()> {
        if messages.is_empty() {
            return Ok(());
        }
        let (seqs, statuses, values) = message_columns(first_seq, messages);
        self.execute("run_messages", ADD_MESSAGES, &[&big(run), &seqs, &statuses, &values]).map(drop)
    }

    fn add_message_rows(&self, run: RunId, rows: &crate::imports::ShownRows<'_>) -> Result<()> {
        let Some(first) = rows.first_line() else { return Ok(()) };
        self.execute(
            "run_message_rows",
            "INSERT INTO run_message_rows (run, first_line, value) VALUES ($1, $2, $3) \
             ON CONFLICT (run, first_line) DO UPDATE SET value = excluded.value",
            &[&big(run), &big(first), &encode(rows)],
        )
        .map(drop)
    }

    fn message_rows(&self, run: RunId, lines: &[u64]) -> Result<Vec<Option<Record>>> {
        // Lines close together share a chunk, read once.
        let mut chunk: Option<(i64, Vec<(u64, Record)>)> = None;
        let mut out = Vec::with_capacity(lines.len());
        for line in lines {
            let rows = self.query(
                "run_message_rows",
                "SELECT first_line, value FROM run_message_rows WHERE run = $1 AND first_line <= $2 \
                 ORDER BY first_line DESC LIMIT 1",
                &[&big(run), &big(*line)],
            )?;
            let Some(row) = rows.first() else {
                out.push(None);
                continue;
            };
            let first: i64 = row.get(0);
            if chunk.as_ref().is_none_or(|(held, _)| *held != first) {
                chunk = Some((first, decode("run_message_rows", b"", row.get::<_, &[u8]>(1))?));
            }
            let rows = chunk.as_ref().map(|(_, rows)| rows.as_slice()).unwrap_or_default();
            out.push(rows.binary_search_by_key(line, |(l, _)| *l).ok().map(|i| rows[i].1.clone()));
        }
        Ok(out)
    }

    fn message_statuses(&self, run: RunId) -> Result<Vec<String>> {
        let rows = self.query(
            "run_messages",
            "SELECT DISTINCT status FROM run_messages WHERE run = $1 ORDER BY status",
            &[&big(run)],
        )?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn messages(
        &self,
        run: RunId,
        status: Option<&str>,
        after: Option<u64>,
        limit: usize,
    ) -> Result<(Vec<TaskMessage>, Option<u64>)> {
        let from = after.map_or(-1, big);
        let n = self::limit(limit.saturating_add(1));
        let rows = match status {
            None => self.query(
                "run_messages",
                "SELECT seq, value FROM run_messages WHERE run = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                &[&big(run), &from, &n],
            )?,
            Some(status) => self.query(
                "run_messages",
                "SELECT seq, value FROM run_messages WHERE run = $1 AND status = $4 AND seq > $2 ORDER BY seq LIMIT $3",
                &[&big(run), &from, &n, &status],
            )?,
        };
        let more = rows.len() > limit;
        let mut out = Vec::with_capacity(rows.len().min(limit));
        let mut last = None;
        for row in rows.iter().take(limit) {
            out.push(decode("run_messages", b"", row.get::<_, &[u8]>(1))?);
            last = Some(row.get::<_, i64>(0) as u64);
        }
        Ok((out, if more { last } else { None }))
    }

    fn put_plan(&self, run: RunId, plan: &ImportPlan) -> Result<()> {
        self.put_keyed("import_plans", "run", &big(run), plan)
    }

    fn plan(&self, run: RunId) -> Result<Option<ImportPlan>> {
        self.keyed("import_plans", "run", &big(run))
    }

    fn remove_plan(&self, run: RunId) -> Result<()> {
        self.remove_keyed("import_plans", "run", &big(run)).map(drop)
    }

    fn put_approval(&self, run: RunId, approval: &Approval) -> Result<()> {
        self.put_keyed("approvals", "run", &big(run), approval)
    }

    fn approval(&self, run: RunId) -> Result<Option<Approval>> {
        self.keyed("approvals", "run", &big(run))
    }

    fn remove_approval(&self, run: RunId) -> Result<()> {
        self.remove_keyed("approvals", "run", &big(run)).map(drop)
    }
}

async fn write_state(tx: &Transaction<'_>, task: &str, writes: &[(String, Option<String>)]) -> Result<()> {
    for (key, value) in writes {
        check_name("state key", key)?;
        match value {
            Some(value) => {
                run_sql(
                    tx,
                    "task_state",
                    "INSERT INTO task_state (task, key, value) VALUES ($1, $2, $3) \
                     ON CONFLICT (task, key) DO UPDATE SET value = excluded.value",
                    &[&task, key, value],
                )
                .await?
            }
            None => {
                run_sql(tx, "task_state", "DELETE FROM task_state WHERE task = $1 AND key = $2", &[&task, key]).await?
            }
        };
    }
    Ok(())
}

impl LedgerStore for PgStore {
    fn task_state(&self, task: &str, key: &str) -> Result<Option<String>> {
        let rows =
            self.query("task_state", "SELECT value FROM task_state WHERE task = $1 AND key = $2", &[&task, &key])?;
        Ok(rows.first().map(|r| r.get(0)))
    }

    fn task_state_bytes(&self, task: &str) -> Result<u64> {
        let rows = self.query(
            "task_state",
            "SELECT COALESCE(sum(octet_length(key) + octet_length(value)), 0)::bigint FROM task_state WHERE task = $1",
            &[&task],
        )?;
        Ok(rows.first().map_or(0, |r| r.get::<_, i64>(0).max(0) as u64))
    }

    fn apply_task_state(&self, task: &str, writes: &[(String, Option<String>)]) -> Result<()> {
        check_name("task", task)?;
        self.transaction("task_state", async |tx| write_state(tx, task, writes).await)
    }

    fn notified(&self, task: &str) -> Result<Vec<(String, LedgerEntry)>> {
        let rows = self.query("notified", "SELECT key, value FROM notified WHERE task = $1 ORDER BY key", &[&task])?;
        rows.iter()
            .map(|r| {
                let key: String = r.get(0);
                let entry = decode("notified", key.as_bytes(), r.get::<_, &[u8]>(1))?;
                Ok((key, entry))
            })
            .collect()
    }

    fn forget_task(&self, task: &str) -> Result<()> {
        self.transaction("task_state", async |tx| {
            run_sql(tx, "task_state", "DELETE FROM task_state WHERE task = $1", &[&task]).await?;
            run_sql(tx, "notified", "DELETE FROM notified WHERE task = $1", &[&task]).await.map(drop)
        })
    }
}

impl PgStore {
    fn outbox_rows(&self, sql: &str, params: Params<'_>) -> Result<Vec<(u64, OutboxEntry)>> {
        self.query("outbox", sql, params)?
            .iter()
            .map(|r| {
                let id = r.get::<_, i64>(0) as u64;
                Ok((id, decode("outbox", &id.to_be_bytes(), r.get::<_, &[u8]>(1))?))
            })
            .collect()
    }
}

impl OutboxStore for PgStore {
    fn outbox_due(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<(u64, OutboxEntry)>> {
        // Claimed for this host as they are read: another host's mailer
        // skips them until their outcome is written or the claim lapses, so
        // an email goes out once whichever host sends it. A claim holds
        // while its host beats, so this one beats first (a CLI that sends
        // beats nowhere else).
        super::HostStore::beat(self)?;
        let rows = self.query(
            "outbox",
            "UPDATE outbox SET claimed_by = $3, claim_until_ms = now_ms() + $4 WHERE id IN \
             (SELECT o.id FROM outbox o WHERE o.due_ms <= $1 AND (o.claimed_by IS NULL OR o.claim_until_ms < now_ms() \
               OR NOT EXISTS (SELECT 1 FROM hosts h WHERE h.id = o.claimed_by AND h.heartbeat_ms > now_ms() - $5)) \
              ORDER BY o.due_ms, o.id LIMIT $2 FOR UPDATE SKIP LOCKED) RETURNING id, value, due_ms",
            &[&ms(now), &self::limit(limit), &self.host, &OUTBOX_CLAIM_MS, &self.lease_ms],
        )?;
        let mut due = rows
            .iter()
            .map(|r| {
                let id = r.get::<_, i64>(0) as u64;
                Ok((r.get::<_, i64>(2), id, decode("outbox", &id.to_be_bytes(), r.get::<_, &[u8]>(1))?))
            })
            .collect::<Result<Vec<(i64, u64, OutboxEntry)>>>()?;
        due.sort_by_key(|(due, id, _)| (*due, *id));
        Ok(due.into_iter().map(|(_, id, entry)| (id, entry)).collect())
    }

    fn outbox(&self, after: Option<u64>, limit: usize) -> Result<Vec<(u64, OutboxEntry)>> {
        self.outbox_rows(
            "SELECT id, value FROM outbox WHERE id > $1 ORDER BY id LIMIT $2",
            &[&after.map_or(-1, big), &self::limit(limit)],
        )
    }

    fn update_outbox_batch(&self, updates: &[OutboxUpdate]) -> Result<()> {
        self.transaction("outbox", async |tx| {
            for (id, entry, _was_due, due) in updates {
                run_sql(
                    tx,
                    "outbox",
                    "INSERT INTO outbox (id, value, due_ms) VALUES ($1, $2, $3) ON CONFLICT (id) DO UPDATE \
                     SET value = excluded.value, due_ms = excluded.due_ms, claimed_by = NULL, claim_until_ms = NULL",
                    &[&big(*id), &encode(entry), &due.map(ms)],
                )
                .await?;
            }
            Ok(())
        })
    }

    fn remove_outbox(&self, id: u64) -> Result<()> {
        self.execute("outbox", "DELETE FROM outbox WHERE id = $1", &[&big(id)]).map(drop)
    }

    fn release_outbox(&self, ids: &[u64]) -> Result<()> {
        let ids: Vec<i64> = ids.iter().map(|id| big(*id)).collect();
        self.execute(
            "outbox",
            "UPDATE outbox SET claimed_by = NULL, claim_until_ms = NULL WHERE id = ANY($1) AND claimed_by = $2",
            &[&ids, &self.host],
        )
        .map(drop)
    }
}

impl AccountStore for PgStore {
    fn user(&self, name: &str) -> Result<Option<User>> {
        self.named("users", name)
    }

    fn put_user(&self, user: &User) -> Result<()> {
        self.put_named("users", "user", &user.name, user)
    }

    fn all_users(&self) -> Result<Vec<User>> {
        self.all_named("users")
    }

    fn remove_user(&self, name: &str) -> Result<bool> {
        self.remove_named("users", name)
    }

    fn put_token(&self, hash: &str, token: &Token) -> Result<()> {
        self.execute(
            "tokens",
            "INSERT INTO tokens (hash, user_name, value) VALUES ($1, $2, $3) \
             ON CONFLICT (hash) DO UPDATE SET user_name = excluded.user_name, value = excluded.value",
            &[&hash, &token.user, &encode(token)],
        )
        .map(drop)
    }

    fn token(&self, hash: &str) -> Result<Option<Token>> {
        self.value("tokens", "SELECT value FROM tokens WHERE hash = $1", &hash)
    }

    fn all_tokens(&self) -> Result<Vec<(String, Token)>> {
        self.query("tokens", "SELECT hash, value FROM tokens ORDER BY hash", &[])?
            .iter()
            .map(|r| {
                let hash: String = r.get(0);
                let token = decode("tokens", hash.as_bytes(), r.get::<_, &[u8]>(1))?;
                Ok((hash, token))
            })
            .collect()
    }

    fn remove_token(&self, hash: &str) -> Result<bool> {
        Ok(self.execute("tokens", "DELETE FROM tokens WHERE hash = $1", &[&hash])? > 0)
    }

    fn remove_tokens_of(&self, user: &str) -> Result<()> {
        self.execute("tokens", "DELETE FROM tokens WHERE user_name = $1", &[&user]).map(drop)
    }

    fn put_password(&self, user: &str, hash: &str) -> Result<()> {
        self.execute(
            "passwords",
            "INSERT INTO passwords (user_name, hash) VALUES ($1, $2) ON CONFLICT (user_name) DO UPDATE SET hash = excluded.hash",
            &[&user, &hash],
        )
        .map(drop)
    }

    fn password(&self, user: &str) -> Result<Option<String>> {
        let rows = self.query("passwords", "SELECT hash FROM passwords WHERE user_name = $1", &[&user])?;
        Ok(rows.first().map(|r| r.get(0)))
    }

    fn remove_password(&self, user: &str) -> Result<bool> {
        Ok(self.execute("passwords", "DELETE FROM passwords WHERE user_name = $1", &[&user])? > 0)
    }

    fn put_view(&self, user: &str, view: &SavedView) -> Result<()> {
        check_name("user", user)?;
        check_name("view", &view.name)?;
        self.execute(
            "views",
            "INSERT INTO views (user_name, name, value) VALUES ($1, $2, $3) \
             ON CONFLICT (user_name, name) DO UPDATE SET value = excluded.value",
            &[&user, &view.name, &encode(view)],
        )
        .map(drop)
    }

    fn views(&self, user: &str) -> Result<Vec<SavedView>> {
        self.values("views", "SELECT value FROM views WHERE user_name = $1 ORDER BY name", &[&user])
    }

    fn remove_view(&self, user: &str, name: &str) -> Result<bool> {
        Ok(self.execute("views", "DELETE FROM views WHERE user_name = $1 AND name = $2", &[&user, &name])? > 0)
    }

    fn put_secret(&self, name: &str, sealed: &[u8]) -> Result<()> {
        self.execute(
            "secrets",
            "INSERT INTO secrets (name, sealed) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET sealed = excluded.sealed",
            &[&name, &sealed],
        )
        .map(drop)
    }

    fn secret(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let rows = self.query("secrets", "SELECT sealed FROM secrets WHERE name = $1", &[&name])?;
        Ok(rows.first().map(|r| r.get(0)))
    }

    fn secret_names(&self) -> Result<Vec<String>> {
        Ok(self.query("secrets", "SELECT name FROM secrets ORDER BY name", &[])?.iter().map(|r| r.get(0)).collect())
    }
}

impl AuditStore for PgStore {
    fn append_audit(&self, entry: &AuditEntry) -> Result<u64> {
        let n = self.next_sequence("audit")?;
        self.execute("audit", "INSERT INTO audit (id, value) VALUES ($1, $2)", &[&big(n), &encode(entry)])?;
        Ok(n)
    }

    fn audit_log(&self, after: Option<u64>, limit: usize) -> Result<Vec<(u64, AuditEntry)>> {
        self.query(
            "audit",
            "SELECT id, value FROM audit WHERE id > $1 ORDER BY id LIMIT $2",
            &[&after.map_or(0, big), &self::limit(limit)],
        )?
        .iter()
        .map(|r| {
            let id = r.get::<_, i64>(0) as u64;
            Ok((id, decode("audit", &id.to_be_bytes(), r.get::<_, &[u8]>(1))?))
        })
        .collect()
    }

    fn remove_audit_through(&self, last: u64) -> Result<u64> {
        self.execute("audit", "DELETE FROM audit WHERE id <= $1", &[&big(last)])
    }
}

impl SourceStore for PgStore {
    fn source(&self, name: &str) -> Result<Option<Source>> {
        self.named("sources", name)
    }

    fn put_source(&self, source: &Source) -> Result<()> {
        self.put_named("sources", "source", &source.name, source)
    }

    fn remove_source(&self, name: &str) -> Result<bool> {
        self.remove_named("sources", name)
    }

    fn all_sources(&self) -> Result<Vec<Source>> {
        self.all_named("sources")
    }
}

impl PluginStore for PgStore {
    fn plugin(&self, name: &str) -> Result<Option<PluginEntry>> {
        self.named("plugins", name)
    }

    fn put_plugin(&self, entry: &PluginEntry) -> Result<()> {
        self.put_named("plugins", "plugin", &entry.name, entry)
    }

    fn remove_plugin(&self, name: &str) -> Result<bool> {
        self.remove_named("plugins", name)
    }

    fn all_plugins(&self) -> Result<Vec<PluginEntry>> {
        self.all_named("plugins")
    }

    fn put_blob(&self, hash: &str, bytes: &[u8]) -> Result<bool> {
        Ok(self.execute(
            "blobs",
            "INSERT INTO blobs (hash, bytes) VALUES ($1, $2) ON CONFLICT (hash) DO NOTHING",
            &[&hash, &bytes],
        )? > 0)
    }

    fn blob(&self, hash: &str) -> Result<Option<Vec<u8>>> {
        let rows = self.query("blobs", "SELECT bytes FROM blobs WHERE hash = $1", &[&hash])?;
        Ok(rows.first().map(|r| r.get(0)))
    }

    fn remove_blob(&self, hash: &str) -> Result<()> {
        self.execute("blobs", "DELETE FROM blobs WHERE hash = $1", &[&hash]).map(drop)
    }
}

impl RuleStore for PgStore {
    fn add_rule_version(
        &self,
        name: &str,
        source: &str,
        hash: &str,
        saved_by: &str,
        saved_at: DateTime<Utc>,
    ) -> Result<RuleVersion> {
        check_name("rule", name)?;
        // Two hosts saving at once may take the same number: the one whose
        // insert finds it taken reads the newest again and takes the next.
        loop {
            let last: i64 = self.query(
                "rule_versions",
                "SELECT coalesce(max(version), 0) FROM rule_versions WHERE name = $1",
                &[&name],
            )?[0]
                .get(0);
            let version = RuleVersion {
                name: name.into(),
                version: last as u64 + 1,
                hash: hash.into(),
                saved_by: saved_by.into(),
                saved_at,
                source: source.into(),
            };
            let added = self.execute(
                "rule_versions",
                "INSERT INTO rule_versions (name, version, value) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                &[&name, &(last + 1), &encode(&version)],
            )?;
            if added > 0 {
                return Ok(version);
            }
        }
    }

    fn rule_heads(&self) -> Result<Vec<RuleVersion>> {
        self.values(
            "rule_versions",
            "SELECT DISTINCT ON (name) value FROM rule_versions ORDER BY name, version DESC",
            &[],
        )
    }

    fn rule_history(&self, name: &str) -> Result<Vec<RuleVersion>> {
        self.values("rule_versions", "SELECT value FROM rule_versions WHERE name = $1 ORDER BY version", &[&name])
    }

    fn rule_versions(&self) -> Result<u64> {
        let count: i64 = self.query("rule_versions", "SELECT count(*) FROM rule_versions", &[])?[0].get(0);
        Ok(count as u64)
    }
}

impl super::HostStore for PgStore {
    fn host_id(&self) -> Option<&str> {
        Some(&self.host)
    }

    fn beat(&self) -> Result<()> {
        self.transaction("hosts", async |tx| {
            run_sql(
                tx,
                "hosts",
                "INSERT INTO hosts (id, name, pid, started_ms, heartbeat_ms) VALUES ($1, $2, $3, now_ms(), now_ms()) \
                 ON CONFLICT (id) DO UPDATE SET heartbeat_ms = now_ms()",
                &[&self.host, &machine_name(), &(std::process::id() as i32)],
            )
            .await?;
            // Hosts gone for a day leave the list.
            run_sql(tx, "hosts", "DELETE FROM hosts WHERE heartbeat_ms < now_ms() - 86400000", &[]).await.map(drop)
        })
    }

    fn hosts(&self) -> Result<Vec<super::HostInfo>> {
        let rows = self.query(
            "hosts",
            "SELECT h.id, h.name, h.pid, h.started_ms, h.heartbeat_ms, \
             (SELECT count(*) FROM run_leases l WHERE l.host = h.id) FROM hosts h ORDER BY h.started_ms, h.id",
            &[],
        )?;
        Ok(rows
            .iter()
            .map(|r| super::HostInfo {
                id: r.get(0),
                name: r.get(1),
                pid: r.get::<_, i32>(2).max(0) as u32,
                started_at: from_ms(r.get(3)),
                heartbeat_at: from_ms(r.get(4)),
                runs_held: r.get::<_, i64>(5).max(0) as u64,
            })
            .collect())
    }

    fn renew_leases(&self, runs: &[RunId]) -> Result<Vec<RunId>> {
        if runs.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<i64> = runs.iter().map(|id| big(*id)).collect();
        let renewed: BTreeSet<u64> = self
            .query(
                "run_leases",
                "UPDATE run_leases SET until_ms = now_ms() + $3 WHERE run_id = ANY($1) AND host = $2 RETURNING run_id",
                &[&ids, &self.host, &self.lease_ms],
            )?
            .iter()
            .map(|r| r.get::<_, i64>(0) as u64)
            .collect();
        Ok(runs.iter().copied().filter(|id| !renewed.contains(id)).collect())
    }

    fn take_lapsed_leases(&self) -> Result<Vec<RunId>> {
        // Taken over, not deleted: should this host die before it settles
        // them, they lapse again and another host does.
        let rows = self.query(
            "run_leases",
            "UPDATE run_leases SET host = $1, until_ms = now_ms() + $2 WHERE until_ms < now_ms() RETURNING run_id",
            &[&self.host, &self.lease_ms],
        )?;
        Ok(rows.iter().map(|r| r.get::<_, i64>(0) as u64).collect())
    }

    fn settle_lapsed(&self, ended: &Run, again: Option<(u8, DateTime<Utc>, &Run)>) -> Result<bool> {
        self.transaction("run_leases", async |tx| {
            let mine = "DELETE FROM run_leases WHERE run_id = $1 AND host = $2";
            if run_sql(tx, "run_leases", mine, &[&big(ended.id), &self.host]).await? == 0 {
                return Ok(false);
            }
            save_run(tx, ended, ended.finished_at).await?;
            if let Some((priority, due, run)) = again {
                queue(tx, &QueueKey::new(priority, due, run.id), run).await?;
            }
            Ok(true)
        })
    }

    fn lead(&self, chore: &str) -> Result<bool> {
        // A term as long as a lease: the leader renews it as it works, and
        // another host takes over once it lapses.
        let rows = self.query(
            "leaders",
            "INSERT INTO leaders (chore, host, until_ms) VALUES ($1, $2, now_ms() + $3) ON CONFLICT (chore) DO UPDATE \
             SET host = excluded.host, until_ms = excluded.until_ms \
             WHERE leaders.host = excluded.host OR leaders.until_ms < now_ms() RETURNING host",
            &[&chore, &self.host, &self.lease_ms],
        )?;
        Ok(!rows.is_empty())
    }

    fn claim_file(&self, key: &str, run: RunId) -> Result<bool> {
        // Taken over only from a run whose lease is gone (it finished, or
        // its host stopped answering).
        let rows = self.query(
            "file_claims",
            "INSERT INTO file_claims (key, run_id) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET run_id = excluded.run_id \
             WHERE file_claims.run_id = excluded.run_id \
             OR NOT EXISTS (SELECT 1 FROM run_leases l WHERE l.run_id = file_claims.run_id) RETURNING key",
            &[&key, &big(run)],
        )?;
        Ok(!rows.is_empty())
    }

    fn on_new_work(&self, wake: Box<dyn Fn() + Send + Sync>) {
        let Some(runtime) = &self.runtime else { return };
        let (pg, tls) = (self.pg.clone(), self.tls.clone());
        runtime.spawn(async move {
            loop {
                if let Err(e) = listen(&pg, tls.clone(), &*wake).await {
                    tracing::warn!(
                        "Listening for new work stopped ({}); the next look finds it, and listening starts again.",
                        Driver(e)
                    );
                }
                // Whatever was queued meanwhile is found at the next look.
                wake();
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        });
    }

    fn task_activities(&self, tasks: &[&str]) -> Result<Option<Vec<(bool, bool)>>> {
        let rows = self.query(
            "run_leases",
            "SELECT EXISTS (SELECT 1 FROM run_leases l WHERE l.task = t.task), \
                    EXISTS (SELECT 1 FROM queue q WHERE q.task = t.task) \
             FROM unnest($1::text[]) WITH ORDINALITY AS t(task, at) ORDER BY t.at",
            &[&tasks],
        )?;
        Ok(Some(rows.iter().map(|r| (r.get(0), r.get(1))).collect()))
    }

    fn task_activity(&self, task: &str) -> Result<Option<(bool, bool)>> {
        let rows = self.query(
            "run_leases",
            "SELECT EXISTS (SELECT 1 FROM run_leases WHERE task = $1), EXISTS (SELECT 1 FROM queue WHERE task = $1)",
            &[&task],
        )?;
        Ok(rows.first().map(|r| (r.get(0), r.get(1))))
    }
}

impl Maintenance for PgStore {
    fn shared(&self) -> bool {
        true
    }

    fn flush(&self) -> Result<()> {
        // A committed transaction is on disk already (synchronous_commit).
        Ok(())
    }

    fn schema_version(&self) -> Result<u32> {
        let rows = self.query("meta", "SELECT value FROM meta WHERE key = 'schema_version'", &[])?;
        let Some(row) = rows.first() else { return Ok(SCHEMA_VERSION) };
        let bytes: &[u8] = row.get(0);
        Ok(u32::from_be_bytes(bytes.try_into().map_err(|_| Error::Corrupt {
            tree: "meta",
            key: "schema_version".into(),
            reason: format!("{} bytes, expected 4", bytes.len()),
        })?))
    }

    fn check(&self) -> Result<Vec<Drift>> {
        let mut drift = Vec::new();
        for name in self.collection_names()? {
            let Some(spec) = self.collection(&name)? else { continue };
            let mut expected = BTreeSet::new();
            let mut records = 0u64;
            for row in self.query("records", "SELECT key, value FROM records WHERE collection = $1", &[&name])? {
                let key: &str = row.get(0);
                match decode::<Record>("records", key.as_bytes(), row.get::<_, &[u8]>(1)) {
                    Ok(record) => {
                        records += 1;
                        expected.extend(entries(&spec, &record, key));
                    }
                    Err(e) => drift.push(Drift(format!("collection `{name}`: {e}"))),
                }
            }
            let found: BTreeSet<Entry> = self
                .query("record_index", "SELECT fields, value, key FROM record_index WHERE collection = $1", &[&name])?
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect();
            let shown = |(f, v, k): &Entry| format!("{f}/{}/{k}", v.replace('\u{1f}', "/"));
            let counted = self.count_records(&name)?;
            drift.extend(index_drift(&name, &expected, &found, shown, counted, records));
        }
        Ok(drift)
    }

    fn backup(&self, dir: &Path) -> Result<()> {
        Err(Error::Backup {
            path: dir.to_path_buf(),
            reason: format!(
                "the store is the PostgreSQL schema `{}`: back it up with the database's own tools (pg_dump, or the server's base backups)",
                self.schema
            ),
        })
    }

    fn size_on_disk(&self) -> Result<u64> {
        let rows = self.query(
            "meta",
            "SELECT COALESCE(sum(pg_total_relation_size(c.oid)), 0)::bigint FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = current_schema() AND c.relkind = 'r'",
            &[],
        )?;
        Ok(rows.first().map_or(0, |r| r.get::<_, i64>(0).max(0) as u64))
    }
}

#[cfg(test)]
#[path = "../../../tests/support/postgres.rs"]
#[allow(unreachable_pub, dead_code)]
pub(crate) mod cluster;

#[cfg(test)]
mod tests {
    use super::*;

    fn config(cluster: &cluster::Postgres, schema: &str) -> StoreConfig {
        StoreConfig {
            backend: crate::store::BackendKind::Postgres,
            url: cluster.url(),
            schema: schema.into(),
            ..StoreConfig::default()
        }
    }

    /// A store on `config`'s schema, migrated first.
    fn migrated(config: &StoreConfig, dir: &Path) -> PgStore {
        PgStore::migrate(config, dir).unwrap();
        PgStore::open(config, dir).unwrap()
    }

    /// Waits, within ten seconds, for `done`.
    fn eventually(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "{what} did not happen within 10 s");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    #[test]
    fn a_call_made_while_the_database_is_down_waits_for_it_to_come_back() {
        let cluster = cluster::Postgres::start();
        let dir = tempfile::tempdir().unwrap();
        let store = migrated(&config(&cluster, "away"), dir.path());
        let user = |name: &str| crate::users::User { name: name.into(), ..crate::users::User::local_owner() };
        store.put_user(&user("ada")).unwrap();
        cluster.stop();
        std::thread::scope(|scope| {
            // A read and a write, both made while the server is down.
            let read = scope.spawn(|| store.user("ada"));
            let write = scope.spawn(|| store.put_user(&user("bo")));
            cluster.resume();
            assert_eq!(read.join().unwrap().unwrap().map(|u| u.name), Some("ada".to_string()));
            write.join().unwrap().unwrap();
        });
        assert!(store.user("bo").unwrap().is_some(), "the write made while the server was down is in");
    }

    #[test]
    fn a_call_from_a_task_that_spent_its_tokio_budget_returns() {
        let cluster = cluster::Postgres::start();
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(migrated(&config(&cluster, "budget"), dir.path()));
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // As serve runs: a task on a worker of a multi-threaded runtime.
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
            let answer = runtime.block_on(runtime.spawn(async move {
                // Tokio gives a task 128 operations before it must yield;
                // these spend them all, and the store is called at zero.
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                for i in 0..128 {
                    tx.send(i).unwrap();
                }
                for _ in 0..128 {
                    rx.recv().await;
                }
                store.next_due()
            }));
            let _ = done_tx.send(answer.is_ok_and(|a| a.is_ok()));
        });
        let answered = done_rx.recv_timeout(std::time::Duration::from_secs(30));
        assert_eq!(answered, Ok(true), "the call did not return within 30 s");
    }

    #[test]
    fn two_hosts_share_leases_leaders_outbox_claims_and_wakes() {
        use crate::store::HostStore;
        let cluster = cluster::Postgres::start();
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig { lease_secs: 1, ..config(&cluster, "hosts") };
        let (a, b) = (migrated(&config, dir.path()), PgStore::open(&config, dir.path()).unwrap());
        a.beat().unwrap();
        b.beat().unwrap();
        assert_eq!(a.hosts().unwrap().len(), 2, "both hosts are listed");
        assert_ne!(a.host_id(), b.host_id());
        // A run started on A is A's: B sees the task busy, and takes
        // nothing over while A renews.
        let at = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let mut run = Run::queued(
            a.new_run_id().unwrap(),
            "nightly",
            "p",
            "admin",
            crate::runs::Trigger::Schedule,
            Some(at),
            at,
            false,
        );
        let key = a.enqueue(1, at, &run).unwrap();
        assert_eq!(b.task_activity("nightly").unwrap(), Some((false, true)), "queued, on any host");
        run.status = crate::runs::RunStatus::Running;
        assert!(a.start_run(&key, &run).unwrap());
        assert_eq!(b.task_activity("nightly").unwrap(), Some((true, false)), "running, on any host");
        assert_eq!(
            b.task_activities(&["weekly", "nightly"]).unwrap(),
            Some(vec![(false, false), (true, false)]),
            "asked together, in the order asked"
        );
        let held = |host: &PgStore| {
            let id = host.host_id().unwrap().to_string();
            b.hosts().unwrap().into_iter().find(|h| h.id == id).unwrap().runs_held
        };
        assert_eq!((held(&a), held(&b)), (1, 0));
        assert_eq!(a.renew_leases(&[run.id]).unwrap(), Vec::<u64>::new(), "A still holds its lease");
        // A file A's run picked up is A's while the run holds its lease.
        let file = "sis\u{1f}IC_Roster_1.csv";
        assert!(a.claim_file(file, run.id).unwrap());
        assert!(a.claim_file(file, run.id).unwrap(), "a run may claim its file again");
        assert!(!b.claim_file(file, run.id + 1).unwrap(), "another run may not");
        assert_eq!(b.renew_leases(&[run.id]).unwrap(), [run.id], "B never held it");
        // A stops renewing: once the lease lapses, one host takes the run
        // over, and A learns it lost it.
        let mut taken = Vec::new();
        eventually("the lease lapsing", || {
            taken.extend(b.take_lapsed_leases().unwrap());
            !taken.is_empty()
        });
        assert_eq!(taken, [run.id]);
        assert_eq!(a.take_lapsed_leases().unwrap(), Vec::<u64>::new(), "a lapsed lease is taken once");
        assert_eq!(a.renew_leases(&[run.id]).unwrap(), [run.id], "A learns it lost the run");
        // B holds the lease until it settles the run, in one step with
        // the run queued again; A cannot settle it any more.
        run.status = crate::runs::RunStatus::Interrupted;
        run.finished_at = Some(at);
        let again = Run::queued(
            a.new_run_id().unwrap(),
            "nightly",
            "p",
            "admin",
            crate::runs::Trigger::Schedule,
            Some(at),
            at,
            false,
        );
        assert!(!a.settle_lapsed(&run, Some((1, at, &again))).unwrap(), "only the host holding the lease settles");
        assert!(!b.claim_file(file, run.id + 1).unwrap(), "the file stays the run's until it is settled");
        assert!(b.settle_lapsed(&run, Some((1, at, &again))).unwrap());
        assert!(!b.settle_lapsed(&run, None).unwrap(), "a run is settled once");
        assert_eq!(b.run(run.id).unwrap().map(|r| r.status), Some(crate::runs::RunStatus::Interrupted));
        assert_eq!(a.queued().unwrap().iter().map(|(_, id)| *id).collect::<Vec<_>>(), [again.id], "queued again");
        assert!(b.claim_file(file, run.id + 1).unwrap(), "the file is free once the run's lease is gone");
        // One leader per chore, until its term lapses.
        assert!(a.lead("retention").unwrap());
        assert!(!b.lead("retention").unwrap());
        assert!(a.lead("retention").unwrap(), "the leader renews its term");
        eventually("B taking the chore over", || b.lead("retention").unwrap());
        assert!(!a.lead("retention").unwrap());
        // An outbox entry goes to the first host that claims it.
        let mail = OutboxEntry::new(
            run.id,
            "nightly",
            crate::notify::MailKind::Notification,
            "a@district.test".into(),
            "s".into(),
            "b".into(),
            "k",
            at,
        );
        let oid = a.next_sequence("outbox").unwrap();
        a.finish_run(&run, at, &Finish { state: &[], ledger: &[], outbox: &[(oid, at, mail.clone())], messages: &[] })
            .unwrap();
        assert_eq!(b.hosts().unwrap().iter().map(|h| h.runs_held).sum::<u64>(), 0, "a finished run holds no lease");
        assert_eq!(a.outbox_due(at, 10).unwrap().len(), 1);
        assert_eq!(b.outbox_due(at, 10).unwrap(), vec![], "claimed by A");
        a.update_outbox(oid, &mail, at, Some(at)).unwrap();
        assert_eq!(b.outbox_due(at, 10).unwrap().len(), 1, "written back, it is anyone's again");
        // A run A's fire queues wakes B. Fired again with a new due time
        // each try until B hears one: B listens from some moment after
        // this asks it to.
        let woken = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let heard = woken.clone();
        b.on_new_work(Box::new(move || _ = heard.fetch_add(1, std::sync::atomic::Ordering::SeqCst)));
        let mut task = crate::tasks::Task::by_hand(
            "woken".into(),
            crate::tasks::TaskKind::Notifier,
            "p",
            Record::new(),
            "admin",
            at,
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        for due in (1..).map(|s| at + chrono::Duration::seconds(s)) {
            if woken.load(std::sync::atomic::Ordering::SeqCst) > 0 {
                break;
            }
            assert!(Instant::now() < deadline, "no fire of A's woke B within 30 s");
            task.next_fire = Some(due);
            a.put_task(&task, None, task.next_fire).unwrap();
            let fired = run.clone();
            let next = Some(due + chrono::Duration::days(1));
            let fire =
                Firing { task: &task, due, next, queued: Some((1, &Run { id: a.new_run_id().unwrap(), ..fired })) };
            assert_eq!(a.fire_all(&[fire]).unwrap(), [true]);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn a_fire_skips_a_task_another_host_holds_instead_of_waiting_for_it() {
        let cluster = cluster::Postgres::start();
        let dir = tempfile::tempdir().unwrap();
        let config = config(&cluster, "held");
        let a = migrated(&config, dir.path());
        let b = std::sync::Arc::new(PgStore::open(&config, dir.path()).unwrap());
        let at = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let tasks: Vec<Task> = ["held", "free"]
            .into_iter()
            .map(|name| {
                let mut task =
                    Task::by_hand(name.into(), crate::tasks::TaskKind::Notifier, "p", Record::new(), "admin", at);
                task.next_fire = Some(at);
                a.put_task(&task, None, task.next_fire).unwrap();
                task
            })
            .collect();
        // A holds one task's row while B fires both. Waiting for it, two
        // hosts taking the same rows in different orders could deadlock.
        let answered = a
            .transaction("tasks", async |tx| {
                rows_of(tx, "tasks", "SELECT name FROM tasks WHERE name = 'held' FOR UPDATE", &[]).await?;
                let (done_tx, done_rx) = std::sync::mpsc::channel();
                let (b, tasks) = (b.clone(), tasks.clone());
                std::thread::spawn(move || {
                    let fires: Vec<Firing<'_>> =
                        tasks.iter().map(|task| Firing { task, due: at, next: None, queued: None }).collect();
                    let _ = done_tx.send(b.fire_all(&fires).map_err(|e| e.to_string()));
                });
                // Ended either way, so that B finishes.
                Ok(done_rx.recv_timeout(Duration::from_secs(10)).ok())
            })
            .unwrap();
        assert_eq!(answered, Some(Ok(vec![false, true])), "B fires the free task at once and skips the held one");
        assert_eq!(b.due_tasks(at, 10).unwrap(), vec![(at, "held".to_string())], "the held task is still due");
    }

    #[test]
    fn the_postgres_store_keeps_the_storage_contract() {
        let cluster = cluster::Postgres::start();
        let config = config(&cluster, "contract");
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(PgStore::open(&config, dir.path()), Err(Error::Unmigrated { found: 0, .. })));
        assert_eq!(PgStore::migrate(&config, dir.path()).unwrap(), (0, latest()));
        assert_eq!(
            PgStore::migrate(&config, dir.path()).unwrap(),
            (latest(), latest()),
            "a second migrate does nothing"
        );
        let store = PgStore::open(&config, dir.path()).unwrap();
        crate::store::contract::all(&store);
    }
}
