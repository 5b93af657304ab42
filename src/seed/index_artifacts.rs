//! Seeding, then indexing: after an image is pushed to the site registry,
//! lazyimg's index artifact goes beside it, so GPU nodes mount it lazily.

use super::{Plan, SeedReport, Seeder};
use crate::config::SeedMode;
use crate::error::Result;
use crate::image::{self, DescriptorExt, LayerFormat, Manifest};
use crate::lazy::index_artifact;
use crate::reference::ImageRef;
use crate::registry::RegistryClient;
use crate::signing::IndexSigner;
use crate::store::Store;

impl Seeder<'_> {
    /// [`copy`](Self::copy), then (pushing) a lazyimg index artifact for each
    /// platform manifest, listed in the report. A pull-through proxy takes no
    /// pushes; an index that cannot be made costs only laziness, never the seed.
    pub async fn copy_and_index(
        &self,
        plan: &Plan,
        target: &ImageRef,
        mode: SeedMode,
    ) -> Result<SeedReport> {
        let mut report = self.copy(plan, target, mode).await?;
        if mode == SeedMode::Push {
            report.lazy_indexes =
                push_index_artifacts(self.store, self.target, target, plan, self.signer).await;
        }
        Ok(report)
    }
}

/// Builds and pushes a lazyimg index for every platform manifest of `plan` that
/// has gzip or tar layers without a table of contents; returns the artifacts.
async fn push_index_artifacts(
    store: &Store,
    target_client: &RegistryClient,
    target: &ImageRef,
    plan: &Plan,
    signer: Option<&IndexSigner>,
) -> Vec<String> {
    let mut pushed = Vec::new();
    for document in std::iter::once(&plan.top).chain(&plan.children) {
        let Ok(Manifest::Image(manifest)) = Manifest::parse(&document.bytes, "seeded manifest")
        else {
            continue;
        };
        let result = async {
            let config = image::parse_config(
                store.require(&manifest.config().sha256()?)?.bytes(),
                "seeded image config",
            )?;
            let diff_ids = image::diff_ids(&config, "seeded image config")?;
            let mut built = Vec::new();
            for (layer, diff_id) in manifest.layers().iter().zip(&diff_ids) {
                if matches!(LayerFormat::of(layer), LayerFormat::Gzip | LayerFormat::Tar) {
                    let index = tokio::task::block_in_place(|| {
                        index_artifact::build_layer(store, layer, diff_id)
                    })?;
                    built.extend(index);
                }
            }
            if built.is_empty() {
                return Ok(None);
            }
            tokio::task::block_in_place(|| {
                index_artifact::check_tree(store, &target.to_string(), manifest.layers(), &built)
            })?;
            let subject = image::descriptor(
                &document.media_type,
                &document.digest,
                document.bytes.len() as u64,
                Default::default(),
            );
            index_artifact::push(store, target_client, target, &subject, &built, None, signer)
                .await
                .map(Some)
        }
        .await;
        match result {
            Ok(Some(digest)) => pushed.push(digest.to_string()),
            Ok(None) => {}
            Err(e) => tracing::warn!(
                "{target}: no lazyimg index for {} (mounts will fetch its layers whole): {e}",
                document.digest
            ),
        }
    }
    pushed
}
