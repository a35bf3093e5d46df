//! The size of an input tree, for `offload.max_transfer_bytes`: what a
//! host that has none of it would pull (each file and Directory blob
//! once). Measured by GetTree, on the origin from its own casd and on the
//! executor from the origin's peer CAS (so a claim in an Offer is checked
//! against the tree itself).

use std::collections::HashSet;

use prost::Message;
use rbe_proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use rbe_proto::reapi::{Directory, GetTreeRequest};
use rbe_proto::{Digest, DigestFunction};
use tonic::transport::Channel;
use tonic::Status;

/// Adds up the blobs of a tree once each, page by page.
#[derive(Default)]
pub struct TreeSize {
    seen: HashSet<(String, i64)>,
    /// Bytes so far.
    pub bytes: u64,
}

impl TreeSize {
    /// Counts one Directory of the tree: its own blob and its files.
    pub fn add(&mut self, f: DigestFunction, d: &Directory) {
        let blob = d.encode_to_vec();
        let own = Digest::of(f, &blob);
        self.count(own.hex(), own.size as i64);
        for file in &d.files {
            if let Some(fd) = &file.digest {
                self.count(fd.hash.clone(), fd.size_bytes);
            }
        }
    }

    fn count(&mut self, hash: String, size: i64) {
        if self.seen.insert((hash, size)) {
            self.bytes = self.bytes.saturating_add(u64::try_from(size).unwrap_or(0));
        }
    }
}

/// The input tree under `root`, by GetTree on `channel`; stops early
/// once it is over `limit` (the answer is then some size above it).
pub async fn measure(
    channel: Channel,
    instance: &str,
    f: DigestFunction,
    root: Digest,
    limit: u64,
    max_message: usize,
) -> Result<u64, Status> {
    let mut client =
        ContentAddressableStorageClient::new(channel).max_decoding_message_size(max_message);
    let mut size = TreeSize::default();
    let mut token = String::new();
    loop {
        let req = GetTreeRequest {
            instance_name: instance.to_owned(),
            root_digest: Some(root.to_reapi()),
            page_size: 0,
            page_token: std::mem::take(&mut token),
            digest_function: f.to_reapi(),
        };
        let mut pages = client.get_tree(req).await?.into_inner();
        while let Some(page) = pages.message().await? {
            for d in &page.directories {
                size.add(f, d);
            }
            if size.bytes > limit {
                return Ok(size.bytes);
            }
            token = page.next_page_token;
        }
        if token.is_empty() {
            return Ok(size.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rbe_proto::reapi::{DirectoryNode, FileNode};

    #[test]
    fn each_blob_counts_once() {
        let f = DigestFunction::Sha256;
        let file = |name: &str, body: &[u8]| FileNode {
            name: name.into(),
            digest: Some(Digest::of(f, body).to_reapi()),
            ..Default::default()
        };
        let leaf = Directory {
            files: vec![file("x", b"12345"), file("y", b"12345")],
            ..Default::default()
        };
        let leaf_blob = leaf.encode_to_vec();
        let root = Directory {
            files: vec![file("z", b"1234567890")],
            directories: vec![
                DirectoryNode {
                    name: "a".into(),
                    digest: Some(Digest::of(f, &leaf_blob).to_reapi()),
                },
                DirectoryNode {
                    name: "b".into(),
                    digest: Some(Digest::of(f, &leaf_blob).to_reapi()),
                },
            ],
            ..Default::default()
        };
        let mut s = TreeSize::default();
        // GetTree lists a directory as often as it occurs.
        for d in [&root, &leaf, &leaf] {
            s.add(f, d);
        }
        let expected = root.encoded_len() + leaf_blob.len() + 5 + 10;
        assert_eq!(s.bytes, expected as u64);
    }
}
