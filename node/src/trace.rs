//! Distributed tracing of NATS messages: OpenTelemetry spans exported over
//! OTLP/HTTP (Jaeger, Tempo and the OpenTelemetry Collector accept it).
//!
//! A message is traced when its publisher sent a W3C `traceparent` header
//! (NATS headers, `HPUB`) with the sampled flag set. The node that takes
//! the message from the client opens a `publish` span, child of the
//! publisher's span, for the time the bus routes it; a node that takes it
//! from a peer opens a `deliver` span, child of the sending node's span.
//! Each rewrites the parent-id in the `traceparent` it passes on to its own
//! span's id (same length, so the header block keeps its size), so the
//! subscriber's span hangs under the last node that handled the message and
//! one trace reads publisher → node → (node →) subscriber. Messages without
//! a sampled `traceparent` cost one branch (when export is off) or one scan
//! of their header block (when it is on) and are passed on unchanged.
//!
//! Export needs the `otel` cargo feature (on by default) and
//! `tracing.otlp_endpoint`; without either, [`Tracer`] is disabled.

use serde::{Deserialize, Serialize};

/// `[tracing]` in TOML.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TracingConfig {
    /// OTLP/HTTP collector base URL, e.g. `http://127.0.0.1:4318` (spans go
    /// to `/v1/traces` under it); empty: no export. `--otlp-endpoint`.
    pub otlp_endpoint: String,
    /// `service.name` of the exported spans (`service.instance.id` is the
    /// node name).
    pub service_name: String,
    /// Spans are sent at least this often.
    pub otlp_batch_ms: u64,
    /// Spans waiting to be sent; past it new spans are dropped (and the
    /// exporter logs how many), never buffered without bound.
    pub otlp_queue_spans_max: usize,
    /// Most spans in one export request.
    pub otlp_batch_spans_max: usize,
    /// An export request that takes longer is abandoned.
    pub otlp_timeout_ms: u64,
}

impl Default for TracingConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: String::new(),
            service_name: "catga".into(),
            otlp_batch_ms: 1000,
            otlp_queue_spans_max: 8192,
            otlp_batch_spans_max: 512,
            otlp_timeout_ms: 5000,
        }
    }
}

impl TracingConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.otlp_endpoint.is_empty() {
            return Ok(());
        }
        anyhow::ensure!(
            cfg!(feature = "otel"),
            "tracing.otlp_endpoint is set but this catga was built without the `otel` cargo feature"
        );
        anyhow::ensure!(
            self.otlp_endpoint.starts_with("http://") || self.otlp_endpoint.starts_with("https://"),
            "tracing.otlp_endpoint must be an http:// or https:// URL (OTLP/HTTP), got {:?}",
            self.otlp_endpoint
        );
        anyhow::ensure!(self.otlp_batch_ms >= 1, "tracing.otlp_batch_ms must be at least 1");
        anyhow::ensure!(self.otlp_queue_spans_max >= 1, "tracing.otlp_queue_spans_max must be at least 1");
        anyhow::ensure!(
            (1..=self.otlp_queue_spans_max).contains(&self.otlp_batch_spans_max),
            "tracing.otlp_batch_spans_max must be 1..=tracing.otlp_queue_spans_max"
        );
        anyhow::ensure!(self.otlp_timeout_ms >= 1, "tracing.otlp_timeout_ms must be at least 1");
        Ok(())
    }

    /// The URL spans are posted to.
    pub fn traces_url(&self) -> String {
        let base = self.otlp_endpoint.trim_end_matches('/');
        if base.ends_with("/v1/traces") {
            base.to_string()
        } else {
            format!("{base}/v1/traces")
        }
    }
}

/// A `traceparent` found in a NATS header block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    pub flags: u8,
    /// Where the parent-id's 16 hex digits sit in the block.
    parent_at: usize,
}

impl TraceParent {
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// The header block with the parent-id replaced by `span_id`.
    pub fn rewrite(&self, block: &[u8], span_id: [u8; 8]) -> Vec<u8> {
        let mut out = block.to_vec();
        hex_into(&span_id, &mut out[self.parent_at..self.parent_at + 16]);
        out
    }
}

/// Finds the first `traceparent` header (name case-insensitive) in a NATS
/// header block (`NATS/1.0…\r\n` then `Name: value\r\n` lines) and parses
/// it as W3C Trace Context says: `version-traceid-parentid-flags`, lower
/// case hex, version `ff` and all-zero ids invalid, a version 00 value
/// exactly 55 characters, later versions at least that with `-` after.
/// `None` when absent or invalid (an invalid one is passed on unchanged).
pub fn find_traceparent(block: &[u8]) -> Option<TraceParent> {
    let mut lines = block.split(|&b| b == b'\n');
    lines.next()?; // NATS/1.0 status line
    let mut offset = block.iter().position(|&b| b == b'\n')? + 1;
    for line in lines {
        let start = offset;
        offset += line.len() + 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        if !line[..colon].trim_ascii().eq_ignore_ascii_case(b"traceparent") {
            continue;
        }
        let raw = &line[colon + 1..];
        let lead = raw.len() - raw.trim_ascii_start().len();
        let value = raw.trim_ascii();
        return parse_value(value, start + colon + 1 + lead);
    }
    None
}

