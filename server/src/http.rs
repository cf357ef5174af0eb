//! Plain HTTP beside gRPC on the client address: `GET /metrics`
//! (Prometheus text) and `GET /health` (200 when the member has a leader and
//! has applied what it knows to be committed, 503 otherwise).

use axum::Router;
use axum::http::StatusCode;
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
    if leader == 0 {
        (StatusCode::SERVICE_UNAVAILABLE, body)
    } else if applied + HEALTHY_APPLY_LAG < commit {
        (StatusCode::SERVICE_UNAVAILABLE, body)
    } else {
        (StatusCode::OK, body)
    }
}
