//! A tenant's storage on SQLite: its file (with the WAL companions) and its lock file,
//! made and removed outside any transaction (the protocol compensates a failed create).

use std::path::{Path, PathBuf};

use sqlx::sqlite::SqliteJournalMode;
use sqlx::{Connection as _, SqliteConnection};

use super::connection::{applied_from_row, TRACKING_COLUMNS};
use super::{file_options, in_file, io_error, SqliteBackend, TEMPLATE_STORAGE, TRACKING_DDL};
use crate::ctx::exec_sqlite;
use crate::{AppliedMigration, Error, Result, Tenant, TenantName};

impl SqliteBackend {
    /// Creates a tenant's file in WAL mode with an empty tracking table; the file is
    /// claimed with `create_new`, so a stray file of the same name is never touched.
    pub(super) async fn create_file(&self, tenant: &Tenant) -> Result<()> {
        let path = self.path_of(tenant)?;
        self.claim_file(tenant, &path)?;
        let options = file_options(&path).journal_mode(SqliteJournalMode::Wal);
        let result = async {
            let mut conn = SqliteConnection::connect_with(&options).await?;
            let made = exec_sqlite(&mut conn, TRACKING_DDL).await;
            // Closed before the file may be deleted, so that no late checkpoint writes it.
            let _ = conn.close().await;
            made
        }
        .await;
        if let Err(error) = result {
            let _ = remove_db_files(&path);
            return Err(error.into());
        }
        Ok(())
    }

    /// Creates a tenant's file as a copy of the template's: the name is claimed with
    /// `create_new` as in [`SqliteBackend::create_file`], the copy written beside it under
    /// a name no tenant file has (`.db-copy`), synced, then renamed over the claim, so
    /// that the tenant's file is never seen half-copied.
    pub(super) async fn copy_file(&self, template: &Tenant, tenant: &Tenant) -> Result<()> {
        let from = self.path_of(template)?;
        let to = self.path_of(tenant)?;
        let wal = from.with_extension("db-wal");
        if std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0) {
            // Left by a writer that did not close: what it committed is in the WAL alone.
            let mut conn = SqliteConnection::connect_with(&file_options(&from))
                .await
                .map_err(|e| in_file(&from, e.into()))?;
            let checkpoint = exec_sqlite(&mut conn, "PRAGMA wal_checkpoint(TRUNCATE)").await;
            let _ = conn.close().await;
            checkpoint.map_err(|e| in_file(&from, e.into()))?;
        }
        self.claim_file(tenant, &to)?;
        let copy = to.with_extension("db-copy");
        let copied = (|| {
            std::fs::copy(&from, &copy)?;
            std::fs::File::open(&copy)?.sync_all()?;
            std::fs::rename(&copy, &to)?;
            // The rename itself lasts once the directory is synced.
            std::fs::File::open(&self.dir)?.sync_all()
        })();
        if let Err(e) = copied {
            let _ = remove(copy);
            let _ = remove_db_files(&to);
            return Err(io_error(
                "cannot copy the template into the tenant file",
                &to,
            )(e));
        }
        Ok(())
    }

    /// Claims `path` for `tenant` with an empty file, made with `create_new` so that a
    /// stray file of the same name is never touched.
    fn claim_file(&self, tenant: &Tenant, path: &Path) -> Result<()> {
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
        {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(Error::StorageExists {
                tenant: tenant.name.clone(),
                storage: tenant.storage.clone(),
            }),
            Err(e) => Err(io_error("cannot create the tenant file", path)(e)),
        }
    }

    /// The tracking rows of `tenant` that the fleet run `run_id` wrote last: none where
    /// its file, its tracking table or the table's `run_id` column is missing.
    pub(super) async fn run_rows_in(
        &self,
        tenant: &Tenant,
        run_id: &str,
    ) -> Result<Vec<(TenantName, AppliedMigration)>> {
        let path = self.path_of(tenant)?;
        if !path.is_file() {
            return Ok(Vec::new());
        }
        let named = |e: sqlx::Error| in_file(&path, e.into());
        let mut conn = SqliteConnection::connect_with(&file_options(&path).read_only(true))
            .await
            .map_err(named)?;
        let result = async {
            let columns: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pragma_table_info('mtnt_migrations') WHERE name = 'run_id'",
            )
            .fetch_one(&mut conn)
            .await?;
            if columns == 0 {
                return Ok(Vec::new());
            }
            sqlx::query(&format!(
                "SELECT {TRACKING_COLUMNS} FROM mtnt_migrations WHERE run_id = ?1 ORDER BY migration_order"
            ))
            .bind(run_id)
            .fetch_all(&mut conn)
            .await
        }
        .await;
        let _ = conn.close().await;
        result
            .map_err(named)?
            .iter()
            .map(|row| Ok((tenant.name.clone(), applied_from_row(row)?)))
            .collect()
    }

    /// The size in bytes of a tenant's file with its write-ahead log; `None` without a
    /// file.
    pub(super) fn file_size(&self, tenant: &Tenant) -> Result<Option<u64>> {
        let path = self.path_of(tenant)?;
        let Ok(file) = std::fs::metadata(&path) else {
            return Ok(None);
        };
        let wal = std::fs::metadata(path.with_extension("db-wal")).map_or(0, |m| m.len());
        Ok(Some(file.len() + wal))
    }

    /// Removes a tenant's file, its companions and its lock file, where they exist. The
    /// template's lock file stays: its holder drops and rebuilds the template under it.
    pub(super) fn remove_files(&self, tenant: &Tenant) -> Result<()> {
        let path = self.path_of(tenant)?;
        remove_db_files(&path)?;
        if tenant.storage == TEMPLATE_STORAGE {
            return Ok(());
        }
        // The lock file last: whoever holds its lock now (the caller) keeps it, on the
        // removed file, until it lets go.
        remove(path.with_extension("lock"))
    }

    /// The stems of `<stem>.db` files that match the `LIKE` pattern and are not
    /// registered, by name; the control file and other `mtnt*` files are mtnt's own.
    pub(super) async fn unregistered_files(&self, like: &str) -> Result<Vec<String>> {
        let listing = "cannot list the tenant directory";
        let entries = std::fs::read_dir(&self.dir).map_err(io_error(listing, &self.dir))?;
        let mut stems = Vec::new();
        for entry in entries {
            let path = entry.map_err(io_error(listing, &self.dir))?.path();
            if path.extension() != Some("db".as_ref()) || !path.is_file() {
                continue;
            }
            match path.file_stem().and_then(|s| s.to_str()) {
                Some(stem) if !stem.starts_with("mtnt") => stems.push(stem.to_owned()),
                _ => {}
            }
        }
        let stems = serde_json::to_string(&stems).map_err(Error::other)?;
        let names = sqlx::query_scalar(
            "SELECT value FROM json_each(?1) WHERE value GLOB ?2 \
             AND value NOT IN (SELECT name FROM mtnt_tenants) \
             AND value NOT IN (SELECT schema_name FROM mtnt_tenants) ORDER BY value",
        )
        .bind(stems)
        .bind(like_to_glob(like))
        .fetch_all(&self.control)
        .await?;
        Ok(names)
    }
}

