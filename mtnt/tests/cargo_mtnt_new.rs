//! `cargo mtnt new`: runs the `cargo-mtnt` binary in temporary package directories.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use assert_cmd::prelude::*;
use predicates::prelude::*;

const TODAY: &str = "2026-11-23";

/// A temporary package root with an empty `src/`.
fn package() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("src")).unwrap();
    dir
}

/// `cargo-mtnt mtnt new <args>` in `root`, as cargo runs it, with today pinned.
fn new_cmd(root: &Path, today: &str, args: &[&str]) -> Command {
    let mut cmd = Command::cargo_bin("cargo-mtnt").unwrap();
    cmd.current_dir(root)
        .env("MTNT_TODAY", today)
        .args(["mtnt", "new"])
        .args(args);
    cmd
}

fn migrations(root: &Path) -> PathBuf {
    root.join("src/migrations")
}

/// The files of `src/migrations`, sorted.
fn listing(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(migrations(root))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

fn read(path: impl AsRef<Path>) -> String {
    fs::read_to_string(path).unwrap()
}

#[test]
fn first_migration_gets_sequence_0001_and_a_new_mod_rs() {
    let root = package();
    new_cmd(root.path(), TODAY, &["create_invoices", "--scope", "tenant"])
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "Created src/migrations/m202611230001_create_invoices.rs (tenant migration, order 2026_11_23_0001)",
        ))
        .stdout(predicate::str::contains("Created src/migrations/mod.rs"))
        .stdout(predicate::str::contains(
            "note: add `mod migrations;` to src/lib.rs or src/main.rs",
        ));

    assert_eq!(
        listing(root.path()),
        ["m202611230001_create_invoices.rs", "mod.rs"]
    );
    let source = read(migrations(root.path()).join("m202611230001_create_invoices.rs"));
    assert!(source.contains(
        "#[mtnt::migration(scope = \"tenant\", order = 2026_11_23_0001, down = create_invoices_down)]\n\
         async fn create_invoices(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {"
    ));
    assert!(source
        .contains("async fn create_invoices_down(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {"));
    assert!(
        !source.contains("todo!"),
        "the stub must not panic when migrated:\n{source}"
    );
    let mod_rs = read(migrations(root.path()).join("mod.rs"));
    assert!(
        mod_rs.ends_with("\nmod m202611230001_create_invoices;\n"),
        "{mod_rs}"
    );
}

#[test]
fn second_migration_of_the_day_gets_0002_and_is_appended_to_mod_rs() {
    let root = package();
    new_cmd(
        root.path(),
        TODAY,
        &["create_invoices", "--scope", "tenant"],
    )
    .assert()
    .success();
    let mod_path = migrations(root.path()).join("mod.rs");
    // A line of the user's own, which must survive.
    let mut mod_rs = read(&mod_path);
    mod_rs.push_str("\nmod helpers;\n");
    fs::write(&mod_path, &mod_rs).unwrap();

    new_cmd(root.path(), TODAY, &["create_plans", "--scope", "public", "--irreversible"])
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "Created src/migrations/m202611230002_create_plans.rs (public migration, order 2026_11_23_0002, irreversible)",
        ))
        .stdout(predicate::str::contains("Updated src/migrations/mod.rs"))
        .stdout(predicate::str::contains("mod migrations;").not());

    let after = read(&mod_path);
    assert_eq!(
        after,
        mod_rs.replace(
            "mod m202611230001_create_invoices;\n",
            "mod m202611230001_create_invoices;\nmod m202611230002_create_plans;\n"
        )
    );
    let source = read(migrations(root.path()).join("m202611230002_create_plans.rs"));
    assert!(source.contains("#[mtnt::migration(scope = \"public\", order = 2026_11_23_0002)]\n"));
    assert!(!source.contains("_down"), "{source}");
}

#[test]
fn a_later_day_starts_again_at_0001() {
    let root = package();
    new_cmd(
        root.path(),
        TODAY,
        &["create_invoices", "--scope", "tenant"],
    )
    .assert()
    .success();
    new_cmd(
        root.path(),
        "2026-11-24",
        &["add_due_date", "--scope", "tenant"],
    )
    .assert()
    .success();
    assert_eq!(
        listing(root.path()),
        [
            "m202611230001_create_invoices.rs",
            "m202611240001_add_due_date.rs",
            "mod.rs"
        ]
    );
}

#[test]
fn a_future_dated_migration_is_followed_by_max_plus_one() {
    let root = package();
    let dir = migrations(root.path());
    fs::create_dir(&dir).unwrap();
    // Hand-written, with #[path] and no `m` prefix: it still counts.
    fs::write(dir.join("202701010003_from_the_future.rs"), "").unwrap();
    fs::write(
        dir.join("mod.rs"),
        "#[path = \"202701010003_from_the_future.rs\"]\nmod from_the_future;\n",
    )
    .unwrap();

    new_cmd(
        root.path(),
        TODAY,
        &["create_invoices", "--scope", "tenant"],
    )
    .assert()
    .success()
    .stdout(predicate::str::contains("m202701010004_create_invoices.rs"))
    .stdout(predicate::str::contains(
        "note: the newest existing migration, 2027_01_01_0003, is dated after today",
    ));
    assert!(dir.join("m202701010004_create_invoices.rs").is_file());
    assert!(read(dir.join("mod.rs"))
        .ends_with("mod from_the_future;\nmod m202701010004_create_invoices;\n"));
}

