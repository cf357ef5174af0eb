//! What one response on a watch stream means for the stream: the
//! confirmation, a batch, progress, a request to resume elsewhere, or the
//! end. Pure conversion from the protobuf messages; nothing is sent here.

use tonic::{Code, Status};

use super::{EventKind, WatchBatch, WatchEvent};
use crate::pb::event::EventType;
use crate::pb::{Event, WatchResponse};

/// What one watch response means for the stream.
#[derive(Debug)]
pub(super) enum Answer {
    /// The member confirmed the watch; events after this revision follow.
    Created(i64),
    /// A batch to deliver (unless it was delivered already).
    Events(WatchBatch),
    /// Nothing up to this revision is left to deliver.
    Progress(i64),
    /// A response without events that claims nothing (not created, not
    /// progress): skipped, and in particular not taken as progress, since
    /// its revision promises nothing about what is still to come.
    Empty,
    /// The member cancelled the watch and asks for it to be re-created
    /// (it is shutting down, or the watcher fell behind).
    Moved {
        /// Where the member says to resume; the client resumes from its
        /// own count, which is never later (see `resume`).
        resume_revision: i64,
        why: String,
    },
    /// The start is older than the history window: `OUT_OF_RANGE`.
    Compacted(Status),
    /// The member cancelled or refused the watch for good, with this
    /// status. (An `UNAVAILABLE` refusal is `Moved`: another member may
    /// take the watch.)
    Refused(Status),
}

impl From<WatchResponse> for Answer {
    fn from(response: WatchResponse) -> Self {
        let code = Code::from(response.code);
        let revision = response.header.map_or(0, |header| header.revision);
        if response.canceled || code != Code::Ok {
            let reason = match response.cancel_reason.is_empty() {
                true => "no reason given".to_owned(),
                false => response.cancel_reason,
            };
            if response.compact_revision > 0 || code == Code::OutOfRange {
                return Answer::Compacted(Status::out_of_range(format!(
                    "the watch's start revision is no longer in the history window \
                     (the oldest revision left is {}): {reason}",
                    response.compact_revision
                )));
            }
            return match code {
                Code::ResourceExhausted | Code::Unavailable => Answer::Moved {
                    resume_revision: response.resume_revision,
                    why: format!(
                        "the member cancelled the watch ({code:?}, resume at revision {}): \
                         {reason}",
                        response.resume_revision
                    ),
                },
                // Cancelled without a code: the client never cancels, so
                // this is the member ending the watch for a reason of its
                // own.
                Code::Ok => Answer::Refused(Status::cancelled(format!(
                    "the member cancelled the watch: {reason}"
                ))),
                code => Answer::Refused(Status::new(code, reason)),
            };
        }
        if response.created {
            return Answer::Created(revision);
        }
        if response.progress {
            return Answer::Progress(revision);
        }
        if response.events.is_empty() {
            return Answer::Empty;
        }
        let events: Vec<WatchEvent> = response.events.into_iter().map(WatchEvent::from).collect();
        // The header names the revision; without one, the events do.
        let revision = match revision {
            0 => events
                .iter()
                .map(|event| event.kv.mod_revision)
                .max()
                .unwrap_or(0),
            revision => revision,
        };
        Answer::Events(WatchBatch { revision, events })
    }
}

