//! Damage found when opening: gaps, stray or garbage records, a commit beyond the log,
//! and a database another process holds.

use super::*;

fn log_keyspace(s: &FjallStorage) -> fjall::Keyspace {
    s.database()
        .keyspace(LOG_KEYSPACE, fjall::KeyspaceCreateOptions::default)
        .unwrap()
}

fn state_keyspace(s: &FjallStorage) -> fjall::Keyspace {
    s.database()
        .keyspace(STATE_KEYSPACE, fjall::KeyspaceCreateOptions::default)
        .unwrap()
}

fn expect_corrupt(dir: &TempDir, s: FjallStorage, what: &str) {
    drop(s);
    match FjallStorage::open(dir.path()) {
        Err(StorageError::Corrupt(msg)) => assert!(msg.contains(what), "{msg}"),
        other => panic!("expected corruption ({what}), got {other:?}"),
    }
}

#[test]
fn open_detects_gap_in_log() {
    let (dir, mut s) = open_tmp();
    s.persist(&ents(1..=5, 1), None).unwrap();
    log_keyspace(&s).remove(3u64.to_be_bytes()).unwrap();
    expect_corrupt(&dir, s, "expected index 3, found 4");
}

#[test]
fn open_detects_entry_below_first_index() {
    let (dir, mut s) = open_tmp();
    s.persist(&ents(1..=5, 1), Some(&hs(1, 0, 2))).unwrap();
    s.compact(3).unwrap();
    let stray = ent(1, 1).write_to_bytes().unwrap();
    log_keyspace(&s).insert(1u64.to_be_bytes(), stray).unwrap();
    expect_corrupt(&dir, s, "expected index 3, found 1");
}

#[test]
fn open_detects_missing_head_after_truncation() {
    let (dir, mut s) = open_tmp();
    s.persist(&ents(1..=5, 1), None).unwrap();
    log_keyspace(&s).remove(1u64.to_be_bytes()).unwrap();
    expect_corrupt(&dir, s, "expected index 1, found 2");
}

#[test]
fn open_detects_commit_beyond_last() {
    let (dir, mut s) = open_tmp();
    s.persist(&ents(1..=2, 1), Some(&hs(1, 0, 2))).unwrap();
    let bad = hs(1, 0, 9).write_to_bytes().unwrap();
    state_keyspace(&s).insert(KEY_HARD_STATE, bad).unwrap();
    expect_corrupt(&dir, s, "commit 9 outside [0, 2]");
}

#[test]
fn open_detects_entry_with_wrong_index() {
    let (dir, mut s) = open_tmp();
    s.persist(&ents(1..=3, 1), None).unwrap();
    let wrong = ent(7, 1).write_to_bytes().unwrap();
    log_keyspace(&s).insert(3u64.to_be_bytes(), wrong).unwrap();
    expect_corrupt(&dir, s, "log key 3 holds entry with index 7");
}

#[test]
fn open_detects_garbage_records() {
    let (dir, mut s) = open_tmp();
    s.persist(&ents(1..=3, 1), None).unwrap();
    state_keyspace(&s).insert(KEY_TRUNCATED, b"short").unwrap();
    expect_corrupt(&dir, s, "truncated record of 5 bytes");
}

#[test]
fn node_keyspace_lives_beside_raft_state() {
    let (dir, mut s) = open_tmp();
    s.persist(&ents(1..=2, 1), None).unwrap();
    let meta = s
        .database()
        .keyspace("member", fjall::KeyspaceCreateOptions::default)
        .unwrap();
    meta.insert("id", "7").unwrap();
    drop(meta);
    let s = reopen(&dir, s);
    let meta = s
        .database()
        .keyspace("member", fjall::KeyspaceCreateOptions::default)
        .unwrap();
    assert_eq!(meta.get("id").unwrap().as_deref(), Some(&b"7"[..]));
    assert_eq!(s.last_index(), Ok(2));
}

#[test]
fn database_is_locked_while_open() {
    let (dir, s) = open_tmp();
    assert!(matches!(
        FjallStorage::open(dir.path()),
        Err(StorageError::Fjall(_))
    ));
    drop(s);
    FjallStorage::open(dir.path()).unwrap();
}
