//! Peer transport: one long-lived gRPC stream per peer carrying batches of
//! raft messages as bytes.
//!
//! The driver hands messages over with a non-blocking `try_send` into a
//! bounded queue per peer; a full queue (dead or paused peer) drops the
//! message and the driver reports the peer unreachable, so a dead peer never
//! blocks the driver. Each peer's task drains its queue into batches, and on
//! any stream failure reconnects with exponential backoff.

use std::collections::BTreeMap;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use fenced_proto::pb::{RaftBatch, peer_client::PeerClient};
use raft::eraftpb::Message;
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::node::DriverMsg;

/// Messages queued per peer before the driver starts dropping them.
const PEER_QUEUE: usize = 16 * 1024;
/// Most messages in one batch on the wire.
const MAX_BATCH: usize = 1024;
/// Longest a batch may wait for the stream to take it before the stream is
/// considered dead and replaced.
const SEND_STALL: Duration = Duration::from_secs(2);
/// How often a stream is checked for progress.
const WATCHDOG_PERIOD: Duration = Duration::from_millis(250);
/// A stream that lived at least this long resets the reconnect backoff.
const HEALTHY_STREAM: Duration = Duration::from_secs(1);

/// Outgoing side of the peer transport, owned by the driver.
#[derive(Debug)]
pub struct Transport {
    peers: BTreeMap<u64, mpsc::Sender<Message>>,
}

/// What every peer task needs to know about this member.
#[derive(Clone, Debug)]
pub struct TransportContext {
    /// This member's id, stamped on every batch.
    pub from: u64,
    /// The cluster id, checked by the receiver.
    pub cluster_id: u64,
    /// Where to report an unreachable peer.
    pub inbox: std_mpsc::Sender<DriverMsg>,
    /// The runtime the peer tasks run on.
    pub runtime: Handle,
}

impl Transport {
    /// Starts one sender task per peer (`peers` excludes this member).
    pub fn start(ctx: TransportContext, peers: &BTreeMap<u64, String>) -> Self {
        let mut transport = Transport {
            peers: BTreeMap::new(),
        };
        for (id, addr) in peers {
            transport.add_peer(&ctx, *id, addr.clone());
        }
        transport
    }

    /// Starts the sender task of one peer.
    pub fn add_peer(&mut self, ctx: &TransportContext, id: u64, addr: String) {
        let (tx, rx) = mpsc::channel(PEER_QUEUE);
        ctx.runtime.spawn(peer_loop(ctx.clone(), id, addr, rx));
        self.peers.insert(id, tx);
    }

    /// Queues `msg` for its peer; false when it could not be queued.
    pub fn send(&mut self, msg: Message) -> bool {
        match self.peers.get(&msg.to) {
            Some(queue) => queue.try_send(msg).is_ok(),
            None => false,
        }
    }
}

async fn peer_loop(ctx: TransportContext, id: u64, addr: String, mut rx: mpsc::Receiver<Message>) {
    let mut backoff = Duration::from_millis(20);
    let url = format!("http://{addr}");
    loop {
        match connect(&url).await {
            Ok(channel) => {
                tracing::debug!(peer = id, %addr, "connected to peer");
                let connected_at = tokio::time::Instant::now();
                let outcome = stream_batches(&ctx, channel, &mut rx).await;
                match outcome {
                    StreamEnd::QueueClosed => return,
                    StreamEnd::Failed(why) => {
                        tracing::debug!(peer = id, %addr, %why, "peer stream ended");
                    }
                }
                // A stream that dies right after connecting (a peer that is
                // down behind a proxy, say) keeps backing off.
                if connected_at.elapsed() >= HEALTHY_STREAM {
                    backoff = Duration::from_millis(20);
                }
            }
            Err(err) => tracing::debug!(peer = id, %addr, cause = %err, "cannot connect to peer"),
        }
        let _ = ctx.inbox.send(DriverMsg::Unreachable(id));
        // Messages queued while disconnected are stale by the time we
        // reconnect; raft resends what matters.
        while rx.try_recv().is_ok() {}
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(500));
    }
}

async fn connect(url: &str) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    tonic::transport::Endpoint::from_shared(url.to_string())?
        .connect_timeout(Duration::from_millis(500))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_millis(500))
        .keep_alive_timeout(Duration::from_secs(1))
        .keep_alive_while_idle(true)
        .connect()
        .await
}

enum StreamEnd {
    QueueClosed,
    Failed(String),
}

async fn stream_batches(
    ctx: &TransportContext,
    channel: tonic::transport::Channel,
    rx: &mut mpsc::Receiver<Message>,
) -> StreamEnd {
    let mut client = PeerClient::new(channel)
        .max_encoding_message_size(usize::MAX)
        .max_decoding_message_size(usize::MAX);
    // One slot: a batch that sits in it is one the stream has not taken.
    // The watchdog replaces a stream that takes nothing for SEND_STALL, so a
    // call that silently stopped (its connection gone without an error
    // reaching us) cannot hold the link down; quiet links (one election
    // message a second) would never fill a bigger buffer.
    let (batches_tx, batches_rx) = mpsc::channel::<RaftBatch>(1);
    let mut call = tokio::spawn(async move { client.raft(ReceiverStream::new(batches_rx)).await });
    let mut watchdog = tokio::time::interval(WATCHDOG_PERIOD);
    let mut waiting_since: Option<tokio::time::Instant> = None;
    let end = loop {
        let first = tokio::select! {
            msg = rx.recv() => msg,
            _ = watchdog.tick() => {
                if batches_tx.capacity() > 0 {
                    waiting_since = None;
                } else if waiting_since.get_or_insert_with(tokio::time::Instant::now).elapsed()
                    >= SEND_STALL
                {
                    break StreamEnd::Failed("the stream took no batch for 2 s".into());
                }
                continue;
            }
            result = &mut call => {
                break StreamEnd::Failed(match result {
                    Ok(Ok(_)) => "peer closed the stream".to_string(),
                    Ok(Err(status)) => status.to_string(),
                    Err(join) => join.to_string(),
                });
            }
        };
        let Some(first) = first else {
            break StreamEnd::QueueClosed;
        };
        let mut messages = Vec::with_capacity(16);
        messages.push(encode(&first));
        while messages.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(msg) => messages.push(encode(&msg)),
                Err(_) => break,
            }
        }
        let batch = RaftBatch {
            from: ctx.from,
            cluster_id: ctx.cluster_id,
            messages,
        };
        match tokio::time::timeout(SEND_STALL, batches_tx.send(batch)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => break StreamEnd::Failed("stream closed".into()),
            Err(_) => break StreamEnd::Failed("peer stopped reading".into()),
        }
    };
    call.abort();
    end
}

fn encode(msg: &Message) -> Vec<u8> {
    // Encoding an in-memory protobuf message into a Vec does not fail.
    protobuf::Message::write_to_bytes(msg).unwrap_or_default()
}

/// Decodes one raft message received from a peer.
pub fn decode(bytes: &[u8]) -> Result<Message, protobuf::ProtobufError> {
    let mut msg = Message::default();
    protobuf::Message::merge_from_bytes(&mut msg, bytes)?;
    Ok(msg)
}
