//! `cargo mtnt new`: writes a new migration file and declares it in the directory's `mod.rs`.
//!
//! Everything here is either a pure function (name checks, order arithmetic, rendering,
//! editing `mod.rs` text) or [`create`], which reads the directory and writes the files.
//! The `cargo-mtnt` binary only parses arguments and prints.
//!
//! # File and module names
//!
//! A migration with order `2026_11_23_0001` and name `create_invoices` is written to
//! `m202611230001_create_invoices.rs` and declared as `mod m202611230001_create_invoices;`.
//! The `m` is there because a module name cannot start with a digit. The other way,
//! `#[path = "202611230001_create_invoices.rs"] mod create_invoices;`, needs two lines per
//! migration, and `cargo fmt` sorts `mod` items by name, so the lines would not stay in
//! order. With the `m` prefix, sorting by name is sorting by order: the file listing,
//! `mod.rs` and `cargo fmt` all agree, and each migration is one plain `mod` line.
//! Files named `<12 digits>_<name>.rs` (without the `m`) still count when the next order
//! is computed and when duplicate names are checked, so hand-written `#[path]` migrations
//! work alongside the generated ones.

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use chrono::{Datelike, NaiveDate};

use crate::Scope;

/// What can go wrong in `cargo mtnt new`. Each message names the name or file and the fix.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    /// The migration name is not a snake_case Rust identifier.
    #[error("invalid migration name `{name}`: {reason}\n  fix: {fix}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: String,
        /// What to do instead.
        fix: String,
    },

    /// A migration with this name already exists in the directory.
    #[error("a migration named `{name}` already exists: {existing}\n  fix: choose another name, or edit the existing migration")]
    DuplicateName {
        /// The name.
        name: String,
        /// The existing file (or the `mod.rs` line that declares it).
        existing: String,
    },

    /// The next order does not fit in `YYYY_MM_DD_NNNN`.
    #[error("cannot compute the next order: {reason}\n  fix: {fix}")]
    Order {
        /// Why.
        reason: String,
        /// What to do.
        fix: String,
    },

    /// The migrations directory does not exist and neither does its parent.
    #[error("neither {dir} nor its parent directory exists\n  fix: run `cargo mtnt new` from the root of the package that holds the migrations, or pass --dir")]
    NoDirectory {
        /// The directory.
        dir: PathBuf,
    },

    /// A file that would be written already exists.
    #[error("refusing to overwrite {path}, which already exists\n  fix: move it away or choose another name")]
    WouldOverwrite {
        /// The file.
        path: PathBuf,
    },

    /// Reading or writing a file failed.
    #[error("cannot {action} {path}")]
    Io {
        /// What was being done: "read", "write", "create directory", ...
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> ScaffoldError + 'a {
    move |source| ScaffoldError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// What to create: the parsed arguments of `cargo mtnt new`.
#[derive(Clone, Debug)]
pub struct NewMigration {
    /// The migration (and function) name, a snake_case identifier.
    pub name: String,
    /// Public or tenant.
    pub scope: Scope,
    /// The directory that holds the migration files and their `mod.rs`.
    pub dir: PathBuf,
    /// Whether to generate a down function.
    pub reversible: bool,
    /// Today's date, which the order starts from.
    pub today: NaiveDate,
}

/// What [`create`] wrote.
#[derive(Clone, Debug)]
pub struct Created {
    /// The new migration file.
    pub file: PathBuf,
    /// Its order, as a `YYYYMMDDNNNN` integer.
    pub order: i64,
    /// The `mod.rs` that now declares it.
    pub mod_rs: PathBuf,
    /// Whether `mod.rs` was created (so the parent module must still declare the directory).
    pub mod_rs_created: bool,
    /// Whether the directory itself was created.
    pub dir_created: bool,
    /// The newest order that already existed when it is dated after today (the new order
    /// then follows it instead of starting from today).
    pub future_dated: Option<i64>,
}

/// A migration found in the directory, as file or as `mod.rs` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Existing {
    /// Its order.
    pub order: i64,
    /// Its name.
    pub name: String,
    /// Where it was found, for messages.
    pub origin: String,
}

