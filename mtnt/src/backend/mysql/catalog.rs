//! What a tenant's database holds, read from `information_schema` for many databases at
//! once on one connection: the dialect of `drift` on MySQL and MariaDB.

use std::collections::HashMap;

use super::dialect::{opt_text, text, text_literal};
use super::MySqlBackend;
use crate::backend::{strip_qualifier, ObjectKind, SchemaObject};
use crate::{Error, Result, Tenant};

/// Databases one round of queries describes.
const PAGE: usize = 200;

/// `(db, name, definition)` of each kind of object in the databases `{dbs}` (a list of
/// constants), mtnt's own tables left out. One query per kind: the columns of
/// `information_schema` do not share a collation, so a UNION of them can fail.
const QUERIES: [(ObjectKind, &str); 7] = [
    (
        ObjectKind::Table,
        "SELECT TABLE_SCHEMA AS db, TABLE_NAME AS name, '' AS def FROM information_schema.TABLES
         WHERE TABLE_SCHEMA IN ({dbs}) AND TABLE_TYPE = 'BASE TABLE' AND TABLE_NAME NOT LIKE 'mtnt\\_%'",
    ),
    (
        ObjectKind::View,
        "SELECT TABLE_SCHEMA AS db, TABLE_NAME AS name, VIEW_DEFINITION AS def
         FROM information_schema.VIEWS WHERE TABLE_SCHEMA IN ({dbs})",
    ),
    (
        ObjectKind::Column,
        "SELECT TABLE_SCHEMA AS db, CONCAT(TABLE_NAME, '.', COLUMN_NAME) AS name,
                CONCAT(COLUMN_TYPE, IF(IS_NULLABLE = 'NO', ' not null', ''),
                       IF(COLUMN_DEFAULT IS NULL OR COLUMN_DEFAULT = 'NULL', '',
                          CONCAT(' default ', COLUMN_DEFAULT)),
                       IF(EXTRA <> '', CONCAT(' ', EXTRA), '')) AS def
         FROM information_schema.COLUMNS
         WHERE TABLE_SCHEMA IN ({dbs}) AND TABLE_NAME NOT LIKE 'mtnt\\_%'",
    ),
    (
        ObjectKind::Index,
        "SELECT TABLE_SCHEMA AS db, CONCAT(TABLE_NAME, '.', INDEX_NAME) AS name,
                CONCAT(IF(NON_UNIQUE = 0, 'unique ', ''), INDEX_TYPE, ' (',
                       GROUP_CONCAT(COLUMN_NAME ORDER BY SEQ_IN_INDEX SEPARATOR ', '), ')') AS def
         FROM information_schema.STATISTICS
         WHERE TABLE_SCHEMA IN ({dbs}) AND TABLE_NAME NOT LIKE 'mtnt\\_%'
         GROUP BY TABLE_SCHEMA, TABLE_NAME, INDEX_NAME, NON_UNIQUE, INDEX_TYPE",
    ),
    (
        // Primary and unique keys are indexes above; these are the others.
        ObjectKind::Constraint,
        "SELECT tc.CONSTRAINT_SCHEMA AS db, CONCAT(tc.TABLE_NAME, '.', tc.CONSTRAINT_NAME) AS name,
                CONCAT(tc.CONSTRAINT_TYPE,
                       IFNULL(CONCAT(' references ', rc.REFERENCED_TABLE_NAME, ' on update ',
                                     rc.UPDATE_RULE, ' on delete ', rc.DELETE_RULE), ''),
                       IFNULL(CONCAT(' ', cc.CHECK_CLAUSE), '')) AS def
         FROM information_schema.TABLE_CONSTRAINTS tc
         LEFT JOIN information_schema.REFERENTIAL_CONSTRAINTS rc
           ON rc.CONSTRAINT_SCHEMA = tc.CONSTRAINT_SCHEMA AND rc.TABLE_NAME = tc.TABLE_NAME
          AND rc.CONSTRAINT_NAME = tc.CONSTRAINT_NAME
         LEFT JOIN information_schema.CHECK_CONSTRAINTS cc
           ON cc.CONSTRAINT_SCHEMA = tc.CONSTRAINT_SCHEMA AND cc.TABLE_NAME = tc.TABLE_NAME
          AND cc.CONSTRAINT_NAME = tc.CONSTRAINT_NAME
         WHERE tc.CONSTRAINT_SCHEMA IN ({dbs}) AND tc.CONSTRAINT_TYPE IN ('FOREIGN KEY', 'CHECK')
           AND tc.TABLE_NAME NOT LIKE 'mtnt\\_%'",
    ),
    (
        ObjectKind::Trigger,
        "SELECT TRIGGER_SCHEMA AS db, CONCAT(EVENT_OBJECT_TABLE, '.', TRIGGER_NAME) AS name,
                CONCAT(ACTION_TIMING, ' ', EVENT_MANIPULATION, ' ', ACTION_STATEMENT) AS def
         FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA IN ({dbs})",
    ),
    (
        ObjectKind::Function,
        "SELECT ROUTINE_SCHEMA AS db, ROUTINE_NAME AS name,
                CONCAT(ROUTINE_TYPE, ' ', IFNULL(ROUTINE_DEFINITION, '')) AS def
         FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA IN ({dbs})",
    ),
];

impl MySqlBackend {
    /// The objects of each tenant's database, in `tenants`' order.
    pub(super) async fn describe_databases(
        &self,
        tenants: &[Tenant],
    ) -> Result<Vec<Result<Vec<SchemaObject>>>> {
        let mut conn = self.pool().acquire().await?;
        let mut described = Vec::with_capacity(tenants.len());
        for page in tenants.chunks(PAGE) {
            let dbs: Vec<String> = page.iter().map(|t| text_literal(&t.storage)).collect();
            let dbs = dbs.join(", ");
            let mut by_db: HashMap<String, Vec<SchemaObject>> = HashMap::new();
            let exists = format!(
                "SELECT SCHEMA_NAME AS db FROM information_schema.SCHEMATA WHERE SCHEMA_NAME IN ({dbs})"
            );
            for row in sqlx::query(&exists).fetch_all(&mut *conn).await? {
                by_db.entry(text(&row, "db")?).or_default();
            }
            for (kind, sql) in QUERIES {
                let rows = sqlx::query(&sql.replace("{dbs}", &dbs))
                    .fetch_all(&mut *conn)
                    .await?;
                for row in &rows {
                    let db = text(row, "db")?;
                    let definition = opt_text(row, "def")?.unwrap_or_default();
                    let definition = strip_qualifier(&definition, &db);
                    let object = SchemaObject::new(
                        kind,
                        text(row, "name")?,
                        definition.split_whitespace().collect::<Vec<_>>().join(" "),
                    );
                    by_db.entry(db).or_default().push(object);
                }
            }
            described.extend(page.iter().map(|t| {
                let mut objects = by_db
                    .remove(&t.storage)
                    .ok_or_else(|| Error::storage_missing(t))?;
                objects.sort();
                Ok(objects)
            }));
        }
        Ok(described)
    }
}
