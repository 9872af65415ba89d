//! The `otel` feature: mtnt's spans (`run`, `tenant`, `migration`) exported over OTLP/HTTP
//! (protobuf) to the collector `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) names, as `OTEL_SERVICE_NAME` (else the binary's
//! name, else `mtnt`).
//!
//! Only spans go out, with their fields as attributes: not the log's events, whose messages
//! may quote a database error (the stderr log cleans those of passwords; an exporter cannot).

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing::level_filters::LevelFilter;
use tracing::span;
use tracing::subscriber::Interest;
use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::{Context, Filter, Layer};
use tracing_subscriber::registry::LookupSpan;

use super::say::errln;

/// The tracer provider while the command runs: dropping it (or [`Exporter::shutdown`])
/// exports the spans still in the batch before the process exits.
pub(crate) struct Exporter {
    provider: Option<SdkTracerProvider>,
}

impl Exporter {
    /// Exports what is left and stops the exporter; a failure is a warning on stderr.
    pub(crate) fn shutdown(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(e) = provider.shutdown() {
                errln!("warning: could not export the spans over OTLP: {e}");
            }
        }
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The layer that exports mtnt's spans, and the provider to shut down at the end; `None`
/// when no OTLP endpoint is set (or `OTEL_SDK_DISABLED=true`), or the exporter cannot be
/// built (a warning says why).
pub(crate) fn layer<S>() -> Option<(impl Layer<S>, Exporter)>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    let set = |var: &str| std::env::var(var).is_ok_and(|v| !v.trim().is_empty());
    if !set("OTEL_EXPORTER_OTLP_ENDPOINT") && !set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        return None;
    }
    if std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return None;
    }
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
    {
        Ok(exporter) => exporter,
        Err(e) => {
            errln!("warning: no OTLP export of the spans: {e}");
            return None;
        }
    };
    // OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES come in through the SDK's detectors.
    let mut resource = Resource::builder();
    if !set("OTEL_SERVICE_NAME") {
        resource = resource.with_service_name(default_service_name());
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    let tracer = provider.tracer("mtnt");
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_threads(false)
        // mtnt's spans, at every level: the stderr log's filter does not apply here.
        .with_filter(Fresh(filter_fn(|meta| {
            meta.is_span() && (meta.target() == "mtnt" || meta.target().starts_with("mtnt::"))
        })));
    Some((
        layer,
        Exporter {
            provider: Some(provider),
        },
    ))
}

/// The binary's file name without its extension, else `mtnt`.
fn default_service_name() -> String {
    std::env::current_exe()
        .ok()
        .or_else(|| std::env::args_os().next().map(Into::into))
        .and_then(|path| path.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "mtnt".to_owned())
}

/// A per-layer filter `F` that never lets a callsite cache `Interest::always`, so that
/// `enabled` runs right before each span or event it decides on.
///
/// tracing-subscriber 0.3 hands a per-layer filter's decision from `enabled` to the span's
/// creation through a thread-local; a callsite with `Interest::always` skips `enabled`, so
/// its span takes whatever the last `enabled` call left there, such as the `log` records
/// sqlx checks after each query (disabled for the log): the `tenant` and `migration`
/// spans went missing from both layers
/// (<https://github.com/tokio-rs/tracing/issues/2519>). `sometimes` costs one filter
/// call per span.
pub(crate) struct Fresh<F>(pub(crate) F);

impl<S, F: Filter<S>> Filter<S> for Fresh<F> {
    fn enabled(&self, meta: &Metadata<'_>, cx: &Context<'_, S>) -> bool {
        self.0.enabled(meta, cx)
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        let interest = self.0.callsite_enabled(meta);
        if interest.is_always() {
            Interest::sometimes()
        } else {
            interest
        }
    }

    fn event_enabled(&self, event: &Event<'_>, cx: &Context<'_, S>) -> bool {
        self.0.event_enabled(event, cx)
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        self.0.max_level_hint()
    }

    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        self.0.on_new_span(attrs, id, ctx);
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, ctx: Context<'_, S>) {
        self.0.on_record(id, values, ctx);
    }

    fn on_enter(&self, id: &span::Id, ctx: Context<'_, S>) {
        self.0.on_enter(id, ctx);
    }

    fn on_exit(&self, id: &span::Id, ctx: Context<'_, S>) {
        self.0.on_exit(id, ctx);
    }

    fn on_close(&self, id: span::Id, ctx: Context<'_, S>) {
        self.0.on_close(id, ctx);
    }
}
