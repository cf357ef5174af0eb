//! The `simple` format's lines that take more than a `format!`: leaders,
//! watch events and the status table.

use fenced_client::{EventKind, LeaderInfo, WatchEvent};

use super::StatusRow;

/// The text form of a leader: `NAME: VALUE (token T, key K, lease L)`, or
/// `NAME: no leader`, with `, revision R` (or ` (revision R)`) for
/// `observe`.
pub(super) fn leader_line(
    name: &str,
    leader: Option<&LeaderInfo>,
    revision: Option<i64>,
) -> String {
    let revision = revision.map(|revision| format!("revision {revision}"));
    match (leader, revision) {
        (Some(leader), revision) => {
            let mut details = format!(
                "token {}, key {}, lease {}",
                leader.token,
                text(&leader.key),
                leader.lease
            );
            if let Some(revision) = revision {
                details.push_str(&format!(", {revision}"));
            }
            format!("{name}: {} ({details})", text(&leader.value))
        }
        (None, Some(revision)) => format!("{name}: no leader ({revision})"),
        (None, None) => format!("{name}: no leader"),
    }
}

/// The text form of a watch event; see [`Output::watch_batch`].
pub(super) fn event_line(event: &WatchEvent) -> String {
    let kv = &event.kv;
    let mut details = format!("revision {}", kv.mod_revision);
    if let Some(prev) = &event.prev_kv {
        details.push_str(&format!(", prev {}", text(&prev.value)));
    }
    match event.kind {
        EventKind::Put => format!("PUT {} = {} ({details})", text(&kv.key), text(&kv.value)),
        EventKind::Delete => format!("DELETE {} ({details})", text(&kv.key)),
    }
}

/// The status table: a header and one row per endpoint, columns padded to
/// their widest cell. A failed endpoint shows `-` in every column and its
/// error in the last.
pub(super) fn status_table(rows: &[StatusRow]) -> Vec<String> {
    const HEADER: [&str; 8] = [
        "ENDPOINT", "ID", "LEADER", "TERM", "COMMIT", "APPLIED", "REVISION", "ROLE",
    ];
    let mut cells: Vec<Vec<String>> = vec![HEADER.iter().map(|h| (*h).to_owned()).collect()];
    for row in rows {
        cells.push(match &row.result {
            Ok(status) => vec![
                row.endpoint.clone(),
                status.member_id.to_string(),
                status.leader.to_string(),
                status.raft_term.to_string(),
                status.commit_index.to_string(),
                status.applied_index.to_string(),
                status.revision.to_string(),
                status.role.clone(),
            ],
            Err(err) => {
                let mut cells = vec![row.endpoint.clone()];
                cells.extend(std::iter::repeat_n("-".to_owned(), HEADER.len() - 2));
                cells.push(format!("error: {err}"));
                cells
            }
        });
    }
    // The last column is not padded, so a long error message does not widen
    // the table.
    let widths: Vec<usize> = (0..HEADER.len() - 1)
        .map(|column| cells.iter().map(|row| row[column].len()).max().unwrap_or(0))
        .collect();
    cells
        .iter()
        .map(|row| {
            let mut line = String::new();
            for (column, cell) in row.iter().enumerate() {
                match widths.get(column) {
                    Some(width) => line.push_str(&format!("{cell:<width$}  ")),
                    None => line.push_str(cell),
                }
            }
            line
        })
        .collect()
}

pub(super) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
