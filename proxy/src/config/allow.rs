//! The allow-list: which certificate names a server admits (the TLS layer checks it in the handshake).

use std::collections::BTreeSet;

use ca_tool::inspect::CertInfo;

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
