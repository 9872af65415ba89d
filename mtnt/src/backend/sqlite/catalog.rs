//! What a tenant file holds, read from its `sqlite_schema` and table pragmas: the
//! dialect of `drift` on SQLite.

use sqlx::{Connection as _, Row, SqliteConnection};

use super::{file_options, in_file, SqliteBackend};
use crate::backend::{ObjectKind, SchemaObject};
use crate::{Error, Result, Tenant};

/// Tables, indexes, views and triggers, mtnt's own and SQLite's left out. A table's
/// columns and foreign keys are objects of their own (below): its `CREATE TABLE` text
/// changes with every `ALTER TABLE`, so it would tell nothing the columns do not.
const OBJECTS_SQL: &str = r"
SELECT type, name, tbl_name, COALESCE(sql, '') AS sql FROM sqlite_schema
WHERE name NOT LIKE 'mtnt\_%' ESCAPE '\' AND name NOT LIKE 'sqlite\_%' ESCAPE '\'";

const COLUMNS_SQL: &str = r#"
SELECT m.name AS tbl, p.name AS name,
       p.type || CASE WHEN p."notnull" THEN ' not null' ELSE '' END
              || COALESCE(' default ' || p.dflt_value, '')
              || CASE WHEN p.pk > 0 THEN ' primary key ' || p.pk ELSE '' END AS def
FROM sqlite_schema m JOIN pragma_table_info(m.name) p
WHERE m.type IN ('table', 'view')
  AND m.name NOT LIKE 'mtnt\_%' ESCAPE '\' AND m.name NOT LIKE 'sqlite\_%' ESCAPE '\'"#;

const FOREIGN_KEYS_SQL: &str = r#"
SELECT m.name AS tbl, p."from" AS name,
       'references ' || p."table" || '(' || COALESCE(p."to", '') || ') on update ' || p.on_update
       || ' on delete ' || p.on_delete AS def
FROM sqlite_schema m JOIN pragma_foreign_key_list(m.name) p
WHERE m.type = 'table'
  AND m.name NOT LIKE 'mtnt\_%' ESCAPE '\' AND m.name NOT LIKE 'sqlite\_%' ESCAPE '\'"#;

impl SqliteBackend {
    /// The objects of one tenant file, opened read-only.
    pub(super) async fn describe_file(&self, tenant: &Tenant) -> Result<Vec<SchemaObject>> {
        let path = self.path_of(tenant)?;
        if !path.exists() {
            return Err(Error::storage_missing(tenant));
        }
        let mut conn = SqliteConnection::connect_with(&file_options(&path).read_only(true))
            .await
            .map_err(|e| in_file(&path, e.into()))?;
        let described = read(&mut conn).await.map_err(|e| in_file(&path, e));
        let _ = conn.close().await;
        let mut objects = described?;
        objects.sort();
        Ok(objects)
    }
}

async fn read(conn: &mut SqliteConnection) -> Result<Vec<SchemaObject>> {
    let mut objects = Vec::new();
    for row in sqlx::query(OBJECTS_SQL).fetch_all(&mut *conn).await? {
        let name: String = row.try_get("name")?;
        let sql: String = row.try_get("sql")?;
        let sql = sql.split_whitespace().collect::<Vec<_>>().join(" ");
        let object = match row.try_get::<&str, _>("type")? {
            "table" => SchemaObject::new(ObjectKind::Table, name, ""),
            "index" => SchemaObject::new(ObjectKind::Index, name, sql),
            "view" => SchemaObject::new(ObjectKind::View, name, sql),
            "trigger" => {
                let table: String = row.try_get("tbl_name")?;
                SchemaObject::new(ObjectKind::Trigger, format!("{table}.{name}"), sql)
            }
            _ => continue,
        };
        objects.push(object);
    }
    for (kind, sql) in [
        (ObjectKind::Column, COLUMNS_SQL),
        (ObjectKind::Constraint, FOREIGN_KEYS_SQL),
    ] {
        for row in sqlx::query(sql).fetch_all(&mut *conn).await? {
            let table: String = row.try_get("tbl")?;
            let name: String = row.try_get("name")?;
            let def: String = row.try_get("def")?;
            objects.push(SchemaObject::new(kind, format!("{table}.{name}"), def));
        }
    }
    Ok(objects)
}