impl From<Event> for WatchEvent {
    fn from(event: Event) -> Self {
        let kind = match EventType::try_from(event.r#type) {
            Ok(EventType::Delete) => EventKind::Delete,
            _ => EventKind::Put,
        };
        WatchEvent {
            kind,
            kv: event.kv.unwrap_or_default(),
            prev_kv: event.prev_kv,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::{KeyValue, ResponseHeader};

    fn header(revision: i64) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            revision,
            ..ResponseHeader::default()
        })
    }

    fn kv(key: &str, value: &str, mod_revision: i64) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: value.into(),
            mod_revision,
            ..KeyValue::default()
        }
    }

    #[test]
    fn created_and_progress_carry_the_header_revision() {
        let created = WatchResponse {
            header: header(41),
            created: true,
            watch_id: 3,
            ..WatchResponse::default()
        };
        assert!(matches!(Answer::from(created), Answer::Created(41)));
        let progress = WatchResponse {
            header: header(50),
            progress: true,
            ..WatchResponse::default()
        };
        assert!(matches!(Answer::from(progress), Answer::Progress(50)));
        let empty = WatchResponse {
            header: header(60),
            ..WatchResponse::default()
        };
        assert!(matches!(Answer::from(empty), Answer::Empty));
    }

    #[test]
    fn events_become_one_batch_of_their_revision() {
        let response = WatchResponse {
            header: header(7),
            events: vec![
                Event {
                    r#type: EventType::Put.into(),
                    kv: Some(kv("a", "1", 7)),
                    prev_kv: Some(kv("a", "0", 3)),
                },
                Event {
                    r#type: EventType::Delete.into(),
                    kv: Some(kv("b", "", 7)),
                    prev_kv: None,
                },
            ],
            ..WatchResponse::default()
        };
        let Answer::Events(batch) = Answer::from(response) else {
            panic!("not a batch");
        };
        assert_eq!(
            batch,
            WatchBatch {
                revision: 7,
                events: vec![
                    WatchEvent {
                        kind: EventKind::Put,
                        kv: kv("a", "1", 7),
                        prev_kv: Some(kv("a", "0", 3)),
                    },
                    WatchEvent {
                        kind: EventKind::Delete,
                        kv: kv("b", "", 7),
                        prev_kv: None,
                    },
                ],
            }
        );
    }

    #[test]
    fn without_a_header_the_events_name_the_revision() {
        let response = WatchResponse {
            events: vec![Event {
                r#type: EventType::Put.into(),
                kv: Some(kv("a", "1", 9)),
                prev_kv: None,
            }],
            ..WatchResponse::default()
        };
        let Answer::Events(batch) = Answer::from(response) else {
            panic!("not a batch");
        };
        assert_eq!(batch.revision, 9);
    }

    #[test]
    fn slow_and_shutting_down_cancels_move_the_watch() {
        for code in [Code::ResourceExhausted, Code::Unavailable] {
            let response = WatchResponse {
                canceled: true,
                code: code as i32,
                resume_revision: 12,
                cancel_reason: "watcher fell behind".to_owned(),
                ..WatchResponse::default()
            };
            let Answer::Moved {
                resume_revision,
                why,
            } = Answer::from(response)
            else {
                panic!("{code:?} did not move the watch");
            };
            assert_eq!(resume_revision, 12);
            assert!(why.contains("watcher fell behind"), "{why}");
        }
    }

    #[test]
    fn compaction_is_out_of_range() {
        let by_revision = WatchResponse {
            canceled: true,
            compact_revision: 40,
            cancel_reason: "compacted".to_owned(),
            ..WatchResponse::default()
        };
        let by_code = WatchResponse {
            code: Code::OutOfRange as i32,
            ..WatchResponse::default()
        };
        for response in [by_revision, by_code] {
            let Answer::Compacted(status) = Answer::from(response) else {
                panic!("not compacted");
            };
            assert_eq!(status.code(), Code::OutOfRange);
        }
        let Answer::Compacted(status) = Answer::from(WatchResponse {
            canceled: true,
            compact_revision: 40,
            ..WatchResponse::default()
        }) else {
            panic!("not compacted");
        };
        assert!(
            status.message().contains("oldest revision left is 40"),
            "{status}"
        );
    }

    #[test]
    fn refusals_keep_their_code() {
        let refused = WatchResponse {
            code: Code::InvalidArgument as i32,
            cancel_reason: "an exact watch needs a key".to_owned(),
            ..WatchResponse::default()
        };
        let Answer::Refused(status) = Answer::from(refused) else {
            panic!("not refused");
        };
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "an exact watch needs a key");
        let Answer::Refused(status) = Answer::from(WatchResponse {
            canceled: true,
            ..WatchResponse::default()
        }) else {
            panic!("not refused");
        };
        assert_eq!(status.code(), Code::Cancelled);
    }
}
