//! Free loopback ports for members to listen on.
//!
//! A member is started with explicit ports (it must be restartable on the
//! same address), so the harness picks ports that are free now and hopes
//! they stay free until the member binds them. Two things make that likely:
//!
//! - Ports come from *below* the kernel's ephemeral range
//!   (`/proc/sys/net/ipv4/ip_local_port_range`). Outgoing connections and
//!   `bind(0)` only ever take ports from that range, so the many short-lived
//!   connections of a test run (clients, proxies, raft streams) cannot grab a
//!   member's port between the check here and the member's bind, nor while
//!   the member is down for a restart.
//! - A process-wide set remembers every port handed out, so two clusters in
//!   one test process never get the same port.
//!
//! Other test *processes* (nextest runs one per test) pick at random, so a
//! collision needs the same random pick while the port is free; rare enough.

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Mutex, PoisonError};

use rand::Rng as _;

/// Lowest port handed out; below it live well-known and registered services.
const LOWEST_PORT: u16 = 10_000;

/// Ports handed out by this process, never reused within it.
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A loopback address whose port is free right now and was never handed out
/// by this process before.
///
/// # Panics
///
/// When no free port is found in a thousand tries.
pub(crate) fn free_loopback_addr() -> SocketAddr {
    let highest = ephemeral_range_start()
        .saturating_sub(1)
        .max(LOWEST_PORT + 1000);
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
    let handed_out = handed_out.get_or_insert_with(HashSet::new);
    let mut rng = rand::rng();
    for _ in 0..1000 {
        let port = rng.random_range(LOWEST_PORT..=highest);
        if handed_out.contains(&port) {
            continue;
        }
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        // Binding is the only reliable "is it free" test; the listener is
        // dropped at once so the member can bind the port itself.
        if TcpListener::bind(addr).is_ok() {
            handed_out.insert(port);
            return addr;
        }
    }
    panic!("no free loopback port in {LOWEST_PORT}..={highest} after 1000 tries");
}

/// The first port of the kernel's ephemeral range (Linux's default, 32768,
/// when it cannot be read).
fn ephemeral_range_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_free_distinct_and_below_the_ephemeral_range() {
        let ports: HashSet<u16> = (0..50).map(|_| free_loopback_addr().port()).collect();
        assert_eq!(ports.len(), 50);
        let start = ephemeral_range_start();
        assert!(
            ports
                .iter()
                .all(|port| *port < start.max(LOWEST_PORT + 1001))
        );
    }
}
