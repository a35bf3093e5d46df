//! Building trees and moving them in and out of a casd, for the tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::Path;

use prost::Message;
use rbe_proto::casd::casd_client::CasdClient;
use rbe_proto::casd::MissingTreeRequest;
use rbe_proto::reapi::{Directory, DirectoryNode, FileNode};
use rbe_proto::{Digest, DigestFunction};
use rbe_testkit::{client, Casd};
use rbe_transfer::{Local, Source, Timeouts};
use tonic::transport::Channel;

pub const F: DigestFunction = DigestFunction::Sha256;

/// Distinct blobs, in the order first added.
#[derive(Default, Clone)]
pub struct Blobs(pub Vec<(Digest, Vec<u8>)>);

impl Blobs {
    pub fn add(&mut self, data: Vec<u8>) -> Digest {
        let d = Digest::of(F, &data);
        if !self.0.iter().any(|(x, _)| *x == d) {
            self.0.push((d, data));
        }
        d
    }

    /// A Directory of `files` and `dirs`, each list given in name order.
    pub fn dir(&mut self, files: &[(&str, Digest)], dirs: &[(&str, Digest)]) -> Digest {
        let d = Directory {
            files: files
                .iter()
                .map(|(n, d)| FileNode {
                    name: (*n).into(),
                    digest: Some(d.to_reapi()),
                    is_executable: false,
                    node_properties: None,
                })
                .collect(),
            directories: dirs
                .iter()
                .map(|(n, d)| DirectoryNode {
                    name: (*n).into(),
                    digest: Some(d.to_reapi()),
                })
                .collect(),
            ..Default::default()
        };
        self.add(d.encode_to_vec())
    }

    pub fn bytes(&self) -> u64 {
        self.0.iter().map(|(d, _)| d.size).sum()
    }

    pub fn get(&self, d: &Digest) -> Vec<u8> {
        self.0.iter().find(|(x, _)| x == d).unwrap().1.clone()
    }
}

/// Uploads blobs: small ones in batches, large ones with ByteStream.
pub async fn upload(ch: &Channel, blobs: &[(Digest, Vec<u8>)]) {
    let mut batch: Vec<(Digest, Vec<u8>)> = Vec::new();
    let mut bytes = 0u64;
    for (d, data) in blobs {
        if d.size > 1 << 20 {
            client::write(ch, "", d, data, 64 << 10).await.unwrap();
            continue;
        }
        if bytes + d.size > 2 << 20 || batch.len() >= 1000 {
            for code in client::batch_update(ch, "", &batch).await.unwrap() {
                assert_eq!(code, 0);
            }
            batch.clear();
            bytes = 0;
        }
        bytes += d.size;
        batch.push((*d, data.clone()));
    }
    if !batch.is_empty() {
        for code in client::batch_update(ch, "", &batch).await.unwrap() {
            assert_eq!(code, 0);
        }
    }
}

/// Every blob casd has of `blobs` reads back identical; returns how many
/// it has.
pub async fn check_stored(ch: &Channel, blobs: &Blobs) -> usize {
    let ds: Vec<Digest> = blobs.0.iter().map(|(d, _)| *d).collect();
    let missing = client::find_missing(ch, "", &ds).await.unwrap();
    let mut present = 0;
    for (d, data) in &blobs.0 {
        if missing.contains(d) {
            continue;
        }
        let back = client::read(ch, "", d).await.unwrap();
        assert!(back == *data, "{d} reads back different bytes");
        present += 1;
    }
    present
}

/// What casd's MissingTree lists for `root`.
pub async fn missing_tree(ch: &Channel, root: Digest) -> Vec<String> {
    let r = CasdClient::new(ch.clone())
        .max_decoding_message_size(64 << 20)
        .missing_tree(MissingTreeRequest {
            instance_name: String::new(),
            digest_function: F.to_reapi(),
            roots: vec![rbe_proto::casd::Digest {
                hash: root.hex(),
                size_bytes: root.size as i64,
            }],
        })
        .await
        .unwrap()
        .into_inner();
    r.missing_directories
        .iter()
        .chain(&r.missing_files)
        .map(|d| d.hash.clone())
        .collect()
}

pub async fn casd(dir: &Path) -> Casd {
    Casd::start(dir, "4GiB", "").await
}

/// A real casd as the source, over its socket.
pub async fn source_of(casd: &Casd) -> Source {
    let path = casd.layout.casd_socket();
    Source::new(
        casd.channel().await,
        format!("unix:{}", path.display()),
        "",
        Timeouts::default(),
    )
}

pub async fn local_of(casd: &Casd) -> Local {
    Local::new(casd.channel().await, "")
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}
