//! The fault proxy: a TCP proxy for every ordered pair of members, so a test
//! can cut the network between any two of them.
//!
//! Member `i` is told (through `--initial-cluster`) that member `j` lives at
//! the address of link `i → j`, which forwards to `j`'s real peer port. Every
//! byte between the two then crosses either link `i → j` (connections that
//! `i` opened) or link `j → i` (connections that `j` opened), so cutting both
//! links separates them completely, whoever dials whom.
//!
//! A cut closes every connection the two links carry and closes each new one
//! as soon as it is accepted, until healed: the members see refused streams,
//! not silence. Nothing is buffered across a cut; bytes a member wrote before
//! the cut may still arrive, nothing written after it does.
//!
//! This proxy only sees peer traffic. A member that reached another member by
//! any address not taken from `--initial-cluster` (for example its client
//! address) would bypass it.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// The proxies between a set of members, one per ordered pair.
#[derive(Debug)]
pub struct PeerNetwork {
    links: BTreeMap<(u64, u64), Link>,
}

/// The proxy that member `from` dials to reach member `to`.
#[derive(Debug)]
struct Link {
    /// Where `from` connects.
    listen_addr: SocketAddr,
    /// `true` while the link is cut. A watch channel, so that every
    /// forwarding task learns of a cut at once and can drop its sockets.
    cut: watch::Sender<bool>,
    /// Bytes forwarded in both directions since the link was created.
    bytes: Arc<AtomicU64>,
    /// The accept loop; it owns the forwarding tasks, so aborting it ends
    /// every connection of this link.
    task: JoinHandle<()>,
}

impl PeerNetwork {
    /// Starts a proxy for every ordered pair of the given members (id → real
    /// peer address), with every link open. The proxies run as tasks on
    /// `runtime`, which must keep running for as long as they are needed.
    pub fn start(peers: &BTreeMap<u64, SocketAddr>, runtime: &Handle) -> io::Result<PeerNetwork> {
        let mut links = BTreeMap::new();
        for &from in peers.keys() {
            for (&to, &target) in peers {
                if from != to {
                    links.insert((from, to), Link::start(target, runtime)?);
                }
            }
        }
        Ok(PeerNetwork { links })
    }

    /// The address member `from` must use for member `to`.
    ///
    /// # Panics
    ///
    /// When there is no such pair (an unknown id, or `from == to`).
    pub fn addr(&self, from: u64, to: u64) -> SocketAddr {
        self.link(from, to).listen_addr
    }

    /// Stops all traffic between `a` and `b`, both ways: open connections are
    /// closed and new ones are closed on arrival until [`heal`](Self::heal).
    pub fn cut(&self, a: u64, b: u64) {
        self.link(a, b).cut.send_replace(true);
        self.link(b, a).cut.send_replace(true);
    }

    /// Lets traffic between `a` and `b` flow again. Connections closed by the
    /// cut stay closed; the members reconnect.
    pub fn heal(&self, a: u64, b: u64) {
        self.link(a, b).cut.send_replace(false);
        self.link(b, a).cut.send_replace(false);
    }

    /// Cuts `id` off from every other member.
    pub fn isolate(&self, id: u64) {
        for &(from, to) in self.links.keys() {
            if from == id {
                self.cut(from, to);
            }
        }
    }

    /// Heals every link.
    pub fn heal_all(&self) {
        for link in self.links.values() {
            link.cut.send_replace(false);
        }
    }

    /// Whether traffic between `a` and `b` is cut.
    pub fn is_cut(&self, a: u64, b: u64) -> bool {
        *self.link(a, b).cut.borrow()
    }

    /// Bytes forwarded, in both directions, over the connections that `from`
    /// opened to `to`. Lets a test check that a cut really stopped traffic.
    pub fn bytes_forwarded(&self, from: u64, to: u64) -> u64 {
        self.link(from, to).bytes.load(Ordering::Relaxed)
    }

    fn link(&self, from: u64, to: u64) -> &Link {
        self.links
            .get(&(from, to))
            .unwrap_or_else(|| panic!("no proxy from member {from} to member {to}"))
    }
}

impl Drop for PeerNetwork {
    fn drop(&mut self) {
        for link in self.links.values() {
            link.task.abort();
        }
    }
}

impl Link {
    fn start(target: SocketAddr, runtime: &Handle) -> io::Result<Link> {
        // Bound here, synchronously, so the address is known (and taken)
        // before any member is started with it.
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let listen_addr = listener.local_addr()?;
        let (cut, cut_rx) = watch::channel(false);
        let bytes = Arc::new(AtomicU64::new(0));
        let task = runtime.spawn(accept_loop(listener, target, cut_rx, bytes.clone()));
        Ok(Link {
            listen_addr,
            cut,
            bytes,
            task,
        })
    }
}

/// Accepts connections for one link and forwards each in its own task.
async fn accept_loop(
    listener: std::net::TcpListener,
    target: SocketAddr,
    cut: watch::Receiver<bool>,
    bytes: Arc<AtomicU64>,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(err) => panic!("proxy listener for {target} unusable: {err}"),
    };
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                // Dropping the socket closes it: a cut link refuses service.
                Ok((inbound, _)) if *cut.borrow() => drop(inbound),
                Ok((inbound, _)) => {
                    connections.spawn(forward(inbound, target, cut.clone(), bytes.clone()));
                }
                // Out of file descriptors or similar: try again shortly
                // rather than spin.
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            },
            // Reap finished connections so the set does not grow forever.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Forwards one connection until either side closes it or the link is cut.
/// On a cut both sockets are dropped, which closes them.
async fn forward(
    inbound: TcpStream,
    target: SocketAddr,
    mut cut: watch::Receiver<bool>,
    bytes: Arc<AtomicU64>,
) {
    let outbound = tokio::select! {
        connected = TcpStream::connect(target) => match connected {
            Ok(outbound) => outbound,
            // The target member is down; closing the inbound side tells the
            // dialling member the same thing a refused connect would.
            Err(_) => return,
        },
        _ = cut.wait_for(|cut| *cut) => return,
    };
    // Raft traffic is small messages; Nagle would only add latency.
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (inbound_read, inbound_write) = inbound.into_split();
    let (outbound_read, outbound_write) = outbound.into_split();
    let both_ways = async {
        tokio::try_join!(
            pipe(inbound_read, outbound_write, &bytes, &cut),
            pipe(outbound_read, inbound_write, &bytes, &cut),
        )
    };
    let mut cut_now = cut.clone();
    tokio::select! {
        // A cut that is already visible wins over bytes ready to forward.
        biased;
        _ = cut_now.wait_for(|cut| *cut) => {}
        _ = both_ways => {}
    }
}

/// Copies one direction until end of stream, then passes the end on.
///
/// The cut is checked between reading bytes and writing them on, so nothing
/// a member writes after [`PeerNetwork::cut`] returned is forwarded, however
/// late this task runs: the forwarding task may not have been scheduled since
/// the cut, and bytes already waiting in the socket would otherwise go
/// through. (Bytes read before the cut was visible were written before it.)
async fn pipe(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    bytes: &AtomicU64,
    cut: &watch::Receiver<bool>,
) -> io::Result<()> {
    let mut buffer = vec![0; 64 * 1024];
    loop {
        let n = from.read(&mut buffer).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        if *cut.borrow() {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the link is cut",
            ));
        }
        // Counted before the write, so a test that saw the bytes arrive
        // also sees them counted.
        bytes.fetch_add(n as u64, Ordering::Relaxed);
        to.write_all(&buffer[..n]).await?;
    }
}
