//! Outgoing HTTP clients, set up one way. TLS is rustls with ring (the provider
//! lettre's SMTP uses too: one crypto library in the binary), trusting the
//! system's roots and Mozilla's bundled ones (so a host or an image without
//! ca-certificates still reaches public registries), plus the PEM files an
//! operator names (`[[registry]] ca_file`). reqwest is built without a provider
//! of its own, so a client made any other way fails loudly instead of trusting
//! something else.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// A client builder with the default trust (system + bundled roots).
pub fn builder() -> reqwest::ClientBuilder {
    static DEFAULT: OnceLock<rustls::ClientConfig> = OnceLock::new();
    let config = DEFAULT
        .get_or_init(|| config(&[]).expect("the built-in roots form a valid rustls configuration"));
    reqwest::Client::builder().tls_backend_preconfigured(config.clone())
}

/// A client builder that also trusts `extra` (an operator's private CA).
pub fn builder_trusting(
    extra: &[CertificateDer<'static>],
) -> Result<reqwest::ClientBuilder, String> {
    if extra.is_empty() {
        return Ok(builder());
    }
    Ok(reqwest::Client::builder().tls_backend_preconfigured(config(extra)?))
}

/// The certificates of a PEM file, or why it cannot be used.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{} is not a PEM certificate bundle: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no certificate", path.display()));
    }
    Ok(certs)
}

fn config(extra: &[CertificateDer<'static>]) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    // A missing or partly unreadable system store is not fatal: the bundled
    // roots remain, and the operator's extra ones are checked below.
    let system = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(system.certs);
    for cert in extra {
        roots
            .add(cert.clone())
            .map_err(|e| format!("a certificate cannot serve as a root: {e}"))?;
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_build_without_a_process_wide_provider() {
        // reqwest has no provider of its own: building one the plain way panics,
        // ours never needs one installed (each test runs in its own process).
        assert!(rustls::crypto::CryptoProvider::get_default().is_none());
        builder().build().unwrap();
        builder_trusting(&[]).unwrap().build().unwrap();
        assert!(rustls::crypto::CryptoProvider::get_default().is_none());
    }

    #[test]
    fn a_file_without_certificates_is_refused_with_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no pem here\n").unwrap();
        let e = read_certificates(&empty).unwrap_err();
        assert!(e.contains("empty.pem holds no certificate"), "{e}");
        let broken = dir.path().join("broken.pem");
        std::fs::write(
            &broken,
            "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let e = read_certificates(&broken).unwrap_err();
        assert!(
            e.contains("broken.pem is not a PEM certificate bundle"),
            "{e}"
        );
        let missing = read_certificates(&dir.path().join("nope.pem")).unwrap_err();
        assert!(missing.contains("cannot read"), "{missing}");
    }
}
