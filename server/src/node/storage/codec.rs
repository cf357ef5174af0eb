//! How log keys, entries and the truncation record are encoded in fjall.

use protobuf::Message as _;
use raft::eraftpb::Entry;

use super::StorageError;

/// Largest value fjall accepts (it panics above this, so we check first).
const MAX_VALUE_LEN: usize = u32::MAX as usize;

pub(super) fn log_key(idx: u64) -> [u8; 8] {
    idx.to_be_bytes()
}

pub(super) fn decode_log_key(key: &[u8]) -> Result<u64, StorageError> {
    let bytes: [u8; 8] = key
        .try_into()
        .map_err(|_| StorageError::Corrupt(format!("log key of {} bytes", key.len())))?;
    Ok(u64::from_be_bytes(bytes))
}

pub(super) fn encode<M: protobuf::Message>(m: &M) -> Result<Vec<u8>, StorageError> {
    let bytes = m.write_to_bytes()?;
    if bytes.len() > MAX_VALUE_LEN {
        return Err(StorageError::ValueTooLarge { len: bytes.len() });
    }
    Ok(bytes)
}

pub(super) fn encode_truncated(index: u64, term: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&index.to_be_bytes());
    out[8..].copy_from_slice(&term.to_be_bytes());
    out
}

pub(super) fn decode_truncated(v: &[u8]) -> Result<(u64, u64), StorageError> {
    let bytes: [u8; 16] = v
        .try_into()
        .map_err(|_| StorageError::Corrupt(format!("truncated record of {} bytes", v.len())))?;
    let mut index = [0u8; 8];
    let mut term = [0u8; 8];
    index.copy_from_slice(&bytes[..8]);
    term.copy_from_slice(&bytes[8..]);
    Ok((u64::from_be_bytes(index), u64::from_be_bytes(term)))
}

pub(super) fn decode_entry(expected_index: u64, v: &[u8]) -> Result<Entry, StorageError> {
    let e = Entry::parse_from_bytes(v)?;
    if e.index != expected_index {
        return Err(StorageError::Corrupt(format!(
            "log key {expected_index} holds entry with index {}",
            e.index
        )));
    }
    Ok(e)
}
