//! The binary's edge: run a parsed command until a signal, then drain. `anyhow` lives here only.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use crate::cmd::reload::StatusFile;
use crate::config::{self, Cli, Command, TlsFiles};
use crate::os::Privileges;
use crate::serve::reload::Material;
use crate::serve::Running;
use crate::tunnel::Mode;

/// Runs a command to completion.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let log = match &cli.command {
        Command::Server(a) => &a.common.log,
        Command::Client(a) => &a.common.log,
        Command::Demo(log) => log,
        Command::Check(a) => &a.log,
        Command::ConvertStunnel(a) => &a.log,
        Command::Manual(a) => &a.log,
        Command::Reload(a) => &a.log,
    };
    crate::logging::init(log).map_err(anyhow::Error::msg)?;
    let threads = match &cli.command {
        Command::Server(a) => a.common.threads,
        Command::Client(a) => a.common.threads,
        _ => None,
    };
    let runtime = match threads {
        Some(1) => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        Some(n) => tokio::runtime::Builder::new_multi_thread().worker_threads(n.into()).enable_all().build(),
        None => tokio::runtime::Builder::new_multi_thread().enable_all().build(),
    }
    .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        match cli.command {
            Command::Server(args) => {
                let cfg = config::Server::resolve(&args)?;
                let handover = args.common.handover_socket.as_deref();
                let running = crate::serve::start_server_taking_over(&cfg, handover).await?;
                let material = Material::read(&cfg.common.tls, cfg.crl.as_deref(), &cfg.allow);
                let watch = Watch::new(&cfg.common, cfg.crl.clone(), material)?;
                serve_until_signal(running, watch, |running| {
                    let Command::Server(args) = reparse()? else { anyhow::bail!("not a server command") };
                    let new = config::Server::resolve(&args)?;
                    let cut = crate::serve::reload::reload_server(running, &new)?;
                    Ok(Reloaded {
                        material: Material::read(&new.common.tls, new.crl.as_deref(), &new.allow),
                        restart_needed: cfg.restart_needed(&new),
                        tls: new.common.tls,
                        crl: new.crl,
                        cut,
                    })
                })
                .await
            }
            Command::Client(args) => {
                let cfg = config::Client::resolve(&args)?;
                let handover = args.common.handover_socket.as_deref();
                let running = crate::serve::start_client_taking_over(&cfg, handover).await?;
                let material = Material::read(&cfg.common.tls, None, &config::AllowList::default());
                let watch = Watch::new(&cfg.common, None, material)?;
                serve_until_signal(running, watch, |running| {
                    let Command::Client(args) = reparse()? else { anyhow::bail!("not a client command") };
                    let new = config::Client::resolve(&args)?;
                    crate::serve::reload::reload_client(running, &new)?;
                    Ok(Reloaded {
                        material: Material::read(&new.common.tls, None, &config::AllowList::default()),
                        restart_needed: cfg.restart_needed(&new),
                        tls: new.common.tls,
                        crl: None,
                        cut: 0,
                    })
                })
                .await
            }
            Command::Reload(args) => {
                let outcome = crate::cmd::reload::run(&args.pid_file, args.timeout).await?;
                println!("{outcome}");
                Ok(())
            }
            Command::Demo(_) => crate::cmd::demo::run().await,
            Command::Check(args) => {
                let report = crate::cmd::check::check(&args.config, args.mode).await;
                print!("{}", report.summary);
                for w in &report.warnings {
                    eprintln!("warning: {w}");
                }
                for p in &report.problems {
                    eprintln!("problem: {p}");
                }
                match report.problems.len() {
                    0 => {
                        println!("ok: no problems ({} warnings)", report.warnings.len());
                        Ok(())
                    }
                    n => anyhow::bail!("{}: {n} problem(s)", args.config.display()),
                }
            }
            Command::ConvertStunnel(args) => {
                let text = std::fs::read_to_string(&args.file)
                    .with_context(|| format!("{}: cannot read", args.file.display()))?;
                match crate::cmd::convert::convert(&text, &args.file, args.service.as_deref()) {
                    Ok(out) => {
                        for w in &out.warnings {
                            eprintln!("warning: {w}");
                        }
                        print!("{}", out.toml);
                        Ok(())
                    }
                    Err(errors) => {
                        for e in &errors {
                            eprintln!("{e}");
                        }
                        anyhow::bail!(
                            "{}: {} line(s) cannot be translated",
                            args.file.display(),
                            errors.len()
                        )
                    }
                }
            }
            Command::Manual(args) => crate::cmd::manual::write(&args.out),
        }
    })
}

/// The command line (and its --config file) read again, for a reload.
fn reparse() -> anyhow::Result<Command> {
    Ok(config::parse_args(std::env::args_os().collect())
        .map_err(|e| anyhow::anyhow!("{}", e.to_string().trim()))?
        .command)
}

/// What a successful reload reports to the serving loop.
struct Reloaded {
    tls: TlsFiles,
    crl: Option<PathBuf>,
    material: Material,
    cut: usize,
    /// Changed settings that only a restart applies.
    restart_needed: Vec<&'static str>,
}

/// What the serving loop keeps an eye on besides signals.
struct Watch {
    tls: TlsFiles,
    crl: Option<PathBuf>,
    material: Material,
    drain: Duration,
    reload_every: Option<Duration>,
    privileges: Option<Privileges>,
    /// `--pid-file`: where the pid goes, and each reload's outcome next to it.
    pid_file: Option<PathBuf>,
    status: Option<StatusFile>,
}

