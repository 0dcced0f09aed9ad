//! A small certificate authority for tests and the demo (`queryd ca init`, `queryd ca
//! issue`): an ECDSA P-256 CA, and node certificates it signs that serve as both server
//! and client certificates (mutual TLS between tiers). A fleet with its own PKI uses that
//! instead; README.md shows the openssl equivalent.
//!
//! Files in the CA directory: `ca.pem` (the CA certificate: every node's `ca`), `ca.key`
//! (kept on the machine that issues, mode 0600), and per node `NAME.pem` and `NAME.key`.

use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use super::{der, TlsError};

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} exists already: a CA is made once (remove the directory's ca.pem and ca.key to start over, and re-issue every node)", path.display())]
    Exists { path: PathBuf },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("{0}")]
    Invalid(String),
    #[error("cannot make the certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// What a certificate is for and when it is valid.
#[derive(Debug, Clone)]
pub struct CertSpec {
    /// The subject's common name (a node's name in logs; a CA's name).
    pub name: String,
    pub ips: Vec<IpAddr>,
    pub dns: Vec<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl CertSpec {
    /// Valid from an hour ago (clocks of a fleet differ a little) for `days` days.
    pub fn for_days(name: &str, days: u32) -> CertSpec {
        let now = SystemTime::now();
        CertSpec {
            name: name.into(),
            ips: Vec::new(),
            dns: Vec::new(),
            not_before: now - Duration::from_secs(3600),
            not_after: now + Duration::from_secs(u64::from(days) * 86_400),
        }
    }
}

fn offset(t: SystemTime) -> Result<time::OffsetDateTime, CaError> {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| CaError::Invalid("dates before 1970".into()))?
        .as_secs();
    time::OffsetDateTime::from_unix_timestamp(secs as i64)
        .map_err(|e| CaError::Invalid(format!("date out of range: {e}")))
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

fn ca_params(spec: &CertSpec) -> Result<CertificateParams, CaError> {
    let mut p = CertificateParams::default();
    p.distinguished_name = name(&spec.name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = offset(spec.not_before)?;
    p.not_after = offset(spec.not_after)?;
    Ok(p)
}

/// A new CA: (certificate PEM, key PEM).
pub fn new_ca(spec: &CertSpec) -> Result<(String, String), CaError> {
    let key = KeyPair::generate()?;
    let cert = ca_params(spec)?.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A node certificate signed by the CA (`ca_pem`, `ca_key_pem`): (certificate PEM, key PEM).
/// The CA's subject must be a single common name (as `queryd ca init` makes it).
pub fn issue(ca_pem: &str, ca_key_pem: &str, spec: &CertSpec) -> Result<(String, String), CaError> {
    use rustls::pki_types::pem::PemObject;
    let ca_der = rustls::pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes())
        .map_err(|e| CaError::Invalid(format!("the CA certificate is not PEM: {e}")))?;
    let only_cn = der::subject_is_common_name_only(&ca_der).map_err(CaError::Invalid)?;
    let ca_name = der::subject_common_name(&ca_der).map_err(CaError::Invalid)?;
    let (true, Some(ca_name)) = (only_cn, ca_name) else {
        return Err(CaError::Invalid(
            "the CA's subject is not a single common name (not made by `queryd ca init`): issue with openssl instead (README.md)".into(),
        ));
    };
    let ca_key = KeyPair::from_pem(ca_key_pem)
        .map_err(|e| CaError::Invalid(format!("the CA key is not usable: {e}")))?;
    if ca_key.public_key_raw() != der::public_key_bits(&ca_der).map_err(CaError::Invalid)? {
        return Err(CaError::Invalid(
            "the CA key does not match the CA certificate".into(),
        ));
    }
    // The issuer as the CA certificate names itself: the signature and the name are what
    // peers check.
    let issuer = Issuer::new(ca_params(&CertSpec::for_days(&ca_name, 1))?, ca_key);

    if spec.ips.is_empty() && spec.dns.is_empty() {
        return Err(CaError::Invalid(
            "a node certificate needs at least one --ip or --dns: peers check the address they dial against it".into(),
        ));
    }
    let mut p = CertificateParams::default();
    p.distinguished_name = name(&spec.name);
    p.subject_alt_names = spec.ips.iter().map(|ip| SanType::IpAddress(*ip)).collect();
    for d in &spec.dns {
        let ia5 = d
            .clone()
            .try_into()
            .map_err(|_| CaError::Invalid(format!("'{d}' is not a DNS name")))?;
        p.subject_alt_names.push(SanType::DnsName(ia5));
    }
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.not_before = offset(spec.not_before)?;
    p.not_after = offset(spec.not_after)?;
    let key = KeyPair::generate()?;
    let cert = p.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// `queryd ca init`: makes `dir/ca.pem` and `dir/ca.key`; refuses to replace a CA.
pub fn init_dir(dir: &Path, spec: &CertSpec) -> Result<PathBuf, CaError> {
    let cert_path = dir.join("ca.pem");
    let key_path = dir.join("ca.key");
    for p in [&cert_path, &key_path] {
        if p.exists() {
            return Err(CaError::Exists { path: p.clone() });
        }
    }
    std::fs::create_dir_all(dir).map_err(|source| CaError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let (cert, key) = new_ca(spec)?;
    write(&key_path, &key, 0o600)?;
    write(&cert_path, &cert, 0o644)?;
    Ok(cert_path)
}

/// `queryd ca issue`: makes (or replaces, for rotation) `dir/NAME.pem` and `dir/NAME.key`
/// signed by the CA in `dir`. Returns the certificate's path.
pub fn issue_in_dir(dir: &Path, spec: &CertSpec) -> Result<PathBuf, CaError> {
    if spec.name.is_empty()
        || !spec
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        || spec.name.starts_with('.')
        || spec.name == "ca"
    {
        return Err(CaError::Invalid(format!(
            "--name '{}' must be letters, digits, '-', '_' or '.' (it names the files), and not 'ca'",
            spec.name
        )));
    }
    let read = |what: &'static str, p: PathBuf| {
        std::fs::read_to_string(&p).map_err(|source| {
            CaError::Tls(TlsError::Read {
                what,
                path: p,
                source,
            })
        })
    };
    let ca = read("ca", dir.join("ca.pem"))?;
    let ca_key = read("key", dir.join("ca.key"))?;
    let (cert, key) = issue(&ca, &ca_key, spec)?;
    let cert_path = dir.join(format!("{}.pem", spec.name));
    write(&dir.join(format!("{}.key", spec.name)), &key, 0o600)?;
    write(&cert_path, &cert, 0o644)?;
    Ok(cert_path)
}

/// Writes a file whole (a temporary file renamed into place) with `mode`.
fn write(path: &Path, text: &str, mode: u32) -> Result<(), CaError> {
    let err = |source| CaError::Write {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(text.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}