fn parse_value(v: &[u8], value_at: usize) -> Option<TraceParent> {
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let version = unhex::<1>(&v[0..2])?[0];
    if version == 0xff || (version == 0 && v.len() != 55) || (version != 0 && v.len() > 55 && v[55] != b'-') {
        return None;
    }
    let trace_id = unhex::<16>(&v[3..35])?;
    let parent_id = unhex::<8>(&v[36..52])?;
    let flags = unhex::<1>(&v[53..55])?[0];
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    Some(TraceParent { trace_id, parent_id, flags, parent_at: value_at + 36 })
}

fn unhex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    fn digit(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

fn hex_into(bytes: &[u8], out: &mut [u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 15)];
    }
}

/// What a node did with a traced message.
#[derive(Debug, Clone, Copy)]
pub enum Stage {
    /// Taken from a client of this node and routed by the bus.
    Publish,
    /// Taken from peer `from` (its node id) and delivered to this node's
    /// clients.
    Deliver { from: u64 },
}

/// Starts spans for traced messages; cheap to clone. The default is
/// disabled.
#[derive(Clone, Default)]
pub struct Tracer {
    #[cfg(feature = "otel")]
    inner: Option<std::sync::Arc<otel::Exporter>>,
}

/// An open span and the header block to pass on.
pub struct Span {
    headers: Vec<u8>,
    #[cfg(feature = "otel")]
    span: opentelemetry_sdk::trace::Span,
}

impl Span {
    /// The message's header block with `traceparent` pointing at this span.
    pub fn headers(&self) -> &[u8] {
        &self.headers
    }

    /// Ends the span, recording whether any subscriber took the message.
    pub fn end(self, delivered: bool) {
        #[cfg(feature = "otel")]
        {
            use opentelemetry::trace::Span as _;
            let mut span = self.span;
            span.set_attribute(opentelemetry::KeyValue::new("catga.delivered", delivered));
            span.end();
        }
        #[cfg(not(feature = "otel"))]
        let _ = delivered;
    }
}

impl Tracer {
    /// A tracer exporting to `config.otlp_endpoint`, or a disabled one when
    /// it is empty.
    pub fn start(config: &TracingConfig, node_name: &str) -> anyhow::Result<Self> {
        if config.otlp_endpoint.is_empty() {
            return Ok(Self::default());
        }
        #[cfg(feature = "otel")]
        {
            let exporter = otel::Exporter::start(config, node_name)?;
            tracing::info!(endpoint = %config.traces_url(), "exporting traces over OTLP/HTTP");
            Ok(Self { inner: Some(std::sync::Arc::new(exporter)) })
        }
        #[cfg(not(feature = "otel"))]
        {
            let _ = node_name;
            anyhow::bail!("tracing.otlp_endpoint is set but this catga was built without the `otel` cargo feature")
        }
    }

    /// A span for a message with header block `headers`, when tracing is on
    /// and the block carries a sampled `traceparent`.
    #[inline]
    pub fn span(&self, stage: Stage, subject: &[u8], headers: Option<&[u8]>, payload_len: usize) -> Option<Span> {
        #[cfg(feature = "otel")]
        if let (Some(exporter), Some(block)) = (&self.inner, headers) {
            return exporter.span(stage, subject, block, payload_len);
        }
        let _ = (stage, subject, headers, payload_len);
        None
    }

    /// Sends what is queued and stops the exporter (blocking; call from a
    /// blocking context).
    pub fn shutdown(&self) {
        #[cfg(feature = "otel")]
        if let Some(exporter) = &self.inner {
            exporter.shutdown();
        }
    }
}

#[cfg(feature = "otel")]
mod otel {
    use std::time::Duration;

