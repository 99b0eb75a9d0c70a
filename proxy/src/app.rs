//! The binary's edge: run a parsed command until a signal, then drain. `anyhow` lives here only.

use std::time::Duration;

use anyhow::Context;

use crate::config::{self, Cli, Command};
use crate::tunnel::Mode;
use crate::Running;

/// Runs a command to completion.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let log = match &cli.command {
        Command::Server(a) => &a.common.log,
        Command::Client(a) => &a.common.log,
        Command::Demo(log) => log,
    };
    crate::logging::init(log).map_err(anyhow::Error::msg)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        match cli.command {
            Command::Server(args) => {
                let cfg = config::Server::resolve(&args)?;
                let running = crate::start_server(&cfg).await?;
                serve_until_signal(running, cfg.common.drain_timeout, |running| {
                    let Command::Server(args) = reparse()? else { anyhow::bail!("not a server command") };
                    crate::reload::reload_server(running, &config::Server::resolve(&args)?)?;
                    Ok(())
                })
                .await
            }
            Command::Client(args) => {
                let cfg = config::Client::resolve(&args)?;
                let running = crate::start_client(&cfg).await?;
                serve_until_signal(running, cfg.common.drain_timeout, |running| {
                    let Command::Client(args) = reparse()? else { anyhow::bail!("not a client command") };
                    crate::reload::reload_client(running, &config::Client::resolve(&args)?)?;
                    Ok(())
                })
                .await
            }
            Command::Demo(_) => crate::demo::run().await,
        }
    })
}

/// The command line (and its --config file) read again, for a reload.
fn reparse() -> anyhow::Result<Command> {
    Ok(config::parse_args(std::env::args_os().collect())
        .map_err(|e| anyhow::anyhow!("{}", e.to_string().trim()))?
        .command)
}

/// Serves until SIGTERM/SIGINT (then drains); SIGHUP reloads, and a failed reload keeps the
/// current configuration.
async fn serve_until_signal<M: Mode>(
    running: Running<M>,
    drain: Duration,
    reload: impl Fn(&Running<M>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
    let which = loop {
        tokio::select! {
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
            _ = hup.recv() => {
                if let Err(e) = reload(&running) {
                    tracing::warn!(error = format!("{e:#}"), "reload failed; keeping the current configuration");
                }
            }
        }
    };
    tracing::info!(signal = which, "shutting down");
    let cut = running.shutdown(drain).await;
    tracing::info!(cut, "stopped");
    Ok(())
}
