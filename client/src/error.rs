//! The client's error type: what the server (or the connection) said, or a
//! configuration the client cannot use.

use std::fmt;

use tonic::{Code, Status};

/// Everything a [`Client`](crate::Client) call or its construction can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request failed with this gRPC status: an answer from the server, a
    /// connection failure (reported as `UNAVAILABLE`), or the client's own
    /// request deadline (`DEADLINE_EXCEEDED`, after the retries it allowed).
    ///
    /// The status is not this error's `source()`: its code and message are
    /// already in this error's text, and repeating them in a cause chain would
    /// print everything twice.
    #[error("{}", StatusText(.0))]
    Rpc(Status),
    /// An endpoint string could not be turned into a gRPC address.
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint {
        /// The endpoint as it was given.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The client was configured without any endpoint.
    #[error("no endpoints given")]
    NoEndpoints,
}

impl Error {
    /// The gRPC code of this error. Configuration errors report
    /// `INVALID_ARGUMENT`, so callers can branch on one value.
    pub fn code(&self) -> Code {
        match self {
            Error::Rpc(status) => status.code(),
            Error::InvalidEndpoint { .. } | Error::NoEndpoints => Code::InvalidArgument,
        }
    }

    /// The gRPC status, when the error came from a request.
    pub fn status(&self) -> Option<&Status> {
        match self {
            Error::Rpc(status) => Some(status),
            Error::InvalidEndpoint { .. } | Error::NoEndpoints => None,
        }
    }

    /// Whether the client's retry loop treats this error as transient: the
    /// same request may succeed on another member or a little later.
    pub fn is_retryable(&self) -> bool {
        self.status().is_some_and(is_retryable)
    }
}

impl From<Status> for Error {
    fn from(status: Status) -> Self {
        Error::Rpc(status)
    }
}

/// Whether a failed attempt should be tried again on the next endpoint.
///
/// `UNAVAILABLE` covers "no leader", "shutting down" and refused
/// connections; `ABORTED` is a proposal dropped by a leader change. A
/// connection that breaks mid-request surfaces as `UNKNOWN` *with a source*
/// (the hyper or h2 error); an `UNKNOWN` the server sent itself has none and
/// is not retried.
pub(crate) fn is_retryable(status: &Status) -> bool {
    match status.code() {
        Code::Unavailable | Code::Aborted => true,
        Code::Unknown => std::error::Error::source(status).is_some(),
        _ => false,
    }
}

/// Whether a long-lived stream (a watch, an observe) that failed with
/// `status` should be opened again on another member: everything the retry
/// loop retries, plus `CANCELLED` (the member reset the stream, which is
/// what a member going away does; the client itself never cancels a stream
/// it still reads) and `DEADLINE_EXCEEDED` (an attempt to open it was not
/// answered in time).
pub(crate) fn breaks_stream(status: &Status) -> bool {
    is_retryable(status) || matches!(status.code(), Code::Cancelled | Code::DeadlineExceeded)
}

/// Displays a status as `Code: message: cause`, where the cause is the root
/// of the transport error tonic keeps as the status's source (for example
/// "Connection refused (os error 111)"). The layers in between repeat the
/// message or say only "transport error", so they are left out.
struct StatusText<'a>(&'a Status);

impl fmt::Display for StatusText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = self.0;
        write!(f, "{:?}", status.code())?;
        if !status.message().is_empty() {
            write!(f, ": {}", status.message())?;
        }
        let mut root = None;
        let mut cause = std::error::Error::source(status);
        while let Some(err) = cause {
            root = Some(err);
            cause = err.source();
        }
        if let Some(root) = root {
            let text = root.to_string();
            if !status.message().ends_with(&text) {
                write!(f, ": {text}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_statuses_display_code_and_message() {
        let err = Error::from(Status::failed_precondition("stale token 7"));
        assert_eq!(err.to_string(), "FailedPrecondition: stale token 7");
        assert_eq!(err.code(), Code::FailedPrecondition);
        assert!(!err.is_retryable());
    }

    #[test]
    fn retryable_codes() {
        assert!(is_retryable(&Status::unavailable("no leader")));
        assert!(is_retryable(&Status::aborted("leader changed")));
        assert!(!is_retryable(&Status::unknown("server said so")));
        assert!(!is_retryable(&Status::invalid_argument("key too large")));
        let transport = Status::from_error(Box::new(std::io::Error::other("connection reset")));
        assert_eq!(transport.code(), Code::Unknown);
        assert!(is_retryable(&transport));
    }

    #[test]
    fn streams_reopen_after_resets_and_timeouts() {
        assert!(breaks_stream(&Status::cancelled("stream reset")));
        assert!(breaks_stream(&Status::deadline_exceeded("no answer")));
        assert!(breaks_stream(&Status::unavailable("shutting down")));
        assert!(!breaks_stream(&Status::out_of_range("compacted")));
        assert!(!breaks_stream(&Status::invalid_argument("bad name")));
    }

    #[test]
    fn configuration_errors_are_invalid_argument() {
        assert_eq!(Error::NoEndpoints.code(), Code::InvalidArgument);
        assert!(Error::NoEndpoints.status().is_none());
    }
}