/// Rust keywords (strict, reserved and edition-dependent): none can name a function or module.
const KEYWORDS: &[&str] = &[
    "abstract", "as", "async", "await", "become", "box", "break", "const", "continue", "crate",
    "do", "dyn", "else", "enum", "extern", "false", "final", "fn", "for", "gen", "if", "impl",
    "in", "let", "loop", "macro", "match", "mod", "move", "mut", "override", "priv", "pub", "ref",
    "return", "self", "static", "struct", "super", "trait", "true", "try", "type", "typeof",
    "union", "unsafe", "unsized", "use", "virtual", "where", "while", "yield",
];

fn is_snake_case_ident(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes[0].is_ascii_lowercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_')
        && !name.contains("__")
        && !name.ends_with('_')
}

/// Converts `CreateInvoices`, `create-invoices` or `Create Invoices` to `create_invoices`.
fn to_snake_case(name: &str) -> String {
    let mut out = String::new();
    let mut prev: Option<char> = None;
    for c in name.chars() {
        if c.is_ascii_uppercase() {
            if prev.is_some_and(|p| p.is_ascii_lowercase() || p.is_ascii_digit()) {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else {
            out.push('_');
        }
        prev = Some(c);
    }
    let mut collapsed = String::with_capacity(out.len());
    for c in out.chars() {
        if !(c == '_' && collapsed.ends_with('_')) {
            collapsed.push(c);
        }
    }
    collapsed.trim_matches('_').to_owned()
}

/// Checks that `name` can name the migration function and its file: a snake_case Rust
/// identifier of ASCII lowercase letters, digits and single underscores, starting with a
/// letter, and not a keyword.
pub fn validate_name(name: &str) -> Result<(), ScaffoldError> {
    let invalid = |reason: &str, fix: String| ScaffoldError::InvalidName {
        name: name.to_owned(),
        reason: reason.to_owned(),
        fix,
    };
    if name.is_empty() {
        return Err(invalid(
            "the name is empty",
            "describe the change in snake_case, e.g. `create_invoices`".to_owned(),
        ));
    }
    if KEYWORDS.contains(&name) {
        return Err(invalid(
            "it is a Rust keyword, so it cannot name the migration function",
            format!("describe the change, e.g. `create_{name}` or `alter_{name}`"),
        ));
    }
    if is_snake_case_ident(name) {
        return Ok(());
    }
    let reason = "it must be a snake_case Rust identifier: lowercase ASCII letters, digits and \
                  single underscores, starting with a letter";
    let suggestion = to_snake_case(name);
    let suggestion = match suggestion.as_bytes().first() {
        Some(b) if b.is_ascii_digit() => format!("add_{suggestion}"),
        _ => suggestion,
    };
    let fix = if is_snake_case_ident(&suggestion)
        && !KEYWORDS.contains(&suggestion.as_str())
        && suggestion != name
    {
        format!("use `{suggestion}`")
    } else {
        "describe the change in snake_case, e.g. `create_invoices`".to_owned()
    };
    Err(invalid(reason, fix))
}

/// `YYYYMMDD0000`: the order just before the first one of `date`.
pub fn date_base(date: NaiveDate) -> Result<i64, ScaffoldError> {
    if !(1000..=9999).contains(&date.year()) {
        return Err(ScaffoldError::Order {
            reason: format!("the year of {date} does not have four digits"),
            fix: "set the clock or pass a date between 1000 and 9999".to_owned(),
        });
    }
    Ok(
        (i64::from(date.year()) * 10_000 + i64::from(date.month()) * 100 + i64::from(date.day()))
            * 10_000,
    )
}

/// The order of a new migration created on `today`, given the newest existing order.
///
/// `today_0001` when nothing exists from today or later; otherwise `newest + 1`, so that
/// orders keep increasing even when an existing migration is dated in the future. After a
/// sequence of `9999` comes the next day's `0001` (the attribute only accepts real dates).
pub fn next_order(today: NaiveDate, newest: Option<i64>) -> Result<i64, ScaffoldError> {
    let base = date_base(today)?;
    let Some(max) = newest.filter(|&max| max >= base) else {
        return Ok(base + 1);
    };
    if max % 10_000 < 9999 {
        return Ok(max + 1);
    }
    let date = order_date(max).ok_or_else(|| ScaffoldError::Order {
        reason: format!(
            "the newest existing order {} does not start with a real date",
            order_literal(max)
        ),
        fix: "renumber that migration with a YYYY_MM_DD_NNNN order".to_owned(),
    })?;
    let next_day = date.succ_opt().ok_or_else(|| ScaffoldError::Order {
        reason: format!("no date follows that of {}", order_literal(max)),
        fix: "renumber the existing migrations with earlier dates".to_owned(),
    })?;
    Ok(date_base(next_day)? + 1)
}

/// The date an order starts with, if it is a real one.
fn order_date(order: i64) -> Option<NaiveDate> {
    let date = order / 10_000;
    let (year, month, day) = (date / 10_000, date / 100 % 100, date % 100);
    NaiveDate::from_ymd_opt(
        i32::try_from(year).ok()?,
        u32::try_from(month).ok()?,
        u32::try_from(day).ok()?,
    )
}

/// Formats an order as the `YYYY_MM_DD_NNNN` literal the attribute takes.
pub fn order_literal(order: i64) -> String {
    let s = format!("{order:012}");
    if s.len() == 12 {
        format!("{}_{}_{}_{}", &s[0..4], &s[4..6], &s[6..8], &s[8..12])
    } else {
        s
    }
}

/// The module name of a generated migration: `m202611230001_create_invoices`.
pub fn module_name(order: i64, name: &str) -> String {
    format!("m{order:012}_{name}")
}

/// The file name of a generated migration: `m202611230001_create_invoices.rs`.
pub fn file_name(order: i64, name: &str) -> String {
    format!("{}.rs", module_name(order, name))
}

/// Splits `m202611230001_create_invoices` (or `202611230001_create_invoices`) into its
/// order and name.
pub fn parse_module_name(stem: &str) -> Option<(i64, &str)> {
    let rest = stem.strip_prefix('m').unwrap_or(stem);
    let digits = rest.get(..12)?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let name = rest[12..].strip_prefix('_')?;
    if name.is_empty() {
        return None;
    }
    Some((digits.parse().ok()?, name))
}

/// Splits a migration file name (`m<12 digits>_<name>.rs` or `<12 digits>_<name>.rs`)
/// into its order and name; `None` for any other file.
pub fn parse_file_name(file_name: &str) -> Option<(i64, &str)> {
    parse_module_name(file_name.strip_suffix(".rs")?)
}

/// The module a `mod` declaration line declares, if the line is one
/// (`mod x;`, `pub mod x;`, `pub(crate) mod x;`, ...).
fn declared_module(line: &str) -> Option<&str> {
    let mut rest = line.trim();
    if let Some(r) = rest.strip_prefix("pub") {
        rest = r.trim_start();
        if let Some(r) = rest.strip_prefix('(') {
            rest = r.split_once(')')?.1.trim_start();
        }
    }
    let rest = rest.strip_prefix("mod")?;
    if !rest.starts_with(char::is_whitespace) {
        return None;
    }
    let ident = rest.trim_start().strip_suffix(';')?.trim_end();
    let ident = ident.strip_prefix("r#").unwrap_or(ident);
    (!ident.is_empty()
        && ident
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_'))
    .then_some(ident)
}

/// The migrations a `mod.rs` declares, with their 1-based line numbers.
pub fn declared_migrations(mod_rs: &str) -> Vec<(usize, i64, String)> {
    mod_rs
        .lines()
        .enumerate()
        .filter_map(|(i, line)| {
            let (order, name) = parse_module_name(declared_module(line)?)?;
            Some((i + 1, order, name.to_owned()))
        })
        .collect()
}

/// Returns `mod_rs` with `mod <module>;` added: before the first declared migration with a
/// larger order, else after the last declared migration, else at the end. Every other line
/// is kept as it is.
pub fn insert_mod_line(mod_rs: &str, order: i64, module: &str) -> String {
    let newline = if mod_rs.contains("\r\n") {
        "\r\n"
    } else {
        "\n"
    };
    let new_line = format!("mod {module};{newline}");
    let lines: Vec<&str> = mod_rs.split_inclusive('\n').collect();
    let declared = declared_migrations(mod_rs);
    let at = declared
        .iter()
        .find(|(_, o, _)| *o > order)
        .map(|(line, _, _)| line - 1)
        .or_else(|| declared.last().map(|(line, _, _)| *line))
        .unwrap_or(lines.len());
    let mut out = String::with_capacity(mod_rs.len() + new_line.len() + 1);
    for (i, line) in lines.iter().enumerate() {
        if i == at {
            out.push_str(&new_line);
        }
        out.push_str(line);
        if i + 1 == lines.len() && !line.ends_with('\n') {
            out.push_str(newline);
        }
    }
    if at >= lines.len() {
        out.push_str(&new_line);
    }
    out
}

/// The `mod.rs` written when the directory has none.
pub fn new_mod_rs(module: &str) -> String {
    format!(
        "//! Database migrations, one file each. `cargo mtnt new` adds them here, sorted by order.\n\
         \n\
         mod {module};\n"
    )
}

/// The source of a new migration file: a stub that compiles and does nothing until edited.
pub fn render_migration(name: &str, scope: Scope, order: i64, reversible: bool) -> String {
    let (up_example, down_example) = match name.strip_prefix("create_").filter(|t| !t.is_empty()) {
        Some(table) => (
            format!("CREATE TABLE {table} (id bigint PRIMARY KEY, name text NOT NULL)"),
            format!("DROP TABLE {table}"),
        ),
        None => (
            "ALTER TABLE accounts ADD COLUMN note text".to_owned(),
            "ALTER TABLE accounts DROP COLUMN note".to_owned(),
        ),
    };
    let runs = match scope {
        Scope::Public => "once, in the shared (public) schema or control database",
        Scope::Tenant => "in every tenant's schema or database",
    };
    let mut s = String::new();
    let _ = writeln!(s, "//! Migration `{name}`, created by `cargo mtnt new`.");
    let _ = writeln!(s, "//!");
    let _ = writeln!(s, "//! Runs {runs}, inside a transaction");
    let _ = writeln!(
        s,
        "//! (add `transaction = false` to the attribute for statements that cannot)."
    );
    if !reversible {
        let _ = writeln!(s, "//! Irreversible: it has no down function.");
    }
    let _ = writeln!(s);
    let down_key = if reversible {
        format!(", down = {name}_down")
    } else {
        String::new()
    };
    let _ = writeln!(
        s,
        "#[mtnt::migration(scope = \"{scope}\", order = {order}{down_key})]",
        scope = scope.as_str(),
        order = order_literal(order),
    );
    let _ = writeln!(
        s,
        "async fn {name}(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {{"
    );
    let _ = writeln!(
        s,
        "    // TODO: write the migration; until then it does nothing. For example:"
    );
    let _ = writeln!(s, "    // ctx.execute(\"{up_example}\").await?;");
    let _ = writeln!(
        s,
        "    // For typed sqlx queries use `ctx.postgres()?`, `ctx.sqlite()?` or `ctx.mysql()?`."
    );
    let _ = writeln!(s, "    let _ = ctx;");
    let _ = writeln!(s, "    Ok(())");
    let _ = writeln!(s, "}}");
    if reversible {
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "async fn {name}_down(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {{"
        );
        let _ = writeln!(
            s,
            "    // TODO: undo `{name}`; rollback runs this. For example:"
        );
        let _ = writeln!(s, "    // ctx.execute(\"{down_example}\").await?;");
        let _ = writeln!(s, "    let _ = ctx;");
        let _ = writeln!(s, "    Ok(())");
        let _ = writeln!(s, "}}");
    }
    s
}

/// What to tell the user when `mod.rs` was just created: which `mod` line the parent
/// module needs so that the directory is compiled at all.
pub fn parent_module_hint(dir: &Path) -> String {
    let module = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("migrations");
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
    let owner = match parent {
        Some(p) if p.file_name().is_some_and(|n| n == "src") => {
            format!("{0}/lib.rs or {0}/main.rs", p.display())
        }
        Some(p) => format!("the module of {}", p.display()),
        None => "the parent module".to_owned(),
    };
    if is_snake_case_ident(module)
        || module
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        format!("add `mod {module};` to {owner}, so that the migrations are compiled")
    } else {
        format!(
            "add `#[path = \"{module}/mod.rs\"] mod migrations;` to {owner}, so that the migrations are compiled"
        )
    }
}

/// The migrations already in `dir`: its migration files, and the migrations its `mod.rs`
/// (given as text, if any) declares, sorted by order and name (files first).
pub fn scan(dir: &Path, mod_rs: Option<&str>) -> Result<Vec<Existing>, ScaffoldError> {
    let mut found = Vec::new();
    if dir.is_dir() {
        for entry in fs::read_dir(dir).map_err(io_err("read directory", dir))? {
            let entry = entry.map_err(io_err("read directory", dir))?;
            let file_name = entry.file_name();
            let Some(file_name) = file_name.to_str() else {
                continue;
            };
            if let Some((order, name)) = parse_file_name(file_name) {
                found.push(Existing {
                    order,
                    name: name.to_owned(),
                    origin: entry.path().display().to_string(),
                });
            }
        }
    }
    if let Some(text) = mod_rs {
        let path = dir.join("mod.rs");
        for (line, order, name) in declared_migrations(text) {
            found.push(Existing {
                order,
                name,
                origin: format!("declared at {}:{line}", path.display()),
            });
        }
    }
    // Stable: for one migration, its file comes before its `mod.rs` line.
    found.sort_by(|a, b| (a.order, &a.name).cmp(&(b.order, &b.name)));
    Ok(found)
}

fn write_new(path: &Path, contents: &str) -> Result<(), ScaffoldError> {
    use std::io::Write as _;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|source| {
            if source.kind() == io::ErrorKind::AlreadyExists {
                ScaffoldError::WouldOverwrite {
                    path: path.to_owned(),
                }
            } else {
                ScaffoldError::Io {
                    action: "create",
                    path: path.to_owned(),
                    source,
                }
            }
        })?;
    file.write_all(contents.as_bytes())
        .map_err(io_err("write", path))
}