/// Removes a file if it exists.
fn remove(path: PathBuf) -> Result<()> {
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(io_error("cannot delete", &path)(e))
        }
        _ => Ok(()),
    }
}

/// Removes a database file with its WAL, shared-memory and rollback-journal companions;
/// the companions first, so that a stale WAL never meets a new file of the same name. A
/// template copy that a crash left half-written (`-copy`) goes too.
fn remove_db_files(path: &Path) -> Result<()> {
    for suffix in ["-wal", "-shm", "-journal", "-copy", ""] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        remove(PathBuf::from(file))?;
    }
    Ok(())
}

/// An SQL `LIKE` pattern (`%`, `_`, `\` escapes) as the case-sensitive `GLOB` pattern
/// that matches the same names.
fn like_to_glob(like: &str) -> String {
    let mut glob = String::with_capacity(like.len());
    let mut chars = like.chars();
    while let Some(c) = chars.next() {
        let escaped = c == '\\';
        match if escaped {
            chars.next().unwrap_or(c)
        } else {
            c
        } {
            '%' if !escaped => glob.push('*'),
            '_' if !escaped => glob.push('?'),
            c @ ('*' | '?' | '[') => glob.push_str(&format!("[{c}]")),
            c => glob.push(c),
        }
    }
    glob
}

#[cfg(test)]
mod tests {
    use super::like_to_glob;

    #[test]
    fn like_patterns_become_globs() {
        assert_eq!(like_to_glob("%"), "*");
        assert_eq!(like_to_glob("a_me%"), "a?me*");
        assert_eq!(like_to_glob("t\\_%"), "t_*");
        assert_eq!(like_to_glob("t\\%x"), "t%x");
        assert_eq!(like_to_glob("a*b?c[d"), "a[*]b[?]c[[]d");
        assert_eq!(like_to_glob("x\\"), "x\\");
    }
}
