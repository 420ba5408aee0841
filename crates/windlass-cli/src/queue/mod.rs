//! The job queue from the command line: `queues`, `jobs`, `dlq` against a database URL, and
//! `bench queue` (the standard W1-W4 workloads).
//!
//! A URL names the backend: `sqlite:PATH` (or `sqlite://PATH`) for an SQLite file,
//! `postgres://…` / `postgresql://…` for PostgreSQL (its schema from `--schema`).

pub mod admin;
pub mod bench;
pub mod limits;

use anyhow::{Context as _, bail};
use windlass_postgres::PostgresStore;
use windlass_sqlite::SqliteStore;

/// Where the jobs are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// An SQLite file.
    Sqlite(std::path::PathBuf),
    /// A PostgreSQL URL.
    Postgres(String),
}

impl Database {
    /// Parses `sqlite:PATH`, `sqlite://PATH`, `postgres://…` or `postgresql://…`.
    pub fn parse(url: &str) -> anyhow::Result<Database> {
        if let Some(rest) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            if rest.is_empty() {
                bail!("`{url}`: an SQLite URL needs a file path, e.g. sqlite:jobs.db");
            }
            return Ok(Database::Sqlite(rest.into()));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Database::Postgres(url.to_string()));
        }
        bail!("`{url}` is not a database URL: use sqlite:PATH or postgres://user@host:port/db")
    }
}

/// An open store of either backend; the commands are generic over [`windlass_queue::Store`],
/// and this picks the instance.
pub enum AnyStore {
    /// SQLite.
    Sqlite(SqliteStore),
    /// PostgreSQL.
    Postgres(PostgresStore),
}

impl AnyStore {
    /// Opens the store at `db` (creating its schema if needed).
    pub async fn open(db: &Database, schema: &str) -> anyhow::Result<AnyStore> {
        Ok(match db {
            Database::Sqlite(path) => AnyStore::Sqlite(
                SqliteStore::open(path)
                    .await
                    .with_context(|| format!("opening {}", path.display()))?,
            ),
            Database::Postgres(url) => AnyStore::Postgres(
                PostgresStore::builder(url.clone())
                    .schema(schema)
                    .open()
                    .await
                    .context("opening the PostgreSQL store")?,
            ),
        })
    }
}

/// `windlass migrate`: applies the store's schema migrations (opening it does) and says
/// what is now in place, for deployments whose workers open their store with migrations
/// off (`PostgresStoreBuilder::migrate(false)`).
pub async fn migrate(db: &Database, schema: &str) -> anyhow::Result<String> {
    let store = AnyStore::open(db, schema).await?;
    Ok(match (db, store) {
        (Database::Sqlite(path), AnyStore::Sqlite(_)) => {
            format!("the job store in {} is up to date", path.display())
        }
        (_, AnyStore::Postgres(s)) => {
            format!(
                "the job store's PostgreSQL schema `{}` is up to date",
                s.schema()
            )
        }
        (Database::Postgres(_), AnyStore::Sqlite(_)) => {
            bail!("a PostgreSQL URL opened an SQLite store")
        }
    })
}

/// Runs `$body` with `$q` bound to a `Queue` over whichever store `$store` holds.
#[macro_export]
macro_rules! with_queue {
    ($store:expr, |$q:ident| $body:expr) => {
        match $store {
            $crate::queue::AnyStore::Sqlite(s) => {
                let $q = windlass_queue::Queue::new(s);
                $body
            }
            $crate::queue::AnyStore::Postgres(s) => {
                let $q = windlass_queue::Queue::new(s);
                $body
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// After `windlass migrate`, a worker's store opened with migrations off opens; before
    /// it, it is refused. (PostgreSQL: needs `DATABASE_URL`.)
    #[tokio::test]
    async fn migrate_applies_what_a_store_without_migrations_needs() {
        let dir = windlass_test_support::ScratchDir::new("cli-migrate");
        let path = dir.file("jobs.db");
        let said = migrate(&Database::Sqlite(path.clone()), "windlass")
            .await
            .unwrap();
        assert!(said.contains("up to date"), "{said}");
        assert!(path.exists());
        let Some(url) = std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty()) else {
            return;
        };
        let schema = format!(
            "wl_cli_migrate_{}_{:x}",
            std::process::id(),
            fastrand::u32(..)
        );
        let worker = || {
            PostgresStore::builder(url.clone())
                .schema(schema.clone())
                .migrate(false)
                .pool_size(1)
                .open()
        };
        assert!(worker().await.is_err());
        let said = migrate(&Database::Postgres(url.clone()), &schema)
            .await
            .unwrap();
        assert!(
            said.contains(&format!("`{schema}` is up to date")),
            "{said}"
        );
        worker().await.unwrap();
    }

    #[test]
    fn urls_name_their_backend_or_say_what_is_wrong() {
        assert_eq!(
            Database::parse("sqlite:jobs.db").unwrap(),
            Database::Sqlite("jobs.db".into())
        );
        assert_eq!(
            Database::parse("sqlite:///tmp/j.db").unwrap(),
            Database::Sqlite("/tmp/j.db".into())
        );
        assert!(matches!(
            Database::parse("postgresql://u@h/db").unwrap(),
            Database::Postgres(_)
        ));
        let e = Database::parse("mysql://x").unwrap_err().to_string();
        assert!(e.contains("not a database URL"), "{e}");
        let e = Database::parse("sqlite:").unwrap_err().to_string();
        assert!(e.contains("needs a file path"), "{e}");
    }
}
