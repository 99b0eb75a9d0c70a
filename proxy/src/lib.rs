//! nfs-tls-proxy: a TLS tunnel for NFS. One connection pipeline serves both modes
//! (accept -> handshake -> authorize -> connect -> splice -> one summary line); the mode only decides
//! which side is TLS. The folders are layers: each imports only from the ones listed after it (see
//! ARCHITECTURE.md).
//!
//! - [`app`], [`logging`], [`cmd`]: the binary's edge (runtime, signals, exit codes) and the subcommands
//!   other than `server`/`client` (check, convert-stunnel, manual, demo)
//! - [`serve`]: start_server/start_client, the accept loop, drain, VIP-following listeners, reload
//! - [`ops`]: the HTTP endpoint (/metrics, /healthz, /tunnels) and expiry warnings
//! - [`tunnel`]: one connection from accept to its summary line: each mode's open(), splice, refusals
//! - [`tls`]: certificate/key/CA/CRL loading, peer identity, the handshake and the record layer
//! - [`config`]: flags and TOML resolved once into [`config::Server`] / [`config::Client`]
//! - [`os`], [`rpc`], [`metrics`], [`redirect`]: leaves (Linux/FreeBSD specifics, ONC RPC bits,
//!   Prometheus metrics, the client's nftables redirect)

pub mod app;
mod cmd;
pub mod config;
mod logging;
mod metrics;
mod ops;
mod os;
mod redirect;
mod rpc;
mod serve;
mod tls;
mod tunnel;

pub use config::AllowList;
pub use serve::reload::{reload_client, reload_server};
pub use serve::{start_client, start_server, Running, StartError};
pub use tunnel::client::ClientMode;
pub use tunnel::server::ServerMode;
