//! `lazyimg completions` and `lazyimg man`: shell completions and manual pages,
//! generated from the same clap definitions that parse the command line, so
//! they can never describe options lazyimg does not have.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, CommandFactory as _, Subcommand};
use clap_complete::Generator as _;

use super::Cli;

#[derive(Subcommand, Debug)]
pub(super) enum DocsCommand {
    /// Print the shell completion script for SHELL.
    #[command(after_help = "Examples:\n  \
        lazyimg completions bash > /usr/share/bash-completion/completions/lazyimg\n  \
        lazyimg completions zsh > /usr/local/share/zsh/site-functions/_lazyimg\n  \
        lazyimg completions fish > ~/.config/fish/completions/lazyimg.fish")]
    Completions(CompletionsArgs),
    /// Write man pages (lazyimg.1 and one per subcommand) to DIR.
    #[command(after_help = "Example:\n  lazyimg man /usr/local/share/man/man1 && mandb -q")]
    Man(ManArgs),
}

#[derive(Args, Debug)]
pub(super) struct CompletionsArgs {
    /// The shell to complete for.
    shell: clap_complete::Shell,
}

#[derive(Args, Debug)]
pub(super) struct ManArgs {
    /// Directory to write the pages to (created if missing), e.g.
    /// /usr/local/share/man/man1.
    dir: PathBuf,
}

pub(super) fn run(command: DocsCommand) -> anyhow::Result<ExitCode> {
    match command {
        DocsCommand::Completions(args) => completions(args),
        DocsCommand::Man(args) => man(args),
    }
}

/// Writes the completion script for `args.shell` to standard output, for the
/// `lazyimg` executable: the file bash-completion loads from
/// `completions/lazyimg`, zsh from `_lazyimg` on `$fpath`, fish from
/// `vendor_completions.d/lazyimg.fish`.
fn completions(args: CompletionsArgs) -> anyhow::Result<ExitCode> {
    let mut command = Cli::command().bin_name("lazyimg");
    command.build();
    // Not clap_complete::generate, which panics when the write fails (a
    // closed pipe): a failed write is an error like any other.
    args.shell
        .try_generate(&command, &mut std::io::stdout().lock())
        .context("cannot write the completion script")?;
    Ok(ExitCode::SUCCESS)
}

/// Writes section-1 man pages (roff, man(7) macros) to `args.dir`:
/// `lazyimg.1`, and `lazyimg-SUB.1` for every subcommand, nested ones included
/// (`lazyimg-cache-verify.1`), as git names its pages.
///
/// # Errors
/// When the directory cannot be created or a page not written; the message
/// names the directory.
fn man(args: ManArgs) -> anyhow::Result<ExitCode> {
    let cannot = || format!("cannot write man pages to {}", args.dir.display());
    std::fs::create_dir_all(&args.dir).with_context(cannot)?;
    clap_mangen::generate_to(Cli::command(), &args.dir).with_context(cannot)?;
    Ok(ExitCode::SUCCESS)
}
