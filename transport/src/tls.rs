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

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
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
