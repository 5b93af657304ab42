//! The site's index store (`[index_store]`): a registry the site runs where the
//! seeding step pushes each signed index, for images whose own registry takes
//! no pushes (a pull-through cache of ghcr.io). Mounting machines look there
//! as well as beside the image, and use what they find there only through a
//! trusted signature (or an approved-list pin).

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::Config;
use crate::digest::Digest;
use crate::error::Result;
use crate::reference::ImageRef;
use crate::registry::{ClientOptions, RegistryClient, credentials};
use crate::signing::TrustedKeys;

/// One image's place in the index store: repository `PREFIX/<the image's
/// repository>` of the store's registry, reached with its own credentials.
pub struct IndexStore {
    pub client: Arc<RegistryClient>,
    /// The image's repository in the store; its tag is a placeholder (indexes
    /// are found by the image manifest's digest).
    pub image: ImageRef,
}

impl IndexStore {
    /// Where `image`'s indexes go in the index store `config` names (`None`
    /// when it names none), with credentials from `auth_files`. Connects nowhere.
    ///
    /// # Errors
    /// [`crate::Error::Reference`] when `location` plus the repository is no
    /// image name; as [`credentials::lookup`] fails.
    pub fn for_image(
        config: &Config,
        auth_files: &[PathBuf],
        image: &ImageRef,
    ) -> Result<Option<IndexStore>> {
        let Some(store) = &config.index_store else {
            return Ok(None);
        };
        let text = format!(
            "{}/{}:lazyimg-index",
            store.location.trim_end_matches('/'),
            image.source.repository()
        );
        let at = ImageRef::parse(&text, config)?;
        let found = credentials::lookup(auth_files, &at.endpoint.host, at.source.repository())?;
        let client = RegistryClient::new(
            &at.endpoint,
            found.as_ref(),
            &ClientOptions::from_config(&config.network),
        )?;
        Ok(Some(IndexStore {
            client: Arc::new(client),
            image: at,
        }))
    }
}

/// Where a mount may take lazyimg indexes from, and which it trusts.
pub struct IndexSources {
    pub trust: TrustedKeys,
    /// The site's index store for this image, if configured.
    pub store: Option<IndexStore>,
}

impl IndexSources {
    /// For mounting `image`: the keys `trusted_index_keys` lists and the
    /// approved list's `pins` for it, and the index store `[index_store]` names.
    ///
    /// # Errors
    /// As [`TrustedKeys::load`] and [`IndexStore::for_image`] fail.
    pub fn for_image(
        config: &Config,
        auth_files: &[PathBuf],
        image: &ImageRef,
        pins: Vec<Digest>,
    ) -> Result<IndexSources> {
        Ok(IndexSources {
            trust: TrustedKeys::load(&config.trusted_index_keys)?.pinning(pins),
            store: IndexStore::for_image(config, auth_files, image)?,
        })
    }
}
