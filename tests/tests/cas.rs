//! CAS and ByteStream through rbe-frontend and rbe-casd: real binaries, real
//! gRPC over a real TCP port and a real Unix socket.

use futures::StreamExt;
use rbe_proto::bytestream::{
    byte_stream_client::ByteStreamClient, QueryWriteStatusRequest, WriteRequest,
};
use rbe_proto::reapi::{
    capabilities_client::CapabilitiesClient,
    content_addressable_storage_client::ContentAddressableStorageClient, BatchReadBlobsRequest,
    Directory, DirectoryNode, FileNode, FindMissingBlobsRequest, GetCapabilitiesRequest,
    GetTreeRequest,
};
use rbe_proto::resource::{self, Compressor};
use rbe_proto::{Digest, DigestFunction};
use rbe_testkit::{client, pseudo_random, Stack};
use tonic::Code;

fn sha(data: &[u8]) -> Digest {
    Digest::of(DigestFunction::Sha256, data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_advertise_what_is_served() {
    let s = Stack::start().await;
    let caps = CapabilitiesClient::new(s.channel())
        .get_capabilities(GetCapabilitiesRequest {
            instance_name: String::new(),
        })
        .await
        .expect("caps")
        .into_inner();
    let cc = caps.cache_capabilities.expect("cache caps");
    assert_eq!(cc.digest_functions, vec![1, 9], "sha256 and blake3");
    assert_eq!(cc.supported_compressors, vec![1], "zstd");
    assert_eq!(cc.max_batch_total_size_bytes, 4 << 20);
    assert!(
        cc.action_cache_update_capabilities
            .expect("ac")
            .update_enabled
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytestream_roundtrip_both_functions_and_zstd() {
    let mut s = Stack::start().await;
    let ch = s.channel();
    let data = pseudo_random(3 << 20, 1);
    for f in DigestFunction::ALL {
        let d = Digest::of(f, &data);
        assert_eq!(
            client::find_missing(&ch, "", &[d]).await.expect("fmb"),
            vec![d]
        );
        assert_eq!(
            client::write(&ch, "", &d, &data, 64 << 10)
                .await
                .expect("write"),
            data.len() as i64
        );
        assert!(client::find_missing(&ch, "", &[d])
            .await
            .expect("fmb")
            .is_empty());
        assert_eq!(client::read(&ch, "", &d).await.expect("read"), data);
        // compressed read decompresses to the same bytes
        let name = resource::read_name("", &d, Compressor::Zstd);
        let z = client::read_name(&ch, &name, 0, 0)
            .await
            .expect("zstd read");
        assert_eq!(zstd::decode_all(z.as_slice()).expect("decode"), data);
        // ranged read
        let name = resource::read_name("", &d, Compressor::Identity);
        let part = client::read_name(&ch, &name, 1000, 5000)
            .await
            .expect("range");
        assert_eq!(part, &data[1000..6000]);
    }
    // compressed upload
    let text = b"compressible ".repeat(100_000);
    let d = sha(&text);
    let z = zstd::encode_all(text.as_slice(), 3).expect("zstd");
    let name = resource::write_name("", "u1", &d, Compressor::Zstd);
    let zlen = z.len() as i64;
    let msgs = vec![WriteRequest {
        resource_name: name.clone(),
        write_offset: 0,
        finish_write: true,
        data: z.clone(),
    }];
    let r = ByteStreamClient::new(ch.clone())
        .write(futures::stream::iter(msgs))
        .await
        .expect("zstd write");
    assert_eq!(
        r.into_inner().committed_size,
        zlen,
        "compressed bytes received"
    );
    // Once present, a compressed upload completes early with -1.
    let msgs = vec![WriteRequest {
        resource_name: name,
        write_offset: 0,
        finish_write: true,
        data: z,
    }];
    let r = ByteStreamClient::new(ch.clone())
        .write(futures::stream::iter(msgs))
        .await
        .expect("zstd write again");
    assert_eq!(r.into_inner().committed_size, -1);
    assert_eq!(client::read(&ch, "", &d).await.expect("read"), text);
    assert!(s.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_blob_is_always_present() {
    let mut s = Stack::start().await;
    let ch = s.channel();
    for f in DigestFunction::ALL {
        let d = Digest::empty(f);
        assert!(client::find_missing(&ch, "", &[d])
            .await
            .expect("fmb")
            .is_empty());
        assert!(client::read(&ch, "", &d).await.expect("read").is_empty());
    }
    assert!(s.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_digests_get_invalid_argument() {
    let mut s = Stack::start().await;
    let mut cas = ContentAddressableStorageClient::new(s.channel());
    let good = sha(b"x").hex();
    let cases: Vec<(i32, String, i64, &str)> = vec![
        (0, good.to_uppercase(), 1, "lowercase hex"),
        (0, good[..40].to_string(), 1, "SHA-1"),
        (0, format!("{good}00"), 1, "66 characters"),
        (0, good.clone(), -5, "negative"),
        (3, good.clone(), 1, "md5"),
        (2, good.clone(), 1, "sha1"),
        (77, good.clone(), 1, "not supported"),
    ];
    for (f, hash, size, needle) in cases {
        let req = FindMissingBlobsRequest {
            instance_name: String::new(),
            blob_digests: vec![rbe_proto::reapi::Digest {
                hash,
                size_bytes: size,
            }],
            digest_function: f,
        };
        let e = cas.find_missing_blobs(req).await.expect_err("must fail");
        assert_eq!(e.code(), Code::InvalidArgument, "{needle}: {e:?}");
        assert!(
            e.message().contains(needle),
            "message {:?} should mention {needle}",
            e.message()
        );
    }
    assert!(s.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_content_and_sizes_are_refused() {
    let mut s = Stack::start().await;
    let ch = s.channel();
    let d = sha(b"hello world");
    // wrong hash (same size)
    let e = client::write(&ch, "", &d, b"hello worle", 4)
        .await
        .expect_err("mismatch");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    // too short
    let e = client::write(&ch, "", &d, b"hello", 4)
        .await
        .expect_err("short");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    // too long
    let e = client::write(&ch, "", &d, b"hello world!!", 4)
        .await
        .expect_err("long");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    // batch: per-blob statuses
    let codes = client::batch_update(
        &ch,
        "",
        &[
            (d, b"hello world".to_vec()),
            (sha(b"a"), b"b".to_vec()),
            (sha(b"abc"), b"ab".to_vec()),
        ],
    )
    .await
    .expect("batch");
    assert_eq!(
        codes,
        vec![
            0,
            Code::InvalidArgument as i32,
            Code::InvalidArgument as i32
        ]
    );
    assert!(
        client::find_missing(&ch, "", &[sha(b"a"), sha(b"abc")])
            .await
            .expect("fmb")
            .len()
            == 2
    );
    assert!(s.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_resource_names() {
    let mut s = Stack::start().await;
    let ch = s.channel();
    let h = sha(b"x").hex();
    let mut bs = ByteStreamClient::new(ch.clone());
    for name in [
        format!("../../etc/passwd/blobs/{h}/1"),
        format!("a/../blobs/{h}/1"),
        format!("blobs/{h}/1/../../x"),
        format!("blobs/../{h}/1"),
        format!("blobs/{h}/-1"),
        format!("blobs/{h}/18446744073709551616"),
        format!("blobs/{}/1", "g".repeat(64)),
        format!("compressed-blobs/lz4/{h}/1"),
        format!("blobs/md5/{h}/1"),
        "blobs//1".to_string(),
        "\u{0}blobs".to_string(),
        "x/".repeat(3000),
        String::new(),
    ] {
        let e = client::read_name(&ch, &name, 0, 0)
            .await
            .expect_err("read must fail");
        assert_eq!(e.code(), Code::InvalidArgument, "read {name:?}: {e:?}");
        let msgs = vec![WriteRequest {
            resource_name: name.clone(),
            write_offset: 0,
            finish_write: true,
            data: b"x".to_vec(),
        }];
        let e = bs
            .write(futures::stream::iter(msgs))
            .await
            .expect_err("write must fail");
        assert_eq!(e.code(), Code::InvalidArgument, "write {name:?}: {e:?}");
    }
    // nothing was written anywhere outside the store
    assert!(!std::path::Path::new("/etc/passwd/blobs").exists());
    // reads past the end, limit on compressed reads
    let d = sha(b"hello");
    client::write(&ch, "", &d, b"hello", 2)
        .await
        .expect("write");
    let e = client::read_name(
        &ch,
        &resource::read_name("", &d, Compressor::Identity),
        6,
        0,
    )
    .await
    .expect_err("past end");
    assert_eq!(e.code(), Code::OutOfRange);
    let e = client::read_name(&ch, &resource::read_name("", &d, Compressor::Zstd), 0, 2)
        .await
        .expect_err("limit");
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = client::read(&ch, "", &sha(b"absent"))
        .await
        .expect_err("absent");
    assert_eq!(e.code(), Code::NotFound);
    assert!(s.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_write_resumes_and_wrong_offset_is_refused() {
    let mut s = Stack::start().await;
    let ch = s.channel();
    let data = pseudo_random(1 << 20, 7);
    let d = sha(&data);
    let name = resource::write_name("", "resume-1", &d, Compressor::Identity);
    // First half, then the client goes away without finish_write.
    {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut bs = ByteStreamClient::new(ch.clone());
        let call = tokio::spawn(async move {
            bs.write(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
        });
        tx.send(WriteRequest {
            resource_name: name.clone(),
            write_offset: 0,
            finish_write: false,
            data: data[..1 << 19].to_vec(),
        })
        .await
        .expect("send");
        // Wait until casd has committed the half, then cut the stream.
        let mut committed = 0;
        for _ in 0..200 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            if let Ok(r) = ByteStreamClient::new(ch.clone())
                .query_write_status(QueryWriteStatusRequest {
                    resource_name: name.clone(),
                })
                .await
            {
                committed = r.into_inner().committed_size;
                break;
            }
            if call.is_finished() {
                break;
            }
        }
        drop(tx);
        let _ = call.await;
        if committed == 0 {
            let r = ByteStreamClient::new(ch.clone())
                .query_write_status(QueryWriteStatusRequest {
                    resource_name: name.clone(),
                })
                .await
                .expect("status after disconnect");
            committed = r.into_inner().committed_size;
        }
        assert_eq!(committed, 1 << 19);
    }
    // A resume at the wrong offset is refused and keeps the upload.
    let mut bs = ByteStreamClient::new(ch.clone());
    let wrong = vec![WriteRequest {
        resource_name: name.clone(),
        write_offset: 12345,
        finish_write: true,
        data: data[12345..].to_vec(),
    }];
    let e = bs
        .write(futures::stream::iter(wrong))
        .await
        .expect_err("wrong offset");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().contains("524288"),
        "names the committed size: {}",
        e.message()
    );
    // Resume at the committed offset.
    let rest = vec![WriteRequest {
        resource_name: name.clone(),
        write_offset: 1 << 19,
        finish_write: true,
        data: data[1 << 19..].to_vec(),
    }];
    let r = bs.write(futures::stream::iter(rest)).await.expect("resume");
    assert_eq!(r.into_inner().committed_size, data.len() as i64);
    assert_eq!(client::read(&ch, "", &d).await.expect("read"), data);
    let q = bs
        .query_write_status(QueryWriteStatusRequest {
            resource_name: name,
        })
        .await
        .expect("status")
        .into_inner();
    assert!(q.complete);
    // Offsets must also be contiguous within one stream.
    let d2 = sha(b"abcdef");
    let msgs = vec![
        WriteRequest {
            resource_name: resource::write_name("", "u2", &d2, Compressor::Identity),
            write_offset: 0,
            finish_write: false,
            data: b"abc".to_vec(),
        },
        WriteRequest {
            resource_name: String::new(),
            write_offset: 4,
            finish_write: true,
            data: b"def".to_vec(),
        },
    ];
    let e = bs
        .write(futures::stream::iter(msgs))
        .await
        .expect_err("gap");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(s.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_of_one_blob() {
    let mut s = Stack::start().await;
    let ch = s.channel();
    let data = pseudo_random(2 << 20, 3);
    let d = sha(&data);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (ch, data) = (ch.clone(), data.clone());
        tasks.push(tokio::spawn(async move {
            client::write(&ch, "", &d, &data, 32 << 10).await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("join").expect("write"), data.len() as i64);
    }
    assert_eq!(client::read(&ch, "", &d).await.expect("read"), data);
    // A later writer completes early.
    assert_eq!(
        client::write(&ch, "", &d, &data, 1 << 20)
            .await
            .expect("again"),
        data.len() as i64
    );
    assert!(s.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_batches_are_refused() {
    let mut s = Stack::start().await;
    let ch = s.channel();
    let blobs: Vec<(Digest, Vec<u8>)> = (0..5u64)
        .map(|i| {
            let b = pseudo_random(1 << 20, i + 100);
            (sha(&b), b)
        })
        .collect();
    let e = client::batch_update(&ch, "", &blobs)
        .await
        .expect_err("too big");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("max_batch_total_size_bytes"));
    let mut cas = ContentAddressableStorageClient::new(ch.clone());
    let req = BatchReadBlobsRequest {
        instance_name: String::new(),
        digests: blobs.iter().map(|b| b.0.to_reapi()).collect(),
        acceptable_compressors: vec![],
        digest_function: 1,
    };
    let e = cas.batch_read_blobs(req).await.expect_err("too big");
    assert_eq!(e.code(), Code::InvalidArgument);
    // A request over the transport limit is refused by gRPC itself.
    let huge: Vec<(Digest, Vec<u8>)> = vec![(sha(&vec![0u8; 20 << 20]), vec![0u8; 20 << 20])];
    let e = client::batch_update(&ch, "", &huge)
        .await
        .expect_err("over message limit");
    assert!(
        matches!(
            e.code(),
            Code::ResourceExhausted | Code::InvalidArgument | Code::OutOfRange
        ),
        "{e:?}"
    );
    assert!(s.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_read_with_zstd() {
    let mut s = Stack::start().await;
    let ch = s.channel();
    let text = b"abcabcabc".repeat(1000);
    let d = sha(&text);
    client::batch_update(&ch, "", &[(d, text.clone())])
        .await
        .expect("put");
    let mut cas = ContentAddressableStorageClient::new(ch.clone());
    let r = cas
        .batch_read_blobs(BatchReadBlobsRequest {
            instance_name: String::new(),
            digests: vec![d.to_reapi(), sha(b"nope").to_reapi()],
            acceptable_compressors: vec![1],
            digest_function: 1,
        })
        .await
        .expect("read")
        .into_inner();
    assert_eq!(r.responses[0].compressor, 1);
    assert_eq!(
        zstd::decode_all(&r.responses[0].data[..]).expect("zstd"),
        text
    );
    assert_eq!(
        r.responses[1].status.as_ref().expect("status").code,
        Code::NotFound as i32
    );
    assert!(s.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_tree_pages_through_a_tree() {
    use prost::Message;
    let mut s = Stack::start().await;
    let ch = s.channel();
    // root -> 30 subdirectories, each with one file; one shared subdir twice.
    let file = sha(b"content");
    client::batch_update(&ch, "", &[(file, b"content".to_vec())])
        .await
        .expect("file");
    let mut subdirs = Vec::new();
    let mut blobs = Vec::new();
    for i in 0..30 {
        let dir = Directory {
            files: vec![FileNode {
                name: format!("f{i}"),
                digest: Some(file.to_reapi()),
                ..Default::default()
            }],
            ..Default::default()
        };
        let b = dir.encode_to_vec();
        let d = sha(&b);
        subdirs.push(DirectoryNode {
            name: format!("d{i:02}"),
            digest: Some(d.to_reapi()),
        });
        blobs.push((d, b));
    }
    let root = Directory {
        directories: subdirs,
        ..Default::default()
    };
    let rb = root.encode_to_vec();
    let rd = sha(&rb);
    blobs.push((rd, rb));
    client::batch_update(&ch, "", &blobs).await.expect("dirs");
    let mut cas = ContentAddressableStorageClient::new(ch.clone());
    let mut token = String::new();
    let mut total = 0;
    let mut pages = 0;
    loop {
        let mut st = cas
            .get_tree(GetTreeRequest {
                instance_name: String::new(),
                root_digest: Some(rd.to_reapi()),
                page_size: 7,
                page_token: token.clone(),
                digest_function: 1,
            })
            .await
            .expect("get_tree")
            .into_inner();
        // Take one page per call to exercise the token.
        let page = st.next().await.expect("a page").expect("ok");
        assert!(page.directories.len() <= 7);
        total += page.directories.len();
        pages += 1;
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(total, 31);
    assert_eq!(pages, 5);
    let e = cas
        .get_tree(GetTreeRequest {
            instance_name: String::new(),
            root_digest: Some(rd.to_reapi()),
            page_size: 7,
            page_token: "garbage".into(),
            digest_function: 1,
        })
        .await
        .expect_err("bad token");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(s.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zstd_bombs_and_lies_in_batches_are_refused() {
    let mut s = Stack::start().await;
    let ch = s.channel();
    let mut cas = ContentAddressableStorageClient::new(ch.clone());
    let bomb = zstd::encode_all(vec![0u8; 64 << 20].as_slice(), 19).expect("zstd");
    assert!(bomb.len() < 1 << 20);
    let huge = rbe_proto::reapi::Digest {
        hash: sha(b"x").hex(),
        size_bytes: 1 << 40,
    };
    for (digest, what) in [
        (huge, "claims 1 TiB"),
        (sha(&vec![0u8; 64 << 20]).to_reapi(), "64 MiB of zeros"),
    ] {
        let req = rbe_proto::reapi::BatchUpdateBlobsRequest {
            instance_name: String::new(),
            requests: vec![rbe_proto::reapi::batch_update_blobs_request::Request {
                digest: Some(digest),
                data: bomb.clone(),
                compressor: 1,
            }],
            digest_function: 1,
        };
        let e = cas.batch_update_blobs(req).await.expect_err(what);
        assert_eq!(e.code(), Code::InvalidArgument, "{what}: {e:?}");
    }
    // A small entry that lies about its size decompresses within the bound
    // and fails its own check.
    let text = b"hello hello hello".repeat(100);
    let z = zstd::encode_all(text.as_slice(), 3).expect("zstd");
    let mut d = sha(&text).to_reapi();
    d.size_bytes = 10;
    let req = rbe_proto::reapi::BatchUpdateBlobsRequest {
        instance_name: String::new(),
        requests: vec![rbe_proto::reapi::batch_update_blobs_request::Request {
            digest: Some(d),
            data: z,
            compressor: 1,
        }],
        digest_function: 1,
    };
    let r = cas
        .batch_update_blobs(req)
        .await
        .expect("batch")
        .into_inner();
    assert_eq!(
        r.responses[0].status.as_ref().expect("status").code,
        Code::InvalidArgument as i32
    );
    assert!(s.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_frame_zstd_upload_is_decoded_completely() {
    let mut s = Stack::start().await;
    let ch = s.channel();
    // Many frames in one message, decoding to well over the 1 MiB buffer.
    let data = pseudo_random(3 << 20, 99);
    let mut z = Vec::new();
    for part in data.chunks(100_000) {
        z.extend(zstd::encode_all(part, 1).expect("zstd"));
    }
    let d = sha(&data);
    let name = resource::write_name("", "frames", &d, Compressor::Zstd);
    let mut msgs = Vec::new();
    let mut off = 0usize;
    for c in z.chunks(1 << 20) {
        msgs.push(WriteRequest {
            resource_name: if off == 0 {
                name.clone()
            } else {
                String::new()
            },
            write_offset: off as i64,
            finish_write: off + c.len() == z.len(),
            data: c.to_vec(),
        });
        off += c.len();
    }
    ByteStreamClient::new(ch.clone())
        .max_encoding_message_size(8 << 20)
        .write(futures::stream::iter(msgs))
        .await
        .expect("write");
    assert_eq!(client::read(&ch, "", &d).await.expect("read"), data);
    assert!(s.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_upload_name_written_by_two_streams_at_once() {
    let mut s = Stack::start().await;
    let ch = s.channel();
    let data = pseudo_random(4 << 20, 5);
    let d = sha(&data);
    let name = resource::write_name("", "same-uuid", &d, Compressor::Identity);
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let (ch, name, data) = (ch.clone(), name.clone(), data.clone());
        tasks.push(tokio::spawn(async move {
            let msgs: Vec<WriteRequest> = data
                .chunks(64 << 10)
                .enumerate()
                .map(|(i, c)| WriteRequest {
                    resource_name: if i == 0 { name.clone() } else { String::new() },
                    write_offset: (i * (64 << 10)) as i64,
                    finish_write: (i + 1) * (64 << 10) >= data.len(),
                    data: c.to_vec(),
                })
                .collect();
            ByteStreamClient::new(ch)
                .write(futures::stream::iter(msgs))
                .await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.expect("join") {
            Ok(r) => {
                assert_eq!(r.into_inner().committed_size, data.len() as i64);
                ok += 1;
            }
            Err(e) => assert_eq!(e.code(), Code::Aborted, "the loser is told to retry: {e:?}"),
        }
    }
    assert!(ok >= 1);
    assert_eq!(client::read(&ch, "", &d).await.expect("read"), data);
    assert!(s.alive());
}
