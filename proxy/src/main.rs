//! `nfs-tls-proxy`: parse, run, print an error once on one line, exit non-zero on failure.

use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match nfs_tls_proxy::config::parse_args(std::env::args_os().collect()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match nfs_tls_proxy::app::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nfs-tls-proxy: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