/// Creates the migration: checks the name, refuses a duplicate, computes the order, writes
/// the file (never overwriting one) and declares it in `mod.rs` (creating that if needed).
///
/// On error nothing is left behind: if `mod.rs` cannot be written, the new file is removed.
pub fn create(new: &NewMigration) -> Result<Created, ScaffoldError> {
    validate_name(&new.name)?;
    let dir = new.dir.as_path();
    let dir_exists = dir.is_dir();
    if !dir_exists {
        let parent = dir
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if !parent.is_dir() {
            return Err(ScaffoldError::NoDirectory {
                dir: dir.to_owned(),
            });
        }
    }

    let mod_rs = dir.join("mod.rs");
    let mod_text = if mod_rs.is_file() {
        Some(fs::read_to_string(&mod_rs).map_err(io_err("read", &mod_rs))?)
    } else {
        None
    };
    let existing = scan(dir, mod_text.as_deref())?;
    if let Some(dup) = existing.iter().find(|e| e.name == new.name) {
        return Err(ScaffoldError::DuplicateName {
            name: new.name.clone(),
            existing: dup.origin.clone(),
        });
    }

    let newest = existing.iter().map(|e| e.order).max();
    let order = next_order(new.today, newest)?;
    let tomorrow_base = date_base(new.today)? + 10_000;
    let future_dated = newest.filter(|&n| n >= tomorrow_base);
    let module = module_name(order, &new.name);
    let file = dir.join(file_name(order, &new.name));
    if file.exists() {
        return Err(ScaffoldError::WouldOverwrite { path: file });
    }
    let source = render_migration(&new.name, new.scope, order, new.reversible);
    let new_mod_text = match &mod_text {
        Some(text) => insert_mod_line(text, order, &module),
        None => new_mod_rs(&module),
    };

    if !dir_exists {
        fs::create_dir(dir).map_err(io_err("create directory", dir))?;
    }
    write_new(&file, &source)?;
    let mod_result = match mod_text {
        Some(_) => fs::write(&mod_rs, &new_mod_text).map_err(io_err("write", &mod_rs)),
        None => write_new(&mod_rs, &new_mod_text),
    };
    if let Err(e) = mod_result {
        let _ = fs::remove_file(&file);
        if !dir_exists {
            let _ = fs::remove_dir(dir);
        }
        return Err(e);
    }
    Ok(Created {
        file,
        order,
        mod_rs,
        mod_rs_created: mod_text.is_none(),
        dir_created: !dir_exists,
        future_dated,
    })
}