#[test]
fn a_duplicate_name_is_refused_and_nothing_is_written() {
    let root = package();
    new_cmd(
        root.path(),
        TODAY,
        &["create_invoices", "--scope", "tenant"],
    )
    .assert()
    .success();
    let before = listing(root.path());
    let mod_before = read(migrations(root.path()).join("mod.rs"));

    new_cmd(
        root.path(),
        "2026-12-01",
        &["create_invoices", "--scope", "public"],
    )
    .assert()
    .code(1)
    .stdout("")
    .stderr(predicate::str::starts_with(
        "error: a migration named `create_invoices` already exists: ",
    ))
    .stderr(predicate::str::contains("m202611230001_create_invoices.rs"))
    .stderr(predicate::str::contains("fix: choose another name"));

    assert_eq!(listing(root.path()), before);
    assert_eq!(read(migrations(root.path()).join("mod.rs")), mod_before);
}

#[test]
fn bad_names_are_refused_with_a_fix() {
    let root = package();
    for (name, fix) in [
        ("CreateInvoices", "fix: use `create_invoices`"),
        ("create-invoices", "fix: use `create_invoices`"),
        ("2fa_secrets", "fix: use `add_2fa_secrets`"),
        ("type", "fix: describe the change, e.g. `create_type`"),
    ] {
        new_cmd(root.path(), TODAY, &[name, "--scope", "tenant"])
            .assert()
            .code(1)
            .stderr(predicate::str::starts_with(format!(
                "error: invalid migration name `{name}`: "
            )))
            .stderr(predicate::str::contains(fix));
    }
    assert!(
        !migrations(root.path()).exists(),
        "nothing may be written for a bad name"
    );
}

#[test]
fn the_scope_is_required() {
    let root = package();
    new_cmd(root.path(), TODAY, &["create_invoices"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("--scope <SCOPE>"));
    assert!(!migrations(root.path()).exists());
}

#[test]
fn a_missing_package_root_is_refused() {
    let root = tempfile::tempdir().unwrap(); // no src/
    new_cmd(
        root.path(),
        TODAY,
        &["create_invoices", "--scope", "tenant"],
    )
    .assert()
    .code(1)
    .stderr(predicate::str::contains(
        "neither src/migrations nor its parent directory exists",
    ));
    assert!(!root.path().join("src").exists());
}

#[test]
fn dir_option_and_direct_invocation() {
    let root = package();
    // Without the leading `mtnt` that cargo adds.
    Command::cargo_bin("cargo-mtnt")
        .unwrap()
        .current_dir(root.path())
        .env("MTNT_TODAY", TODAY)
        .args([
            "new",
            "create_invoices",
            "--scope",
            "tenant",
            "--dir",
            "src/db",
        ])
        .assert()
        .success()
        .stdout(predicate::str::contains("Created directory src/db"))
        .stdout(predicate::str::contains(
            "note: add `mod db;` to src/lib.rs or src/main.rs",
        ));
    assert!(root
        .path()
        .join("src/db/m202611230001_create_invoices.rs")
        .is_file());
}

#[test]
fn help_documents_the_arguments() {
    Command::cargo_bin("cargo-mtnt")
        .unwrap()
        .args(["mtnt", "new", "--help"])
        .assert()
        .success()
        .stdout(predicate::str::contains("snake_case Rust identifier"))
        .stdout(predicate::str::contains("--irreversible"))
        .stdout(predicate::str::contains("[default: src/migrations]"))
        .stdout(predicate::str::contains("--today").not());
}

/// Generates migrations into a small package that depends on this mtnt by path and runs
/// `cargo check` on it, with warnings denied in that package.
#[test]
fn generated_migrations_compile() {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let workspace = manifest_dir.parent().unwrap();
    let root = package();
    fs::write(
        root.path().join("Cargo.toml"),
        format!(
            "[package]\n\
             name = \"scaffold_check\"\n\
             version = \"0.0.0\"\n\
             edition = \"2021\"\n\
             publish = false\n\
             \n\
             [dependencies]\n\
             mtnt = {{ path = {:?} }}\n\
             \n\
             [lints.rust]\n\
             warnings = \"deny\"\n\
             \n\
             [workspace]\n",
            manifest_dir.display().to_string()
        ),
    )
    .unwrap();
    fs::write(
        root.path().join("src/lib.rs"),
        "//! Scaffold check.\n\nmod migrations;\n",
    )
    .unwrap();
    // Same dependency versions as the workspace, already downloaded.
    if let Ok(lock) = fs::read(workspace.join("Cargo.lock")) {
        fs::write(root.path().join("Cargo.lock"), lock).unwrap();
    }

    new_cmd(
        root.path(),
        TODAY,
        &["create_invoices", "--scope", "tenant"],
    )
    .assert()
    .success();
    new_cmd(
        root.path(),
        TODAY,
        &["create_plans", "--scope", "public", "--irreversible"],
    )
    .assert()
    .success();
    new_cmd(root.path(), TODAY, &["add_note", "--scope", "tenant"])
        .assert()
        .success();

    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(root.path())
        .env("CARGO_TARGET_DIR", workspace.join("target/scaffold-check"))
        .env_remove("RUSTFLAGS")
        .args(["check", "--quiet", "--message-format", "short"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "cargo check of the generated migrations failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
