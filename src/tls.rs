//! What both outbound TLS connections share (Auth0 over HTTPS, the legacy database): the one
//! crypto provider, and reading a refused certificate out of an error chain so that the
//! message says what is wrong with it instead of "connection failed".

use std::sync::Arc;

/// rustls's ring provider: the one reqwest uses too, so one set of algorithms in the binary.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificate error behind a failed connection, if that is what it was. Retrying cannot
/// fix a certificate, and retries of a TLS failure would hide the one thing the operator must
/// read. rustls's error travels inside `io::Error`s, whose `source()` skips it, so each
/// `io::Error` in the chain is opened as well.
pub fn certificate_problem(error: &(dyn std::error::Error + 'static)) -> Option<rustls::Error> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(link) = next {
        // Connectors wrap the handshake's error in an io::Error, sometimes twice.
        let mut candidate = link;
        loop {
            if let Some(
                tls @ (rustls::Error::InvalidCertificate(_)
                | rustls::Error::NoCertificatesPresented
                | rustls::Error::UnsupportedNameType),
            ) = candidate.downcast_ref::<rustls::Error>()
            {
                return Some(tls.clone());
            }
            match candidate
                .downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::get_ref)
            {
                Some(inner) => candidate = inner,
                None => break,
            }
        }
        next = link.source();
    }
    None
}
