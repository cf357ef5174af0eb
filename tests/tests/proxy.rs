//! The fault proxy on its own, with echo servers standing in for members:
//! traffic flows through the right link, and a cut really stops it.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use fenced_tests::PeerNetwork;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;

/// How long a read may take before the connection counts as silent.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// Starts an echo server and returns its address.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut read, mut write) = socket.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    });
    addr
}

/// A network of three members, each an echo server.
async fn network() -> PeerNetwork {
    let mut peers = BTreeMap::new();
    for id in 1..=3 {
        peers.insert(id, echo_server().await);
    }
    PeerNetwork::start(&peers, &Handle::current()).unwrap()
}

/// Sends `message` and reads the echo.
async fn round_trip(stream: &mut TcpStream, message: &[u8]) -> io::Result<Vec<u8>> {
    stream.write_all(message).await?;
    let mut echoed = vec![0; message.len()];
    tokio::time::timeout(READ_TIMEOUT, stream.read_exact(&mut echoed))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no echo"))??;
    Ok(echoed)
}

/// Whether the connection is closed: a read ends (EOF or reset) instead of
/// waiting for data.
async fn is_closed(stream: &mut TcpStream) -> bool {
    let mut buffer = [0; 16];
    matches!(
        tokio::time::timeout(READ_TIMEOUT, stream.read(&mut buffer)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test]
async fn forwards_each_pair_to_its_target() {
    let network = network().await;
    let mut stream = TcpStream::connect(network.addr(1, 2)).await.unwrap();
    assert_eq!(round_trip(&mut stream, b"ping").await.unwrap(), b"ping");
    // Four bytes each way.
    assert_eq!(network.bytes_forwarded(1, 2), 8);
    assert_eq!(network.bytes_forwarded(2, 1), 0);
}

#[tokio::test]
async fn a_cut_closes_open_connections_and_refuses_new_ones_until_healed() {
    let network = network().await;
    let mut one_to_two = TcpStream::connect(network.addr(1, 2)).await.unwrap();
    let mut two_to_one = TcpStream::connect(network.addr(2, 1)).await.unwrap();
    let mut one_to_three = TcpStream::connect(network.addr(1, 3)).await.unwrap();
    for stream in [&mut one_to_two, &mut two_to_one, &mut one_to_three] {
        round_trip(stream, b"before").await.unwrap();
    }

    network.cut(1, 2);
    assert!(network.is_cut(1, 2) && network.is_cut(2, 1));
    assert!(is_closed(&mut one_to_two).await);
    assert!(is_closed(&mut two_to_one).await);
    let forwarded = network.bytes_forwarded(1, 2);
    let mut retry = TcpStream::connect(network.addr(1, 2)).await.unwrap();
    let _ = retry.write_all(b"during").await;
    assert!(is_closed(&mut retry).await);
    assert_eq!(
        network.bytes_forwarded(1, 2),
        forwarded,
        "bytes crossed a cut"
    );
    // Other pairs are not affected.
    assert_eq!(
        round_trip(&mut one_to_three, b"other").await.unwrap(),
        b"other"
    );

    network.heal(1, 2);
    let mut healed = TcpStream::connect(network.addr(1, 2)).await.unwrap();
    assert_eq!(round_trip(&mut healed, b"after").await.unwrap(), b"after");
}

#[tokio::test]
async fn isolate_cuts_one_member_from_all_others() {
    let network = network().await;
    network.isolate(3);
    for (a, b) in [(3, 1), (1, 3), (3, 2), (2, 3)] {
        assert!(network.is_cut(a, b), "{a} -> {b}");
        let mut stream = TcpStream::connect(network.addr(a, b)).await.unwrap();
        let _ = stream.write_all(b"hello").await;
        assert!(is_closed(&mut stream).await, "{a} -> {b} still open");
    }
    let mut stream = TcpStream::connect(network.addr(1, 2)).await.unwrap();
    assert_eq!(round_trip(&mut stream, b"fine").await.unwrap(), b"fine");

    network.heal_all();
    let mut stream = TcpStream::connect(network.addr(3, 1)).await.unwrap();
    assert_eq!(round_trip(&mut stream, b"back").await.unwrap(), b"back");
}

/// Bytes a member writes right after a cut reach the proxy's socket at about
/// the moment the cut reaches its forwarding task, so the task wakes to find
/// both: nothing written after the cut may cross, whichever it looks at
/// first. The proxy runs on a runtime of its own, as in the cluster harness,
/// and many connections are tried, because a wrong order would only let bytes
/// through some of the time.
#[test]
fn nothing_written_after_a_cut_crosses_it() {
    let proxy_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let test_runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    test_runtime.block_on(async {
        let mut peers = BTreeMap::new();
        for id in 1..=2 {
            peers.insert(id, echo_server().await);
        }
        let network = PeerNetwork::start(&peers, proxy_runtime.handle()).unwrap();
        for round in 0..64 {
            let mut stream = TcpStream::connect(network.addr(1, 2)).await.unwrap();
            round_trip(&mut stream, b"before").await.unwrap();
            let forwarded = network.bytes_forwarded(1, 2);

            network.cut(1, 2);
            // Written at once, without yielding.
            let written = stream.try_write(b"after the cut").unwrap();
            assert!(written > 0);
            assert!(is_closed(&mut stream).await, "round {round}: still open");
            assert_eq!(
                network.bytes_forwarded(1, 2),
                forwarded,
                "round {round}: bytes written after the cut were forwarded"
            );
            network.heal(1, 2);
        }
    });
    proxy_runtime.shutdown_background();
}