#[cfg(test)]
#[allow(clippy::inconsistent_digit_grouping)] // orders are written `YYYY_MM_DD_NNNN`
mod tests {
    use super::*;

    fn day(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    #[test]
    fn first_order_of_the_day() {
        assert_eq!(
            next_order(day("2026-11-23"), None).unwrap(),
            2026_11_23_0001
        );
        assert_eq!(
            next_order(day("2026-11-23"), Some(2026_11_22_0007)).unwrap(),
            2026_11_23_0001
        );
    }

    #[test]
    fn same_day_increments() {
        assert_eq!(
            next_order(day("2026-11-23"), Some(2026_11_23_0001)).unwrap(),
            2026_11_23_0002
        );
        assert_eq!(
            next_order(day("2026-11-23"), Some(2026_11_23_0000)).unwrap(),
            2026_11_23_0001
        );
    }

    #[test]
    fn future_dated_newest_gives_max_plus_one() {
        assert_eq!(
            next_order(day("2026-11-23"), Some(2027_01_01_0003)).unwrap(),
            2027_01_01_0004
        );
    }

    #[test]
    fn full_sequence_rolls_into_next_real_day() {
        let today = day("2026-11-23");
        assert_eq!(
            next_order(today, Some(2026_11_23_9999)).unwrap(),
            2026_11_24_0001
        );
        assert_eq!(
            next_order(today, Some(2026_11_30_9999)).unwrap(),
            2026_12_01_0001
        );
        assert_eq!(
            next_order(today, Some(2026_12_31_9999)).unwrap(),
            2027_01_01_0001
        );
        let err = next_order(today, Some(2026_11_31_9999))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("2026_11_31_9999 does not start with a real date"),
            "{err}"
        );
        assert!(next_order(today, Some(9999_12_31_9999)).is_err());
    }

