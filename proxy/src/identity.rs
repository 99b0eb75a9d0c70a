//! Who the TLS peer is (from its certificate) and whether the allow-list admits it. The allow-list is
//! checked inside the handshake, so a refused client gets a TLS alert and the backend is never dialled.

use std::collections::BTreeSet;
use std::sync::Arc;

use ca_tool::inspect::CertInfo;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// The names (certificate CN or DNS SAN) admitted; empty admits every certificate the CA signed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList(BTreeSet<String>);

impl AllowList {
    pub fn new(names: impl IntoIterator<Item = String>) -> Self {
        Self(names.into_iter().map(|n| n.to_ascii_lowercase()).collect())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }

    /// Whether the certificate's CN or one of its DNS SANs is on the list.
    pub fn permits(&self, cert: &CertInfo) -> bool {
        self.0.is_empty() || cert.names().any(|n| self.0.contains(&n.to_ascii_lowercase()))
    }
}

/// The name a peer is logged under: its certificate's CN (or first DNS SAN).
pub fn peer_name(certs: Option<&[CertificateDer<'_>]>) -> String {
    certs
        .and_then(|c| c.first())
        .and_then(|leaf| CertInfo::parse(leaf).ok())
        .map(|info| info.display_name().to_owned())
        .unwrap_or_else(|| "-".to_owned())
}

/// Wraps the CA/CRL verifier and then applies the allow-list, during the handshake.
#[derive(Debug)]
pub struct AllowListVerifier {
    pub inner: Arc<dyn ClientCertVerifier>,
    pub allow: AllowList,
}

impl ClientCertVerifier for AllowListVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        if self.allow.is_empty() {
            return Ok(verified);
        }
        let info = CertInfo::parse(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        if self.allow.permits(&info) {
            Ok(verified)
        } else {
            Err(rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
