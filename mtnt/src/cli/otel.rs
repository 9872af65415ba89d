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
use tracing::Subscriber;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::Layer;
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
        .with_filter(filter_fn(|meta| {
            meta.is_span() && (meta.target() == "mtnt" || meta.target().starts_with("mtnt::"))
        }));
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
