//! TLS to the legacy database with libpq's meaning of `sslmode`, on rustls (the same stack and
//! crypto provider as the Auth0 client) through tokio-postgres-rustls.
//!
//! | sslmode       | TLS                         | certificate checked                            |
//! |---------------|-----------------------------|------------------------------------------------|
//! | `disable`     | never                       | —                                              |
//! | `prefer`      | if the server offers it     | chain, only when a root is configured or       |
//! | `require`     | always                      | `~/.postgresql/root.crt` exists (as libpq)     |
//! | `verify-ca`   | always                      | chain against the roots                        |
//! | `verify-full` | always                      | chain, and the host name against the cert      |
//!
//! The roots are `sslrootcert` (a PEM file, or `system`), else `~/.postgresql/root.crt` when it
//! exists, else — for the verify modes — the system's trusted roots. libpq would refuse the last
//! case; driftsync takes the system's roots so that a managed database with a publicly trusted
//! certificate works with `verify-full` alone, which is never weaker than `require`.
//! Unix sockets never use TLS (nor does libpq there).

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use super::LegacyError;
use super::target::{RootCert, SslMode, Target};

/// How the server's certificate will be checked, for messages and `check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// No TLS (sslmode disable, or a Unix socket).
    Plain,
    /// Encrypted, certificate not checked.
    Unverified,
    /// The chain against these roots; not the host name.
    Chain(String),
    /// The chain and the host name.
    Full(String),
}

impl std::fmt::Display for Verification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verification::Plain => f.write_str("no TLS"),
            Verification::Unverified => f.write_str("TLS, certificate not verified"),
            Verification::Chain(roots) => {
                write!(f, "TLS, certificate chain verified against {roots}")
            }
            Verification::Full(roots) => write!(
                f,
                "TLS, certificate chain and host name verified against {roots}"
            ),
        }
    }
}

/// The rustls configuration for `target`, or `None` when the connection is plain.
pub fn client_config(target: &Target) -> Result<(Option<ClientConfig>, Verification), LegacyError> {
    if target.ssl_mode() == SslMode::Disable || target.uses_socket_only() {
        return Ok((None, Verification::Plain));
    }
    let root = target.root().cloned().or_else(|| {
        target
            .default_root
            .as_ref()
            .filter(|path| path.is_file())
            .map(|path| RootCert::File(path.clone()))
    });
    let provider = crate::tls::provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|error| LegacyError::Tls(error.to_string()))?;
    let (mut config, verification) = match (target.ssl_mode(), root) {
        (SslMode::Prefer | SslMode::Require, None) => (
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Unverified {
                    algorithms: provider.signature_verification_algorithms,
                }))
                .with_no_client_auth(),
            Verification::Unverified,
        ),
        (mode, root) => {
            let root = root.unwrap_or(RootCert::System);
            let roots = Arc::new(load_roots(&root)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|error| LegacyError::Tls(error.to_string()))?;
            if mode == SslMode::VerifyFull {
                (
                    builder.with_webpki_verifier(webpki).with_no_client_auth(),
                    Verification::Full(root.to_string()),
                )
            } else {
                (
                    builder
                        .dangerous()
                        .with_custom_certificate_verifier(Arc::new(ChainOnly { inner: webpki }))
                        .with_no_client_auth(),
                    Verification::Chain(root.to_string()),
                )
            }
        }
    };
    // What libpq 17 sends; servers before 17 ignore it, direct negotiation needs it.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok((Some(config), verification))
}

fn load_roots(root: &RootCert) -> Result<RootCertStore, LegacyError> {
    let certificates: Vec<CertificateDer<'static>> = match root {
        RootCert::File(path) => {
            let problem = |reason: String| LegacyError::RootCert {
                path: path.clone(),
                reason,
            };
            let bytes = std::fs::read(path).map_err(|error| problem(error.to_string()))?;
            CertificateDer::pem_slice_iter(&bytes)
                .collect::<Result<_, _>>()
                .map_err(|error| problem(format!("not a PEM certificate file ({error})")))?
        }
        RootCert::System => {
            let found = rustls_native_certs::load_native_certs();
            if found.certs.is_empty() {
                let errors: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
                return Err(LegacyError::Tls(format!(
                    "no trusted root certificates found on this system{}: install the \
                     ca-certificates package or set sslrootcert to the server's CA file",
                    if errors.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", errors.join("; "))
                    }
                )));
            }
            found.certs
        }
    };
    let mut store = RootCertStore::empty();
    let (added, _ignored) = store.add_parsable_certificates(certificates);
    if added == 0 {
        return Err(match root {
            RootCert::File(path) => LegacyError::RootCert {
                path: path.clone(),
                reason: "holds no usable certificate (expected PEM `BEGIN CERTIFICATE` blocks)"
                    .to_owned(),
            },
            RootCert::System => {
                LegacyError::Tls("none of the system's root certificates is usable".to_owned())
            }
        });
    }
    Ok(store)
}

/// `verify-ca` (and `require` with a root): the chain must verify, the name need not match.
#[derive(Debug)]
struct ChainOnly {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The name is checked last, after the chain: a name error means the chain verified.
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
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

/// `prefer`/`require` without a root: encrypted against passive listeners, any certificate
/// accepted (libpq's meaning); the handshake's signatures are still checked.
#[derive(Debug)]
struct Unverified {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Unverified {
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
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
