//! `lazyimg key`: the site's index-signing keys.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::signing;

#[derive(Subcommand, Debug)]
pub(super) enum KeyCommand {
    /// Make a new ed25519 key pair for signing lazyimg indexes: DIR/index.key
    /// (private, mode 0600) and DIR/index.pub; existing files are never replaced.
    #[command(after_help = "Example:\n  \
        lazyimg key generate /etc/lazyimg/keys\n\n\
        Then, for the seeding account: [index_signing] key_file = \"/etc/lazyimg/keys/index.key\";\n\
        on every mounting machine: trusted_index_keys = [\"/etc/lazyimg/keys/index.pub\"].")]
    Generate(GenerateArgs),
}

#[derive(Args, Debug)]
pub(super) struct GenerateArgs {
    /// Directory to write index.key and index.pub into (created if missing).
    dir: PathBuf,
}

pub(super) fn generate(args: GenerateArgs) -> anyhow::Result<ExitCode> {
    let key_id = signing::generate(&args.dir)?;
    eprintln!(
        "wrote {} and {} (key {key_id})",
        args.dir.join(signing::PRIVATE_KEY_FILE).display(),
        args.dir.join(signing::PUBLIC_KEY_FILE).display()
    );
    println!("{key_id}");
    Ok(ExitCode::SUCCESS)
}
