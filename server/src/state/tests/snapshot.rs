//! The snapshot format: round trips, and damaged input refused (never a
//! panic, never a half-read state).

use super::*;
use crate::state::snapshot::{SnapshotError, decode, encode};
use crate::state::{MemberChange, MemberTable};

/// A state with a bit of everything: keys, leases with attached keys, a
/// lock with a holder and a waiter, members.
fn busy_state() -> StateMachine {
    let mut state = StateMachine::bootstrap(MemberTable::bootstrap([1, 2]));
    let commands = [
        Command::Put(put_req("a", "1")),
        Command::LeaseGrant { id: 0, ttl: 10 },
        Command::LeaseGrant { id: 0, ttl: 10 },
        Command::LockAcquire(AcquireCommand {
            name: "job".into(),
            lease: 1,
            mode: LockMode::Exclusive,
            permits: 1,
            try_only: false,
            delay_ms: 500,
        }),
        Command::LockAcquire(AcquireCommand {
            name: "job".into(),
            lease: 2,
            mode: LockMode::Exclusive,
            permits: 1,
            try_only: false,
            delay_ms: 0,
        }),
        Command::MemberChange(MemberChange::Add {
            id: 3,
            peer_addr: "127.0.0.1:7382".into(),
            client_addr: String::new(),
            learner: true,
        }),
        Command::MemberPublish {
            id: 3,
            peer_addr: "127.0.0.1:7392".into(),
            client_addr: "127.0.0.1:7383".into(),
        },
        Command::MemberChange(MemberChange::Remove { id: 2 }),
    ];
    for command in &commands {
        let response = state.execute(command).response;
        assert!(
            !matches!(response, Response::Error(_)),
            "{command:?}: {response:?}"
        );
    }
    state
}

#[test]
fn round_trip_keeps_everything() {
    let state = busy_state();
    let restored = decode(&encode(&state)).expect("decodes");
    assert_eq!(restored, state);
    assert_eq!(restored.digest(), state.digest());
    let members: Vec<(u64, bool)> = restored
        .members()
        .iter()
        .map(|m| (m.id, m.learner))
        .collect();
    assert_eq!(members, vec![(1, false), (3, true)]);
    assert!(restored.members().was_removed(2));
    let third = restored.members().get(3).expect("member 3");
    assert_eq!(
        (third.peer_addr.as_str(), third.client_addr.as_str()),
        ("127.0.0.1:7392", "127.0.0.1:7383")
    );
}

#[test]
fn damaged_snapshots_are_refused() {
    let bytes = encode(&busy_state());
    assert_eq!(decode(&[]), Err(SnapshotError::BadHeader(0)));
    assert!(matches!(
        decode(&bytes[..bytes.len() - 1]),
        Err(SnapshotError::Checksum { .. })
    ));
    let mut wrong_version = bytes.clone();
    wrong_version[8] = 9;
    assert_eq!(decode(&wrong_version), Err(SnapshotError::Version(9)));
    // A flipped byte anywhere after the version is refused.
    for at in 12..bytes.len() {
        let mut flipped = bytes.clone();
        flipped[at] ^= 0x40;
        assert!(
            decode(&flipped).is_err(),
            "a flip at byte {at} was not noticed"
        );
    }
}
