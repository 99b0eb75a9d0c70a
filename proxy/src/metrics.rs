//! The Prometheus metrics, all defined here (names and help texts are the documentation; the README
//! lists them). One [`Metrics`] per running proxy, held by the running proxy.
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `nfs_tls_proxy_tunnels_open` | gauge | identity, transport |
//! | `nfs_tls_proxy_tunnels_total` | counter | identity, transport |
//! | `nfs_tls_proxy_bytes_total` | counter | identity, direction (`up`: towards the NFS server) |
//! | `nfs_tls_proxy_refusals_total` | counter | reason (`evicted`: dropped from a full handshake budget) |
//! | `nfs_tls_proxy_handshakes_in_progress` | gauge | - |
//! | `nfs_tls_proxy_handshake_duration_seconds` | histogram | transport |
//! | `nfs_tls_proxy_listen_address_owned` | gauge | listen |
//! | `nfs_tls_proxy_listen_state` | gauge | listen, state (`serving`, `standby`, `failing`: owned, not bound) |
//! | `nfs_tls_proxy_expiry_timestamp_seconds` | gauge | what (certificate, ca, crl-next-update), file |
//! | `nfs_tls_proxy_build_info` | gauge | version, mode |
//! | `nfs_tls_proxy_redirected_tunnels_total` | counter | original_dst (a `--redirect` address, or `other`) |
//! | `nfs_tls_proxy_redirect_in_place` | gauge | redirect (client `--redirect`: 1 while its rule is in place) |
//! | `nfs_tls_proxy_redirect_restored_total` | counter | - (rules put back after something removed them) |
//! | `nfs_tls_proxy_reload_total` | counter | result (`success`, `failure`) |
//! | `nfs_tls_proxy_last_reload_success_timestamp_seconds` | gauge | - |
//! | `nfs_tls_proxy_record_path_total` | counter | path (`ktls`: the kernel seals and opens the records; `rustls`) |

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TunnelLabels {
    identity: String,
    transport: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByteLabels {
    identity: String,
    direction: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
    /// The presented certificate's name when the CA signed it (expired, revoked, not allowed...);
    /// `-` otherwise, so the label set stays bounded by the CA's own list.
    identity: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransportLabels {
    transport: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PathLabels {
    path: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenStateLabels {
    listen: String,
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenLabels {
    listen: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExpiryLabels {
    what: &'static str,
    file: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DstLabels {
    original_dst: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RedirectLabels {
    redirect: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    mode: &'static str,
}

fn handshake_histogram() -> Histogram {
    // 0.5 ms .. ~8 s
    Histogram::new(exponential_buckets(0.0005, 2.0, 15))
}

/// Every metric of one proxy.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    tunnels_open: Family<TunnelLabels, Gauge>,
    tunnels_total: Family<TunnelLabels, Counter>,
    bytes: Family<ByteLabels, Counter>,
    refusals: Family<ReasonLabels, Counter>,
    handshake: Family<TransportLabels, Histogram, fn() -> Histogram>,
    owned: Family<ListenLabels, Gauge>,
    listen_state: Family<ListenStateLabels, Gauge>,
    expiry: Family<ExpiryLabels, Gauge>,
    redirected: Family<DstLabels, Counter>,
    redirect_in_place: Family<RedirectLabels, Gauge>,
    redirect_restored: Counter,
    reloads: Family<ResultLabels, Counter>,
    last_reload: Gauge,
    handshaking: Gauge,
    record_path: Family<PathLabels, Counter>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

impl Metrics {
    pub fn new(mode: &'static str) -> Self {
        let mut registry = Registry::with_prefix("nfs_tls_proxy");
        let tunnels_open = Family::<TunnelLabels, Gauge>::default();
        let tunnels_total = Family::<TunnelLabels, Counter>::default();
        let bytes = Family::<ByteLabels, Counter>::default();
        let refusals = Family::<ReasonLabels, Counter>::default();
        let handshake = Family::<TransportLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            handshake_histogram as fn() -> Histogram,
        );
        let owned = Family::<ListenLabels, Gauge>::default();
        let listen_state = Family::<ListenStateLabels, Gauge>::default();
        let expiry = Family::<ExpiryLabels, Gauge>::default();
        let build = Family::<BuildLabels, Gauge>::default();
        build.get_or_create(&BuildLabels { version: env!("CARGO_PKG_VERSION"), mode }).set(1);
        registry.register("tunnels_open", "Tunnels open now", tunnels_open.clone());
        registry.register("tunnels", "Tunnels opened since start", tunnels_total.clone());
        registry.register(
            "bytes",
            "Bytes carried, by client identity and direction (up: towards the NFS server)",
            bytes.clone(),
        );
        registry.register("refusals", "Connections refused, by reason", refusals.clone());
        registry.register(
            "handshake_duration_seconds",
            "Time from accept to an open tunnel (handshake, checks and connect)",
            handshake.clone(),
        );
        registry.register(
            "listen_address_owned",
            "1 while this host owns the listen address (server: the VIP) and listens on it",
            owned.clone(),
        );
        registry.register(
            "listen_state",
            "1 for the state each listen address is in: serving, standby (this host does not own it) or failing (owned but cannot be bound)",
            listen_state.clone(),
        );
        registry.register(
            "expiry_timestamp_seconds",
            "When the own certificate, the CA and the CRL's nextUpdate run out (Unix time)",
            expiry.clone(),
        );
        registry.register("build_info", "Version and mode of this proxy", build);
        let redirected = Family::<DstLabels, Counter>::default();
        registry.register(
            "redirected_tunnels",
            "Tunnels of connections the client's --redirect sent here, by original destination",
            redirected.clone(),
        );
        let redirect_in_place = Family::<RedirectLabels, Gauge>::default();
        registry.register(
            "redirect_in_place",
            "1 while the client's nftables rule for this --redirect is in place",
            redirect_in_place.clone(),
        );
        let redirect_restored = Counter::default();
        registry.register(
            "redirect_restored",
            "Times the client put its --redirect rules back after something (a firewall reload) removed them",
            redirect_restored.clone(),
        );
        let reloads = Family::<ResultLabels, Counter>::default();
        // Both series exist from the start, so an alert on failures sees 0 before the first one.
        let _ = reloads.get_or_create(&ResultLabels { result: "success" });
        let _ = reloads.get_or_create(&ResultLabels { result: "failure" });
        registry.register(
            "reload",
            "Reloads of the TLS material (signal or timer), by result",
            reloads.clone(),
        );
        let last_reload = Gauge::default();
        registry.register(
            "last_reload_success_timestamp_seconds",
            "When the TLS material was last loaded successfully, at start or by a reload (Unix time)",
            last_reload.clone(),
        );
        let handshaking = Gauge::default();
        registry.register(
            "handshakes_in_progress",
            "Connections in their handshake now (limited by --max-handshakes)",
            handshaking.clone(),
        );
        let record_path = Family::<PathLabels, Counter>::default();
        for path in ["ktls", "rustls"] {
            let _ = record_path.get_or_create(&PathLabels { path });
        }
        registry.register(
            "record_path",
            "Tunnels opened, by who seals and opens their TLS records: ktls (the kernel, --ktls auto) or rustls",
            record_path.clone(),
        );
        Self {
            handshaking,
            record_path,
            registry,
            tunnels_open,
            tunnels_total,
            bytes,
            refusals,
            handshake,
            owned,
            listen_state,
            expiry,
            reloads,
            last_reload,
            redirected,
            redirect_in_place,
            redirect_restored,
        }
    }

    /// The material was loaded: at start (`reload` false) or by a reload that succeeded or failed.
    pub fn loaded(&self, reload: bool, ok: bool, unix_now: i64) {
        if reload {
            let result = if ok { "success" } else { "failure" };
            self.reloads.get_or_create(&ResultLabels { result }).inc();
        }
        if ok {
            self.last_reload.set(unix_now);
        }
    }

    /// A tunnel of a connection `--redirect` sent here; `original_dst` is the redirect address (or
    /// `other`, which keeps the label set bounded).
    pub fn redirected(&self, original_dst: &str) {
        self.redirected.get_or_create(&DstLabels { original_dst: original_dst.to_owned() }).inc();
    }

    /// Whether the rule for `redirect` (e.g. `192.0.2.138:2049`) is in place.
    pub fn set_redirect_in_place(&self, redirect: &str, in_place: bool) {
        self.redirect_in_place
            .get_or_create(&RedirectLabels { redirect: redirect.to_owned() })
            .set(i64::from(in_place));
    }

    /// The redirect rules were found missing and put back.
    pub fn redirect_restored(&self) {
        self.redirect_restored.inc();
    }

    /// A refused connection; `reason` is one of the refusal words (`RefuseReason::word`),
    /// `identity` the name of a certificate the CA signed, or `-`.
    pub fn refused(&self, reason: &'static str, identity: &str) {
        self.refusals.get_or_create(&ReasonLabels { reason, identity: identity.to_owned() }).inc();
    }

    /// Connections in their handshake now.
    pub fn set_handshaking(&self, n: usize) {
        self.handshaking.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub fn opened(&self, identity: &str, transport: &'static str, took: Duration) {
        let labels = TunnelLabels { identity: identity.to_owned(), transport: transport.to_owned() };
        self.tunnels_open.get_or_create(&labels).inc();
        self.tunnels_total.get_or_create(&labels).inc();
        self.handshake.get_or_create(&TransportLabels { transport }).observe(took.as_secs_f64());
    }

    /// A tunnel opened on this record path (`ktls` or `rustls`).
    pub fn record_path(&self, path: &'static str) {
        self.record_path.get_or_create(&PathLabels { path }).inc();
    }

    /// A tunnel ended; its last bytes are counted with [`Metrics::add_bytes`] first.
    pub fn closed(&self, identity: &str, transport: &'static str) {
        let labels = TunnelLabels { identity: identity.to_owned(), transport: transport.to_owned() };
        self.tunnels_open.get_or_create(&labels).dec();
    }

    /// Bytes a tunnel carried that were not counted yet (at each scrape and at close), so the
    /// counters follow live traffic.
    pub fn add_bytes(&self, identity: &str, up_new: u64, down_new: u64) {
        let identity = identity.to_owned();
        if up_new > 0 {
            self.bytes
                .get_or_create(&ByteLabels { identity: identity.clone(), direction: "up" })
                .inc_by(up_new);
        }
        if down_new > 0 {
            self.bytes.get_or_create(&ByteLabels { identity, direction: "down" }).inc_by(down_new);
        }
    }

    /// A listen address is now `state` (`serving`, `standby` or `failing`).
    pub fn set_listen_state(&self, listen: std::net::SocketAddr, state: &'static str) {
        let listen = listen.to_string();
        let owned = state != "standby";
        self.owned.get_or_create(&ListenLabels { listen: listen.clone() }).set(i64::from(owned));
        for s in ["serving", "standby", "failing"] {
            let on = i64::from(s == state);
            self.listen_state.get_or_create(&ListenStateLabels { listen: listen.clone(), state: s }).set(on);
        }
    }

    /// Replaces the expiry dates: (what, file, Unix time) for each piece of material.
    pub fn set_expiry(&self, deadlines: impl IntoIterator<Item = (&'static str, String, i64)>) {
        self.expiry.clear();
        for (what, file, at) in deadlines {
            self.expiry.get_or_create(&ExpiryLabels { what, file }).set(at);
        }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
