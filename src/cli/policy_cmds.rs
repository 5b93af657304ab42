//! `lazyimg policy check` and `lazyimg policy list`: the approved-image list, explained.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use oci_client::RegistryOperation;
use serde::Serialize;

use super::{Context, RegistryArgs};
use crate::digest::Digest;
use crate::policy::{self, Policy, Rule};
use crate::pull;

// Parsed once per process: boxing the large variant would save nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub(super) enum PolicyCommand {
    /// Say whether an image may be pulled, mounted or run here, and which rule
    /// decides (exit status 0 approved, 1 not).
    #[command(after_help = "Examples:\n  \
        lazyimg policy check ghcr.io/example-lab/cuda-sample:nbody-cuda11.7.1\n  \
        lazyimg policy check --json tre-ghcr-proxy.nsh.loc:5000/example-lab/cuda-sample@sha256:…\n\n\
        A tag under a rule that pins a digest is resolved on the registry to check it;\n\
        --offline checks the name only.")]
    Check(CheckArgs),
    /// Show the approved list's rules with their notes.
    #[command(after_help = "Examples:\n  lazyimg policy list\n  lazyimg policy list --json")]
    List(ListArgs),
}

#[derive(Args, Debug)]
pub(super) struct CheckArgs {
    /// Image reference.
    reference: String,
    /// Print JSON instead of one line.
    #[arg(long)]
    json: bool,
    /// Never contact the registry: a digest a rule pins is not checked.
    #[arg(long)]
    offline: bool,
    #[command(flatten)]
    pub(super) registry: RegistryArgs,
}

#[derive(Args, Debug)]
pub(super) struct ListArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Decision {
    reference: String,
    /// The name the list is consulted under (differs for a site proxy's names).
    checked_as: String,
    approved: bool,
    list: Option<String>,
    rule: Option<Rule>,
    /// What the reference resolved to, when the registry was asked.
    digest: Option<Digest>,
    manifest: Option<Digest>,
    reason: String,
}

pub(super) async fn check(ctx: &Context, args: CheckArgs) -> anyhow::Result<ExitCode> {
    let image = ctx.image(&args.reference)?;
    let name = policy::canonical_name(&ctx.config, &image);
    let mut decision = Decision {
        reference: image.to_string(),
        checked_as: name.to_string(),
        approved: true,
        list: None,
        rule: None,
        digest: None,
        manifest: None,
        reason: String::new(),
    };
    match policy::list_path(&ctx.config) {
        None => {
            decision.reason = format!(
                "no approved list is configured ({}): every image is allowed",
                not_configured(ctx)
            );
        }
        Some(path) => {
            decision.list = Some(path.display().to_string());
            let list = Policy::load(&path)?;
            match list.check_name(&name) {
                Err(refusal) => {
                    decision.approved = false;
                    decision.reason = refusal.to_string();
                }
                Ok(approval) if approval.required_digests().is_empty() || args.offline => {
                    decision.rule = Some(approval.rule().clone());
                    decision.reason = approved_by(&approval.list, &approval.explain(), &image);
                }
                Ok(approval) => {
                    let registry = ctx.registry(&image, &args.registry)?;
                    registry
                        .authenticate(&image.source, RegistryOperation::Pull)
                        .await?;
                    let resolved =
                        pull::resolve(&registry, &image, &ctx.platform(&args.registry)).await?;
                    let (digest, manifest) = (resolved.digest, resolved.manifest_digest);
                    decision.digest = Some(digest);
                    decision.manifest = Some(manifest);
                    match approval.check_resolved(&digest, &manifest) {
                        Ok(()) => {
                            decision.rule = approval.rule_for(&digest, &manifest).cloned();
                            let why = approval
                                .explain_resolved(&digest, &manifest)
                                .unwrap_or_else(|| approval.explain());
                            decision.reason = approved_by(&approval.list, &why, &image);
                        }
                        Err(refusal) => {
                            decision.approved = false;
                            decision.reason = refusal.to_string();
                        }
                    }
                }
            }
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&decision)?);
    } else {
        println!("{}", decision.reason);
    }
    Ok(if decision.approved {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn approved_by(list: &std::path::Path, why: &str, image: &crate::reference::ImageRef) -> String {
    format!("{image} is approved by the list {} ({why})", list.display())
}

fn not_configured(ctx: &Context) -> String {
    match &ctx.config.source {
        Some(path) => format!("approved_images is not set in {}", path.display()),
        None => "no configuration file, so approved_images is not set".to_string(),
    }
}

#[derive(Serialize)]
struct Listing {
    list: Option<String>,
    rules: Vec<Rule>,
}

pub(super) fn list(ctx: &Context, args: ListArgs) -> anyhow::Result<ExitCode> {
    let Some(path) = policy::list_path(&ctx.config) else {
        if args.json {
            let listing = Listing {
                list: None,
                rules: Vec::new(),
            };
            println!("{}", serde_json::to_string_pretty(&listing)?);
        } else {
            eprintln!(
                "no approved list is configured ({}): every image is allowed",
                not_configured(ctx)
            );
        }
        return Ok(ExitCode::SUCCESS);
    };
    let list = Policy::load(&path)?;
    if args.json {
        let listing = Listing {
            list: Some(path.display().to_string()),
            rules: list.rules,
        };
        println!("{}", serde_json::to_string_pretty(&listing)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{}: {} rule{}{}",
        path.display(),
        list.rules.len(),
        if list.rules.len() == 1 { "" } else { "s" },
        if list.rules.is_empty() {
            " (no image is approved)"
        } else {
            ""
        }
    );
    for rule in &list.rules {
        println!("{}: {}", rule.label(), rule.repository);
        println!(
            "    tags:   {}",
            rule.tags
                .as_ref()
                .map_or("(any)".to_string(), |t| t.join(", "))
        );
        println!(
            "    digest: {}",
            rule.digest.map_or("(any)".to_string(), |d| d.to_string())
        );
        if let Some(note) = &rule.note {
            println!("    note:   {note}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
