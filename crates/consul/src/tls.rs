//! TLS to the agent (an `https://` address), with the settings of the `consul`
//! CLI: a CA file or directory (else the system's roots), a client
//! certificate for mutual TLS, the name to verify, and verification off.
//!
//! rustls with the ring provider: no OpenSSL to link or keep patched, and the
//! smaller of rustls' two providers. The verifier is our own thin wrapper so
//! that `server_name` (Consul's `tls_server_name`) replaces the URL's host in
//! the check, as it does in Consul's Go client.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// TLS settings for an `https://` agent address; plain `http://` and
/// `unix://` addresses ignore them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM file of CA certificates to trust (`CONSUL_CACERT`).
    pub ca_file: Option<PathBuf>,
    /// Directory whose every file is PEM CA certificates (`CONSUL_CAPATH`).
    /// Without `ca_file` and `ca_path`, the system's trusted roots.
    pub ca_path: Option<PathBuf>,
    /// PEM client certificate (chain) for mutual TLS (`CONSUL_CLIENT_CERT`).
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file` (`CONSUL_CLIENT_KEY`).
    pub key_file: Option<PathBuf>,
    /// Name the agent's certificate must be valid for, instead of the
    /// address's host (`CONSUL_TLS_SERVER_NAME`), e.g. `localhost` or
    /// `server.dc1.consul` when dialling an IP address.
    pub server_name: Option<String>,
    /// Verify the agent's certificate (`CONSUL_HTTP_SSL_VERIFY=false` turns
    /// it off: encrypted, but anyone on the path can pose as the agent).
    pub verify: bool,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            ca_file: None,
            ca_path: None,
            cert_file: None,
            key_file: None,
            server_name: None,
            verify: true,
        }
    }
}

/// Whether a file was replaced or rewritten: modification time, length and
/// inode (an atomic rename changes the inode even within one mtime tick).
pub(crate) type Stamp = (PathBuf, Option<(std::time::SystemTime, u64, u64)>);

impl TlsConfig {
    /// The stamps of every file this config reads (the CA directory's
    /// entries included), in a stable order; a missing file stamps `None`.
    pub(crate) fn stamps(&self) -> Vec<Stamp> {
        use std::os::unix::fs::MetadataExt as _;
        let stamp = |path: &Path| {
            let stamp = std::fs::metadata(path)
                .ok()
                .map(|meta| (meta.modified().ok(), meta.len(), meta.ino()))
                .map(|(modified, len, ino)| (modified.unwrap_or(std::time::UNIX_EPOCH), len, ino));
            (path.to_owned(), stamp)
        };
        let mut stamps = Vec::new();
        for path in [&self.ca_file, &self.cert_file, &self.key_file]
            .into_iter()
            .flatten()
        {
            stamps.push(stamp(path));
        }
        if let Some(dir) = &self.ca_path {
            stamps.push(stamp(dir));
            let mut entries = ca_path_files(dir).unwrap_or_default();
            entries.sort();
            stamps.extend(entries.iter().map(|path| stamp(path)));
        }
        stamps
    }

    /// Reads the files and builds the rustls client configuration.
    /// The error is one sentence naming the setting and the file.
    pub(crate) fn client_config(&self) -> Result<rustls::ClientConfig, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|error| format!("TLS setup: {error}"))?;
        let verifier: Arc<dyn ServerCertVerifier> = if self.verify {
            let roots = self.roots()?;
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                    .build()
                    .map_err(|error| format!("tls CA certificates: {error}"))?;
            match &self.server_name {
                Some(name) => Arc::new(NamedVerifier {
                    inner: webpki,
                    name: ServerName::try_from(name.clone()).map_err(|_| {
                        format!("tls server_name {name:?} is not a DNS name or IP address")
                    })?,
                }),
                None => webpki,
            }
        } else {
            Arc::new(NoVerification { provider })
        };
        let builder = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        match (&self.cert_file, &self.key_file) {
            (Some(cert_file), Some(key_file)) => {
                let chain = read_certs(cert_file, "tls cert_file")?;
                let key = PrivateKeyDer::from_pem_file(key_file).map_err(|error| {
                    format!(
                        "tls key_file {}: no usable private key ({error})",
                        key_file.display()
                    )
                })?;
                builder.with_client_auth_cert(chain, key).map_err(|error| {
                    format!(
                        "tls cert_file {} and key_file {}: {error}",
                        cert_file.display(),
                        key_file.display()
                    )
                })
            }
            (None, None) => Ok(builder.with_no_client_auth()),
            (Some(_), None) | (None, Some(_)) => {
                Err("tls cert_file and key_file must be set together".to_owned())
            }
        }
    }

    /// The trusted roots: `ca_file` and `ca_path`, else the system's.
    fn roots(&self) -> Result<RootCertStore, String> {
        let mut roots = RootCertStore::empty();
        let mut add = |certs: Vec<CertificateDer<'static>>, what: &str, path: &Path| {
            for cert in certs {
                roots.add(cert).map_err(|error| {
                    format!(
                        "{what} {}: not a usable CA certificate ({error})",
                        path.display()
                    )
                })?;
            }
            Ok::<_, String>(())
        };
        if let Some(file) = &self.ca_file {
            add(read_certs(file, "tls ca_file")?, "tls ca_file", file)?;
        }
        if let Some(dir) = &self.ca_path {
            let files = ca_path_files(dir)
                .map_err(|error| format!("tls ca_path {}: {error}", dir.display()))?;
            for file in files {
                add(read_certs(&file, "tls ca_path")?, "tls ca_path", &file)?;
            }
        }
        if self.ca_file.is_none() && self.ca_path.is_none() {
            let native = rustls_native_certs::load_native_certs();
            let (added, _ignored) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                return Err("no system CA certificates found; set tls ca_file".to_owned());
            }
        }
        if roots.is_empty() {
            return Err("no CA certificate in tls ca_file / ca_path".to_owned());
        }
        Ok(roots)
    }
}

/// A client configuration that trusts no certificate, for plain HTTP clients.
pub(crate) fn unused_client_config() -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("TLS setup: {error}"))?
        .with_root_certificates(RootCertStore::empty())
        .with_no_client_auth())
}

/// The regular files of a CA directory (symlinks followed; dot files skipped).
fn ca_path_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if !entry.file_name().to_string_lossy().starts_with('.') && path.is_file() {
            files.push(path);
        }
    }
    Ok(files)
}

/// Every certificate of a PEM file; an error when there is none.
fn read_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|error| format!("{what} {}: {error}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{what} {}: no PEM certificate in it",
            path.display()
        ));
    }
    Ok(certs)
}

/// Explains a failed call when TLS was the cause: the rustls error found in
/// the chain, with what to check. `None` for any other failure.
pub(crate) fn failure(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if let Some(rustls) = error.downcast_ref::<rustls::Error>() {
            return Some(explain(rustls));
        }
        // An io::Error's source() skips the error it wraps: step into it.
        cause = match error.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => error.source(),
        };
    }
    None
}

fn explain(error: &rustls::Error) -> String {
    use rustls::AlertDescription as Alert;
    let hint = match error {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "the agent's certificate is not signed by a trusted CA (consul.ca_file, \
             consul.ca_path / CONSUL_CACERT, CONSUL_CAPATH)"
        }
        rustls::Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => "the agent's certificate has expired",
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
        ) => "the agent's certificate is not valid yet (check the clocks)",
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => {
            "the agent's certificate is not valid for the name dialled (consul.tls_server_name \
             / CONSUL_TLS_SERVER_NAME)"
        }
        rustls::Error::AlertReceived(
            Alert::CertificateRequired
            | Alert::BadCertificate
            | Alert::UnknownCA
            | Alert::HandshakeFailure
            | Alert::CertificateUnknown,
        ) => {
            "the agent refused the handshake: it may require a client certificate it trusts \
             (consul.cert_file and consul.key_file / CONSUL_CLIENT_CERT, CONSUL_CLIENT_KEY)"
        }
        rustls::Error::InvalidMessage(_) => {
            "the agent did not answer TLS (is it serving HTTPS on this port?)"
        }
        _ => "TLS handshake failed",
    };
    format!("{hint}: {error}")
}

/// Verifies as WebPKI does, but for the configured name.
#[derive(Debug)]
struct NamedVerifier {
    inner: Arc<WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for NamedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _dialled: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// `verify = false`: any certificate is accepted (the handshake's signatures
/// are still checked, so the session is encrypted to whoever holds the key).
#[derive(Debug)]
struct NoVerification {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
