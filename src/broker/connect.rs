//! Reaching the broker: which node of the cluster, over TLS or not, and why a link
//! failed, said once and without the password. Shared by the consumer and the
//! revocation feed, so both reach the cluster the same way.

use std::time::Duration;

use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::LongString;
use lapin::{Connection, ConnectionProperties};
use rand::seq::SliceRandom;

use super::LinkError;
use crate::config::{AmqpConfig, BrokerNode, TlsFiles};

/// Time allowed for TCP connect, TLS and the AMQP handshake, so a black-holed broker
/// address does not stall the reconnect loop.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// AMQP reply code of a refused login (`ACCESS_REFUSED`).
const ACCESS_REFUSED: u16 = 403;

/// The cluster's nodes, tried in turn.
pub(crate) struct Nodes {
    /// Shuffled once per instance, so a fleet spreads over the cluster.
    nodes: Vec<BrokerNode>,
    /// Index of the node the next attempt goes to.
    next: usize,
    /// `host:port` of the node of the last connection opened, for the logs when it is lost.
    connected: Option<String>,
    tls: TlsFiles,
}

impl Nodes {
    pub(crate) fn new(config: &AmqpConfig) -> Nodes {
        let mut nodes = config.nodes.clone();
        nodes.shuffle(&mut rand::rng());
        Nodes {
            nodes,
            next: 0,
            connected: None,
            tls: config.tls.clone(),
        }
    }

    /// Connects to the next node in turn: after a failure or a lost link, the following
    /// attempt goes to another node (with one node, the same one again). `name` is the
    /// connection's name in the management UI.
    pub(crate) async fn connect(&mut self, name: &str) -> Result<(Connection, String), LinkError> {
        self.connected = None;
        let node = &self.nodes[self.next % self.nodes.len()];
        self.next = (self.next + 1) % self.nodes.len();
        let addr = node.addr.clone();
        let failed = |why: Failure| LinkError::Connect {
            node: addr.clone(),
            why,
        };
        let tls = if node.tls() {
            tls_config(&self.tls).map_err(|e| failed(Failure::Files(e)))?
        } else {
            OwnedTLSConfig::default()
        };
        let props =
            ConnectionProperties::default().with_connection_name(LongString::from(name.to_owned()));
        let runtime = lapin::runtime::default_runtime().map_err(|e| failed(classify(e)))?;
        let connecting = Connection::connect_uri_with_config(node.uri.clone(), props, tls, runtime);
        match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(Ok(conn)) => {
                self.connected = Some(addr.clone());
                Ok((conn, addr))
            }
            Ok(Err(e)) => Err(failed(classify(e))),
            Err(_) => Err(failed(Failure::Timeout(CONNECT_TIMEOUT))),
        }
    }

    /// The node of the connection last opened, if the last attempt opened one.
    pub(crate) fn connected(&self) -> Option<&str> {
        self.connected.as_deref()
    }
}

/// Why a connection could not be opened, in the operator's terms.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Failure {
    /// The broker refused the credentials: retrying will not help until someone acts.
    #[error(
        "login refused by the broker ({0}); check the user and password in GATEWAY_AMQP_URL and the user's permissions on the vhost (with auth_mechanism=external: a user named after the client certificate's subject must exist)"
    )]
    AccessRefused(String),
    /// The TLS handshake failed: an unknown CA, a wrong host, an expired certificate.
    #[error(
        "TLS handshake failed: {0}; the broker's certificate must be signed by a system root or by GATEWAY_AMQP_TLS_CA_FILE, name the URL's host, and be valid now"
    )]
    Tls(String),
    /// A TLS file could not be read or parsed.
    #[error("TLS files: {0}")]
    Files(String),
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Other(lapin::Error),
}

impl Failure {
    /// Whether an operator must act (wrong credentials or certificates), as opposed to a
    /// broker that is down for now.
    pub(crate) fn needs_operator(&self) -> bool {
        matches!(
            self,
            Failure::AccessRefused(_) | Failure::Tls(_) | Failure::Files(_)
        )
    }
}

fn classify(e: lapin::Error) -> Failure {
    if let lapin::ErrorKind::ProtocolError(amqp) = e.kind()
        && amqp.get_id() == ACCESS_REFUSED
    {
        return Failure::AccessRefused(amqp.get_message().to_string());
    }
    if let lapin::ErrorKind::IOError(io) = e.kind() {
        let text = io.to_string();
        // rustls reports certificate and handshake problems through io::Error; its
        // messages name the cause ("UnknownIssuer", "not valid for name", "Expired"...).
        if ["certificate", "handshake", "alert", "TLS"]
            .iter()
            .any(|w| text.contains(w))
        {
            return Failure::Tls(text);
        }
    }
    Failure::Other(e)
}

/// The TLS settings for one attempt, files read afresh so rotated certificates are used.
fn tls_config(files: &TlsFiles) -> Result<OwnedTLSConfig, String> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    let cert_chain = match &files.ca_file {
        Some(path) => Some(String::from_utf8_lossy(&read(path)?).into_owned()),
        None => None,
    };
    let identity = match &files.client {
        Some((cert, key)) => Some(OwnedIdentity::PKCS8 {
            pem: read(cert)?,
            key: read(key)?,
        }),
        None => None,
    };
    Ok(OwnedTLSConfig {
        identity,
        cert_chain,
    })
}
