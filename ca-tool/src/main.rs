//! `ca-tool`: parse the command line, run it, print an error once on one line.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = ca_tool::cli::Cli::parse();
    match ca_tool::cli::run(cli, &mut std::io::stdout().lock()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ca-tool: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
