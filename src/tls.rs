//! The one rustls client configuration, for every TLS connection the relay opens: the
//! WebSocket and VideoDB's REST calls (`[source]`) and the MQTT connection (`[mqtt]`, with a
//! client certificate for brokers that require one). rustls with the `ring` provider, TLS 1.2
//! and 1.3; Mozilla's roots are built in (webpki-roots); `ca_file` adds a private CA (for MQTT
//! it replaces the built-in roots). Also the one PEM certificate reader: config validation
//! checks `source.ca_file` with it ([`check_ca_file`]).
//!
//! Owns: the trust decision. Never does: network I/O. Certificate verification cannot be
//! switched off silently: `source.insecure_skip_verify = true` is an explicit key, and the
//! caller logs a warning at every connect ([`insecure_warning`]).

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::config::{MqttTls, TlsConfig};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file named by a TLS key cannot be read: check the path, and that the service user
    /// may read it.
    #[error("cannot read {section}.{key} {path}: {source}")]
    Read {
        section: &'static str,
        key: &'static str,
        path: String,
        source: std::io::Error,
    },
    /// The file holds nothing rustls can use as `what` (a certificate, a private key): check
    /// that it is the PEM file the key asks for.
    #[error("{section}.{key} {path} holds no usable PEM {what}")]
    Pem {
        section: &'static str,
        key: &'static str,
        path: String,
        what: &'static str,
    },
    #[error("tls setup failed: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Why config validation refuses a CA file (the config error names the key).
#[derive(Debug, thiserror::Error)]
pub enum CaFileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not PEM: {source}")]
    NotPem { path: String, source: pem::Error },
    #[error("{path} holds no PEM certificate")]
    Empty { path: String },
}

/// What one connection trusts and shows, from one config section's TLS keys.
#[derive(Debug, Clone, Copy)]
pub struct Settings<'a> {
    /// The config section, named in errors: `source` or `mqtt`.
    section: &'static str,
    ca_file: Option<&'a Path>,
    builtin_roots: bool,
    insecure_skip_verify: bool,
    /// Certificate chain and private key, for servers that require a client certificate.
    client_auth: Option<(&'a Path, &'a Path)>,
}

/// `[source]`: the WebSocket and the REST calls.
impl<'a> From<&'a TlsConfig> for Settings<'a> {
    fn from(t: &'a TlsConfig) -> Settings<'a> {
        Settings {
            section: "source",
            ca_file: t.ca_file.as_deref(),
            builtin_roots: t.builtin_roots,
            insecure_skip_verify: t.insecure_skip_verify,
            client_auth: None,
        }
    }
}

/// `[mqtt]` with `tls = true`: `ca_file` replaces the built-in roots.
impl<'a> From<&'a MqttTls> for Settings<'a> {
    fn from(t: &'a MqttTls) -> Settings<'a> {
        Settings {
            section: "mqtt",
            ca_file: t.ca_file.as_deref(),
            builtin_roots: t.ca_file.is_none(),
            insecure_skip_verify: false,
            client_auth: t.client_cert.as_deref().zip(t.client_key.as_deref()),
        }
    }
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

/// Builds the client configuration from one section's TLS keys (`&TlsConfig`, `&MqttTls`).
pub fn client_config<'a>(settings: impl Into<Settings<'a>>) -> Result<Arc<ClientConfig>, TlsError> {
    let s = &settings.into();
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = if s.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
    } else {
        let mut roots = RootCertStore::empty();
        if s.builtin_roots {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        if let Some(path) = s.ca_file {
            let (added, _) = roots.add_parsable_certificates(certificates(s, "ca_file", path)?);
            if added == 0 {
                return Err(no_usable(s, "ca_file", path, "certificate"));
            }
        }
        builder.with_root_certificates(roots)
    };
    let config = match s.client_auth {
        Some((cert, key)) => {
            let chain = certificates(s, "client_cert", cert)?;
            if chain.is_empty() {
                return Err(no_usable(s, "client_cert", cert, "certificate"));
            }
            let key_der = PrivateKeyDer::from_pem_slice(&read(s, "client_key", key)?)
                .map_err(|_| no_usable(s, "client_key", key, "private key"))?;
            builder.with_client_auth_cert(chain, key_der)?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

fn read(s: &Settings<'_>, key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        section: s.section,
        key,
        path: path.display().to_string(),
        source,
    })
}

fn no_usable(s: &Settings<'_>, key: &'static str, path: &Path, what: &'static str) -> TlsError {
    TlsError::Pem {
        section: s.section,
        key,
        path: path.display().to_string(),
        what,
    }
}

/// The certificates of a PEM file; a malformed section is skipped, so a bundle with one broken
/// entry still trusts the rest (`source.ca_file` is refused for it at validation already).
fn certificates(
    s: &Settings<'_>,
    key: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    Ok(pem_sections(&read(s, key, path)?)
        .into_iter()
        .filter_map(Result::ok)
        .collect())
}

/// Every certificate section of PEM text, parsed or not, in file order.
fn pem_sections(pem: &[u8]) -> Vec<Result<CertificateDer<'static>, pem::Error>> {
    CertificateDer::pem_slice_iter(pem).collect()
}

