//! Seeding, then indexing: after an image is pushed to the site registry,
//! lazyimg's index artifact goes beside it, and into the site's index store
//! when one is configured, so GPU nodes mount it lazily.

use super::{Plan, SeedReport, Seeder};
use crate::config::SeedMode;
use crate::digest::Digest;
use crate::error::Result;
use crate::image::{self, Descriptor, DescriptorExt, LayerFormat, Manifest};
use crate::lazy::index_artifact::{self, BuiltLayer};
use crate::reference::ImageRef;
use crate::registry::RegistryClient;
use crate::store::Store;

impl Seeder<'_> {
    /// [`copy`](Self::copy), then a lazyimg index artifact for each platform
    /// manifest: pushed beside the image (push mode; a pull-through proxy
    /// takes no pushes) and into the index store (any mode), listed in the
    /// report. An index that cannot be made or pushed costs only laziness,
    /// never the seed.
    pub async fn copy_and_index(
        &self,
        plan: &Plan,
        target: &ImageRef,
        mode: SeedMode,
    ) -> Result<SeedReport> {
        let mut report = self.copy(plan, target, mode).await?;
        let beside = (mode == SeedMode::Push).then_some((self.target, target));
        let in_store = self.index_store.map(|s| (s.client.as_ref(), &s.image));
        if beside.is_none() && in_store.is_none() {
            return Ok(report);
        }
        if in_store.is_some() && self.signer.is_none() {
            tracing::warn!(
                "{target}: no [index_signing] key: mounting machines use indexes from the index \
                 store only when signed by a key they trust"
            );
        }
        for document in std::iter::once(&plan.top).chain(&plan.children) {
            let Ok(Manifest::Image(manifest)) = Manifest::parse(&document.bytes, "seeded manifest")
            else {
                continue;
            };
            let built = match self.fetch_for_indexing(target, &manifest).await {
                Ok(()) => build_indexes(self.store, target, &manifest),
                Err(e) => Err(e),
            };
            let built = match built {
                Ok(built) if built.is_empty() => continue,
                Ok(built) => built,
                Err(e) => {
                    tracing::warn!(
                        "{target}: no lazyimg index for {} (mounts will fetch its layers whole): {e}",
                        document.digest
                    );
                    continue;
                }
            };
            let subject = image::descriptor(
                &document.media_type,
                &document.digest,
                document.bytes.len() as u64,
                Default::default(),
            );
            if let Some((client, at)) = beside
                && let Some(digest) = self.push_index(client, at, &subject, &built).await
            {
                report.lazy_indexes.push(digest.to_string());
            }
            if let Some((client, at)) = in_store
                && let Some(digest) = self.push_index(client, at, &subject, &built).await
            {
                let place = format!("{}/{}", at.source.registry(), at.source.repository());
                report.stored_indexes.push(format!("{place}@{digest}"));
            }
        }
        Ok(report)
    }

    /// Brings into the local cache what indexing `manifest` reads (its config
    /// and its gzip and tar layers) that the copy did not: blobs the target
    /// already held were skipped, not downloaded. Fetched from the target,
    /// which holds them all now, each verified against its digest.
    async fn fetch_for_indexing(
        &self,
        target: &ImageRef,
        manifest: &image::ImageManifest,
    ) -> Result<()> {
        let indexed = manifest
            .layers()
            .iter()
            .filter(|l| matches!(LayerFormat::of(l), LayerFormat::Gzip | LayerFormat::Tar));
        for blob in std::iter::once(manifest.config()).chain(indexed) {
            let what = format!("{} of {target} (to index it)", blob.digest());
            crate::pull::fetch_blob(
                self.store,
                self.target,
                target,
                blob,
                (&what, &what),
                &crate::pull::Silent,
            )
            .await?;
        }
        Ok(())
    }

    /// Pushes one image manifest's index to repository `at` of `client`,
    /// signed if the seeder signs; a failure is a warning.
    async fn push_index(
        &self,
        client: &RegistryClient,
        at: &ImageRef,
        subject: &Descriptor,
        built: &[BuiltLayer],
    ) -> Option<Digest> {
        index_artifact::push(self.store, client, at, subject, built, None, self.signer)
            .await
            .inspect_err(|e| {
                tracing::warn!(
                    "{}/{}: cannot push the lazyimg index of {} there: {e}",
                    at.source.registry(),
                    at.source.repository(),
                    subject.digest()
                );
            })
            .ok()
    }
}

/// The lazyimg indexes of `manifest`'s gzip and tar layers without a table
/// of contents (none: nothing to index), after checking its layers merge.
fn build_indexes(
    store: &Store,
    target: &ImageRef,
    manifest: &image::ImageManifest,
) -> Result<Vec<BuiltLayer>> {
    let config = image::parse_config(
        store.require(&manifest.config().sha256()?)?.bytes(),
        "seeded image config",
    )?;
    let diff_ids = image::diff_ids(&config, "seeded image config")?;
    let mut built = Vec::new();
    for (layer, diff_id) in manifest.layers().iter().zip(&diff_ids) {
        if matches!(LayerFormat::of(layer), LayerFormat::Gzip | LayerFormat::Tar) {
            let index =
                tokio::task::block_in_place(|| index_artifact::build_layer(store, layer, diff_id))?;
            built.extend(index);
        }
    }
    if !built.is_empty() {
        tokio::task::block_in_place(|| {
            index_artifact::check_tree(store, &target.to_string(), manifest.layers(), &built)
        })?;
    }
    Ok(built)
}
