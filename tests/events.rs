//! Seeing the fleet (issue 14), on every tenancy model: the JSON Lines events of
//! `--format json`, the `run` / `tenant` / `migration` spans of a debug log written as
//! JSON, the Prometheus gauges of `status --prometheus`, and the HTML page of
//! `report --html`, rendered by headless Chromium. Each reads what a real run of the
//! portable app (`mtnt-portable-app`) printed.
//!
//! `cargo test --test events sqlite` runs the SQLite half alone.

// Orders are written YYYY_MM_DD_NNNN, as in the attribute.
#![allow(clippy::inconsistent_digit_grouping)]
#![cfg_attr(
    not(any(feature = "postgres", feature = "mysql", feature = "sqlite")),
    allow(dead_code, unused_imports)
)]

#[path = "behaviour/migrations.rs"]
#[allow(dead_code)]
mod migrations;

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;

use migrations::{ACCOUNTS, BACKFILL, PROJECTS};
use mtnt::{Engine, MigrationSet};
use mtnt_test_support::models::{Model, Place};
use mtnt_test_support::{create_tenants, escape_like, scenarios};
use serde_json::Value;

scenarios!(
    json_events_of_a_real_run,
    a_debug_log_in_json_has_the_spans,
    prometheus_gauges_of_the_fleet,
    an_html_report_renders_in_a_browser,
);

/// The main set's migrations up to `to`.
fn fleet_to(to: i64) -> MigrationSet {
    let all = MigrationSet::registered_in("events::migrations::fleet").unwrap();
    MigrationSet::new(all.iter().filter(|m| m.order() <= to)).unwrap()
}

/// The portable CLI app, run on this model.
fn app(m: &Model) -> Command {
    m.command(assert_cmd::cargo::cargo_bin("mtnt-portable-app"))
}

/// Runs `cmd` with `args`: its exit code, stdout and stderr.
fn run(mut cmd: Command, args: &[&str]) -> (i32, String, String) {
    let out = cmd.args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A good tenant and a `-bad` one (which fails `add_projects`), both at `add_accounts`.
async fn two_tenants(m: &Model) -> (String, String) {
    let (good, bad) = (m.tenant("good"), m.tenant("x-bad"));
    let v1 = m.migrator(fleet_to(ACCOUNTS)).await;
    create_tenants(&v1, &[good.clone(), bad.clone()]).await;
    (good, bad)
}

/// Every line of `stdout` parsed as one event, checking what each event has.
fn events(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|line| {
            let event: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}\n{stdout}"));
            assert_eq!(event["v"], 1, "{line}");
            assert!(event["event"].is_string(), "{line}");
            let at = event["at"]
                .as_str()
                .unwrap_or_else(|| panic!("no at: {line}"));
            chrono::DateTime::parse_from_rfc3339(at)
                .unwrap_or_else(|e| panic!("at is not RFC 3339 ({e}): {line}"));
            event
        })
        .collect()
}

/// The events named `name`.
fn named<'a>(events: &'a [Value], name: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event"] == name).collect()
}

