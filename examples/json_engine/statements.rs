//! The JSON engine's statement language, what [`mtnt::Ctx::execute`] sends it (see the
//! engine's module documentation for the statements).

use serde_json::{Map, Value};

use super::documents::Collections;

/// What went wrong in a statement; inside an [`mtnt::Error::Other`], which the engine's
/// `classify` looks into.
#[derive(Debug)]
pub enum JsonError {
    /// The statement is not one the language knows.
    Syntax {
        /// The statement.
        statement: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The collection does not exist.
    NoCollection(String),
    /// The collection exists already.
    CollectionExists(String),
    /// `FAIL "reason"`.
    Failed(String),
    /// `FAIL TRANSIENT "reason"`: a failure worth another try.
    Transient(String),
    /// Data was used outside a migration (no transaction, not in autocommit).
    NoMigration,
}

impl std::fmt::Display for JsonError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JsonError::Syntax { statement, reason } => {
                write!(f, "cannot run `{statement}`: {reason}")
            }
            JsonError::NoCollection(name) => write!(f, "collection {name} does not exist"),
            JsonError::CollectionExists(name) => write!(f, "collection {name} exists already"),
            JsonError::Failed(reason) => write!(f, "{reason}"),
            JsonError::Transient(reason) => write!(f, "{reason} (transient)"),
            JsonError::NoMigration => {
                f.write_str("the collections are only open while a migration runs")
            }
        }
    }
}

impl std::error::Error for JsonError {}

/// One statement.
#[derive(Clone, Debug, PartialEq)]
pub enum Statement {
    /// `CREATE COLLECTION [IF NOT EXISTS] name`
    CreateCollection { name: String, if_not_exists: bool },
    /// `DROP COLLECTION [IF EXISTS] name`
    DropCollection { name: String, if_exists: bool },
    /// `INSERT INTO name {json object}`
    Insert {
        collection: String,
        document: Map<String, Value>,
    },
    /// `ADD FIELD collection.field DEFAULT json`
    AddField {
        collection: String,
        field: String,
        default: Value,
    },
    /// `REMOVE FIELD collection.field`
    RemoveField { collection: String, field: String },
    /// `DELETE FROM collection WHERE field = json`
    Delete {
        collection: String,
        field: String,
        value: Value,
    },
    /// `FAIL [TRANSIENT] "reason"`
    Fail { reason: String, transient: bool },
}

/// Splits `text` into statements at `;` and line ends outside JSON strings, objects and
/// arrays (so that a JSON value may span lines); blank ones and `-- comments` are dropped.
fn split(text: &str) -> Vec<&str> {
    let (mut out, mut start, mut depth) = (Vec::new(), 0, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_string => escaped = true,
            '"' => in_string = !in_string,
            _ if in_string => {}
            '{' | '[' => depth += 1,
            '}' | ']' => depth = depth.saturating_sub(1),
            ';' | '\n' if depth == 0 => {
                out.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&text[start..]);
    out.into_iter()
        .map(str::trim)
        .filter(|s| !s.is_empty() && !s.starts_with("--"))
        .collect()
}

/// Parses every statement of `text`; one that does not parse fails them all before any
/// runs.
pub fn parse(text: &str) -> Result<Vec<Statement>, JsonError> {
    split(text)
        .into_iter()
        .map(|s| {
            parse_one(s).map_err(|reason| JsonError::Syntax {
                statement: s.to_owned(),
                reason,
            })
        })
        .collect()
}

/// `rest` after the keywords `words` (each followed by white space or the end).
fn keywords<'s>(rest: &'s str, words: &[&str]) -> Option<&'s str> {
    words.iter().try_fold(rest, |rest, word| {
        let tail = rest.strip_prefix(word)?;
        (tail.is_empty() || tail.starts_with(char::is_whitespace)).then(|| tail.trim_start())
    })
}

/// A name (`[A-Za-z_][A-Za-z0-9_]*`) at the start of `rest`, and what follows it.
fn name(rest: &str) -> Result<(String, &str), String> {
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(rest.len());
    let (name, tail) = rest.split_at(end);
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(format!("expected a name at `{rest}`"));
    }
    Ok((name.to_owned(), tail.trim_start()))
}

/// `collection.field` at the start of `rest`.
fn field(rest: &str) -> Result<(String, String, &str), String> {
    let (collection, tail) = name(rest)?;
    let tail = tail
        .strip_prefix('.')
        .ok_or_else(|| format!("expected `collection.field` at `{rest}`"))?;
    let (field, tail) = name(tail)?;
    Ok((collection, field, tail))
}

fn json(rest: &str) -> Result<Value, String> {
    serde_json::from_str(rest).map_err(|e| format!("`{rest}` is no JSON value: {e}"))
}

fn nothing_after(name: String, tail: &str) -> Result<String, String> {
    if tail.is_empty() {
        Ok(name)
    } else {
        Err(format!("unexpected `{tail}`"))
    }
}

