//! Peer transport: one long-lived gRPC stream per peer carrying batches of
//! raft messages as bytes.
//!
//! The driver hands messages over with a non-blocking `try_send` into a
//! bounded queue per peer; a full queue (dead or paused peer) drops the
//! message and the driver reports the peer unreachable, so a dead peer never
//! blocks the driver. Each peer's task drains its queue into batches, and on
//! any stream failure reconnects with exponential backoff.
//!
//! A snapshot message goes on its own call (`Peer.Snapshot`), its data cut
//! into chunks, so no message-size limit applies; the driver hears how it
//! went (`DriverMsg::SnapshotSent`) and tells raft. A peer that answers
//! PERMISSION_DENIED says this member was removed from the cluster.

use std::collections::BTreeMap;
use std::time::Duration;

use fenced_proto::pb::{RaftBatch, SnapshotChunk, peer_client::PeerClient};
use raft::eraftpb::{Message, MessageType};
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::node::{DriverMsg, Inbox};

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
/// Size of one piece of snapshot data on the wire.
const SNAPSHOT_CHUNK: usize = 1024 * 1024;

/// Outgoing side of the peer transport, owned by the driver.
#[derive(Debug)]
pub struct Transport {
    ctx: TransportContext,
    peers: BTreeMap<u64, Peer>,
}

#[derive(Debug)]
struct Peer {
    addr: String,
    queue: mpsc::Sender<Message>,
}

/// What every peer task needs to know about this member.
#[derive(Clone, Debug)]
pub struct TransportContext {
    /// This member's id, stamped on every batch.
    pub from: u64,
    /// The cluster id, checked by the receiver.
    pub cluster_id: u64,
    /// Where to report an unreachable peer.
    pub inbox: Inbox,
    /// The runtime the peer tasks run on: the member's, which runs the
    /// driver's task too (see [`crate::node::driver`]).
    pub runtime: Handle,
}

impl Transport {
    /// Starts one sender task per peer (`peers` excludes this member).
    pub fn start(ctx: TransportContext, peers: &BTreeMap<u64, String>) -> Self {
        let mut transport = Transport {
            ctx,
            peers: BTreeMap::new(),
        };
        for (id, addr) in peers {
            transport.set_peer(*id, addr.clone());
        }
        transport
    }

    /// Starts the sender task of peer `id` at `addr` (replacing one to
    /// another address).
    pub fn set_peer(&mut self, id: u64, addr: String) {
        if id == self.ctx.from || self.peers.get(&id).is_some_and(|p| p.addr == addr) {
            return;
        }
        let (tx, rx) = mpsc::channel(PEER_QUEUE);
        self.ctx
            .runtime
            .spawn(peer_loop(self.ctx.clone(), id, addr.clone(), rx));
        self.peers.insert(id, Peer { addr, queue: tx });
    }

    /// Stops sending to `id` (its task ends with its queue).
    pub fn remove_peer(&mut self, id: u64) {
        self.peers.remove(&id);
    }

    /// Whether `id` has a sender task.
    pub fn has_peer(&self, id: u64) -> bool {
        self.peers.contains_key(&id)
    }

    /// Queues `msg` for its peer; false when it could not be queued. A
    /// snapshot goes out on its own call.
    pub fn send(&mut self, msg: Message) -> bool {
        let Some(peer) = self.peers.get(&msg.to) else {
            return false;
        };
        if msg.get_msg_type() == MessageType::MsgSnapshot {
            self.ctx
                .runtime
                .spawn(send_snapshot(self.ctx.clone(), peer.addr.clone(), msg));
            return true;
        }
        peer.queue.try_send(msg).is_ok()
    }
}

/// Sends one snapshot message in chunks and reports the outcome.
async fn send_snapshot(ctx: TransportContext, addr: String, mut msg: Message) {
    let to = msg.to;
    let data = msg.mut_snapshot().take_data();
    let index = msg.get_snapshot().get_metadata().index;
    let started = tokio::time::Instant::now();
    let total = data.len();
    let result = async {
        let channel = connect(&format!("http://{addr}"))
            .await
            .map_err(|e| e.to_string())?;
        let mut client = PeerClient::new(channel);
        let header = encode(&msg);
        let mut chunks = Vec::with_capacity(total / SNAPSHOT_CHUNK + 1);
        let mut pieces = data.chunks(SNAPSHOT_CHUNK);
        chunks.push(SnapshotChunk {
            from: ctx.from,
            cluster_id: ctx.cluster_id,
            message: header,
            total_bytes: total as u64,
            data: pieces.next().map(<[u8]>::to_vec).unwrap_or_default(),
        });
        chunks.extend(pieces.map(|piece| SnapshotChunk {
            data: piece.to_vec(),
            ..Default::default()
        }));
        client
            .snapshot(tokio_stream::iter(chunks))
            .await
            .map_err(|status| status.to_string())
    }
    .await;
    let ok = match result {
        Ok(_) => {
            tracing::info!(
                peer = to,
                index,
                bytes = total,
                ms = started.elapsed().as_millis() as u64,
                "sent a snapshot"
            );
            true
        }
        Err(why) => {
            tracing::warn!(peer = to, index, %why, "could not send a snapshot");
            false
        }
    };
    let _ = ctx.inbox.send(DriverMsg::SnapshotSent { to, ok });
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
                    StreamEnd::Removed(why) => {
                        let _ = ctx.inbox.send(DriverMsg::Removed(why));
                        return;
                    }
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
    /// The peer says this member is no longer in the cluster.
    Removed(String),
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
                break match result {
                    Ok(Ok(_)) => StreamEnd::Failed("peer closed the stream".to_string()),
                    Ok(Err(status)) if status.code() == tonic::Code::PermissionDenied => {
                        StreamEnd::Removed(status.message().to_string())
                    }
                    Ok(Err(status)) => StreamEnd::Failed(status.to_string()),
                    Err(join) => StreamEnd::Failed(join.to_string()),
                };
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
