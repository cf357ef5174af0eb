//! Everything fencectl prints on stdout, in both formats.
//!
//! `simple` is for people (and mirrors etcdctl where a command has an etcdctl
//! twin); `json` is one JSON object per line, with field names that scripts
//! and tests rely on (see the "Interface contract" of the design brief).
//! Keys and values are printed as UTF-8, with invalid bytes replaced.

use std::io::{self, Write as _};

use fenced_client::pb::{
    DeleteRangeResponse, KeyValue, LeaseRevokeResponse, LeaseStatus, LeaseTimeToLiveResponse,
    Member, PutResponse, StatusResponse,
};
use fenced_client::{Error, LeaderInfo, Leadership, LockGuard, Observation, WatchBatch};
use serde::Serialize;

#[path = "output/json.rs"]
mod json;
#[path = "output/text.rs"]
mod text;

use json::{
    DeletedJson, EventJson, KeyValueJson, LeaderJson, LeaseJson, LeaseStatusJson, LeaseTtlJson,
    LockJson, MemberJson, PutJson, RevokedJson, StatusJson,
};
use text::{event_line, leader_line, status_table, text};

/// The output formats of `-o/--output`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// Human-readable lines and tables.
    Simple,
    /// One JSON object per line.
    Json,
}

/// One endpoint's answer to `status`, or why there was none.
#[derive(Debug)]
pub(crate) struct StatusRow {
    pub(crate) endpoint: String,
    pub(crate) result: Result<StatusResponse, Error>,
}

/// Writes command results to stdout in the chosen format.
#[derive(Debug)]
pub(crate) struct Output {
    format: Format,
}

impl Output {
    pub(crate) fn new(format: Format) -> Output {
        Output { format }
    }

    /// `put`: `OK`, or the revision the write created.
    pub(crate) fn put(&self, response: &PutResponse) -> io::Result<()> {
        match self.format {
            Format::Simple => print_lines(["OK".to_owned()]),
            Format::Json => print_json([PutJson {
                revision: revision(response.header.as_ref()),
            }]),
        }
    }

    /// `get`: each key then its value on the next line (like etcdctl), or one
    /// object per key.
    pub(crate) fn key_values(&self, kvs: &[KeyValue]) -> io::Result<()> {
        match self.format {
            Format::Simple => {
                print_lines(kvs.iter().flat_map(|kv| [text(&kv.key), text(&kv.value)]))
            }
            Format::Json => print_json(kvs.iter().map(KeyValueJson::from)),
        }
    }

    /// `del`: the number of keys deleted.
    pub(crate) fn deleted(&self, response: &DeleteRangeResponse) -> io::Result<()> {
        match self.format {
            Format::Simple => print_lines([response.deleted.to_string()]),
            Format::Json => print_json([DeletedJson {
                deleted: response.deleted,
                revision: revision(response.header.as_ref()),
            }]),
        }
    }

    /// `status`: a table with one row per endpoint, or one object per
    /// endpoint. An endpoint that did not answer gets a row with its error.
    pub(crate) fn status(&self, rows: &[StatusRow]) -> io::Result<()> {
        match self.format {
            Format::Simple => print_lines(status_table(rows)),
            Format::Json => print_json(rows.iter().map(StatusJson::from)),
        }
    }

    /// `member list`: `id, peer_addr, client_addr, learner` lines, or one
    /// object per member.
    pub(crate) fn members(&self, members: &[Member]) -> io::Result<()> {
        match self.format {
            Format::Simple => print_lines(members.iter().map(|member| {
                format!(
                    "{}, {}, {}, {}",
                    member.id, member.peer_addr, member.client_addr, member.learner
                )
            })),
            Format::Json => print_json(members.iter().map(MemberJson::from)),
        }
    }

