//! Wires a member together: the replicated core, the client listener (gRPC +
//! HTTP) and the peer listener; runs until SIGTERM/SIGINT or a storage failure.

use std::time::Duration;

use anyhow::Context;
use axum::serve::ListenerExt;
use fenced_proto::pb::{
    cluster_server::ClusterServer, election_server::ElectionServer, kv_server::KvServer,
    lease_server::LeaseServer, lock_server::LockServer, peer_server::PeerServer,
    watch_server::WatchServer,
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::lease::{LeaseService, TtlBounds};
use crate::api::{
    Limits, cluster::ClusterService, election::ElectionService, kv::KvService, lock::LockService,
    peer::PeerService, watch::WatchService,
};
use crate::config::Config;
use crate::lessor::Lessor;
use crate::node::driver::Stopped;
use crate::{http, node};

/// Most operations per transaction branch (like etcd's `--max-txn-ops`).
const MAX_TXN_OPS: usize = 128;

/// Runs a member until it is told to stop. Returns an error for a startup
/// problem or a storage failure.
pub async fn run(config: Config) -> anyhow::Result<()> {
    config.validate()?;
    let prometheus = install_metrics();
    let client_listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen for clients on --listen {}", config.listen))?;
    let peer_listener = TcpListener::bind(config.peer_listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen for peers on --peer-listen {}",
                config.peer_listen
            )
        })?;

    let opened = node::open(&config)?;
    let joined = if opened.needs_join(&config) {
        Some(crate::join::join(&config).await?)
    } else {
        crate::join::check_cluster(&config, &opened).await?;
        None
    };
    let started = node::start(&config, opened, joined)?;
    let node = started.node.clone();
    tokio::spawn(crate::join::publish_addresses(
        node.clone(),
        config.peer_listen.to_string(),
        config.listen.to_string(),
    ));
    if config.join.is_some() && !config.learner {
        tokio::spawn(crate::join::promote_when_caught_up(
            node.clone(),
            config.listen.to_string(),
        ));
    }
    tracing::info!(
        id = config.id,
        client = %config.listen,
        peer = %config.peer_listen,
        data_dir = %config.data_dir.display(),
        "fenced member started"
    );

    let lessor = Lessor::new(node.clone());
    let lessor_task = tokio::spawn(lessor.clone().run());
    let ttl_bounds = TtlBounds {
        min: config.min_lease_ttl(),
        max: config.max_lease_ttl,
    };

    let (stop_tx, stop_rx) = watch::channel(false);
    let limits = Limits {
        max_key_bytes: config.max_key_bytes,
        max_value_bytes: config.max_value_bytes,
        max_txn_ops: MAX_TXN_OPS,
    };

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<KvServer<KvService>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(fenced_proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("cannot build the gRPC reflection service")?;
    let mut grpc = tonic::service::Routes::builder();
    grpc.add_service(
        KvServer::new(
            KvService::new(node.clone(), limits).with_unsafe_local_reads(config.unsafe_local_reads),
        )
        .max_decoding_message_size(config.max_request_bytes),
    )
    .add_service(LeaseServer::new(LeaseService::new(
        node.clone(),
        lessor.clone(),
        ttl_bounds,
    )))
    .add_service(LockServer::new(LockService::new(node.clone())))
    .add_service(ElectionServer::new(ElectionService::new(node.clone())))
    .add_service(WatchServer::new(WatchService::new(node.clone(), limits)))
    .add_service(ClusterServer::new(ClusterService::new(node.clone())))
    .add_service(health_service)
    .add_service(reflection);
    let grpc = grpc.routes();
    let max_request_bytes = config.max_request_bytes;
    let app = grpc
        .into_axum_router()
        .layer(axum::middleware::map_response(move |resp| {
            http::oversized_request_is_invalid_argument(max_request_bytes, resp)
        }))
        .merge(http::router(node.clone(), prometheus));
    let client_server = {
        let mut stop = stop_rx.clone();
        let listener = client_listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
        })
    };
    let peer_server = {
        let mut stop = stop_rx.clone();
        let service = PeerServer::new(PeerService::new(node.clone(), lessor.clone()))
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX);
        let server = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(1)))
            .http2_keepalive_timeout(Some(Duration::from_secs(2)))
            .add_service(service)
            // Membership calls forwarded to the leader arrive here.
            .add_service(ClusterServer::new(ClusterService::new(node.clone())));
        tokio::spawn(async move {
            // tonic ignores its own `tcp_nodelay` for an incoming stream:
            // without this, small answers on peer connections (forwarded
            // lease and membership calls, HTTP/2 window updates) could wait
            // for a delayed ACK.
            let incoming = tokio_stream::StreamExt::map(
                tokio_stream::wrappers::TcpListenerStream::new(peer_listener),
                |accepted| {
                    accepted.inspect(|tcp| {
                        let _ = tcp.set_nodelay(true);
                    })
                },
            );
            server
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
                .map_err(anyhow::Error::from)
        })
    };

    let mut removed = false;
    let mut driver_done = started.driver;
    let failure = tokio::select! {
        signal = shutdown_signal() => {
            tracing::info!(signal, "shutting down");
            None
        }
        joined = &mut driver_done => match joined {
            Ok(Ok(Stopped::Removed(why))) => {
                tracing::warn!(%why, "this member was removed from the cluster; stopping");
                removed = true;
                None
            }
            Ok(Ok(Stopped::Shutdown)) => Some(anyhow::anyhow!("the raft driver stopped unexpectedly")),
            Ok(Err(err)) => Some(anyhow::anyhow!("raft storage failed: {err}")),
            Err(_) => Some(anyhow::anyhow!("the raft driver panicked")),
        },
    };
    // Watch and observe streams never end by themselves: end them first,
    // each watch told where to resume, before the listeners stop.
    node.watch_hub().shutdown(Duration::from_secs(1)).await;
    let _ = stop_tx.send(true);
    lessor_task.abort();
    node.shutdown();
    if let Some(err) = failure {
        // Fail-stop: do not serve anything after a storage failure.
        tracing::error!(cause = %err, "stopping");
        return Err(err);
    }
    // Give in-flight client requests a moment to finish. Peer streams are
    // long-lived and never end by themselves; dropping them is harmless
    // (raft retransmits), so they are not waited for.
    let client_abort = client_server.abort_handle();
    if tokio::time::timeout(Duration::from_secs(2), client_server)
        .await
        .is_err()
    {
        client_abort.abort();
    }
    peer_server.abort();
    if !removed {
        match tokio::time::timeout(Duration::from_secs(5), driver_done).await {
            Ok(Ok(Err(err))) => return Err(anyhow::anyhow!("raft storage failed: {err}")),
            Ok(_) => {}
            Err(_) => tracing::warn!("raft driver did not stop within 5s"),
        }
    }
    tracing::info!("stopped cleanly");
    Ok(())
}

/// Installs the Prometheus recorder once per process.
fn install_metrics() -> Option<PrometheusHandle> {
    match PrometheusBuilder::new().install_recorder() {
        Ok(handle) => Some(handle),
        Err(err) => {
            tracing::warn!(cause = %err, "metrics recorder not installed; /metrics will be empty");
            None
        }
    }
}

async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the member runs until killed.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}
