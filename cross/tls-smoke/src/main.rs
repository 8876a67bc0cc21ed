//! Runs real TLS through ring on the current CPU: one in-memory rustls handshake plus an
//! application-data round trip per (protocol version, cipher suite, key-exchange group).
//! Exits 0 and prints `tls-smoke: N handshakes ok` on success; any failure (or an illegal
//! instruction on a CPU that ring's code does not support) exits non-zero.

use std::io::{Read, Write};
use std::sync::Arc;

use rustls::crypto::ring as provider;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

/// Throwaway 2048-bit RSA key, generated for this test only (`openssl genpkey`); protects nothing.
const RSA_TEST_KEY: &str = include_str!("rsa2048.pem");

fn main() {
    match run() {
        Ok(n) => println!("tls-smoke: {n} handshakes ok"),
        Err(e) => {
            eprintln!("tls-smoke: FAILED: {e}");
            std::process::exit(1);
        }
    }
}

fn run() -> Result<usize, String> {
    let mut n = 0;
    for alg in [
        &rcgen::PKCS_ECDSA_P256_SHA256,
        &rcgen::PKCS_ED25519,
        &rcgen::PKCS_RSA_SHA256,
    ] {
        let is_rsa = alg == &rcgen::PKCS_RSA_SHA256;
        // ring cannot generate RSA keys; a fixed test-only key exercises its RSA (bignum) code.
        let key = if is_rsa {
            rcgen::KeyPair::from_pem_and_sign_algo(RSA_TEST_KEY, alg)
        } else {
            rcgen::KeyPair::generate_for(alg)
        }
        .map_err(|e| format!("keygen: {e}"))?;
        let params = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .map_err(|e| format!("params: {e}"))?;
        let cert = params
            .self_signed(&key)
            .map_err(|e| format!("self-sign: {e}"))?;
        let cert_der: CertificateDer<'static> = cert.der().clone();
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));

        let base = provider::default_provider();
        for suite in base.cipher_suites.iter().copied() {
            for group in base.kx_groups.iter().copied() {
                let p = Arc::new(CryptoProvider {
                    cipher_suites: vec![suite],
                    kx_groups: vec![group],
                    ..provider::default_provider()
                });
                // TLS 1.2 suites name the certificate's key type (ECDSA or RSA); Ed25519
                // certificates are only offered with TLS 1.3 here.
                let name = format!("{:?}", suite.suite());
                let is_tls12 = suite.tls13().is_none();
                if is_tls12 && (alg == &rcgen::PKCS_ED25519 || name.contains("_RSA_") != is_rsa) {
                    continue;
                }
                let what = format!("{:?} / {:?} / {:?}", alg, suite.suite(), group.name());
                handshake(p, cert_der.clone(), key_der.clone_key())
                    .map_err(|e| format!("{what}: {e}"))?;
                eprintln!("ok: {what}");
                n += 1;
            }
        }
    }
    Ok(n)
}

fn handshake(
    p: Arc<CryptoProvider>,
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
) -> Result<(), String> {
    let server_cfg = ServerConfig::builder_with_provider(p.clone())
        .with_protocol_versions(rustls::ALL_VERSIONS)
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .map_err(|e| e.to_string())?;
    let mut roots = RootCertStore::empty();
    roots.add(cert).map_err(|e| e.to_string())?;
    let client_cfg = ClientConfig::builder_with_provider(p)
        .with_protocol_versions(rustls::ALL_VERSIONS)
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();

    let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let mut client =
        ClientConnection::new(Arc::new(client_cfg), name).map_err(|e| e.to_string())?;
    let mut server = ServerConnection::new(Arc::new(server_cfg)).map_err(|e| e.to_string())?;

    client
        .writer()
        .write_all(b"ping from client")
        .map_err(|e| e.to_string())?;
    for _ in 0..20 {
        pump(&mut client, &mut server)?;
        pump(&mut server, &mut client)?;
        if !client.is_handshaking() && !server.is_handshaking() {
            break;
        }
    }
    if client.is_handshaking() || server.is_handshaking() {
        return Err("handshake did not complete".into());
    }
    server
        .writer()
        .write_all(b"pong from server")
        .map_err(|e| e.to_string())?;
    pump(&mut server, &mut client)?;
    pump(&mut client, &mut server)?;

    let mut got = Vec::new();
    let _ = server.reader().read_to_end(&mut got);
    if got != b"ping from client" {
        return Err(format!("server read {:?}", String::from_utf8_lossy(&got)));
    }
    got.clear();
    let _ = client.reader().read_to_end(&mut got);
    if got != b"pong from server" {
        return Err(format!("client read {:?}", String::from_utf8_lossy(&got)));
    }
    Ok(())
}

/// Moves every pending TLS record from `from` to `to` and lets `to` process it.
fn pump<A, B, DA, DB>(from: &mut A, to: &mut B) -> Result<(), String>
where
    A: std::ops::DerefMut<Target = rustls::ConnectionCommon<DA>>,
    B: std::ops::DerefMut<Target = rustls::ConnectionCommon<DB>>,
{
    let mut buf = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut buf).map_err(|e| e.to_string())?;
    }
    let mut rd = &buf[..];
    while !rd.is_empty() {
        to.read_tls(&mut rd).map_err(|e| e.to_string())?;
        to.process_new_packets().map_err(|e| e.to_string())?;
    }
    Ok(())
}
