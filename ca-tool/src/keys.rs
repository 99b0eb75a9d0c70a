//! Loading a signing key for rcgen from the PEM forms openssl writes.
//!
//! rcgen with the ring backend (the only backend that builds for FreeBSD here) reads PKCS#8 only
//! (`-----BEGIN PRIVATE KEY-----`). `openssl genrsa` writes PKCS#8 on OpenSSL 3 but PKCS#1
//! (`BEGIN RSA PRIVATE KEY`) on 1.1.1 and with `-traditional`, and `openssl ecparam -genkey` writes
//! SEC1 (`BEGIN EC PRIVATE KEY`). Both are the same key wrapped differently: a PKCS#8
//! `PrivateKeyInfo` is `SEQUENCE { INTEGER 0, AlgorithmIdentifier, OCTET STRING <PKCS#1 or SEC1> }`
//! (RFC 5208 section 5), so we wrap them here, taking the AlgorithmIdentifier from the certificate
//! the key belongs to (for EC it names the curve). ring then signs with RSA keys of 2048 to 4096
//! bits (PKCS#1 v1.5 with SHA-256) and with ECDSA P-256/P-384 and Ed25519 keys.

use std::path::{Path, PathBuf};

use rcgen::KeyPair;
use rustls_pki_types::pem::SectionKind;

use crate::pem::{read_sections, PemError};

/// A private key that cannot be used for signing.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Pem(#[from] PemError),
    #[error("{path}: the private key is encrypted; ca-tool needs it in the clear: `openssl pkey -in {path} -out {path}.plain` (then use {path}.plain, mode 0600)", path = .path.display())]
    Encrypted { path: PathBuf },
    #[error("{path}: contains no private key", path = .path.display())]
    Missing { path: PathBuf },
    #[error("{path}: contains more than one private key", path = .path.display())]
    Several { path: PathBuf },
    #[error("{path}: not a usable signing key ({detail}); ca-tool signs with RSA 2048 to 4096 bits, ECDSA P-256/P-384 or Ed25519", path = .path.display())]
    Unusable { path: PathBuf, detail: String },
}

/// Reads the one private key in `path` (PKCS#8, PKCS#1 RSA or SEC1 EC) as an rcgen key pair.
/// `cert_spki` is the DER SubjectPublicKeyInfo of the certificate the key belongs to: its algorithm
/// identifier wraps a PKCS#1 or SEC1 key into PKCS#8.
pub fn load_signing_key(path: &Path, cert_spki: &[u8]) -> Result<KeyPair, KeyError> {
    if std::fs::read(path).is_ok_and(|b| b.windows(9).any(|w| w == b"ENCRYPTED")) {
        return Err(KeyError::Encrypted { path: path.to_owned() });
    }
    let mut keys = read_sections(path)?.into_iter().filter(|s| {
        matches!(s.kind, SectionKind::PrivateKey | SectionKind::RsaPrivateKey | SectionKind::EcPrivateKey)
    });
    let section = keys.next().ok_or_else(|| KeyError::Missing { path: path.to_owned() })?;
    if keys.next().is_some() {
        return Err(KeyError::Several { path: path.to_owned() });
    }
    let unusable = |detail: String| KeyError::Unusable { path: path.to_owned(), detail };
    let pkcs8 = match section.kind {
        SectionKind::PrivateKey => section.der,
        _ => {
            let alg = algorithm_identifier(cert_spki)
                .ok_or_else(|| unusable("the certificate's public key info is malformed".into()))?;
            wrap_pkcs8(alg, &section.der)
        }
    };
    let wrapped = section.kind != SectionKind::PrivateKey;
    let der = rustls_pki_types::PrivatePkcs8KeyDer::from(pkcs8);
    KeyPair::try_from(&der).map_err(|e| match wrapped {
        // Wrapped with the certificate's algorithm: a failure most likely means another key type.
        true => unusable(format!("{e}; is it the key of this certificate?")),
        false => unusable(e.to_string()),
    })
}

/// The AlgorithmIdentifier (first element, tag and all) of a DER SubjectPublicKeyInfo.
fn algorithm_identifier(spki: &[u8]) -> Option<&[u8]> {
    let (tag, body, _) = der_element(spki)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, _, rest) = der_element(body)?;
    if tag != 0x30 {
        return None;
    }
    Some(&body[..body.len() - rest.len()])
}

/// PKCS#8 `PrivateKeyInfo { version 0, alg, OCTET STRING key }`.
fn wrap_pkcs8(alg: &[u8], key: &[u8]) -> Vec<u8> {
    let mut body = vec![0x02, 0x01, 0x00];
    body.extend_from_slice(alg);
    body.push(0x04);
    der_length(key.len(), &mut body);
    body.extend_from_slice(key);
    let mut out = vec![0x30];
    der_length(body.len(), &mut out);
    out.extend_from_slice(&body);
    out
}

/// One DER element: (tag, contents, what follows). Single-byte tags only, definite lengths.
pub(crate) fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

fn der_length(len: usize, out: &mut Vec<u8>) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len.to_be_bytes().into_iter().skip_while(|b| *b == 0).collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend_from_slice(&bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_lengths_round_trip_through_the_element_reader() {
        for len in [0usize, 1, 127, 128, 255, 256, 4000, 70000] {
            let mut enc = vec![0x04];
            der_length(len, &mut enc);
            enc.extend(std::iter::repeat_n(7u8, len));
            let (tag, body, rest) = der_element(&enc).expect("element");
            assert_eq!((tag, body.len(), rest.len()), (0x04, len, 0));
        }
    }

    #[test]
    fn a_truncated_element_is_refused_not_read_past_its_end() {
        assert!(der_element(&[0x30, 0x05, 1, 2]).is_none());
        assert!(der_element(&[0x30, 0x85, 0, 0, 0, 0, 1]).is_none());
        assert!(der_element(&[]).is_none());
    }
}
