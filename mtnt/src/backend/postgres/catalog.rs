//! What a tenant's schema holds, read from PostgreSQL's catalog in one query for many
//! schemas: the dialect of `drift` on both PostgreSQL models.

use std::collections::HashMap;

use sqlx::postgres::PgConnection;
use sqlx::Row;

use crate::backend::{strip_qualifier, ObjectKind, SchemaObject};
use crate::Result;

/// Every object of the schemas `$1` (a `text[]`): `(schema, kind, name, definition)`.
/// Definitions come from the catalog's own deparsers (`format_type`, `pg_get_indexdef`,
/// `pg_get_constraintdef` ...), which qualify names with the schema when it is not on
/// the search path; [`describe`] takes the tenant's schema out of them. mtnt's own
/// tables (`mtnt_*`) are left out, and so is what an extension owns.
const CATALOG_SQL: &str = r#"
WITH rel AS (
    SELECT c.oid, c.relname, c.relkind, n.nspname
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = ANY($1) AND c.relname NOT LIKE 'mtnt\_%'
      AND c.relkind IN ('r', 'p', 'f', 'v', 'm', 'S')
      AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d
                      WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid
                        AND d.deptype = 'e')
)
SELECT nspname, 'schema', nspname, '' FROM pg_catalog.pg_namespace WHERE nspname = ANY($1)
UNION ALL
SELECT nspname, 'table', relname, '' FROM rel WHERE relkind IN ('r', 'p', 'f')
UNION ALL
SELECT nspname, 'view', relname,
       CASE relkind WHEN 'm' THEN 'materialized ' ELSE '' END || pg_catalog.pg_get_viewdef(oid)
FROM rel WHERE relkind IN ('v', 'm')
UNION ALL
SELECT rel.nspname, 'sequence', rel.relname,
       s.seqtypid::regtype::text || ' increment ' || s.seqincrement
FROM rel JOIN pg_catalog.pg_sequence s ON s.seqrelid = rel.oid
UNION ALL
SELECT rel.nspname, 'column', rel.relname || '.' || a.attname,
       pg_catalog.format_type(a.atttypid, a.atttypmod)
       || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
       || COALESCE(' default ' || pg_catalog.pg_get_expr(ad.adbin, ad.adrelid), '')
       || CASE a.attidentity WHEN 'a' THEN ' identity always' WHEN 'd' THEN ' identity'
                             ELSE '' END
       || CASE a.attgenerated WHEN 's' THEN ' generated' ELSE '' END
FROM rel JOIN pg_catalog.pg_attribute a ON a.attrelid = rel.oid
LEFT JOIN pg_catalog.pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
WHERE rel.relkind IN ('r', 'p', 'f', 'v', 'm') AND a.attnum > 0 AND NOT a.attisdropped
UNION ALL
SELECT rel.nspname, 'index', ic.relname, pg_catalog.pg_get_indexdef(i.indexrelid)
FROM rel JOIN pg_catalog.pg_index i ON i.indrelid = rel.oid
JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
UNION ALL
SELECT rel.nspname, 'constraint', rel.relname || '.' || co.conname,
       pg_catalog.pg_get_constraintdef(co.oid)
FROM rel JOIN pg_catalog.pg_constraint co ON co.conrelid = rel.oid
UNION ALL
SELECT rel.nspname, 'trigger', rel.relname || '.' || t.tgname, pg_catalog.pg_get_triggerdef(t.oid)
FROM rel JOIN pg_catalog.pg_trigger t ON t.tgrelid = rel.oid
WHERE NOT t.tgisinternal
UNION ALL
SELECT n.nspname, 'function',
       p.proname || '(' || pg_catalog.pg_get_function_identity_arguments(p.oid) || ')',
       pg_catalog.pg_get_functiondef(p.oid)
FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = ANY($1) AND p.prokind IN ('f', 'p') AND p.proname NOT LIKE 'mtnt\_%'
  AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d
                  WHERE d.classid = 'pg_catalog.pg_proc'::regclass AND d.objid = p.oid
                    AND d.deptype = 'e')
"#;

/// The objects of each schema of `schemas`, in their order, in one query; `None` for a
/// schema that does not exist.
pub(super) async fn describe(
    conn: &mut PgConnection,
    schemas: &[&str],
) -> Result<Vec<Option<Vec<SchemaObject>>>> {
    let rows = sqlx::query(CATALOG_SQL)
        .bind(schemas)
        .fetch_all(&mut *conn)
        .await?;
    let mut by_schema: HashMap<&str, Vec<SchemaObject>> = HashMap::new();
    for row in &rows {
        let schema: String = row.try_get(0)?;
        let Some(&key) = schemas.iter().find(|s| **s == schema.as_str()) else {
            continue;
        };
        let kind = match row.try_get::<&str, _>(1)? {
            "schema" => {
                by_schema.entry(key).or_default();
                continue;
            }
            "table" => ObjectKind::Table,
            "view" => ObjectKind::View,
            "sequence" => ObjectKind::Sequence,
            "column" => ObjectKind::Column,
            "index" => ObjectKind::Index,
            "constraint" => ObjectKind::Constraint,
            "trigger" => ObjectKind::Trigger,
            _ => ObjectKind::Function,
        };
        let definition = strip_qualifier(row.try_get::<&str, _>(3)?, key);
        by_schema.entry(key).or_default().push(SchemaObject::new(
            kind,
            // A function's name has its argument types, which may be the schema's own.
            strip_qualifier(row.try_get::<&str, _>(2)?, key),
            definition.split_whitespace().collect::<Vec<_>>().join(" "),
        ));
    }
    Ok(schemas
        .iter()
        .map(|s| {
            let mut objects = by_schema.remove(s)?;
            objects.sort();
            Some(objects)
        })
        .collect())
}