/// `migrate`, `tenant create` and `rollback` with `--format json`: JSON Lines on stdout
/// only, from `run_started` to `run_finished`, with each tenant's start, migrations and
/// outcome; the human summary on stderr.
async fn json_events_of_a_real_run(m: &Model) {
    let (good, bad) = two_tenants(m).await;
    let (code, stdout, stderr) = run(app(m), &["--format", "json", "migrate"]);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    let all = events(&stdout);
    assert!(
        stderr.contains("tenants: 2 total"),
        "the summary goes to stderr: {stderr}"
    );

    let first = &all[0];
    assert_eq!(first["event"], "run_started", "{stdout}");
    assert_eq!(first["command"], "migrate");
    assert!(first["runner"]["host"].is_string());
    assert!(first["runner"]["pid"].as_u64().unwrap() > 0);
    assert!(first["model"].as_str().unwrap().contains('-'), "{first}");
    assert!(first["options"]["rollout"].is_object(), "{first}");
    // Every fleet run has an id (`status --run ID`).
    assert!(first["run_id"].is_string(), "{first}");
    let last = all.last().unwrap();
    assert_eq!(last["event"], "run_finished", "{stdout}");
    assert_eq!(last["ok"], false);
    assert_eq!(last["tenants"]["total"], 2);
    assert_eq!(last["tenants"]["migrated"], 1);
    assert_eq!(last["tenants"]["failed"], 1);
    assert!(last["duration_ms"].is_u64());
    assert_eq!(last["run_id"], first["run_id"]);
    assert_eq!(named(&all, "run_started").len(), 1);
    assert_eq!(named(&all, "run_finished").len(), 1);

    let started: HashSet<&str> = named(&all, "tenant_started")
        .iter()
        .map(|e| e["tenant"].as_str().unwrap())
        .collect();
    assert_eq!(started, HashSet::from([good.as_str(), bad.as_str()]));

    let applied = named(&all, "migration_applied");
    let of_good: Vec<i64> = applied
        .iter()
        .filter(|e| e["tenant"] == good.as_str())
        .map(|e| e["order"].as_i64().unwrap())
        .collect();
    assert_eq!(&of_good[..2], [PROJECTS, BACKFILL], "{stdout}");
    for event in &applied {
        assert!(event["name"].is_string(), "{event}");
        assert!(event["duration_ms"].is_u64(), "{event}");
    }
    // The public migration the fleet set lacks (`create_features`): no tenant.
    assert!(
        applied.iter().any(|e| e["tenant"].is_null()),
        "the public migration: {stdout}"
    );
    let finished = named(&all, "tenant_finished");
    assert_eq!(finished.len(), 1, "{stdout}");
    assert_eq!(finished[0]["tenant"], good.as_str());
    assert_eq!(finished[0]["migrations"], of_good.len());

    let failed = named(&all, "tenant_failed");
    assert_eq!(failed.len(), 1, "{stdout}");
    let failed = failed[0];
    assert_eq!(failed["tenant"], bad.as_str());
    assert!(
        failed["migration"]
            .as_str()
            .is_some_and(|m| m.contains("add_projects")),
        "{failed}"
    );
    assert!(
        failed["error"]
            .as_str()
            .is_some_and(|e| e.contains("no_such_table")),
        "{failed}"
    );
    match m.kind().engine() {
        Engine::Postgres => assert_eq!(failed["sqlstate"], "42P01", "{failed}"),
        Engine::MySql => assert_eq!(failed["sqlstate"], "42S02", "{failed}"),
        _ => assert!(failed["sqlstate"].is_null(), "{failed}"),
    }

    // `tenant create`: one tenant, every migration, and its outcome.
    let new = m.tenant("new");
    let (code, stdout, stderr) = run(app(m), &["--format", "json", "tenant", "create", &new]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stderr.contains("created tenant"), "{stderr}");
    let all = events(&stdout);
    let kinds: Vec<&str> = all.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"run_started"), "{stdout}");
    assert_eq!(all[0]["command"], "tenant create");
    assert_eq!(kinds.get(1), Some(&"tenant_started"), "{stdout}");
    assert_eq!(kinds.last(), Some(&"run_finished"), "{stdout}");
    assert_eq!(all.last().unwrap()["ok"], true);
    let created = named(&all, "migration_applied");
    assert!(created.len() >= 4, "{stdout}");
    assert!(
        created.iter().all(|e| e["tenant"] == new.as_str()),
        "{stdout}"
    );
    assert_eq!(
        named(&all, "tenant_finished")[0]["migrations"],
        created.len()
    );

    // `rollback`: the reverted migration.
    let (code, stdout, stderr) = run(
        app(m),
        &[
            "--format", "json", "rollback", "--tenant", &new, "--steps", "1",
        ],
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let all = events(&stdout);
    let reverted = named(&all, "migration_reverted");
    assert_eq!(reverted.len(), 1, "{stdout}");
    assert_eq!(reverted[0]["tenant"], new.as_str());
    assert_eq!(all[0]["command"], "rollback");
    assert_eq!(all.last().unwrap()["ok"], true);

    // `tenant adopt`: each registered storage, with the migrations recorded as applied.
    let old = m.tenant("old");
    m.make_storage(&old, "CREATE TABLE legacy (id INTEGER)")
        .await;
    let pattern = format!("{}%", escape_like(&old));
    let (code, stdout, stderr) = run(
        app(m),
        &[
            "--format",
            "json",
            "tenant",
            "adopt",
            "--schema-like",
            &pattern,
            "--baseline",
            "2024_01_01_0003",
        ],
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let all = events(&stdout);
    assert_eq!(all[0]["command"], "tenant adopt", "{stdout}");
    let finished = named(&all, "tenant_finished");
    assert_eq!(finished.len(), 1, "{stdout}");
    assert_eq!(finished[0]["tenant"], old.as_str());
    assert_eq!(
        finished[0]["migrations"], 2,
        "the baseline's two tenant migrations"
    );
    let last = all.last().unwrap();
    assert_eq!(
        (last["event"].as_str(), last["ok"].as_bool()),
        (Some("run_finished"), Some(true))
    );
    assert_eq!(last["adopted"], 1);
}

/// `RUST_LOG=mtnt=debug --log-format json`: the log on stderr has a JSON line for the
/// end of each `run`, `tenant` and `migration` span, with their fields and durations.
async fn a_debug_log_in_json_has_the_spans(m: &Model) {
    let (good, _bad) = two_tenants(m).await;
    let mut cmd = app(m);
    cmd.env("RUST_LOG", "mtnt=debug");
    let (code, stdout, stderr) = run(cmd, &["--log-format", "json", "migrate"]);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    let closes: Vec<Value> = stderr
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|log| log["fields"]["message"] == "close")
        .collect();
    let span = |name: &str| -> Vec<&Value> {
        closes
            .iter()
            .filter(|log| log["span"]["name"] == name)
            .collect()
    };
    let runs = span("run");
    assert_eq!(runs.len(), 1, "{stderr}");
    assert_eq!(runs[0]["span"]["command"], "migrate");
    assert!(runs[0]["span"]["run_id"].is_string(), "{}", runs[0]);
    assert!(runs[0]["fields"]["time.busy"].is_string(), "{}", runs[0]);

    let tenants = span("tenant");
    let tenant = tenants
        .iter()
        .find(|log| log["span"]["tenant"] == good.as_str())
        .unwrap_or_else(|| panic!("no tenant span of {good}: {stderr}"));
    assert!(tenant["span"]["model"].as_str().unwrap().contains('-'));
    let host = tenant["span"]["host"].as_str().unwrap();
    assert!(!host.is_empty(), "{tenant}");
    assert!(
        !host.contains('@'),
        "no user or password in the host: {host}"
    );
    assert!(tenant["fields"]["time.busy"].is_string(), "{tenant}");

    let migrations = span("migration");
    let projects = migrations
        .iter()
        .find(|log| log["span"]["order"] == PROJECTS && log["span"]["tenant"] == good.as_str())
        .unwrap_or_else(|| panic!("no migration span of add_projects in {good}: {stderr}"));
    assert_eq!(projects["span"]["migration"], "add_projects");
    assert!(projects["fields"]["time.busy"].is_string(), "{projects}");
}

