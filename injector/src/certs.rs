//! Serving certificates: loading PEM files, bootstrapping a CA when none are given, and
//! publishing that CA in the webhook's `caBundle` so `kubectl apply -k manifests/` needs no
//! certificate step.
//!
//! Each replica bootstraps its own CA. The `caBundle` holds several CAs (the API server trusts any
//! of them), so every replica adds its own instead of replacing the others'; the bundle keeps the
//! newest [`MAX_BUNDLE_CAS`] and each replica re-adds itself periodically should it be pruned.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, PatchOperation, TestOperation};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::api::{Api, Patch, PatchParams};
use kube::Client;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// How many CAs the caBundle keeps (newest last).
pub const MAX_BUNDLE_CAS: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("no certificate in the PEM data")]
    NoCertificate,
    #[error("no private key in the PEM data")]
    NoKey,
    #[error("malformed PEM: {0}")]
    Pem(std::io::Error),
    #[error("unusable private key: {0}")]
    Key(#[from] rustls::Error),
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
}

/// A bootstrapped CA and the serving certificate it signed.
pub struct Bootstrapped {
    pub ca_pem: String,
    pub ca_der: CertificateDer<'static>,
    pub cert_pem: String,
    pub key_pem: String,
}

/// DNS names the API server may use for `<service>.<namespace>`.
pub fn service_dns_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
        format!("{service}.{namespace}"),
        service.to_owned(),
    ]
}

/// Generates a CA and a serving certificate for `dns_names` (first one is the common name).
pub fn bootstrap(dns_names: Vec<String>) -> Result<Bootstrapped, CertError> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "meshtrace-injector bootstrap CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    set_validity(&mut ca_params, 3650);
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, &ca_key);

    let server_key = KeyPair::generate()?;
    let common_name = dns_names.first().cloned().unwrap_or_default();
    let mut params = CertificateParams::new(dns_names)?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    set_validity(&mut params, 3650);
    let cert = params.signed_by(&server_key, &issuer)?;

    Ok(Bootstrapped {
        ca_pem: ca_cert.pem(),
        ca_der: ca_cert.der().clone(),
        cert_pem: format!("{}{}", cert.pem(), ca_cert.pem()),
        key_pem: server_key.serialize_pem(),
    })
}

/// From an hour ago (clock skew) for `days`.
fn set_validity(params: &mut CertificateParams, days: u64) {
    let now = SystemTime::now();
    params.not_before = (now - Duration::from_secs(3600)).into();
    params.not_after = (now + Duration::from_secs(days * 24 * 3600)).into();
}

/// Parses a PEM certificate chain and private key into what rustls serves.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<CertifiedKey>, CertError> {
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &cert_pem[..])
        .collect::<Result<_, _>>()
        .map_err(CertError::Pem)?;
    if certs.is_empty() {
        return Err(CertError::NoCertificate);
    }
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(CertError::Pem)?
        .ok_or(CertError::NoKey)?;
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&key)?;
    Ok(Arc::new(CertifiedKey::new(certs, signing_key)))
}

/// PEM-encodes DER certificates.
pub fn to_pem(certs: &[CertificateDer<'_>]) -> String {
    let mut out = String::new();
    for cert in certs {
        let b64 = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            out.push_str(&String::from_utf8_lossy(line));
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out
}

/// The bundle with `ours` added (kept last, older CAs pruned to [`MAX_BUNDLE_CAS`]), or `None`
/// when `ours` is already in it. Unparsable content is dropped: it could not be trusted anyway.
pub fn merge_ca_bundle(existing_pem: &[u8], ours: &CertificateDer<'_>) -> Option<String> {
    let mut certs: Vec<CertificateDer<'_>> = rustls_pemfile::certs(&mut &existing_pem[..])
        .filter_map(Result::ok)
        .collect();
    if certs.iter().any(|c| c.as_ref() == ours.as_ref()) {
        return None;
    }
    certs.push(ours.clone().into_owned());
    let excess = certs.len().saturating_sub(MAX_BUNDLE_CAS);
    Some(to_pem(&certs[excess..]))
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("Kubernetes API: {0}")]
    Api(#[from] kube::Error),
    #[error("MutatingWebhookConfiguration {0:?} changed during every attempt")]
    Contended(String),
}

/// Adds `ca` to the caBundle of every webhook of the MutatingWebhookConfiguration `name`.
///
/// The JSON patch starts with a `test` of the resourceVersion, so a concurrent change by another
/// replica fails the patch instead of being overwritten; it is then re-read and retried.
pub async fn publish_ca_bundle(
    client: Client,
    name: &str,
    ca: &CertificateDer<'_>,
) -> Result<bool, PublishError> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client);
    for _attempt in 0..5 {
        let config = api.get(name).await?;
        let mut ops = Vec::new();
        for (index, webhook) in config.webhooks.iter().flatten().enumerate() {
            let existing = webhook
                .client_config
                .ca_bundle
                .as_ref()
                .map(|b| b.0.as_slice())
                .unwrap_or_default();
            if let Some(bundle) = merge_ca_bundle(existing, ca) {
                let index = index.to_string();
                ops.push(PatchOperation::Add(AddOperation {
                    path: PointerBuf::from_tokens([
                        "webhooks",
                        index.as_str(),
                        "clientConfig",
                        "caBundle",
                    ]),
                    value: base64::engine::general_purpose::STANDARD
                        .encode(bundle)
                        .into(),
                }));
            }
        }
        if ops.is_empty() {
            return Ok(false);
        }
        let resource_version = config.metadata.resource_version.clone().unwrap_or_default();
        ops.insert(
            0,
            PatchOperation::Test(TestOperation {
                path: PointerBuf::from_tokens(["metadata", "resourceVersion"]),
                value: resource_version.into(),
            }),
        );
        let patch: Patch<()> = Patch::Json(json_patch::Patch(ops));
        match api.patch(name, &PatchParams::default(), &patch).await {
            Ok(_) => return Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 || status.code == 422 => {
                tracing::debug!(message = %status.message, "caBundle changed concurrently; retrying");
            }
            Err(err) => return Err(err.into()),
        }
    }
    Err(PublishError::Contended(name.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrapped_pair_is_servable() {
        let boot = bootstrap(service_dns_names("inj", "mesh")).unwrap();
        let key = certified_key(boot.cert_pem.as_bytes(), boot.key_pem.as_bytes()).unwrap();
        assert_eq!(key.cert.len(), 2, "leaf then CA");
        assert_eq!(key.cert[1], boot.ca_der);
    }

    #[test]
    fn bundle_merge_appends_once_and_prunes_the_oldest() {
        let cas: Vec<_> = (0..MAX_BUNDLE_CAS + 2)
            .map(|_| bootstrap(vec!["x".into()]).unwrap().ca_der)
            .collect();
        let mut bundle = String::new();
        for ca in &cas {
            bundle = merge_ca_bundle(bundle.as_bytes(), ca).unwrap();
        }
        assert_eq!(
            merge_ca_bundle(bundle.as_bytes(), cas.last().unwrap()),
            None
        );
        let kept: Vec<_> = rustls_pemfile::certs(&mut bundle.as_bytes())
            .map(Result::unwrap)
            .collect();
        assert_eq!(kept.len(), MAX_BUNDLE_CAS);
        assert_eq!(kept, cas[2..].to_vec());
    }

    #[test]
    fn garbage_pem_is_refused() {
        assert!(matches!(
            certified_key(b"nope", b"nope"),
            Err(CertError::NoCertificate)
        ));
    }
}
