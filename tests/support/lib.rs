//! The one test-support library of the workspace (package `nfs-tls-proxy-tests`, library
//! `test_support`): a test PKI, an echo backend that counts its connections, the nfs-ganesha
//! launcher, the Python RFC 9289 peers, and `eventually(deadline, cond)`. Every test and the benchmark
//! take these from here; nothing here is written a second time elsewhere.
//!
//! Tests live in two places, for one reason: Cargo sets `CARGO_BIN_EXE_<name>` only for the tests of
//! the package that builds the binary.
//! - `tests/*.rs` (this package): in-process tests. Both modes run in one process through the proxy
//!   and ca-tool libraries, so they can capture logs, bound every await and use fine-grained helpers
//!   ([`server_config`], [`tls_connect`], [`capture_logs`]).
//! - `proxy/tests/*.rs`: process-level tests. They run the built `nfs-tls-proxy` next to real peers
//!   (stunnel, nfs-ganesha, libnfs, the Python peers) and read its log lines. Their `support` module
//!   keeps only what needs the binary (`Proc`, `wait_line`, argument builders) and takes the rest
//!   from here as a dev-dependency (a dev-dependency cycle, which Cargo allows for tests).
//! - `benches/` uses the same PKI, echo backend and ganesha launcher.
//!
//! | module | what |
//! | --- | --- |
//! | `pki` | [`TestPki`]: a CA made with ca-tool and every kind of client the refusal tests need |
//! | `blog` | [`BlogPki`]: the blog's hand-made openssl PKI (v1 leaves), and the openssl helpers |
//! | `backend` | [`EchoBackend`] (threads, so sync and async tests share it) and the echo clients |
//! | `peers` | [`ganesha_command`], [`python_peer`], [`free_port`], [`wait_port`] |
//! | `inprocess` | configs for `start_server`/`start_client`, a raw TLS client, log capture |
//! | `wait` | [`eventually`], [`within`], deterministic data |

mod backend;
mod blog;
mod inprocess;
mod peers;
mod pki;
mod wait;

pub use backend::{echo_on, echo_through, echo_through_blocking, EchoBackend};
pub use blog::{have_openssl, openssl, openssl_serial, openssl_status, BlogPki, BLOG_CA_SUBJECT};
pub use inprocess::{
    capture_logs, client_config, common, endpoint, loopback, server_config, test_client_tls, tls_connect,
    tls_connect_with, tls_over, Logs,
};
pub use peers::{free_port, ganesha_command, python_peer, wait_port, PEERS};
pub use pki::{TestPki, CLIENT, SERVER};
pub use wait::{eventually, path_str, random_bytes, sha256, within};
