//! Cluster certificates: one CA per cluster, one certificate per node.
//!
//! `catga certs init --dir DIR --nodes a,b,c` writes:
//!
//! ```text
//! DIR/ca.pem  DIR/ca.key        the cluster CA (keep ca.key offline in production)
//! DIR/a.pem   DIR/a.key         node "a": signed by the CA, usable as TLS
//! ...                           server and client (mutual TLS)
//! ```
//!
//! Every node certificate carries the DNS name [`CLUSTER_SERVER_NAME`], which
//! is what nodes verify when they dial each other: a peer is accepted when its
//! certificate chains to the cluster CA, whatever its address.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use time::{Duration, OffsetDateTime};

/// The name every node certificate holds and every dialer verifies.
pub const CLUSTER_SERVER_NAME: &str = "catga.cluster";
/// CA certificate lifetime.
const CA_VALIDITY_DAYS: i64 = 3650;
/// Node certificate lifetime.
const NODE_VALIDITY_DAYS: i64 = 825;

/// What a node needs for mutual TLS, in DER.
#[derive(Debug)]
pub struct TlsMaterial {
    pub ca: CertificateDer<'static>,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for TlsMaterial {
    fn clone(&self) -> Self {
        Self { ca: self.ca.clone(), chain: self.chain.clone(), key: self.key.clone_key() }
    }
}

/// A CA kept in memory (PEM), able to sign node certificates.
pub struct Ca {
    pub cert_pem: String,
    pub key_pem: String,
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    /// A new CA valid from now for `CA_VALIDITY_DAYS`.
    pub fn generate(common_name: &str) -> anyhow::Result<Self> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::days(1);
        params.not_after = now + Duration::days(CA_VALIDITY_DAYS);
        let cert = params.self_signed(&key)?;
        Ok(Self { cert_pem: cert.pem(), key_pem: key.serialize_pem(), cert, key })
    }

    /// Loads a CA written by [`Ca::generate`] (to add nodes later).
    pub fn load(cert_pem: &str, key_pem: &str) -> anyhow::Result<Self> {
        let key = KeyPair::from_pem(key_pem)?;
        let params = CertificateParams::from_ca_cert_pem(cert_pem)?;
        // Re-signing the same parameters with the same key gives an issuer
        // with the same name and key, which is all signing needs.
        let cert = params.self_signed(&key)?;
        Ok(Self { cert_pem: cert_pem.to_string(), key_pem: key_pem.to_string(), cert, key })
    }

    /// A node certificate and key (PEM) for `name`, valid from `not_before`
    /// to `not_after`.
    pub fn issue_with_validity(
        &self,
        name: &str,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> anyhow::Result<(String, String)> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![CLUSTER_SERVER_NAME.to_string(), name.to_string()])?;
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// A node certificate valid from yesterday for `NODE_VALIDITY_DAYS`.
    pub fn issue(&self, name: &str) -> anyhow::Result<(String, String)> {
        let now = OffsetDateTime::now_utc();
        self.issue_with_validity(name, now - Duration::days(1), now + Duration::days(NODE_VALIDITY_DAYS))
    }

    /// In-memory TLS material for `name` (tests, single-node defaults).
    pub fn material(&self, name: &str) -> anyhow::Result<TlsMaterial> {
        let (cert, key) = self.issue(name)?;
        material_from_pem(&self.cert_pem, &cert, &key)
    }
}

/// Node names become file names: keep them to a safe alphabet.
pub fn check_node_name(name: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        !name.is_empty()
            && name.len() <= 64
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            && !name.starts_with('.'),
        "node name {name:?} must be 1-64 characters of A-Z a-z 0-9 - _ . (not starting with '.')"
    );
    anyhow::ensure!(name != "ca", "node name \"ca\" is reserved for the cluster CA");
    Ok(())
}

/// `catga certs init`: creates (or reuses) the CA in `dir` and writes a
/// certificate and key for each node that does not have one yet. Returns the
/// files written.
pub fn init_dir(dir: &Path, nodes: &[String]) -> anyhow::Result<Vec<PathBuf>> {
    for n in nodes {
        check_node_name(n)?;
    }
    std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    let ca_cert = dir.join("ca.pem");
    let ca_key = dir.join("ca.key");
    let mut written = Vec::new();
    let ca = if ca_cert.exists() && ca_key.exists() {
        Ca::load(&std::fs::read_to_string(&ca_cert)?, &std::fs::read_to_string(&ca_key)?)?
    } else {
        let ca = Ca::generate("catga cluster CA")?;
        write_private(&ca_key, &ca.key_pem)?;
        std::fs::write(&ca_cert, &ca.cert_pem)?;
        written.extend([ca_cert.clone(), ca_key.clone()]);
        ca
    };
    for n in nodes {
        let cert_path = dir.join(format!("{n}.pem"));
        let key_path = dir.join(format!("{n}.key"));
        if cert_path.exists() && key_path.exists() {
            continue;
        }
        let (cert, key) = ca.issue(n)?;
        write_private(&key_path, &key)?;
        std::fs::write(&cert_path, cert)?;
        written.extend([cert_path, key_path]);
    }
    Ok(written)
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    Ok(())
}

/// Loads `DIR/ca.pem`, `DIR/NAME.pem` and `DIR/NAME.key`.
pub fn load_dir(dir: &Path, name: &str) -> anyhow::Result<TlsMaterial> {
    check_node_name(name)?;
    let read = |file: String| {
        let path = dir.join(&file);
        std::fs::read_to_string(&path).map_err(|e| {
            anyhow::anyhow!(
                "cannot read {}: {e} (create it with `catga certs init --dir {} --nodes {name}`)",
                path.display(),
                dir.display()
            )
        })
    };
    material_from_pem(&read("ca.pem".into())?, &read(format!("{name}.pem"))?, &read(format!("{name}.key"))?)
}

pub fn material_from_pem(ca: &str, cert: &str, key: &str) -> anyhow::Result<TlsMaterial> {
    let ca = CertificateDer::from_pem_slice(ca.as_bytes()).map_err(|e| anyhow::anyhow!("CA certificate: {e}"))?;
    let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("node certificate: {e}"))?;
    anyhow::ensure!(!chain.is_empty(), "node certificate file holds no certificate");
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|e| anyhow::anyhow!("node key: {e}"))?;
    Ok(TlsMaterial { ca, chain, key })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_writes_ca_and_nodes_and_reuses_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let written = init_dir(dir.path(), &["a".into(), "b".into()]).unwrap();
        assert_eq!(written.len(), 6);
        let ca_before = std::fs::read(dir.path().join("ca.pem")).unwrap();
        let written = init_dir(dir.path(), &["a".into(), "c".into()]).unwrap();
        assert_eq!(written.len(), 2, "only c is new: {written:?}");
        assert_eq!(std::fs::read(dir.path().join("ca.pem")).unwrap(), ca_before);
        let a = load_dir(dir.path(), "a").unwrap();
        let c = load_dir(dir.path(), "c").unwrap();
        assert_eq!(a.ca, c.ca);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("a.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn bad_names_are_refused() {
        for n in ["", "../x", "a/b", "ca", ".hidden", "sp ace"] {
            assert!(check_node_name(n).is_err(), "{n:?}");
        }
        check_node_name("node-1.dc_2").unwrap();
    }

    #[test]
    fn missing_files_say_how_to_create_them() {
        let dir = tempfile::tempdir().unwrap();
        let e = load_dir(dir.path(), "a").unwrap_err().to_string();
        assert!(e.contains("catga certs init"), "{e}");
    }
}