    /// `transfer-leader`: `leader is now member ID`, or `{"leader"}`.
    pub(crate) fn leader_moved(&self, leader: u64) -> io::Result<()> {
        #[derive(Serialize)]
        struct LeaderJson {
            leader: u64,
        }
        match self.format {
            Format::Simple => print_lines([format!("leader is now member {leader}")]),
            Format::Json => print_json([LeaderJson { leader }]),
        }
    }

    /// `lease grant`: `lease ID granted with TTL(Ns)` (as etcdctl says it,
    /// with a decimal id), or `{"id", "ttl"}`.
    pub(crate) fn lease_granted(&self, id: i64, ttl: i64) -> io::Result<()> {
        match self.format {
            Format::Simple => print_lines([format!("lease {id} granted with TTL({ttl}s)")]),
            Format::Json => print_json([LeaseJson { id, ttl }]),
        }
    }

    /// `lease keepalive`, once per answer: `lease ID keepalived with
    /// TTL(N)`, or `{"id", "ttl"}`.
    pub(crate) fn lease_keepalive(&self, id: i64, ttl: i64) -> io::Result<()> {
        match self.format {
            Format::Simple => print_lines([format!("lease {id} keepalived with TTL({ttl})")]),
            Format::Json => print_json([LeaseJson { id, ttl }]),
        }
    }

    /// `lease revoke`: `lease ID revoked`, or `{"id", "revision"}`.
    pub(crate) fn lease_revoked(&self, id: i64, response: &LeaseRevokeResponse) -> io::Result<()> {
        match self.format {
            Format::Simple => print_lines([format!("lease {id} revoked")]),
            Format::Json => print_json([RevokedJson {
                id,
                revision: revision(response.header.as_ref()),
            }]),
        }
    }

    /// `lease list`: `id, granted_ttl` lines, or one object per lease.
    pub(crate) fn leases(&self, leases: &[LeaseStatus]) -> io::Result<()> {
        match self.format {
            Format::Simple => print_lines(
                leases
                    .iter()
                    .map(|lease| format!("{}, {}", lease.id, lease.granted_ttl)),
            ),
            Format::Json => print_json(leases.iter().map(|lease| LeaseStatusJson {
                id: lease.id,
                granted_ttl: lease.granted_ttl,
            })),
        }
    }

    /// `lease ttl`: `lease ID granted with TTL(Gs), remaining(Rs)` (and the
    /// attached keys with `--keys`), or one object with every field.
    pub(crate) fn lease_ttl(
        &self,
        response: &LeaseTimeToLiveResponse,
        keys: bool,
    ) -> io::Result<()> {
        match self.format {
            Format::Simple => {
                let mut line = format!(
                    "lease {} granted with TTL({}s), remaining({}s)",
                    response.id, response.granted_ttl, response.ttl
                );
                if keys {
                    let keys: Vec<String> = response.keys.iter().map(|key| text(key)).collect();
                    line.push_str(&format!(", attached keys([{}])", keys.join(" ")));
                }
                print_lines([line])
            }
            Format::Json => print_json([LeaseTtlJson::from(response)]),
        }
    }

    /// `lock` without a command: `lock NAME acquired: token T, key K, lease
    /// L`, or `{"name", "token", "key", "lease"}`.
    pub(crate) fn lock_granted(&self, guard: &LockGuard) -> io::Result<()> {
        let grant = LockJson {
            name: guard.name().to_owned(),
            token: guard.token(),
            key: text(guard.key()),
            lease: guard.lease(),
        };
        match self.format {
            Format::Simple => print_lines([format!(
                "lock {} acquired: token {}, key {}, lease {}",
                grant.name, grant.token, grant.key, grant.lease
            )]),
            Format::Json => print_json([grant]),
        }
    }

    /// `elect`, once elected: `elected leader of NAME: token T, key K,
    /// lease L`, or `{"name", "value", "token", "key", "lease"}`.
    pub(crate) fn elected(&self, leadership: &Leadership, value: &[u8]) -> io::Result<()> {
        match self.format {
            Format::Simple => print_lines([format!(
                "elected leader of {}: token {}, key {}, lease {}",
                leadership.name(),
                leadership.token(),
                text(leadership.key()),
                leadership.lease()
            )]),
            Format::Json => print_json([LeaderJson {
                name: leadership.name().to_owned(),
                value: Some(text(value)),
                token: Some(leadership.token()),
                key: Some(text(leadership.key())),
                lease: Some(leadership.lease()),
                revision: None,
            }]),
        }
    }

