//! Reading a member's Prometheus metrics (`GET /metrics` on its client
//! address), for tests that wait on what only the server can see: how many
//! watchers it holds, how many it canceled.

use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::{Cluster, wait_for};

/// How long one `GET /metrics` may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

impl Cluster {
    /// Member `id`'s `/metrics` page (Prometheus text), fetched once.
    pub async fn metrics_text(&self, id: u64) -> anyhow::Result<String> {
        let endpoint = self.endpoint(id);
        tokio::time::timeout(SCRAPE_TIMEOUT, http_get(&endpoint, "/metrics"))
            .await
            .with_context(|| format!("GET /metrics on member {id} timed out"))?
            .with_context(|| format!("GET /metrics on member {id}"))
    }

    /// The value of metric `name` on member `id`, summed over its label
    /// sets; 0 when the member has not reported it yet (Prometheus
    /// exporters only list a series once it was touched).
    pub async fn metric(&self, id: u64, name: &str) -> anyhow::Result<f64> {
        let text = self.metrics_text(id).await?;
        metric_value(&text, name)
    }

    /// Waits until metric `name` on member `id` is at least `at_least`, and
    /// returns the value seen.
    pub async fn wait_for_metric(
        &self,
        id: u64,
        name: &str,
        at_least: f64,
        timeout: Duration,
    ) -> anyhow::Result<f64> {
        let what = format!("{name} >= {at_least} on member {id}");
        wait_for(timeout, &what, || async {
            let value = self.metric(id, name).await?;
            match value >= at_least {
                true => Ok(value),
                false => Err(anyhow::anyhow!("{name} is {value}")),
            }
        })
        .await
    }

    /// Waits until member `id` holds at least `at_least` watchers (watches
    /// and election observers; the `fenced_watchers` gauge), and returns how
    /// many it holds.
    pub async fn wait_for_watchers(
        &self,
        id: u64,
        at_least: usize,
        timeout: Duration,
    ) -> anyhow::Result<usize> {
        let seen = self
            .wait_for_metric(id, "fenced_watchers", at_least as f64, timeout)
            .await?;
        Ok(seen as usize)
    }
}

/// The sum of every sample of metric `name` in Prometheus text; 0 when
/// there is none.
fn metric_value(text: &str, name: &str) -> anyhow::Result<f64> {
    let mut sum = 0.0;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        // `name value` or `name{labels} value`, not `name_suffix ...`.
        let value = match rest.chars().next() {
            Some(' ') => rest,
            Some('{') => match rest.rfind('}') {
                Some(end) => &rest[end + 1..],
                None => bail!("malformed sample line {line:?}"),
            },
            _ => continue,
        };
        let value = value.split_whitespace().next().unwrap_or_default();
        sum += value
            .parse::<f64>()
            .with_context(|| format!("sample line {line:?}"))?;
    }
    Ok(sum)
}

/// A plain HTTP/1.1 GET; returns the body of a 200 answer.
async fn http_get(endpoint: &str, path: &str) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(endpoint).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {endpoint}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .context("answer without a header end")?;
    let status_line = head.lines().next().unwrap_or_default();
    if !status_line.contains(" 200 ") {
        bail!("answered {status_line:?}");
    }
    if head
        .lines()
        .any(|l| l.eq_ignore_ascii_case("transfer-encoding: chunked"))
    {
        return dechunk(body);
    }
    Ok(body.to_string())
}

/// Decodes a chunked HTTP/1.1 body.
fn dechunk(mut body: &str) -> anyhow::Result<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").context("truncated chunk size")?;
        let size = usize::from_str_radix(size.trim(), 16).context("chunk size")?;
        if size == 0 {
            return Ok(out);
        }
        let chunk = rest.get(..size).context("truncated chunk")?;
        out.push_str(chunk);
        body = rest.get(size + 2..).context("truncated chunk end")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_samples_of_exactly_the_named_metric() {
        let text = "# TYPE fenced_watchers gauge\n\
                    fenced_watchers 12\n\
                    fenced_watchers_other 5\n\
                    fenced_watch_canceled_total{reason=\"slow\"} 3\n\
                    fenced_watch_canceled_total{reason=\"compacted\"} 2\n";
        assert_eq!(metric_value(text, "fenced_watchers").unwrap(), 12.0);
        assert_eq!(
            metric_value(text, "fenced_watch_canceled_total").unwrap(),
            5.0
        );
        assert_eq!(metric_value(text, "absent").unwrap(), 0.0);
    }

    #[test]
    fn decodes_chunks() {
        assert_eq!(
            dechunk("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap(),
            "abcde"
        );
    }
}