    #[test]
    fn five_digit_year_is_refused() {
        assert!(next_order(NaiveDate::from_ymd_opt(10_000, 1, 1).unwrap(), None).is_err());
    }

    #[test]
    fn literal_and_names() {
        assert_eq!(order_literal(2026_11_23_0001), "2026_11_23_0001");
        assert_eq!(file_name(2026_11_23_0001, "a_b"), "m202611230001_a_b.rs");
        assert_eq!(
            parse_file_name("m202611230001_a_b.rs"),
            Some((2026_11_23_0001, "a_b"))
        );
        assert_eq!(
            parse_file_name("202611230001_a_b.rs"),
            Some((2026_11_23_0001, "a_b"))
        );
        assert_eq!(parse_file_name("m202611230001_.rs"), None);
        assert_eq!(parse_file_name("m20261123001_a.rs"), None);
        assert_eq!(parse_file_name("mod.rs"), None);
        assert_eq!(parse_file_name("m202611230001_a.txt"), None);
    }

    #[test]
    fn names() {
        for ok in ["create_invoices", "a", "add_2fa", "v2"] {
            validate_name(ok).unwrap();
        }
        for bad in [
            "",
            "CreateInvoices",
            "create-invoices",
            "2fa",
            "_x",
            "x_",
            "a__b",
            "type",
            "crème",
        ] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
        let msg = validate_name("CreateInvoices").unwrap_err().to_string();
        assert!(
            msg.contains("`CreateInvoices`") && msg.contains("use `create_invoices`"),
            "{msg}"
        );
        let msg = validate_name("create-invoices").unwrap_err().to_string();
        assert!(msg.contains("use `create_invoices`"), "{msg}");
        let msg = validate_name("2fa").unwrap_err().to_string();
        assert!(msg.contains("use `add_2fa`"), "{msg}");
        let msg = validate_name("type").unwrap_err().to_string();
        assert!(msg.contains("keyword"), "{msg}");
    }