impl Watch {
    fn new(common: &config::Common, crl: Option<PathBuf>, material: Material) -> anyhow::Result<Self> {
        Ok(Self {
            tls: common.tls.clone(),
            crl,
            material,
            drain: common.drain_timeout,
            reload_every: common.reload_every,
            privileges: common.privileges.clone(),
            pid_file: common.pid_file.clone(),
            status: None,
        })
    }

    /// Logs near expiry and publishes every deadline as a metric.
    fn check_expiry(&self, metrics: &crate::metrics::Metrics) {
        let deadlines = crate::ops::expiry::publish(metrics, &self.tls, self.crl.as_deref());
        crate::ops::expiry::warn_near(&deadlines, time::OffsetDateTime::now_utc());
    }
}

/// An interval whose first tick is one period from now (or never).
fn every(period: Option<Duration>) -> Option<tokio::time::Interval> {
    period.map(|p| {
        let mut i = tokio::time::interval_at(tokio::time::Instant::now() + p, p);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    })
}

async fn tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Drops privileges if asked, then serves until SIGTERM/SIGINT (then drains). SIGHUP and
/// `--reload-every` reload, and a failed reload keeps the current configuration; expiry warnings are
/// logged at start, after each reload and once a day.
async fn serve_until_signal<M: Mode>(
    running: Running<M>,
    mut watch: Watch,
    reload: impl Fn(&Running<M>) -> anyhow::Result<Reloaded>,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
    // The pid file is opened once SIGHUP is ours (a `reload` that reads it may signal at once), and
    // before the privilege drop (its outcome file is handed to the user run as); it is written when
    // the proxy is ready (see StatusFile::publish).
    if let Some(path) = &watch.pid_file {
        let owner = watch.privileges.as_ref().map(|p| (p.uid, p.gid));
        watch.status = Some(StatusFile::create(path, owner)?);
    }
    if let Some(p) = &watch.privileges {
        p.drop_to()
            .with_context(|| format!("cannot switch to user {} (uid {}, gid {})", p.user, p.uid, p.gid))?;
        tracing::info!(user = %p.user, uid = p.uid, gid = p.gid, "dropped privileges");
        crate::tls::validate::readable_after_drop(&watch.tls, watch.crl.as_deref())
            .map_err(anyhow::Error::msg)?;
    }
    watch.check_expiry(&running.ctx.metrics);
    running.ctx.metrics.loaded(false, true, time::OffsetDateTime::now_utc().unix_timestamp());
    // Last, once everything above went well: a predecessor (--handover-socket) may stop now.
    running.handover_ready().await?;
    // Only now: until a predecessor confirmed, the pid file and FILE.reload still name it.
    if let Some(status) = &watch.status {
        status.publish().context("cannot write the pid file")?;
    }
    tracing::info!(pid = std::process::id(), "ready: SIGHUP reloads, SIGTERM drains and stops");
    if let Err(e) = crate::os::sd_notify("READY=1") {
        tracing::warn!(error = %e, "cannot notify systemd of readiness");
    }
    let handed_over = running.handed_over();
    let mut reload_tick = every(watch.reload_every);
    let mut expiry_tick = every(Some(crate::ops::expiry::CHECK_EVERY));
    let which = loop {
        let why = tokio::select! {
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
            _ = handed_over.cancelled() => break "hand-over",
            _ = hup.recv() => "SIGHUP",
            _ = tick(&mut reload_tick) => "--reload-every",
            _ = tick(&mut expiry_tick) => {
                watch.check_expiry(&running.ctx.metrics);
                continue;
            }
        };
        // systemd (Type=notify-reload, or a waiting ExecReload) learns that a reload runs and ends.
        let _ = crate::os::sd_notify(&format!("RELOADING=1\nMONOTONIC_USEC={}", crate::os::monotonic_usec()));
        if let Some(status) = &mut watch.status {
            if let Err(e) = status.begin() {
                tracing::warn!(error = %e, "cannot record the reload outcome");
            }
        }
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let outcome = match reload(&running) {
            Ok(r) => {
                let changes = watch.material.changes(&r.material);
                let changes = if changes.is_empty() { "none".to_owned() } else { changes.join("; ") };
                let restart = r.restart_needed.join(",");
                if restart.is_empty() {
                    tracing::info!(trigger = why, %changes, open_tunnels_cut = r.cut, "reloaded TLS material");
                } else {
                    tracing::warn!(
                        trigger = why,
                        %changes,
                        open_tunnels_cut = r.cut,
                        restart_needed = %restart,
                        "reloaded TLS material; changed settings that only a restart applies were not applied"
                    );
                }
                (watch.tls, watch.crl, watch.material) = (r.tls, r.crl, r.material);
                watch.check_expiry(&running.ctx.metrics);
                running.ctx.metrics.loaded(true, true, now);
                Ok(format!("reloaded: {changes}"))
            }
            Err(e) => {
                let error = format!("{e:#}");
                tracing::error!(trigger = why, %error, "reload failed; keeping the current configuration");
                running.ctx.metrics.loaded(true, false, now);
                Err(format!("reload failed: {error}"))
            }
        };
        if let Some(status) = &mut watch.status {
            if let Err(e) = status.record(&outcome) {
                tracing::warn!(error = %e, "cannot record the reload outcome");
            }
        }
        let _ = crate::os::sd_notify("READY=1");
    };
    tracing::info!(signal = which, "shutting down");
    let _ = crate::os::sd_notify("STOPPING=1");
    let cut = running.shutdown(watch.drain).await;
    if let Some(status) = watch.status.take() {
        // After a hand-over the pid file may be the successor's by now (same path): leave it.
        let ours = watch
            .pid_file
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .map(|t| t.trim().to_owned())
            == Some(std::process::id().to_string());
        if ours {
            status.remove();
        }
    }
    tracing::info!(cut, "stopped");
    Ok(())
}
