//! Uploading an action's outputs, stdout and stderr to rbe-casd, and
//! building the ActionResult's output lists (directories as Tree messages).
//!
//! Small blobs are gathered into BatchUpdateBlobs calls; large ones are
//! hashed, then streamed with ByteStream. Files are read through the
//! handles `rbe-exec` opened without following symlinks.

use std::collections::HashSet;
use std::io::Read;

use anyhow::Context;
use prost::Message;
use rbe_exec::{CollectedEntry, Output, OutputKind, TreeEvent, TreeWalk};
use rbe_proto::bytestream::{byte_stream_client::ByteStreamClient, WriteRequest};
use rbe_proto::reapi::{
    batch_update_blobs_request,
    content_addressable_storage_client::ContentAddressableStorageClient, BatchUpdateBlobsRequest,
    Directory, DirectoryNode, FileNode, SymlinkNode, Tree,
};
use rbe_proto::resource::{self, Compressor};
use rbe_proto::{Digest, DigestFunction};
use tonic::transport::Channel;

/// Blobs up to this size travel in batches.
const SMALL: u64 = 1 << 20;
/// ByteStream message size for large blobs.
const CHUNK: usize = 1 << 20;
/// A batch is sent once it holds this much.
const BATCH_BYTES: usize = 3 << 20;

/// Sends blobs to casd.
pub struct Uploader {
    channel: Channel,
    instance: String,
    function: DigestFunction,
    pending: Vec<(Digest, Vec<u8>)>,
    pending_bytes: usize,
}

impl Uploader {
    pub fn new(channel: Channel, instance: String, function: DigestFunction) -> Self {
        Uploader {
            channel,
            instance,
            function,
            pending: Vec::new(),
            pending_bytes: 0,
        }
    }

    /// Queues bytes for upload; returns their digest.
    pub async fn bytes(&mut self, data: Vec<u8>) -> anyhow::Result<Digest> {
        let d = Digest::of(self.function, &data);
        if data.len() as u64 > SMALL {
            self.stream(d, data).await?;
            return Ok(d);
        }
        self.pending_bytes += data.len();
        self.pending.push((d, data));
        if self.pending_bytes >= BATCH_BYTES {
            self.flush().await?;
        }
        Ok(d)
    }

    /// Uploads a collected file; returns its digest.
    pub async fn entry(&mut self, e: &CollectedEntry) -> anyhow::Result<Digest> {
        let file = e
            .open()
            .with_context(|| format!("opening output {}", e.rel_path))?;
        self.file(file, &e.rel_path).await
    }

    /// Uploads a file's content without holding more than one chunk of a
    /// large file in memory: it is hashed in one pass and streamed in a
    /// second, both from the same open descriptor.
    pub async fn file(&mut self, mut file: std::fs::File, name: &str) -> anyhow::Result<Digest> {
        let size = file
            .metadata()
            .with_context(|| format!("stat {name}"))?
            .len();
        if size <= SMALL {
            let data = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
                let mut v = Vec::with_capacity(size as usize);
                file.read_to_end(&mut v)?;
                Ok(v)
            })
            .await?
            .with_context(|| format!("reading {name}"))?;
            return self.bytes(data).await;
        }
        let f = self.function;
        let (d, file) =
            tokio::task::spawn_blocking(move || -> std::io::Result<(Digest, std::fs::File)> {
                Ok((Digest::of_reader(f, &mut file)?, file))
            })
            .await?
            .with_context(|| format!("hashing {name}"))?;
        self.stream_file(d, file)
            .await
            .with_context(|| format!("uploading {name}"))?;
        Ok(d)
    }

    async fn stream_file(&mut self, d: Digest, mut file: std::fs::File) -> anyhow::Result<()> {
        use std::io::{Seek, SeekFrom};
        let name = resource::write_name(
            &self.instance,
            &uuid::Uuid::new_v4().to_string(),
            &d,
            Compressor::Identity,
        );
        let (tx, rx) = tokio::sync::mpsc::channel::<WriteRequest>(2);
        let size = d.size;
        let reader = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            file.seek(SeekFrom::Start(0))?;
            let mut off = 0u64;
            loop {
                let mut buf = vec![0u8; CHUNK];
                let n = file.read(&mut buf)?;
                buf.truncate(n);
                let last = off + n as u64 >= size || n == 0;
                let msg = WriteRequest {
                    resource_name: if off == 0 {
                        name.clone()
                    } else {
                        String::new()
                    },
                    write_offset: off as i64,
                    finish_write: last,
                    data: buf,
                };
                if tx.blocking_send(msg).is_err() || last {
                    return Ok(());
                }
                off += n as u64;
            }
        });
        let r = ByteStreamClient::new(self.channel.clone())
            .max_encoding_message_size(4 << 20)
            .write(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await;
        reader.await??;
        r?;
        Ok(())
    }

    async fn stream(&mut self, d: Digest, data: Vec<u8>) -> anyhow::Result<()> {
        let name = resource::write_name(
            &self.instance,
            &uuid::Uuid::new_v4().to_string(),
            &d,
            Compressor::Identity,
        );
        let total = data.len();
        let msgs: Vec<WriteRequest> = data
            .chunks(CHUNK)
            .enumerate()
            .map(|(i, c)| WriteRequest {
                resource_name: if i == 0 { name.clone() } else { String::new() },
                write_offset: (i * CHUNK) as i64,
                finish_write: i * CHUNK + c.len() == total,
                data: c.to_vec(),
            })
            .collect();
        ByteStreamClient::new(self.channel.clone())
            .max_encoding_message_size(4 << 20)
            .write(futures::stream::iter(msgs))
            .await
            .with_context(|| format!("uploading {d}"))?;
        Ok(())
    }

    /// Sends what is queued.
    pub async fn flush(&mut self) -> anyhow::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let req = BatchUpdateBlobsRequest {
            instance_name: self.instance.clone(),
            requests: self
                .pending
                .drain(..)
                .map(|(d, data)| batch_update_blobs_request::Request {
                    digest: Some(d.to_reapi()),
                    data,
                    compressor: 0,
                })
                .collect(),
            digest_function: self.function.to_reapi(),
        };
        self.pending_bytes = 0;
        let r = ContentAddressableStorageClient::new(self.channel.clone())
            .max_encoding_message_size(8 << 20)
            .batch_update_blobs(req)
            .await
            .context("uploading outputs")?
            .into_inner();
        for resp in r.responses {
            if let Some(st) = resp.status.filter(|s| s.code != 0) {
                anyhow::bail!("casd refused an output blob: {}", st.message);
            }
        }
        Ok(())
    }
}