    /// `leader`: `NAME: VALUE (token T, key K, lease L)` or `NAME: no
    /// leader`; or one object (see [`LeaderJson`]).
    pub(crate) fn leader(&self, name: &str, leader: Option<&LeaderInfo>) -> io::Result<()> {
        match self.format {
            Format::Simple => print_lines([leader_line(name, leader, None)]),
            Format::Json => print_json([LeaderJson::new(name, leader, None)]),
        }
    }

    /// `observe`, once per observation: the `leader` line with the
    /// revision in the parentheses (`NAME: no leader (revision R)`), or the
    /// `leader` object with `revision`.
    pub(crate) fn observation(&self, name: &str, observation: &Observation) -> io::Result<()> {
        let (leader, revision) = (observation.leader.as_ref(), Some(observation.revision));
        match self.format {
            Format::Simple => print_lines([leader_line(name, leader, revision)]),
            Format::Json => print_json([LeaderJson::new(name, leader, revision)]),
        }
    }

    /// `watch`, one line per event: `PUT KEY = VALUE (revision R)` or
    /// `DELETE KEY (revision R)`, with `, prev VALUE` in the parentheses
    /// when `prev_kv` asked for it and the key existed; or one object per
    /// event (see [`EventJson`]).
    pub(crate) fn watch_batch(&self, batch: &WatchBatch, prev_kv: bool) -> io::Result<()> {
        match self.format {
            Format::Simple => print_lines(batch.events.iter().map(event_line)),
            Format::Json => print_json(
                batch
                    .events
                    .iter()
                    .map(|event| EventJson::new(event, prev_kv)),
            ),
        }
    }
}

/// Whether a command failed only because stdout was closed (`fencectl get
/// --prefix '' | head`), which is not worth an error message.
pub(crate) fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.downcast_ref::<io::Error>()
        .is_some_and(|err| err.kind() == io::ErrorKind::BrokenPipe)
}

fn revision(header: Option<&fenced_client::pb::ResponseHeader>) -> i64 {
    header.map_or(0, |header| header.revision)
}

fn print_lines(lines: impl IntoIterator<Item = String>) -> io::Result<()> {
    let mut stdout = io::stdout().lock();
    for line in lines {
        writeln!(stdout, "{line}")?;
    }
    stdout.flush()
}

fn print_json<T: Serialize>(objects: impl IntoIterator<Item = T>) -> io::Result<()> {
    let mut stdout = io::stdout().lock();
    for object in objects {
        serde_json::to_writer(&mut stdout, &object)?;
        writeln!(stdout)?;
    }
    stdout.flush()
}

#[cfg(test)]
mod tests {
    use fenced_client::{EventKind, WatchEvent};

    use super::*;

    #[test]
    fn status_json_has_the_contract_fields() {
        let row = StatusRow {
            endpoint: "127.0.0.1:7379".to_owned(),
            result: Ok(StatusResponse {
                member_id: 1,
                leader: 2,
                raft_term: 3,
                commit_index: 4,
                applied_index: 5,
                revision: 6,
                role: "follower".to_owned(),
                ..StatusResponse::default()
            }),
        };
        let json = serde_json::to_value(StatusJson::from(&row)).unwrap();
        for (field, value) in [
            ("id", 1),
            ("leader", 2),
            ("term", 3),
            ("commit_index", 4),
            ("applied_index", 5),
            ("revision", 6),
        ] {
            assert_eq!(json[field], value, "{field}");
        }
        assert_eq!(json["endpoint"], "127.0.0.1:7379");
        assert!(json.get("error").is_none());
    }

