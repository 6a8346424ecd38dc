//! Mutual TLS between peers.
//!
//! The CA in `[cluster.tls]` is the cluster's trust root: a peer must present a
//! certificate it signed, and so must we. Every certificate `failoverd tls init`
//! writes carries the DNS name [`SERVER_NAME`], which clients verify, so nodes
//! can move between addresses without re-issuing certificates.
//!
//! We run the TLS handshake ourselves (rather than inside tonic) so that a
//! refused peer is logged with its address.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::PrivateKeyDer;
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;

use crate::config::TlsConfig;

/// The name every node certificate carries and every client verifies.
pub const SERVER_NAME: &str = "failoverd";

/// How long a peer may take to finish the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A TLS file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file cannot be read or holds no usable PEM item.
    #[error("{key} = {path}: {reason}")]
    File {
        /// Config key naming the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The certificate, key and CA do not form a usable configuration.
    #[error("cluster.tls: {0}")]
    Config(String),
}

/// The loaded `[cluster.tls]` material: PEM bytes plus parsed forms.
#[derive(Clone)]
pub struct TlsMaterial {
    ca_pem: Vec<u8>,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    acceptor: TlsAcceptor,
}

impl TlsMaterial {
    /// Reads and checks the three files. Called before any port is bound.
    pub fn load(cfg: &TlsConfig) -> Result<Self, TlsError> {
        let ca_pem = read(cfg.ca_file.as_path(), "cluster.tls.ca_file")?;
        let cert_pem = read(cfg.cert_file.as_path(), "cluster.tls.cert_file")?;
        let key_pem = read(cfg.key_file.as_path(), "cluster.tls.key_file")?;
        let ca = certs(&ca_pem, "cluster.tls.ca_file", &cfg.ca_file)?;
        let chain = certs(&cert_pem, "cluster.tls.cert_file", &cfg.cert_file)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::File {
            key: "cluster.tls.key_file",
            path: cfg.key_file.clone(),
            reason: format!("no private key: {e}"),
        })?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in ca {
            roots.add(cert).map_err(|e| TlsError::File {
                key: "cluster.tls.ca_file",
                path: cfg.ca_file.clone(),
                reason: format!("not a usable CA certificate: {e}"),
            })?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| TlsError::Config(format!("client verifier: {e}")))?;
        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| TlsError::Config(format!("cert_file and key_file do not match: {e}")))?;
        server.alpn_protocols = vec![b"h2".to_vec()];
        Ok(TlsMaterial {
            ca_pem,
            cert_pem,
            key_pem,
            acceptor: TlsAcceptor::from(Arc::new(server)),
        })
    }

    /// The client side: verify the peer against the CA and present our cert.
    pub fn client_config(&self) -> tonic::transport::ClientTlsConfig {
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.ca_pem))
            .identity(tonic::transport::Identity::from_pem(&self.cert_pem, &self.key_pem))
            .domain_name(SERVER_NAME)
    }

    /// Accepts TCP connections on `listener` and yields those whose TLS
    /// handshake succeeds; each refusal is logged with the peer's address.
    pub fn incoming(&self, listener: TcpListener) -> ReceiverStream<io::Result<TlsStream<TcpStream>>> {
        let (tx, rx) = mpsc::channel(16);
        let acceptor = self.acceptor.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(conn) => conn,
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed on the peer port");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                    _ = tx.closed() => return,
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    if let Some(stream) = handshake(&acceptor, tcp, peer).await {
                        let _ = tx.send(Ok(stream)).await;
                    }
                });
            }
        });
        ReceiverStream::new(rx)
    }
}

async fn handshake(acceptor: &TlsAcceptor, tcp: TcpStream, peer: SocketAddr) -> Option<TlsStream<TcpStream>> {
    let _ = tcp.set_nodelay(true);
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(e)) => {
            tracing::warn!(peer = %peer, error = %e, "refused peer connection: TLS handshake failed (no certificate signed by the cluster CA, or not TLS)");
            None
        }
        Err(_) => {
            tracing::warn!(peer = %peer, "refused peer connection: TLS handshake timed out");
            None
        }
    }
}

fn read(path: &Path, key: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::File {
        key,
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn certs(pem: &[u8], key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file_err = |reason: String| TlsError::File {
        key,
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(file_err("no certificate in the file".into()));
    }
    Ok(certs)
}