    use opentelemetry::trace::{SpanContext, SpanKind, TraceContextExt, TraceFlags, TraceState, Tracer as _};
    use opentelemetry::{Context, KeyValue};
    use opentelemetry_otlp::WithExportConfig;
    use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracer, SdkTracerProvider};

    use super::{find_traceparent, Span, Stage, TracingConfig};

    pub struct Exporter {
        provider: SdkTracerProvider,
        tracer: SdkTracer,
    }

    impl Exporter {
        pub fn start(config: &TracingConfig, node_name: &str) -> anyhow::Result<Self> {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(config.traces_url())
                .with_timeout(Duration::from_millis(config.otlp_timeout_ms))
                .build()
                .map_err(|e| anyhow::anyhow!("OTLP exporter for {}: {e}", config.traces_url()))?;
            let batch = BatchConfigBuilder::default()
                .with_scheduled_delay(Duration::from_millis(config.otlp_batch_ms))
                .with_max_queue_size(config.otlp_queue_spans_max)
                .with_max_export_batch_size(config.otlp_batch_spans_max)
                .build();
            let processor = BatchSpanProcessor::builder(exporter).with_batch_config(batch).build();
            let resource = opentelemetry_sdk::Resource::builder()
                .with_service_name(config.service_name.clone())
                .with_attribute(KeyValue::new("service.instance.id", node_name.to_string()))
                .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                .build();
            let provider = SdkTracerProvider::builder().with_span_processor(processor).with_resource(resource).build();
            use opentelemetry::trace::TracerProvider as _;
            let tracer = provider.tracer("catga");
            Ok(Self { provider, tracer })
        }

        pub fn span(&self, stage: Stage, subject: &[u8], block: &[u8], payload_len: usize) -> Option<Span> {
            let parent = find_traceparent(block)?;
            if !parent.sampled() {
                return None;
            }
            let parent_cx = SpanContext::new(
                opentelemetry::trace::TraceId::from_bytes(parent.trace_id),
                opentelemetry::trace::SpanId::from_bytes(parent.parent_id),
                TraceFlags::new(parent.flags),
                true,
                TraceState::NONE,
            );
            let cx = Context::new().with_remote_span_context(parent_cx);
            let subject = String::from_utf8_lossy(subject).into_owned();
            // publish: a client's message taken in and routed (the node
            // serves the publisher); deliver: a peer's message handed to
            // this node's subscribers.
            let (name, kind) = match stage {
                Stage::Publish => ("publish", SpanKind::Server),
                Stage::Deliver { .. } => ("deliver", SpanKind::Consumer),
            };
            let mut attributes = vec![
                KeyValue::new("messaging.system", "nats"),
                KeyValue::new("messaging.destination.name", subject),
                KeyValue::new("messaging.message.body.size", payload_len as i64),
            ];
            if let Stage::Deliver { from } = stage {
                attributes.push(KeyValue::new("catga.from_node", format!("{from}")));
            }
            let span = self
                .tracer
                .span_builder(name)
                .with_kind(kind)
                .with_attributes(attributes)
                .start_with_context(&self.tracer, &cx);
            use opentelemetry::trace::Span as _;
            let id = span.span_context().span_id().to_bytes();
            Some(Span { headers: parent.rewrite(block, id), span })
        }

        pub fn shutdown(&self) {
            if let Err(e) = self.provider.shutdown() {
                tracing::warn!(cause = %e, "trace exporter shutdown");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    fn block(lines: &[&str]) -> Vec<u8> {
        let mut b = b"NATS/1.0\r\n".to_vec();
        for l in lines {
            b.extend_from_slice(l.as_bytes());
            b.extend_from_slice(b"\r\n");
        }
        b.extend_from_slice(b"\r\n");
        b
    }

    #[test]
    fn finds_and_parses_traceparent() {
        let b = block(&["X-A: 1", &format!("TraceParent:  {TP}"), "tracestate: k=v"]);
        let tp = find_traceparent(&b).expect("found");
        assert_eq!(tp.trace_id[..2], [0x0a, 0xf7]);
        assert_eq!(tp.parent_id, [0xb7, 0xad, 0x6b, 0x71, 0x69, 0x20, 0x33, 0x31]);
        assert!(tp.sampled());
        let out = tp.rewrite(&b, [0xde, 0xad, 0xbe, 0xef, 0, 1, 2, 3]);
        assert_eq!(out.len(), b.len());
        let want = block(&[
            "X-A: 1",
            "TraceParent:  00-0af7651916cd43dd8448eb211c80319c-deadbeef00010203-01",
            "tracestate: k=v",
        ]);
        assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(&want));
    }

    #[test]
    fn unsampled_flag_is_read() {
        let b = block(&["traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"]);
        assert!(!find_traceparent(&b).expect("valid").sampled());
    }

    #[test]
    fn invalid_values_are_ignored() {
        for v in [
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0", // short
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01", // upper case
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", // version ff
            "00-00000000000000000000000000000000-b7ad6b7169203331-01", // zero trace id
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01", // zero parent
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x", // 00 with extra
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01x", // later version, no dash
            "00_0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", // separator
        ] {
            assert_eq!(find_traceparent(&block(&[&format!("traceparent: {v}")])), None, "{v}");
        }
        // A later version may carry more fields after a dash.
        let later = block(&["traceparent: 01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-ab"]);
        assert!(find_traceparent(&later).is_some());
        assert_eq!(find_traceparent(&block(&["traceparents: x"])), None);
        assert_eq!(find_traceparent(b"NATS/1.0 503\r\n\r\n"), None);
        assert_eq!(find_traceparent(b""), None);
    }

    #[test]
    fn traces_url_appends_the_signal_path_once() {
        let mut c = TracingConfig { otlp_endpoint: "http://h:4318".into(), ..Default::default() };
        assert_eq!(c.traces_url(), "http://h:4318/v1/traces");
        c.otlp_endpoint = "http://h:4318/".into();
        assert_eq!(c.traces_url(), "http://h:4318/v1/traces");
        c.otlp_endpoint = "http://h:4318/v1/traces".into();
        assert_eq!(c.traces_url(), "http://h:4318/v1/traces");
        c.otlp_endpoint = "h:4318".into();
        assert!(c.validate().is_err());
    }
}