    #[test]
    fn lease_ttl_json_has_every_field() {
        let response = LeaseTimeToLiveResponse {
            id: 7,
            ttl: 9,
            granted_ttl: 10,
            keys: vec![b"a".to_vec(), b"__fenced/lock/db/@7".to_vec()],
            remaining_ms: 8500,
            ..LeaseTimeToLiveResponse::default()
        };
        let json = serde_json::to_value(LeaseTtlJson::from(&response)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "id": 7,
                "ttl": 9,
                "granted_ttl": 10,
                "remaining_ms": 8500,
                "keys": ["a", "__fenced/lock/db/@7"],
            })
        );
    }

    fn leader_info() -> LeaderInfo {
        LeaderInfo {
            name: "db".to_owned(),
            key: b"__fenced/election/db/@7".to_vec(),
            token: 12,
            lease: 7,
            value: b"node-a".to_vec(),
        }
    }

    #[test]
    fn leaders_in_both_formats() {
        let leader = leader_info();
        assert_eq!(
            leader_line("db", Some(&leader), None),
            "db: node-a (token 12, key __fenced/election/db/@7, lease 7)"
        );
        assert_eq!(
            leader_line("db", Some(&leader), Some(15)),
            "db: node-a (token 12, key __fenced/election/db/@7, lease 7, revision 15)"
        );
        assert_eq!(leader_line("db", None, None), "db: no leader");
        assert_eq!(
            leader_line("db", None, Some(18)),
            "db: no leader (revision 18)"
        );
        assert_eq!(
            serde_json::to_value(LeaderJson::new("db", Some(&leader), None)).unwrap(),
            serde_json::json!({
                "name": "db",
                "value": "node-a",
                "token": 12,
                "key": "__fenced/election/db/@7",
                "lease": 7,
            })
        );
        assert_eq!(
            serde_json::to_value(LeaderJson::new("db", None, Some(18))).unwrap(),
            serde_json::json!({
                "name": "db",
                "value": null,
                "token": null,
                "key": null,
                "lease": null,
                "revision": 18,
            })
        );
    }

    #[test]
    fn watch_events_in_both_formats() {
        let kv = |key: &str, value: &str, mod_revision| KeyValue {
            key: key.into(),
            value: value.into(),
            mod_revision,
            ..KeyValue::default()
        };
        let put = WatchEvent {
            kind: EventKind::Put,
            kv: kv("a", "2", 14),
            prev_kv: Some(kv("a", "1", 12)),
        };
        let delete = WatchEvent {
            kind: EventKind::Delete,
            kv: kv("b", "", 14),
            prev_kv: None,
        };
        assert_eq!(event_line(&put), "PUT a = 2 (revision 14, prev 1)");
        assert_eq!(event_line(&delete), "DELETE b (revision 14)");
        assert_eq!(
            serde_json::to_value(EventJson::new(&put, false)).unwrap(),
            serde_json::json!({"type": "PUT", "key": "a", "value": "2", "mod_revision": 14})
        );
        assert_eq!(
            serde_json::to_value(EventJson::new(&put, true)).unwrap()["prev_value"],
            "1"
        );
        let json = serde_json::to_value(EventJson::new(&delete, true)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "type": "DELETE",
                "key": "b",
                "value": "",
                "mod_revision": 14,
                "prev_value": null,
            })
        );
    }

    #[test]
    fn failed_endpoints_get_an_error_row() {
        let row = StatusRow {
            endpoint: "127.0.0.1:1".to_owned(),
            result: Err(tonic::Status::unavailable("connection refused").into()),
        };
        let json = serde_json::to_value(StatusJson::from(&row)).unwrap();
        assert_eq!(json["error"], "Unavailable: connection refused");
        assert!(json.get("leader").is_none());
        let table = status_table(std::slice::from_ref(&row));
        assert!(table[1].starts_with("127.0.0.1:1"), "{table:?}");
        assert!(table[1].ends_with("error: Unavailable: connection refused"));
    }
}
