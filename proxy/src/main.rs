//! `nfs-tls-proxy`: parse, run, print an error once on one line, exit non-zero on failure.
//!
//! Exit status: 0 success; 1 a failure at run time (cannot bind, TLS material refused, a reload
//! that failed, `check` found problems); 2 a usage or configuration error (unknown flag, bad value,
//! bad `--config` file). Every error line starts with `nfs-tls-proxy: error:`.

use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match nfs_tls_proxy::config::parse_args(std::env::args_os().collect()) {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            let text = e.to_string();
            let text = text.trim().strip_prefix("error: ").unwrap_or(text.trim());
            eprintln!("nfs-tls-proxy: error: {text}");
            return ExitCode::from(2);
        }
    };
    match nfs_tls_proxy::app::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nfs-tls-proxy: error: {e:#}");
            if e.downcast_ref::<nfs_tls_proxy::config::ConfigError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