    #[test]
    fn mod_lines() {
        assert_eq!(declared_module("mod m1;"), Some("m1"));
        assert_eq!(declared_module("  pub(crate) mod m1 ;"), Some("m1"));
        assert_eq!(declared_module("pub mod m1;"), Some("m1"));
        assert_eq!(declared_module("module x;"), None);
        assert_eq!(declared_module("mod x { }"), None);
        assert_eq!(declared_module("// mod x;"), None);
    }

    #[test]
    fn insert_keeps_lines_and_sorts() {
        let text =
            "//! Doc.\n\nmod helpers;\nmod m202601010001_a;\nmod m202601030001_c;\n\nfn f() {}\n";
        let out = insert_mod_line(text, 2026_01_02_0001, "m202601020001_b");
        assert_eq!(
            out,
            "//! Doc.\n\nmod helpers;\nmod m202601010001_a;\nmod m202601020001_b;\nmod m202601030001_c;\n\nfn f() {}\n"
        );
        let out = insert_mod_line(text, 2026_01_04_0001, "m202601040001_d");
        assert!(
            out.contains("mod m202601030001_c;\nmod m202601040001_d;\n\nfn f() {}\n"),
            "{out}"
        );
        let out = insert_mod_line(text, 2025_01_01_0001, "m202501010001_z");
        assert!(
            out.contains("mod helpers;\nmod m202501010001_z;\nmod m202601010001_a;\n"),
            "{out}"
        );
    }