/// A directory whose entries are still coming.
#[derive(Default)]
struct DirBuild {
    name: String,
    files: Vec<FileNode>,
    dirs: Vec<DirectoryNode>,
    symlinks: Vec<SymlinkNode>,
}

/// Uploads an output directory while walking it and returns its Tree's
/// digest. Each Directory message is finished when the walk leaves it, so
/// only the directories on the current path are open (names, not paths),
/// and each file is read once, as it comes.
pub async fn upload_tree(up: &mut Uploader, walk: &mut TreeWalk) -> anyhow::Result<Digest> {
    let mut open: Vec<DirBuild> = Vec::new();
    let mut children: Vec<Directory> = Vec::new();
    let mut seen = HashSet::new();
    let mut root = None;
    while let Some(ev) = walk.next_event()? {
        match ev {
            TreeEvent::Enter(e) => open.push(DirBuild {
                name: e.map(|e| e.rel_path).unwrap_or_default(),
                ..DirBuild::default()
            }),
            TreeEvent::Entry(e) => {
                let Some(cur) = open.last_mut() else {
                    anyhow::bail!("output walk: an entry outside any directory");
                };
                match &e.kind {
                    OutputKind::File { executable } => {
                        let executable = *executable;
                        let d = up.entry(&e).await?;
                        let Some(cur) = open.last_mut() else {
                            anyhow::bail!("output walk: an entry outside any directory");
                        };
                        cur.files.push(FileNode {
                            name: e.rel_path,
                            digest: Some(d.to_reapi()),
                            is_executable: executable,
                            node_properties: None,
                        });
                    }
                    OutputKind::Symlink { target } => cur.symlinks.push(SymlinkNode {
                        name: e.rel_path.clone(),
                        target: target.clone(),
                        node_properties: None,
                    }),
                    OutputKind::Directory => {
                        anyhow::bail!("output walk: a directory outside Enter")
                    }
                }
            }
            TreeEvent::Leave => {
                let Some(mut b) = open.pop() else {
                    anyhow::bail!("output walk: unbalanced Leave");
                };
                b.files.sort_by(|a, c| a.name.cmp(&c.name));
                b.symlinks.sort_by(|a, c| a.name.cmp(&c.name));
                b.dirs.sort_by(|a, c| a.name.cmp(&c.name));
                let dir = Directory {
                    files: b.files,
                    directories: b.dirs,
                    symlinks: b.symlinks,
                    node_properties: None,
                };
                let d = Digest::of(up.function, &dir.encode_to_vec());
                match open.last_mut() {
                    Some(parent) => {
                        parent.dirs.push(DirectoryNode {
                            name: b.name,
                            digest: Some(d.to_reapi()),
                        });
                        // Each distinct directory once.
                        if seen.insert(d) {
                            children.push(dir);
                        }
                    }
                    None => root = Some(dir),
                }
            }
        }
    }
    let tree = Tree {
        root: Some(root.context("output walk ended without its root")?),
        children,
    };
    up.bytes(tree.encode_to_vec()).await
}

/// What one declared output turned out to be.
pub enum Found {
    File { digest: Digest, executable: bool },
    Directory { tree: Digest },
    Symlink { target: String },
}

/// Uploads one output.
pub async fn upload(up: &mut Uploader, o: Output) -> anyhow::Result<Found> {
    Ok(match o {
        Output::File(e) => {
            let executable = matches!(e.kind, OutputKind::File { executable: true });
            Found::File {
                digest: up.entry(&e).await?,
                executable,
            }
        }
        Output::Symlink { target } => Found::Symlink { target },
        Output::Directory(mut w) => Found::Directory {
            tree: upload_tree(up, &mut w).await?,
        },
    })
}
