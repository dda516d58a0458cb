//! rustls configurations for mutual TLS between nodes (TLS 1.3, ring).
//!
//! Both directions verify the peer's certificate against the cluster CA
//! only (not the system roots). The server side requires a client
//! certificate, so a peer without one from the cluster CA never completes
//! the handshake and never opens a stream.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::CertificateDer;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

use crate::certs::TlsMaterial;

/// ALPN protocol id of the cluster transport.
pub const ALPN: &[u8] = b"catga/1";

/// ring's TLS 1.3 suites with AES-128-GCM offered first. Links carry
/// every cross-node message, and AES-128 (10 rounds) seals a packet
/// faster than the default first choice AES-256 (14 rounds); both are
/// standard TLS 1.3 suites and every node offers both, so a node of an
/// older build still agrees on one.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::crypto::ring::cipher_suite::{
        TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
    };
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256];
    Arc::new(provider)
}

fn roots(ca: &CertificateDer<'static>) -> anyhow::Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone())?;
    Ok(Arc::new(roots))
}

pub fn server_config(material: &TlsMaterial) -> anyhow::Result<rustls::ServerConfig> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(&material.ca)?, provider.clone()).build()?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(material.chain.clone(), material.key.clone_key())?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// A client builder that verifies servers against `ca` only, TLS 1.3.
fn client_builder(
    ca: &CertificateDer<'static>,
) -> anyhow::Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>> {
    let provider = provider();
    let verifier = WebPkiServerVerifier::builder_with_provider(roots(ca)?, provider.clone()).build()?;
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_webpki_verifier(verifier))
}

pub fn client_config(material: &TlsMaterial) -> anyhow::Result<rustls::ClientConfig> {
    let mut config =
        client_builder(&material.ca)?.with_client_auth_cert(material.chain.clone(), material.key.clone_key())?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// A client config that presents no certificate (for tests of refusal).
pub fn client_config_without_cert(ca: &CertificateDer<'static>) -> anyhow::Result<rustls::ClientConfig> {
    let mut config = client_builder(ca)?.with_no_client_auth();
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    /// Cluster links offer AES-128-GCM first (see [`super::provider`]),
    /// and still offer the other TLS 1.3 suites.
    #[test]
    fn links_prefer_aes_128_gcm() {
        let suites: Vec<_> = super::provider().cipher_suites.iter().map(|s| s.suite()).collect();
        assert_eq!(suites[0], rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
        assert!(suites.contains(&rustls::CipherSuite::TLS13_AES_256_GCM_SHA384));
        assert!(suites.contains(&rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256));
    }
}