    #[test]
    fn insert_without_migrations_appends() {
        assert_eq!(
            insert_mod_line("mod helpers;", 1, "m000000000001_a"),
            "mod helpers;\nmod m000000000001_a;\n"
        );
        assert_eq!(
            insert_mod_line("", 1, "m000000000001_a"),
            "mod m000000000001_a;\n"
        );
        assert_eq!(
            insert_mod_line("mod x;\r\n", 1, "m000000000001_a"),
            "mod x;\r\nmod m000000000001_a;\r\n"
        );
    }

    #[test]
    fn stub_mentions_scope_order_and_down() {
        let s = render_migration("create_invoices", Scope::Tenant, 2026_11_23_0001, true);
        assert!(s.contains(
            "#[mtnt::migration(scope = \"tenant\", order = 2026_11_23_0001, down = create_invoices_down)]"
        ));
        assert!(s.contains("async fn create_invoices_down("));
        assert!(s.contains("CREATE TABLE invoices"));
        assert!(!s.contains("todo!"));
        let s = render_migration("add_note", Scope::Public, 2026_11_23_0002, false);
        assert!(s.contains("#[mtnt::migration(scope = \"public\", order = 2026_11_23_0002)]"));
        assert!(!s.contains("_down"));
    }

    #[test]
    fn hints() {
        assert_eq!(
            parent_module_hint(Path::new("src/migrations")),
            "add `mod migrations;` to src/lib.rs or src/main.rs, so that the migrations are compiled"
        );
        assert!(parent_module_hint(Path::new("src/db/migrations")).contains("the module of src/db"));
    }
}
