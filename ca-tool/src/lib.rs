//! The certificate authority behind nfs-tls-proxy, and the PEM/X.509 code both crates share.
//!
//! - [`ca`]: the CA directory (`init`, `issue`, `revoke`, `crl`), written atomically.
//! - [`index`]: `index.toml`, the record of what the CA issued; the CRL is signed from it.
//! - [`pem`]: the one PEM loader (certificates, keys, CRLs), used by the proxy too.
//! - [`inspect`]: what a certificate or CRL says (`show`, `list`, the proxy's peer identity), and
//!   [`inspect::legacy_problem`]: why a certificate made by `openssl x509 -req` will not do.
//! - [`keys`]: signing keys in the forms openssl writes (PKCS#8, PKCS#1, SEC1) for rcgen.
//! - [`bundle`]: everything one host needs, in one directory.
//! - [`serial`]: serial numbers, written as openssl writes them and compared as numbers.

pub mod bundle;
pub mod ca;
pub mod cli;
pub mod fsutil;
pub mod index;
pub mod inspect;
pub mod keys;
pub mod pem;
pub mod serial;