/// One sample of the text format: `name{labels} value`.
fn sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
            let rest = rest.strip_suffix('}')?;
            let found: Vec<(&str, &str)> = rest
                .split(',')
                .filter(|p| !p.is_empty())
                .filter_map(|p| {
                    let (k, v) = p.split_once('=')?;
                    Some((k, v.trim_matches('"')))
                })
                .collect();
            (metric == name && labels.iter().all(|l| found.contains(l)))
                .then(|| value.parse().unwrap())
        })
}

/// `status --prometheus`: every gauge has its `# HELP` and `# TYPE`, every line parses,
/// and the counts are the fleet's.
async fn prometheus_gauges_of_the_fleet(m: &Model) {
    let _ = two_tenants(m).await;
    let (code, _, stderr) = run(app(m), &["migrate"]);
    assert_eq!(code, 1, "{stderr}");
    let (code, metrics, stderr) = run(app(m), &["status", "--prometheus"]);
    assert_eq!(code, 0, "{stderr}");
    let mut helped = HashSet::new();
    let mut typed = HashSet::new();
    for line in metrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            helped.insert(rest.split(' ').next().unwrap().to_owned());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert_eq!(kind, "gauge", "{line}");
            typed.insert(name.to_owned());
        } else {
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
            value
                .parse::<f64>()
                .unwrap_or_else(|e| panic!("{e}: {line}"));
            let name = series.split('{').next().unwrap();
            assert!(helped.contains(name) && typed.contains(name), "{line}");
        }
    }
    assert_eq!(
        sample(&metrics, "mtnt_tenants", &[("condition", "current")]),
        Some(1.0),
        "{metrics}"
    );
    // A failed migration stays `started` on MySQL, whose DDL commits at once.
    let failed = sample(&metrics, "mtnt_tenants", &[("condition", "failed")]).unwrap();
    let repair = sample(&metrics, "mtnt_tenants", &[("condition", "needs-repair")]).unwrap();
    assert_eq!(failed + repair, 1.0, "{metrics}");
    assert_eq!(
        sample(&metrics, "mtnt_tenants", &[("condition", "drifted")]),
        Some(0.0)
    );
    let at_orders: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("mtnt_tenants_at_order{"))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
        .sum();
    assert_eq!(at_orders, 2.0, "{metrics}");
    assert!(sample(&metrics, "mtnt_runs_running", &[]).is_some());
}

/// Chromium, unless it is missing here (outside CI only: there it must be installed).
fn chromium() -> Option<&'static str> {
    let path = "/usr/bin/chromium";
    if Path::new(path).exists() {
        return Some(path);
    }
    if std::env::var_os("CI").is_some() {
        panic!("chromium is not installed at {path}, and CI needs it (scripts/test installs it)");
    }
    eprintln!("skipping the browser check: chromium is not installed at {path}");
    None
}

