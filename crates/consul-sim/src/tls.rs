//! The simulator's HTTPS: a server certificate and key, and optionally the
//! CA a client certificate must chain to (an agent with
//! `verify_incoming = true`). PEM text in, a rustls server configuration out.

use std::sync::Arc;

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// How the simulator serves TLS.
#[derive(Clone, Debug)]
pub struct TlsOptions {
    /// The server certificate (chain), PEM.
    pub cert_pem: String,
    /// Its private key, PEM.
    pub key_pem: String,
    /// Require a client certificate signed by this CA (PEM); `None` = no client certificate asked for.
    pub client_ca_pem: Option<String>,
}

impl TlsOptions {
    /// Builds the server configuration; an error says which PEM is unusable.
    pub(crate) fn server_config(&self) -> std::io::Result<Arc<rustls::ServerConfig>> {
        let invalid = |what: &str, error: &dyn std::fmt::Display| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{what}: {error}"))
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| invalid("server certificate", &error))?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|error| invalid("server key", &error))?;
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|error| invalid("TLS versions", &error))?;
        let builder = match &self.client_ca_pem {
            Some(ca_pem) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
                    let cert = cert.map_err(|error| invalid("client CA", &error))?;
                    roots
                        .add(cert)
                        .map_err(|error| invalid("client CA", &error))?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .map_err(|error| invalid("client CA", &error))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let config = builder
            .with_single_cert(chain, key)
            .map_err(|error| invalid("server certificate and key", &error))?;
        Ok(Arc::new(config))
    }
}