/// Config validation of `source.ca_file`: readable, every section well-formed PEM, at least
/// one certificate.
pub fn check_ca_file(path: &Path) -> Result<(), CaFileError> {
    let shown = || path.display().to_string();
    let pem = std::fs::read(path).map_err(|source| CaFileError::Read {
        path: shown(),
        source,
    })?;
    let sections = pem_sections(&pem);
    if sections.is_empty() {
        return Err(CaFileError::Empty { path: shown() });
    }
    match sections.into_iter().find_map(Result::err) {
        Some(source) => Err(CaFileError::NotPem {
            path: shown(),
            source,
        }),
        None => Ok(()),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    struct Files {
        _dir: tempfile::TempDir,
        cert: PathBuf,
        key: PathBuf,
        dir: PathBuf,
    }

    /// A self-signed certificate and its key, as PEM files.
    fn files() -> Files {
        let dir = tempfile::tempdir().expect("tempdir");
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("rcgen");
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, ck.cert.pem()).expect("write cert");
        std::fs::write(&key, ck.key_pair.serialize_pem()).expect("write key");
        Files {
            dir: dir.path().to_owned(),
            _dir: dir,
            cert,
            key,
        }
    }

    fn mqtt(ca: Option<&Path>, client: Option<(&Path, &Path)>) -> MqttTls {
        MqttTls {
            ca_file: ca.map(Path::to_owned),
            client_cert: client.map(|c| c.0.to_owned()),
            client_key: client.map(|c| c.1.to_owned()),
        }
    }

    fn err(r: Result<Arc<ClientConfig>, TlsError>) -> String {
        match r {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn mqtt_with_a_ca_file_and_a_client_certificate_builds_and_offers_the_certificate() {
        let f = files();
        let c = client_config(&mqtt(Some(&f.cert), Some((&f.cert, &f.key)))).expect("config");
        assert!(c.client_auth_cert_resolver.has_certs());
        let c = client_config(&mqtt(None, None)).expect("built-in roots");
        assert!(!c.client_auth_cert_resolver.has_certs());
    }

    #[test]
    fn unusable_files_are_named_by_their_section_and_key() {
        let f = files();
        let missing = f.dir.join("missing.pem");
        let e = err(client_config(&mqtt(Some(&missing), None)));
        assert!(
            e.starts_with(&format!("cannot read mqtt.ca_file {}: ", missing.display())),
            "{e}"
        );
        let e = err(client_config(&mqtt(Some(&f.key), None)));
        assert_eq!(
            e,
            format!(
                "mqtt.ca_file {} holds no usable PEM certificate",
                f.key.display()
            )
        );
        let e = err(client_config(&mqtt(Some(&f.cert), Some((&f.key, &f.key)))));
        assert!(e.starts_with("mqtt.client_cert "), "{e}");
        let e = err(client_config(&mqtt(
            Some(&f.cert),
            Some((&f.cert, &f.cert)),
        )));
        assert_eq!(
            e,
            format!(
                "mqtt.client_key {} holds no usable PEM private key",
                f.cert.display()
            )
        );
        let source = TlsConfig {
            ca_file: Some(missing.clone()),
            builtin_roots: false,
            insecure_skip_verify: false,
        };
        let e = err(client_config(&source));
        assert!(e.starts_with("cannot read source.ca_file "), "{e}");
    }

    /// A CA bundle with one broken entry: refused by config validation (which names it), while
    /// a connection trusts the entries that parse.
    #[test]
    fn a_bundle_with_a_broken_section_is_refused_at_validation_and_its_good_entries_used_at_connect(
    ) {
        let f = files();
        let bundle = f.dir.join("bundle.pem");
        let good = std::fs::read_to_string(&f.cert).expect("read");
        std::fs::write(
            &bundle,
            format!("{good}-----BEGIN CERTIFICATE-----\nnot base64!\n"),
        )
        .expect("write");
        let e = check_ca_file(&bundle)
            .expect_err("a broken section")
            .to_string();
        assert!(e.contains("is not PEM"), "{e}");
        client_config(&mqtt(Some(&bundle), None)).expect("the good entry is trusted");

        check_ca_file(&f.cert).expect("a good CA file");
        let e = check_ca_file(&f.key).expect_err("a key is no certificate");
        assert_eq!(
            e.to_string(),
            format!("{} holds no PEM certificate", f.key.display())
        );
        let e = check_ca_file(&f.dir.join("nope.pem")).expect_err("missing");
        assert!(e.to_string().starts_with("cannot read "), "{e}");
    }

    #[test]
    fn the_insecure_switch_builds_without_any_roots() {
        let insecure = TlsConfig {
            ca_file: None,
            builtin_roots: false,
            insecure_skip_verify: true,
        };
        client_config(&insecure).expect("insecure config");
    }
}