fn parse_one(s: &str) -> Result<Statement, String> {
    if let Some(rest) = keywords(s, &["CREATE", "COLLECTION"]) {
        let (if_not_exists, rest) = match keywords(rest, &["IF", "NOT", "EXISTS"]) {
            Some(rest) => (true, rest),
            None => (false, rest),
        };
        let (name, tail) = name(rest)?;
        let name = nothing_after(name, tail)?;
        return Ok(Statement::CreateCollection {
            name,
            if_not_exists,
        });
    }
    if let Some(rest) = keywords(s, &["DROP", "COLLECTION"]) {
        let (if_exists, rest) = match keywords(rest, &["IF", "EXISTS"]) {
            Some(rest) => (true, rest),
            None => (false, rest),
        };
        let (name, tail) = name(rest)?;
        let name = nothing_after(name, tail)?;
        return Ok(Statement::DropCollection { name, if_exists });
    }
    if let Some(rest) = keywords(s, &["INSERT", "INTO"]) {
        let (collection, tail) = name(rest)?;
        let Value::Object(document) = json(tail)? else {
            return Err("a document is a JSON object".to_owned());
        };
        return Ok(Statement::Insert {
            collection,
            document,
        });
    }
    if let Some(rest) = keywords(s, &["ADD", "FIELD"]) {
        let (collection, field, tail) = field(rest)?;
        let tail = keywords(tail, &["DEFAULT"]).ok_or("expected DEFAULT json")?;
        return Ok(Statement::AddField {
            collection,
            field,
            default: json(tail)?,
        });
    }
    if let Some(rest) = keywords(s, &["REMOVE", "FIELD"]) {
        let (collection, field, tail) = field(rest)?;
        let field = nothing_after(field, tail)?;
        return Ok(Statement::RemoveField { collection, field });
    }
    if let Some(rest) = keywords(s, &["DELETE", "FROM"]) {
        let (collection, tail) = name(rest)?;
        let tail = keywords(tail, &["WHERE"]).ok_or("expected WHERE field = json")?;
        let (field, tail) = name(tail)?;
        let tail = tail
            .strip_prefix('=')
            .ok_or("expected WHERE field = json")?;
        return Ok(Statement::Delete {
            collection,
            field,
            value: json(tail.trim_start())?,
        });
    }
    if let Some(rest) = keywords(s, &["FAIL"]) {
        let (transient, rest) = match keywords(rest, &["TRANSIENT"]) {
            Some(rest) => (true, rest),
            None => (false, rest),
        };
        let Value::String(reason) = json(rest)? else {
            return Err("FAIL takes a JSON string".to_owned());
        };
        return Ok(Statement::Fail { reason, transient });
    }
    Err("unknown statement (see the JSON engine's documentation)".to_owned())
}

impl Statement {
    /// Runs the statement on `collections`: all of it, or, when it fails, nothing.
    pub fn apply(&self, collections: &mut Collections) -> Result<(), JsonError> {
        match self {
            Statement::CreateCollection {
                name,
                if_not_exists,
            } => {
                if collections.contains_key(name) {
                    if !if_not_exists {
                        return Err(JsonError::CollectionExists(name.clone()));
                    }
                } else {
                    collections.insert(name.clone(), Vec::new());
                }
            }
            Statement::DropCollection { name, if_exists } => {
                if collections.remove(name).is_none() && !if_exists {
                    return Err(JsonError::NoCollection(name.clone()));
                }
            }
            Statement::Insert {
                collection,
                document,
            } => collection_mut(collections, collection)?.push(Value::Object(document.clone())),
            Statement::AddField {
                collection,
                field,
                default,
            } => {
                for document in objects(collection_mut(collections, collection)?) {
                    document
                        .entry(field.clone())
                        .or_insert_with(|| default.clone());
                }
            }
            Statement::RemoveField { collection, field } => {
                for document in objects(collection_mut(collections, collection)?) {
                    document.remove(field);
                }
            }
            Statement::Delete {
                collection,
                field,
                value,
            } => collection_mut(collections, collection)?
                .retain(|d| d.get(field.as_str()) != Some(value)),
            Statement::Fail { reason, transient } => {
                return Err(if *transient {
                    JsonError::Transient(reason.clone())
                } else {
                    JsonError::Failed(reason.clone())
                })
            }
        }
        Ok(())
    }
}

/// A collection that must exist.
pub fn collection_mut<'c>(
    collections: &'c mut Collections,
    name: &str,
) -> Result<&'c mut Vec<Value>, JsonError> {
    collections
        .get_mut(name)
        .ok_or_else(|| JsonError::NoCollection(name.to_owned()))
}

fn objects(documents: &mut [Value]) -> impl Iterator<Item = &mut Map<String, Value>> {
    documents.iter_mut().filter_map(Value::as_object_mut)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_split_outside_json_and_parse() {
        let text = "CREATE COLLECTION accounts; INSERT INTO accounts {\"a\": \"x;y\",\n \"b\": [1,\n 2]}\n\
                    -- a comment\n\nADD FIELD accounts.name DEFAULT \"n\"";
        let parsed = parse(text).unwrap();
        assert_eq!(parsed.len(), 3, "{parsed:?}");
        assert!(matches!(
            parse("CREATE COLLECTION 1x"),
            Err(JsonError::Syntax { .. })
        ));
        assert!(matches!(parse("SELECT 1"), Err(JsonError::Syntax { .. })));
    }
}
