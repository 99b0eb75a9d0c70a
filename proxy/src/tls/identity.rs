//! Who the TLS peer is (from its certificate), and the client-certificate verifier that applies the
//! allow-list ([`crate::config::AllowList`]) inside the handshake, so a refused client gets a TLS alert
//! and the backend is never dialled.

use std::sync::Arc;

use crate::config::AllowList;
use ca_tool::inspect::CertInfo;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// The certificate a client presented, as far as it could be read: for refusal lines ("who").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presented {
    /// CN (or first DNS SAN); `-` if the certificate does not parse.
    pub name: String,
    /// Serial number, upper-case hex as `openssl x509 -serial` prints it.
    pub serial: String,
}

thread_local! {
    /// Set by the verifier while rustls processes a Certificate message, taken by the handshake loop
    /// right after that call returns (same thread, no await in between): the verifier is shared by
    /// every connection, so this is how one handshake learns who it refused.
    static PRESENTED: std::cell::RefCell<Option<Presented>> = const { std::cell::RefCell::new(None) };
}

/// The certificate the last verification on this thread saw, if any (and forgets it).
pub(crate) fn take_presented() -> Option<Presented> {
    PRESENTED.with(|p| p.borrow_mut().take())
}

fn remember_presented(end_entity: &CertificateDer<'_>) {
    let presented = match CertInfo::parse(end_entity) {
        Ok(info) => Presented { name: info.display_name().to_owned(), serial: info.serial.clone() },
        Err(_) => Presented { name: "-".into(), serial: "-".into() },
    };
    PRESENTED.with(|p| *p.borrow_mut() = Some(presented));
}

/// The name a peer is logged under: its certificate's CN (or first DNS SAN).
pub(crate) fn peer_name(certs: Option<&[CertificateDer<'_>]>) -> String {
    certs
        .and_then(|c| c.first())
        .and_then(|leaf| CertInfo::parse(leaf).ok())
        .map(|info| info.display_name().to_owned())
        .unwrap_or_else(|| "-".to_owned())
}

/// Wraps the CA/CRL verifier and then applies the allow-list, during the handshake.
#[derive(Debug)]
pub(crate) struct AllowListVerifier {
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
        remember_presented(end_entity);
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
