//! The JSON objects of `-o json`, one per line. Field names are part of the
//! interface contract: scripts and tests read them.

use fenced_client::pb::{KeyValue, LeaseTimeToLiveResponse, Member};
use fenced_client::{LeaderInfo, WatchEvent};
use serde::Serialize;

use super::StatusRow;
use super::text::text;

#[derive(Serialize)]
pub(super) struct PutJson {
    pub(super) revision: i64,
}

#[derive(Serialize)]
pub(super) struct DeletedJson {
    pub(super) deleted: i64,
    pub(super) revision: i64,
}

#[derive(Serialize)]
pub(super) struct LeaseJson {
    pub(super) id: i64,
    pub(super) ttl: i64,
}

#[derive(Serialize)]
pub(super) struct RevokedJson {
    pub(super) id: i64,
    pub(super) revision: i64,
}

#[derive(Serialize)]
pub(super) struct LeaseStatusJson {
    pub(super) id: i64,
    pub(super) granted_ttl: i64,
}

#[derive(Serialize)]
pub(super) struct LeaseTtlJson {
    pub(super) id: i64,
    pub(super) ttl: i64,
    pub(super) granted_ttl: i64,
    pub(super) remaining_ms: i64,
    /// Empty unless `--keys` asked for them.
    pub(super) keys: Vec<String>,
}

impl From<&LeaseTimeToLiveResponse> for LeaseTtlJson {
    fn from(response: &LeaseTimeToLiveResponse) -> Self {
        LeaseTtlJson {
            id: response.id,
            ttl: response.ttl,
            granted_ttl: response.granted_ttl,
            remaining_ms: response.remaining_ms,
            keys: response.keys.iter().map(|key| text(key)).collect(),
        }
    }
}

#[derive(Serialize)]
pub(super) struct LockJson {
    pub(super) name: String,
    pub(super) token: i64,
    pub(super) key: String,
    pub(super) lease: i64,
}

/// The leader of an election, for `elect`, `leader` and `observe`. Every
/// field is always there: without a leader, `value`, `token`, `key` and
/// `lease` are `null`, so `token == null` is the test for "no leader".
/// `revision` is only in `observe`'s objects.
#[derive(Serialize)]
pub(super) struct LeaderJson {
    pub(super) name: String,
    pub(super) value: Option<String>,
    pub(super) token: Option<i64>,
    pub(super) key: Option<String>,
    pub(super) lease: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) revision: Option<i64>,
}

impl LeaderJson {
    pub(super) fn new(name: &str, leader: Option<&LeaderInfo>, revision: Option<i64>) -> Self {
        LeaderJson {
            name: name.to_owned(),
            value: leader.map(|leader| text(&leader.value)),
            token: leader.map(|leader| leader.token),
            key: leader.map(|leader| text(&leader.key)),
            lease: leader.map(|leader| leader.lease),
            revision,
        }
    }
}

/// One watch event. `prev_value` is there only with `--prev-kv`, and is
/// `null` when the key did not exist before.
#[derive(Serialize)]
pub(super) struct EventJson {
    pub(super) r#type: &'static str,
    pub(super) key: String,
    pub(super) value: String,
    pub(super) mod_revision: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) prev_value: Option<Option<String>>,
}

impl EventJson {
    pub(super) fn new(event: &WatchEvent, prev_kv: bool) -> Self {
        EventJson {
            r#type: event.kind.as_str(),
            key: text(&event.kv.key),
            value: text(&event.kv.value),
            mod_revision: event.kv.mod_revision,
            prev_value: prev_kv.then(|| event.prev_kv.as_ref().map(|kv| text(&kv.value))),
        }
    }
}

#[derive(Serialize)]
pub(super) struct KeyValueJson {
    pub(super) key: String,
    pub(super) value: String,
    pub(super) create_revision: i64,
    pub(super) mod_revision: i64,
    pub(super) version: i64,
    pub(super) lease: i64,
}

impl From<&KeyValue> for KeyValueJson {
    fn from(kv: &KeyValue) -> Self {
        KeyValueJson {
            key: text(&kv.key),
            value: text(&kv.value),
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
            lease: kv.lease,
        }
    }
}

/// A status line. Either the member's fields or `error` are present, so a
/// script can test for `error` before reading the numbers.
#[derive(Serialize)]
pub(super) struct StatusJson {
    pub(super) endpoint: String,
    #[serde(flatten)]
    pub(super) status: Option<MemberStatusJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) error: Option<String>,
}

#[derive(Serialize)]
pub(super) struct MemberStatusJson {
    pub(super) id: u64,
    pub(super) leader: u64,
    pub(super) term: u64,
    pub(super) commit_index: u64,
    pub(super) applied_index: u64,
    pub(super) revision: i64,
    pub(super) role: String,
    pub(super) version: String,
    pub(super) first_index: u64,
    pub(super) last_index: u64,
    pub(super) snapshot_index: u64,
    /// Hex, so it survives JSON readers that parse numbers as doubles.
    pub(super) state_digest: String,
}

impl From<&StatusRow> for StatusJson {
    fn from(row: &StatusRow) -> Self {
        let (status, error) = match &row.result {
            Ok(status) => (
                Some(MemberStatusJson {
                    id: status.member_id,
                    leader: status.leader,
                    term: status.raft_term,
                    commit_index: status.commit_index,
                    applied_index: status.applied_index,
                    revision: status.revision,
                    role: status.role.clone(),
                    version: status.version.clone(),
                    first_index: status.first_index,
                    last_index: status.last_index,
                    snapshot_index: status.snapshot_index,
                    state_digest: format!("{:016x}", status.state_digest),
                }),
                None,
            ),
            Err(err) => (None, Some(err.to_string())),
        };
        StatusJson {
            endpoint: row.endpoint.clone(),
            status,
            error,
        }
    }
}

#[derive(Serialize)]
pub(super) struct MemberJson {
    pub(super) id: u64,
    pub(super) peer_addr: String,
    pub(super) client_addr: String,
    pub(super) learner: bool,
}

impl From<&Member> for MemberJson {
    fn from(member: &Member) -> Self {
        MemberJson {
            id: member.id,
            peer_addr: member.peer_addr.clone(),
            client_addr: member.client_addr.clone(),
            learner: member.learner,
        }
    }
}
