//! The `otel` feature: the test app, pointed by `OTEL_EXPORTER_OTLP_ENDPOINT` at an
//! in-process OTLP/HTTP collector on loopback, exports its `run`, `tenant` and `migration`
//! spans with their fields as attributes, and no password of the database URL.
//!
//! `cargo test --features otel --test otel` (PostgreSQL on 127.0.0.1:5432, as the rest of
//! the suite).
#![cfg(all(feature = "otel", feature = "postgres"))]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use mtnt_test_support::cli::{run_expecting, test_app};
use mtnt_test_support::postgres::TestDb;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const PASSWORD: &str = "otel-secret-pw";

/// One request the collector received.
#[derive(Debug, Clone)]
struct Received {
    request_line: String,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

type Inbox = Arc<Mutex<Vec<Received>>>;

/// A tiny OTLP/HTTP collector: HTTP/1.1 with keep-alive, each request kept and answered
/// `200 OK` with an empty `ExportTraceServiceResponse` (zero bytes of protobuf).
async fn start_collector() -> (u16, Inbox) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let inbox = Inbox::default();
    let kept = inbox.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(serve(stream, kept.clone()));
        }
    });
    (port, inbox)
}

async fn serve(mut stream: TcpStream, inbox: Inbox) {
    let mut buf = Vec::new();
    loop {
        // The head: up to the blank line.
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap_or_default().to_owned();
        let headers: BTreeMap<String, String> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        assert!(
            !headers
                .get("transfer-encoding")
                .is_some_and(|v| v.contains("chunked")),
            "the collector reads Content-Length bodies only: {headers:?}"
        );
        let length: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        buf.drain(..head_end + 4);
        while buf.len() < length {
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body: Vec<u8> = buf.drain(..length).collect();
        inbox.lock().unwrap().push(Received {
            request_line,
            headers,
            body,
        });
        let response =
            "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
        if stream.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// `url` with the password [`PASSWORD`] for its user.
fn with_password(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let (user, host) = rest.split_once('@').expect("a user in the test URL");
    let user = user.split(':').next().unwrap_or(user);
    format!("{scheme}://{user}:{PASSWORD}@{host}")
}

/// `text` without its ANSI colours.
fn plain(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters, up to the final letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// One exported span, flattened.
#[derive(Debug)]
struct SpanSeen {
    service: String,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent: Vec<u8>,
    attributes: BTreeMap<String, String>,
}

fn text(value: &Option<AnyValue>) -> String {
    match value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), text(&kv.value)))
        .collect()
}

fn spans_of(received: &[Received]) -> Vec<SpanSeen> {
    let mut spans = Vec::new();
    for r in received {
        let request = ExportTraceServiceRequest::decode(r.body.as_slice())
            .unwrap_or_else(|e| panic!("not an ExportTraceServiceRequest ({e}): {r:?}"));
        for resource_spans in request.resource_spans {
            let service = resource_spans
                .resource
                .as_ref()
                .map(|r| attributes(&r.attributes))
                .and_then(|a| a.get("service.name").cloned())
                .unwrap_or_default();
            for scope_spans in resource_spans.scope_spans {
                for span in scope_spans.spans {
                    spans.push(SpanSeen {
                        service: service.clone(),
                        name: span.name.clone(),
                        trace_id: span.trace_id.clone(),
                        span_id: span.span_id.clone(),
                        parent: span.parent_span_id.clone(),
                        attributes: attributes(&span.attributes),
                    });
                }
            }
        }
    }
    spans
}

fn attr<'a>(span: &'a SpanSeen, key: &str) -> Option<&'a str> {
    span.attributes.get(key).map(String::as_str)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spans_go_to_the_otlp_endpoint_without_the_password() {
    let (port, inbox) = start_collector().await;
    let db = TestDb::create("otel").await;
    let url = with_password(&db.url);
    let endpoint = format!("http://127.0.0.1:{port}");
    let app = |service: Option<&str>| {
        let mut cmd = test_app(&url);
        for var in [
            "OTEL_SERVICE_NAME",
            "OTEL_RESOURCE_ATTRIBUTES",
            "OTEL_SDK_DISABLED",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_HEADERS",
            "OTEL_EXPORTER_OTLP_COMPRESSION",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint);
        if let Some(service) = service {
            cmd.env("OTEL_SERVICE_NAME", service);
        }
        cmd
    };
    // The binary's name is the service's by default; OTEL_SERVICE_NAME names it otherwise.
    // `migrate` on the empty database applies the public migrations (no tenant yet), then
    // `tenant create` applies every tenant migration in acme.
    let migrate = app(Some("billing-migrations"));
    let create = app(None);
    // With the stderr log at debug too: each layer has its own filter, and the log still
    // shows the spans that the exporter sends.
    let (mut migrate, mut create) = (migrate, create);
    migrate.env("RUST_LOG", "mtnt=debug");
    create.env("RUST_LOG", "mtnt=debug");
    let stderr = tokio::task::spawn_blocking(move || {
        run_expecting(migrate, &["--no-progress", "migrate"], 0);
        run_expecting(create, &["--no-progress", "tenant", "create", "acme"], 0).1
    })
    .await
    .expect("the app ran");
    let stderr = plain(&stderr);
    let closed = |span: &str| {
        stderr
            .lines()
            .filter(|l| l.contains(&format!("{span}{{")) && l.contains(" close "))
            .count()
    };
    assert!(closed("migration") >= 3, "{stderr}");
    assert!(closed("tenant") >= 1, "{stderr}");
    assert!(!stderr.contains(PASSWORD), "{stderr}");

    // Each command shut its exporter down before it exited: everything is in.
    let received = inbox.lock().unwrap().clone();
    assert!(!received.is_empty(), "the collector received nothing");
    for r in &received {
        assert_eq!(r.request_line, "POST /v1/traces HTTP/1.1", "{r:?}");
        assert_eq!(
            r.headers.get("content-type").map(String::as_str),
            Some("application/x-protobuf"),
            "{:?}",
            r.headers
        );
        assert_eq!(r.headers.get("content-encoding"), None, "{:?}", r.headers);
        let raw = String::from_utf8_lossy(&r.body);
        assert!(
            !raw.contains(PASSWORD),
            "the password went out over OTLP: {raw:?}"
        );
        assert!(!raw.contains(&url), "the URL went out over OTLP");
    }
    let spans = spans_of(&received);
    let summary: Vec<_> = spans
        .iter()
        .map(|s| (&s.service, &s.name, &s.attributes))
        .collect();

    let run = |command: &str| {
        spans
            .iter()
            .find(|s| s.name == "run" && attr(s, "command") == Some(command))
            .unwrap_or_else(|| panic!("no run span of {command}: {summary:#?}"))
    };
    let (created, migrated) = (run("tenant create"), run("migrate"));
    assert_eq!(created.service, "mtnt-test-app");
    assert_eq!(migrated.service, "billing-migrations");
    for r in [created, migrated] {
        assert_eq!(attr(r, "host"), Some("127.0.0.1:5432"), "{summary:#?}");
        assert!(r.parent.is_empty(), "the run span is the root: {r:?}");
    }
    // A fleet run has a run id.
    assert!(
        attr(migrated, "run_id").is_some_and(|id| !id.is_empty()),
        "{migrated:?}"
    );

    // The public migrations ran in the migrate run, on no tenant.
    let public = spans
        .iter()
        .find(|s| s.name == "migration" && attr(s, "migration") == Some("create_plans"))
        .unwrap_or_else(|| panic!("no migration span of create_plans: {summary:#?}"));
    assert_eq!(public.trace_id, migrated.trace_id, "{public:?}");
    assert_eq!(public.parent, migrated.span_id, "{public:?}");
    assert_eq!(attr(public, "tenant"), None, "{public:?}");
    assert_eq!(attr(public, "order"), Some("202401010001"), "{public:?}");
    assert_eq!(attr(public, "reverting"), Some("false"), "{public:?}");

    // Creating acme worked on it in a tenant span of its run, each tenant migration in a
    // migration span of its own inside.
    let tenant = spans
        .iter()
        .find(|s| s.name == "tenant" && attr(s, "tenant") == Some("acme"))
        .unwrap_or_else(|| panic!("no tenant span of acme: {summary:#?}"));
    assert_eq!(tenant.trace_id, created.trace_id, "{tenant:?}");
    assert_eq!(tenant.parent, created.span_id, "{tenant:?}");
    assert_eq!(attr(tenant, "model"), Some("postgres-schema"), "{tenant:?}");
    assert_eq!(attr(tenant, "host"), Some("127.0.0.1:5432"), "{tenant:?}");
    let migrations: Vec<&SpanSeen> = spans
        .iter()
        .filter(|s| s.name == "migration" && s.parent == tenant.span_id)
        .collect();
    let names: Vec<_> = migrations.iter().map(|s| attr(s, "migration")).collect();
    assert_eq!(
        names,
        [
            Some("create_accounts"),
            Some("create_invoices"),
            Some("add_account_names")
        ],
        "{summary:#?}"
    );
    let accounts = migrations
        .iter()
        .find(|s| attr(s, "migration") == Some("create_accounts"))
        .unwrap_or_else(|| panic!("no migration span of create_accounts: {summary:#?}"));
    assert_eq!(attr(accounts, "tenant"), Some("acme"), "{accounts:?}");
    assert_eq!(
        attr(accounts, "order"),
        Some("202401010002"),
        "{accounts:?}"
    );
    assert_eq!(attr(accounts, "reverting"), Some("false"), "{accounts:?}");

    db.drop_db().await;
}