/// `report --html`: one self-contained page naming the tenants and the failure (escaped),
/// which Chromium renders into a screenshot that is not blank.
async fn an_html_report_renders_in_a_browser(m: &Model) {
    let (good, bad) = two_tenants(m).await;
    let odd = m.tenant("odd");
    create_tenants(
        &m.migrator(fleet_to(ACCOUNTS)).await,
        std::slice::from_ref(&odd),
    )
    .await;
    let (code, _, stderr) = run(app(m), &["migrate"]);
    assert_eq!(code, 1, "{stderr}");
    // A table no other tenant at its order has: drift.
    m.execute(Place::Tenant(&odd), "CREATE TABLE odd_extra (id INTEGER)")
        .await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fleet.html");
    let (code, stdout, stderr) = run(
        app(m),
        &["report", "--html", file.to_str().unwrap(), "--drift"],
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("2/3 tenants current"), "{stdout}");
    let html = std::fs::read_to_string(&file).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.contains("2/3 tenants current"), "the summary line");
    let drift = &html[html.find("id=\"drift\"").expect("the drift table")..];
    assert!(
        drift.contains("odd_extra") && drift.contains(&odd),
        "{drift}"
    );
    assert!(html.contains("<svg"), "the chart");
    assert!(html.contains(&good) && html.contains(&bad), "the tenants");
    // The migrate run above, from the control journal: finished, with its tenants.
    let history = &html[html.find("<table id=\"history\">").expect("the last runs")..];
    assert!(history.contains("<td>migrate</td>"), "{history}");
    match m.kind().engine() {
        // Its DDL committed at once: the failed migration is left `started`.
        Engine::MySql => assert!(html.contains("needs repair"), "the tenant's condition"),
        _ => assert!(html.contains("no_such_table"), "the failure's error"),
    }
    for external in ["<script", "<link", "src=\"http", "href=\"http", "url("] {
        assert!(
            !html.contains(external),
            "no {external} in a self-contained page"
        );
    }
    // The server's error quotes the table; the page escapes what it quotes.
    if m.kind().engine() != Engine::Sqlite {
        assert!(!html.contains("\"no_such_table\"") || html.contains("&quot;"));
    }

    let Some(chromium) = chromium() else { return };
    let png = dir.path().join("out.png");
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            &format!("--screenshot={}", png.display()),
            "--window-size=1200,900",
            &format!("file://{}", file.display()),
        ])
        .output()
        .unwrap();
    assert!(
        png.exists(),
        "chromium made no screenshot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut pixels).unwrap();
    let channels = info.color_type.samples();
    let mut colours = HashSet::new();
    let mut not_white = 0usize;
    for px in pixels[..info.buffer_size()].chunks(channels) {
        let rgb = (px[0], px[1], px.get(2).copied().unwrap_or(px[0]));
        colours.insert(rgb);
        if rgb != (255, 255, 255) {
            not_white += 1;
        }
    }
    let total = (info.width * info.height) as usize;
    assert!(
        colours.len() > 20,
        "a blank screenshot: {} colours",
        colours.len()
    );
    assert!(
        not_white * 50 > total,
        "a blank screenshot: {not_white} of {total} pixels not white"
    );
}

/// No event, span or log line shows the password of the database URL: not the host the
/// spans name, not an error the server quotes.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_and_logs_never_show_the_password() {
    let db = mtnt_test_support::postgres::TestDb::create("events_password").await;
    let secret = "s3cr3t-Pw";
    let url = db
        .url
        .replacen("postgres@", &format!("postgres:{secret}@"), 1);
    assert!(url.contains(secret), "{url}");
    let app = || {
        let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("mtnt-portable-app"));
        cmd.env("DATABASE_URL", &url)
            .env("RUST_LOG", "mtnt=debug")
            .env_remove("MTNT_LOG")
            .args(["--no-progress", "--log-format", "json", "--format", "json"]);
        cmd
    };
    let (code, stdout, stderr) = run(app(), &["tenant", "create", "acme"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let (code, stdout2, stderr2) = run(app(), &["exec", "--sql", "SELECT * FROM no_such_table"]);
    assert_eq!(code, 1, "{stdout2}\n{stderr2}");
    let everything = [stdout, stderr, stdout2.clone(), stderr2].concat();
    assert!(!everything.contains(secret), "{everything}");
    let all = events(&stdout2);
    let failed = named(&all, "tenant_failed");
    assert_eq!(failed.len(), 1, "{stdout2}");
    assert_eq!(failed[0]["sqlstate"], "42P01");
    assert!(
        everything.contains("\"host\":\"127.0.0.1:5432\""),
        "{everything}"
    );
    db.drop_db().await;
}
