//! Where a bench keeps its stores: sled in a temporary folder, or, with
//! `SCHOOLBELL_BENCH_STORE=postgres`, schemas of one throwaway PostgreSQL
//! cluster (Debian's, on a Unix socket, as the tests start it).

#![allow(dead_code)] // Each bench uses what it needs.

#[path = "../../tests/support/postgres.rs"]
#[allow(dead_code, unreachable_pub)]
mod postgres;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use schoolbell::store::{Backend, BackendKind, PgStore, Store, StoreConfig};

pub(crate) struct Stores {
    cluster: Option<postgres::Postgres>,
    made: AtomicUsize,
}

impl Stores {
    pub(crate) fn new() -> Stores {
        let on_postgres = std::env::var("SCHOOLBELL_BENCH_STORE").as_deref() == Ok("postgres");
        Stores { cluster: on_postgres.then(postgres::Postgres::start), made: Default::default() }
    }

    pub(crate) fn on_postgres(&self) -> bool {
        self.cluster.is_some()
    }

    /// The backend's name, for what a bench prints.
    pub(crate) fn name(&self) -> &'static str {
        if self.on_postgres() { "PostgreSQL" } else { "sled" }
    }

    /// A fresh store for `dir`, and the schema it is in (PostgreSQL).
    pub(crate) fn fresh(&self, dir: &Path) -> (Arc<dyn Backend>, Option<String>) {
        let n = self.made.fetch_add(1, Ordering::SeqCst);
        match &self.cluster {
            None => (Store::open_backend(&dir.join("store")).unwrap(), None),
            Some(_) => {
                let schema = format!("bench{n}");
                let config = self.config(&schema);
                PgStore::migrate(&config, dir).unwrap();
                (self.open(dir, &schema), Some(schema))
            }
        }
    }

    /// The store `fresh` made for `dir` opened again, as a restarted
    /// service would.
    pub(crate) fn reopen(&self, dir: &Path, schema: Option<&str>) -> Arc<dyn Backend> {
        match schema {
            None => Store::open_backend(&dir.join("store")).unwrap(),
            Some(schema) => self.open(dir, schema),
        }
    }

    /// Another host's handle on a PostgreSQL schema.
    pub(crate) fn open(&self, dir: &Path, schema: &str) -> Arc<dyn Backend> {
        Arc::new(PgStore::open(&self.config(schema), dir).unwrap())
    }

    fn config(&self, schema: &str) -> StoreConfig {
        let cluster = self.cluster.as_ref().expect("a PostgreSQL schema needs the cluster");
        StoreConfig {
            backend: BackendKind::Postgres,
            url: cluster.url(),
            schema: schema.into(),
            pool_size: 32,
            ..StoreConfig::default()
        }
    }
}
