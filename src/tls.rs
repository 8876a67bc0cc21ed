//! The one TLS client configuration for the source: the WebSocket and VideoDB's REST calls use
//! the same one. rustls with the `ring` provider; Mozilla's roots are built in (webpki-roots);
//! `source.ca_file` adds a private CA.
//!
//! Owns: the trust decision. Never does: network I/O. Certificate verification cannot be
//! switched off silently: `insecure_skip_verify = true` is an explicit key, and the caller logs
//! a warning at every connect ([`insecure_warning`]).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::config::TlsConfig;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file named by `source.ca_file` cannot be read or holds no usable certificate.
    #[error("source.ca_file {path}: {reason}")]
    CaFile { path: String, reason: String },
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The line logged at every connect while verification is off.
pub fn insecure_warning(what: &str) -> String {
    format!(
        "TLS CERTIFICATE VERIFICATION IS OFF for {what} (source.insecure_skip_verify = true): \
         anyone on the network path can read and forge alerts; use source.ca_file instead"
    )
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the client configuration from `[source]`'s TLS keys.
pub fn client_config(cfg: &TlsConfig) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    if cfg.insecure_skip_verify {
        let c = builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
            .with_no_client_auth();
        return Ok(Arc::new(c));
    }
    let mut roots = RootCertStore::empty();
    if cfg.builtin_roots {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    if let Some(path) = &cfg.ca_file {
        let shown = path.display().to_string();
        let ca_err = |reason: String| TlsError::CaFile {
            path: shown.clone(),
            reason,
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| ca_err(e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| ca_err(e.to_string()))?;
        let (added, ignored) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(ca_err(format!(
                "no usable CA certificate ({ignored} could not be parsed)"
            )));
        }
    }
    Ok(Arc::new(
        builder.with_root_certificates(roots).with_no_client_auth(),
    ))
}

/// Accepts any certificate, but still checks that the handshake is signed by its key, so the
/// session is at least encrypted to whoever answered.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

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
            &self.0.signature_verification_algorithms,
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
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Adds a hint to certificate errors, which otherwise read like `invalid peer certificate:
/// UnknownIssuer` and leave the user guessing which key to change.
pub fn explain(error: &str) -> String {
    if error.contains("UnknownIssuer") || error.contains("invalid peer certificate") {
        format!(
            "{error} (the server's certificate is not signed by a trusted CA: check \
             source.ca_file, or source.builtin_roots for public servers)"
        )
    } else {
        error.to_string()
    }
}
