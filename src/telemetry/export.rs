//! The OTLP exporter: built from `telemetry.otlp` at start, batching finished spans on the
//! runtime and sending them to the collector; an export failure is logged once per outage,
//! never retried into memory without bound (the batch queue drops beyond its size).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use hyper_util::client::legacy::connect::HttpConnector;
use opentelemetry::InstrumentationScope;
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::runtime::Tokio;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use opentelemetry_sdk::trace::{BatchConfigBuilder, SpanData, SpanExporter, SpanProcessor};
use opentelemetry_sdk::Resource;
use rustls_pki_types::CertificateDer;

use super::OtlpSettings;
use crate::config::model::OtlpProtocol;

/// The exporter in use, if any: spans are built only while it is set.
static PIPELINE: ArcSwapOption<BatchSpanProcessor<Tokio>> = ArcSwapOption::const_empty();

/// How long one export may take before it is given up.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Spans waiting to be exported, at most: more are dropped (and counted) while the
/// collector is slow or down, so memory stays bounded.
const MAX_QUEUED: usize = 8192;

/// Spans handed to the batch processor and not yet through an export. Kept here because the
/// processor drops spans past its queue silently; counting them here lets the relay count
/// every dropped span.
static QUEUED: AtomicUsize = AtomicUsize::new(0);

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("telemetry.otlp: {0}")]
    Build(#[from] opentelemetry_otlp::ExporterBuildError),
    #[error("telemetry.otlp: TLS setup failed: {0}")]
    Tls(#[from] rustls::Error),
}

pub(super) fn active() -> bool {
    PIPELINE.load().is_some()
}

pub(super) fn scope() -> InstrumentationScope {
    InstrumentationScope::builder("hookrelay").with_version(env!("CARGO_PKG_VERSION")).build()
}

pub(super) fn send(span: SpanData) {
    if let Some(pipeline) = PIPELINE.load().as_ref() {
        if QUEUED.fetch_add(1, Ordering::Relaxed) >= MAX_QUEUED {
            QUEUED.fetch_sub(1, Ordering::Relaxed);
            ::metrics::counter!(crate::metrics::SPANS_DROPPED).increment(1);
            return;
        }
        pipeline.on_end(span);
    }
}

/// The running exporter; [`Exporting::flush`] sends what is batched and stops it.
pub struct Exporting {
    processor: Arc<BatchSpanProcessor<Tokio>>,
}

impl Exporting {
    /// Sends the spans still batched, until `deadline` at most, and stops exporting. Spans
    /// not sent by then are dropped: a slow collector never holds up the relay's exit.
    pub async fn flush(self, deadline: tokio::time::Instant) {
        // Only this exporter's: a relay started after it in the same process has its own.
        let ours = Some(self.processor.clone());
        PIPELINE.compare_and_swap(&ours, None);
        let processor = self.processor;
        // The processor waits on its own task's answer by blocking the calling thread: a
        // thread of its own, left behind at the deadline (the runtime would wait for it).
        let (done, flushed) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new().name("hookrelay-otlp-flush".into()).spawn(move || {
            let _ = done.send(processor.shutdown_with_timeout(EXPORT_TIMEOUT));
        });
        if spawned.is_err() {
            return;
        }
        match tokio::time::timeout_at(deadline, flushed).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(err))) => tracing::warn!(error = %err, "could not send the last spans"),
            Ok(Err(_)) => {}
            Err(_) => {
                let spans = QUEUED.load(Ordering::Relaxed);
                if spans > 0 {
                    tracing::warn!(spans, "the last spans were not sent within limits.shutdown_grace; dropped");
                }
            }
        }
    }
}

/// Starts exporting to the collector `settings` names; `None` leaves telemetry off.
/// Must run on the Tokio runtime (the batch task and the gRPC channel live there).
pub fn install(settings: Option<&OtlpSettings>, extra_roots: &[CertificateDer<'static>]) -> Result<Option<Exporting>, TelemetryError> {
    let Some(settings) = settings else {
        return Ok(None);
    };
    let mut exporter = Logged { inner: build_exporter(settings, extra_roots)?, failing: AtomicBool::new(false) };
    exporter.set_resource(
        &Resource::builder_empty()
            .with_service_name(settings.service_name.clone())
            .with_attribute(opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build(),
    );
    let batching = BatchConfigBuilder::default()
        // Room beyond `MAX_QUEUED`, so the processor itself never drops a span uncounted.
        .with_max_queue_size(MAX_QUEUED * 2)
        .with_max_export_batch_size(512)
        .with_scheduled_delay(Duration::from_secs(1))
        .build();
    let processor = Arc::new(BatchSpanProcessor::builder(exporter, Tokio).with_batch_config(batching).build());
    PIPELINE.store(Some(processor.clone()));
    // The endpoint without its query, which may carry a key.
    let shown = settings.endpoint.split('?').next().unwrap_or_default();
    tracing::info!(endpoint = %shown, protocol = ?settings.protocol, "exporting spans over OTLP");
    Ok(Some(Exporting { processor }))
}

fn build_exporter(
    settings: &OtlpSettings,
    extra_roots: &[CertificateDer<'static>],
) -> Result<opentelemetry_otlp::SpanExporter, TelemetryError> {
    let builder = opentelemetry_otlp::SpanExporter::builder();
    let exporter = match settings.protocol {
        OtlpProtocol::HttpProtobuf => {
            let mut http = HttpConnector::new();
            http.enforce_http(false);
            http.set_nodelay(true);
            let connector = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(crate::tls::client_config(extra_roots)?)
                .https_or_http()
                .enable_http1()
                .wrap_connector(http);
            let headers: HashMap<String, String> = settings.headers.iter().cloned().collect();
            builder
                .with_http()
                .with_http_client(opentelemetry_http::hyper::HyperClient::new(connector, EXPORT_TIMEOUT, None))
                .with_protocol(Protocol::HttpBinary)
                .with_endpoint(settings.endpoint.clone())
                .with_timeout(EXPORT_TIMEOUT)
                .with_headers(headers)
                .build()?
        }
        OtlpProtocol::Grpc => {
            let headers: http::HeaderMap = settings
                .headers
                .iter()
                .filter_map(|(name, value)| Some((http::HeaderName::from_bytes(name.as_bytes()).ok()?, value.parse().ok()?)))
                .collect();
            let mut builder = builder
                .with_tonic()
                .with_endpoint(settings.endpoint.clone())
                .with_timeout(EXPORT_TIMEOUT)
                .with_metadata(opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(headers));
            if settings.endpoint.starts_with("https:") {
                builder = builder.with_tls_config(opentelemetry_otlp::tonic_types::transport::ClientTlsConfig::new().with_webpki_roots());
            }
            builder.build()?
        }
    };
    Ok(exporter)
}

/// The exporter, saying when exports start failing and when they work again.
#[derive(Debug)]
struct Logged {
    inner: opentelemetry_otlp::SpanExporter,
    failing: AtomicBool,
}

impl SpanExporter for Logged {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        let result = self.inner.export(batch).await;
        let _ = QUEUED.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |queued| Some(queued.saturating_sub(spans)));
        match &result {
            Err(err) => {
                ::metrics::counter!(crate::metrics::SPANS_DROPPED).increment(spans as u64);
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %err, spans, "could not export spans; those are dropped until the collector answers");
                }
            }
            Ok(()) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("exporting spans again");
                }
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}
