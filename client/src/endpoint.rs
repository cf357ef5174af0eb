//! One member's address and its lazily created gRPC channel.

use std::sync::OnceLock;

use tonic::transport::{Channel, Endpoint, Uri};

use crate::{ClientConfig, Error};

/// A member the client may talk to.
#[derive(Debug)]
pub(crate) struct MemberEndpoint {
    /// The endpoint as the user gave it, for messages and output.
    pub(crate) name: String,
    /// The parsed address with the client's connection settings.
    endpoint: Endpoint,
    /// Created on first use rather than in the constructor: creating a
    /// channel spawns its worker task, which needs a Tokio runtime, and the
    /// first use is always inside one. A channel reconnects by itself after a
    /// broken connection, so one per endpoint lives as long as the client.
    channel: OnceLock<Channel>,
}

impl MemberEndpoint {
    /// Parses `name` (`host:port` or `http://host:port`) and applies the
    /// connection settings of `config`.
    pub(crate) fn parse(name: &str, config: &ClientConfig) -> Result<Self, Error> {
        let endpoint = Endpoint::from(parse_uri(name)?)
            .connect_timeout(config.connect_timeout)
            .tcp_nodelay(true)
            // Pings find a connection whose peer stopped answering without
            // closing it (a paused or partitioned member): the requests on it
            // fail as UNAVAILABLE and move to the next member, instead of
            // waiting on a dead socket until their deadline.
            .http2_keep_alive_interval(config.keepalive_interval)
            .keep_alive_timeout(config.keepalive_timeout);
        Ok(MemberEndpoint {
            name: name.to_owned(),
            endpoint,
            channel: OnceLock::new(),
        })
    }

    /// Whether this endpoint was configured as `name`, compared after
    /// normalisation so `127.0.0.1:7379` and `http://127.0.0.1:7379/` match.
    pub(crate) fn matches(&self, name: &str) -> bool {
        self.name == name || parse_uri(name).is_ok_and(|uri| &uri == self.endpoint.uri())
    }

    /// The channel to this member, created on first use. Must be called from
    /// within a Tokio runtime.
    pub(crate) fn channel(&self) -> Channel {
        self.channel
            .get_or_init(|| self.endpoint.connect_lazy())
            .clone()
    }
}

/// Turns `host:port` or `http://host:port` into a URI with a port.
fn parse_uri(name: &str) -> Result<Uri, Error> {
    let invalid = |reason: &str| Error::InvalidEndpoint {
        endpoint: name.to_owned(),
        reason: reason.to_owned(),
    };
    let trimmed = name.trim();
    if trimmed.is_empty() {
        return Err(invalid("empty address"));
    }
    let url = match trimmed.split_once("://") {
        Some(("http", _)) => trimmed.to_owned(),
        Some((scheme, _)) => {
            return Err(invalid(&format!(
                "scheme {scheme:?} is not supported; use host:port or http://host:port"
            )));
        }
        None => format!("http://{trimmed}"),
    };
    let uri: Uri = url.parse().map_err(|err| invalid(&format!("{err}")))?;
    if uri.port_u16().is_none() {
        return Err(invalid("missing port (expected host:port)"));
    }
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(name: &str) -> Result<MemberEndpoint, Error> {
        MemberEndpoint::parse(name, &ClientConfig::new([name]))
    }

    #[test]
    fn accepts_host_port_and_http_urls() {
        assert_eq!(
            parse("127.0.0.1:7379").unwrap().endpoint.uri(),
            &"http://127.0.0.1:7379/".parse::<Uri>().unwrap()
        );
        assert!(parse("http://localhost:7379").is_ok());
        assert!(parse(" 10.0.0.1:1 ").is_ok());
    }

    #[test]
    fn rejects_what_cannot_be_dialled() {
        for bad in ["", "localhost", "https://a:1", "a b:1", "http://:x"] {
            assert!(
                matches!(parse(bad), Err(Error::InvalidEndpoint { .. })),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn matches_after_normalisation() {
        let endpoint = parse("127.0.0.1:7379").unwrap();
        assert!(endpoint.matches("http://127.0.0.1:7379"));
        assert!(!endpoint.matches("127.0.0.1:7380"));
    }
}
