//! `nfs-tls-proxy manual --out DIR`: man pages (one per subcommand) and shell completions, generated
//! from the clap definitions so they cannot drift from the flags.

use std::path::Path;

use anyhow::Context;
use clap::CommandFactory;

use crate::config::Cli;

/// Writes `DIR/man/*.1` and `DIR/completions/{bash,zsh,fish}`.
pub(crate) fn write(out: &Path) -> anyhow::Result<()> {
    let man = out.join("man");
    std::fs::create_dir_all(&man).with_context(|| format!("{}: cannot create", man.display()))?;
    clap_mangen::generate_to(Cli::command(), &man)
        .with_context(|| format!("{}: cannot write", man.display()))?;
    let completions = out.join("completions");
    std::fs::create_dir_all(&completions)
        .with_context(|| format!("{}: cannot create", completions.display()))?;
    for shell in [clap_complete::Shell::Bash, clap_complete::Shell::Zsh, clap_complete::Shell::Fish] {
        clap_complete::generate_to(shell, &mut Cli::command(), "nfs-tls-proxy", &completions)
            .with_context(|| format!("{}: cannot write {shell} completions", completions.display()))?;
    }
    println!("wrote {} and {}", man.display(), completions.display());
    Ok(())
}
