//! Distributed tracing: a W3C `traceparent` in NATS headers becomes spans
//! exported over OTLP/HTTP, and one trace runs publisher → node → node →
//! subscriber. The collector is a real OTLP/HTTP endpoint (protobuf
//! `ExportTraceServiceRequest` on `POST /v1/traces`) run by the test.
#![cfg(feature = "otel")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use catga_node::bus::Publisher;
use common::{eventually, TestCluster, TestNode};
use futures_util::StreamExt;
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use parking_lot::Mutex;
use prost::Message as _;
use tokio::time::timeout;

const T: Duration = Duration::from_secs(10);

/// One exported span, as the collector received it.
#[derive(Debug, Clone)]
struct Got {
    node: String,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent: Vec<u8>,
    attrs: Vec<(String, String)>,
}

impl Got {
    fn attr(&self, key: &str) -> Option<&str> {
        self.attrs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// An OTLP/HTTP trace receiver on 127.0.0.1:0.
struct Collector {
    url: String,
    spans: Arc<Mutex<Vec<Got>>>,
}

impl Collector {
    async fn start() -> Self {
        let spans: Arc<Mutex<Vec<Got>>> = Arc::default();
        let sink = spans.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let sink = sink.clone();
                async move {
                    assert_eq!(headers.get("content-type").unwrap(), "application/x-protobuf");
                    let req = ExportTraceServiceRequest::decode(body).expect("a protobuf ExportTraceServiceRequest");
                    let mut got = sink.lock();
                    for rs in req.resource_spans {
                        let attrs = rs.resource.map(|r| attrs_of(&r.attributes)).unwrap_or_default();
                        let node = attrs.iter().find(|(k, _)| k == "service.instance.id").map(|(_, v)| v.clone());
                        let service = attrs.iter().find(|(k, _)| k == "service.name").map(|(_, v)| v.clone());
                        assert_eq!(service.as_deref(), Some("catga"));
                        for ss in rs.scope_spans {
                            for s in ss.spans {
                                got.push(Got {
                                    node: node.clone().unwrap_or_default(),
                                    name: s.name,
                                    trace_id: s.trace_id,
                                    span_id: s.span_id,
                                    parent: s.parent_span_id,
                                    attrs: attrs_of(&s.attributes),
                                });
                            }
                        }
                    }
                    (
                        [("content-type", "application/x-protobuf")],
                        ExportTraceServiceResponse { partial_success: None }.encode_to_vec(),
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { url, spans }
    }

    fn of_trace(&self, trace_id: &[u8]) -> Vec<Got> {
        self.spans.lock().iter().filter(|s| s.trace_id == trace_id).cloned().collect()
    }
}

fn attrs_of(kvs: &[opentelemetry_proto::tonic::common::v1::KeyValue]) -> Vec<(String, String)> {
    kvs.iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => s.clone(),
                Some(Value::IntValue(i)) => i.to_string(),
                Some(Value::BoolValue(b)) => b.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), v)
        })
        .collect()
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

/// (trace id, parent id, flags) of a received message's `traceparent`.
fn traceparent(m: &async_nats::Message) -> (Vec<u8>, Vec<u8>, String) {
    let v = m.headers.as_ref().and_then(|h| h.get("traceparent")).expect("traceparent passed on").to_string();
    let parts: Vec<&str> = v.split('-').collect();
    assert_eq!(parts.len(), 4, "{v}");
    assert_eq!(parts[0], "00");
    (hex(parts[1]), hex(parts[2]), parts[3].to_string())
}

fn headers(traceparent: &str) -> async_nats::HeaderMap {
    let mut h = async_nats::HeaderMap::new();
    h.insert("traceparent", traceparent);
    h.insert("tracestate", "vendor=kept");
    h
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";
const UNSAMPLED_TRACE: &str = "11112222333344445555666677778888";

#[tokio::test]
async fn one_trace_spans_publisher_nodes_and_subscriber() {
    let collector = Collector::start().await;
    let c = TestCluster::start_with(2, |_, cfg| {
        cfg.tracing.otlp_endpoint = collector.url.clone();
        cfg.tracing.otlp_batch_ms = 20;
    })
    .await;
    let (n0, n1) = (&c.nodes[0], &c.nodes[1]);
    let local_sub = n0.client().await;
    let remote_sub = n1.client().await;
    let mut local = local_sub.subscribe("orders.created").await.unwrap();
    let mut remote = remote_sub.subscribe("orders.created").await.unwrap();
    local_sub.flush().await.unwrap();
    remote_sub.flush().await.unwrap();
    let bus = n0.node.bus.clone();
    let mut p = Publisher::new(16);
    eventually(T, "n1's interest on n0", || {
        bus.has_interest(&mut p, b"orders.created") && bus.subscription_count() == 2
    })
    .await;

    let publisher = n0.client().await;
    // Not sampled: passed on untouched, no span.
    let unsampled = format!("00-{UNSAMPLED_TRACE}-{PARENT}-00");
    publisher.publish_with_headers("orders.created", headers(&unsampled), "u".into()).await.unwrap();
    // No headers at all: none added.
    publisher.publish("orders.created", "plain".into()).await.unwrap();
    let sampled = format!("00-{TRACE}-{PARENT}-01");
    publisher.publish_with_headers("orders.created", headers(&sampled), "s".into()).await.unwrap();
    publisher.flush().await.unwrap();

    let mut at = Vec::new();
    for sub in [&mut local, &mut remote] {
        let u = timeout(T, sub.next()).await.unwrap().unwrap();
        assert_eq!(u.headers.as_ref().unwrap().get("traceparent").unwrap().as_str(), unsampled);
        let plain = timeout(T, sub.next()).await.unwrap().unwrap();
        assert_eq!(plain.payload, "plain");
        assert!(plain.headers.is_none(), "no headers invented: {:?}", plain.headers);
        let s = timeout(T, sub.next()).await.unwrap().unwrap();
        assert_eq!(s.payload, "s");
        assert_eq!(s.headers.as_ref().unwrap().get("tracestate").unwrap().as_str(), "vendor=kept");
        let (trace, parent, flags) = traceparent(&s);
        assert_eq!(trace, hex(TRACE), "same trace");
        assert_eq!(flags, "01");
        assert_ne!(parent, hex(PARENT), "the parent is now a node's span");
        at.push(parent);
    }

    // n0's publish span (child of the publisher's) and n1's deliver span
    // (child of n0's) both reach the collector.
    let trace = hex(TRACE);
    eventually(T, "2 spans exported", || collector.of_trace(&trace).len() >= 2).await;
    let spans = collector.of_trace(&trace);
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let publish = spans.iter().find(|s| s.name == "publish").expect("a publish span");
    let deliver = spans.iter().find(|s| s.name == "deliver").expect("a deliver span");
    assert_eq!(publish.node, "n0");
    assert_eq!(publish.parent, hex(PARENT));
    assert_eq!(publish.attr("messaging.system"), Some("nats"));
    assert_eq!(publish.attr("messaging.destination.name"), Some("orders.created"));
    assert_eq!(publish.attr("messaging.message.body.size"), Some("1"));
    assert_eq!(publish.attr("catga.delivered"), Some("true"));
    assert_eq!(deliver.node, "n1");
    assert_eq!(deliver.parent, publish.span_id, "n1's span hangs under n0's");
    assert_eq!(deliver.attr("catga.from_node"), Some(n0.node.id.to_string().as_str()));
    // Each subscriber's parent is the last node that handled the message.
    assert_eq!(at[0], publish.span_id, "the local subscriber's parent is n0's span");
    assert_eq!(at[1], deliver.span_id, "the remote subscriber's parent is n1's span");
    // Nothing of the unsampled trace was exported (n0 exports in order, and
    // its sampled span is already in).
    assert!(collector.of_trace(&hex(UNSAMPLED_TRACE)).is_empty());
}

#[tokio::test]
async fn messages_flow_when_the_collector_is_down() {
    // A port with nothing listening: exports fail, messages do not.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let node = TestNode::start_with(|c| {
        c.tracing.otlp_endpoint = url;
        c.tracing.otlp_batch_ms = 10;
        c.tracing.otlp_timeout_ms = 100;
    })
    .await;
    let client = node.client().await;
    let mut sub = client.subscribe("a").await.unwrap();
    client.flush().await.unwrap();
    for i in 0..100 {
        client
            .publish_with_headers("a", headers(&format!("00-{TRACE}-{PARENT}-01")), format!("{i}").into())
            .await
            .unwrap();
    }
    client.flush().await.unwrap();
    for i in 0..100 {
        let m = timeout(T, sub.next()).await.unwrap().unwrap();
        assert_eq!(m.payload, format!("{i}"));
        assert_eq!(traceparent(&m).0, hex(TRACE));
    }
    node.node.shutdown().await;
}
