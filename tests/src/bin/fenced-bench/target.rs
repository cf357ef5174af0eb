//! The systems under test behind one interface, so both see the same
//! workload shape through comparable gRPC clients.

use crate::TargetKind;

/// A connected client of one system. Cheap to clone (shares connections).
#[derive(Clone)]
pub(crate) enum Target {
    /// fenced through fenced-client.
    Fenced(fenced_client::Client),
    /// etcd through the etcd-client crate.
    #[cfg(feature = "etcd")]
    Etcd(etcd_client::KvClient),
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Fenced(c) => f.debug_tuple("Fenced").field(c).finish(),
            #[cfg(feature = "etcd")]
            Target::Etcd(_) => f.write_str("Etcd"),
        }
    }
}

impl Target {
    /// Connects to `endpoints` of the given system.
    pub(crate) async fn connect(kind: TargetKind, endpoints: &[String]) -> anyhow::Result<Self> {
        match kind {
            TargetKind::Fenced => Ok(Target::Fenced(fenced_client::Client::new(endpoints)?)),
            #[cfg(feature = "etcd")]
            TargetKind::Etcd => {
                let urls: Vec<String> = endpoints
                    .iter()
                    .map(|e| {
                        if e.contains("://") {
                            e.clone()
                        } else {
                            format!("http://{e}")
                        }
                    })
                    .collect();
                let client = etcd_client::Client::connect(urls, None).await?;
                Ok(Target::Etcd(client.kv_client()))
            }
            #[cfg(not(feature = "etcd"))]
            TargetKind::Etcd => anyhow::bail!(
                "this fenced-bench was built without the etcd target; build it with \
                 `cargo build --release -p fenced-tests --features etcd` (needs protoc on PATH)"
            ),
        }
    }

    /// Writes one key.
    pub(crate) async fn put(&self, key: Vec<u8>, value: Vec<u8>) -> anyhow::Result<()> {
        match self {
            Target::Fenced(c) => {
                c.put(key, value).await?;
            }
            #[cfg(feature = "etcd")]
            Target::Etcd(c) => {
                c.clone().put(key, value, None).await?;
            }
        }
        Ok(())
    }
}
