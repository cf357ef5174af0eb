//! Plain HTTP beside gRPC on the client address: `GET /metrics`
//! (Prometheus text) and `GET /health` (200 when the member has a leader and
//! has applied what it knows to be committed, 503 otherwise).

use axum::Router;
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::node::Node;

/// How far the applied index may trail the commit index for `/health` to
/// still call the member caught up.
const HEALTHY_APPLY_LAG: u64 = 1000;

/// The HTTP routes, to merge with the gRPC router.
pub fn router(node: Node, prometheus: Option<PrometheusHandle>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let body = prometheus
                    .as_ref()
                    .map(PrometheusHandle::render)
                    .unwrap_or_default();
                async move { body }
            }),
        )
        .route("/health", get(move || health(node.clone())))
}

async fn health(node: Node) -> (StatusCode, String) {
    let status = node.status();
    let leader = status.leader();
    let commit = status.commit();
    let applied = node.applied_index();
    let body = format!(
        "{{\"member_id\":{},\"leader\":{leader},\"term\":{},\"commit_index\":{commit},\"applied_index\":{applied}}}\n",
        node.id(),
        status.term()
    );
    if leader == 0 || applied + HEALTHY_APPLY_LAG < commit {
        (StatusCode::SERVICE_UNAVAILABLE, body)
    } else {
        (StatusCode::OK, body)
    }
}

/// tonic refuses a request larger than `--max-request-bytes` with
/// OUT_OF_RANGE before any handler runs; the API promises INVALID_ARGUMENT
/// naming the limit for every oversized input. This rewrites that one
/// status (nothing else in the API answers OUT_OF_RANGE).
pub async fn oversized_request_is_invalid_argument(
    max_request_bytes: usize,
    mut response: Response,
) -> Response {
    let headers = response.headers_mut();
    if headers
        .get("grpc-status")
        .is_some_and(|v| v.as_bytes() == b"11")
    {
        let message = format!(
            "request is larger than the limit of {max_request_bytes} bytes (--max-request-bytes)"
        );
        headers.insert("grpc-status", HeaderValue::from_static("3"));
        if let Ok(value) = HeaderValue::from_str(&percent_encode(&message)) {
            headers.insert("grpc-message", value);
        }
    }
    response
}

/// Percent-encodes a grpc-message value (everything but unreserved ASCII).
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_encoding_keeps_unreserved_and_escapes_the_rest() {
        assert_eq!(percent_encode("a b(1)-x"), "a%20b%281%29-x");
    }

    #[tokio::test]
    async fn out_of_range_becomes_invalid_argument_and_others_pass_through() {
        let mut resp = Response::new(axum::body::Body::empty());
        resp.headers_mut()
            .insert("grpc-status", HeaderValue::from_static("11"));
        let resp = oversized_request_is_invalid_argument(1500, resp).await;
        assert_eq!(resp.headers()["grpc-status"], "3");
        let msg = resp.headers()["grpc-message"].to_str().unwrap();
        assert!(msg.contains("1500"), "{msg}");

        let mut resp = Response::new(axum::body::Body::empty());
        resp.headers_mut()
            .insert("grpc-status", HeaderValue::from_static("14"));
        let resp = oversized_request_is_invalid_argument(1500, resp).await;
        assert_eq!(resp.headers()["grpc-status"], "14");
    }
}
