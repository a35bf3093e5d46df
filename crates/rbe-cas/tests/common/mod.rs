//! What the store test files share: opening a store in a directory and
//! where a blob's file lies in it.
// Each test binary that includes this module uses a different part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rbe_cas::{Store, StoreConfig};
use rbe_proto::{Digest, DigestFunction};

pub const F: DigestFunction = DigestFunction::Sha256;

/// A store of 1 GiB in `dir`, its index loaded.
pub fn open(dir: &Path) -> Arc<Store> {
    open_sized(dir, 1 << 30)
}

/// A store of `max` bytes in `dir` (watermarks 0.9 and 0.5), its index
/// loaded.
pub fn open_sized(dir: &Path, max: u64) -> Arc<Store> {
    let s = Store::open(StoreConfig {
        root: dir.to_path_buf(),
        max_size: max,
        high_watermark: 0.9,
        low_watermark: 0.5,
        verify_reads: true,
    })
    .expect("open");
    s.load_index().expect("load");
    s
}

/// Path of a blob's file in a store rooted at `dir`.
pub fn blob_path(dir: &Path, d: &Digest) -> PathBuf {
    let h = d.hex();
    dir.join("cas.v1")
        .join(d.function.name())
        .join(&h[..2])
        .join(h)
}
