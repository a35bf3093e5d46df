//! ByteStream Write and Read of one large blob.
//!
//! Every run writes a blob no server has seen (the first 16 bytes are a fresh
//! random nonce), so a write is never short-circuited by "already present".
//! The digest is computed before the clock starts. A write is timed from the
//! call until the server's response (so it includes the server's hashing,
//! fsync and rename); a read from the call until the last byte arrived. The
//! client does not hash what it reads unless `--verify` is given.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use rand::RngCore;
use rbe_proto::bytestream::{byte_stream_client::ByteStreamClient, ReadRequest, WriteRequest};
use rbe_proto::resource::{read_name, write_name, Compressor};
use rbe_proto::{Digest, DigestFunction};

use crate::report::{median, mibs, Json};
use crate::{connect, Target, MAX_MESSAGE};

/// Digest function choice on the command line.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Function {
    /// SHA-256.
    Sha256,
    /// BLAKE3.
    Blake3,
}

impl Function {
    fn digest_function(self) -> DigestFunction {
        match self {
            Function::Sha256 => DigestFunction::Sha256,
            Function::Blake3 => DigestFunction::Blake3,
        }
    }
}

/// `rbe-bench bytestream`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    target: Target,
    /// Blob size in MiB.
    #[arg(long, default_value_t = 256)]
    size_mib: u64,
    /// Digest function.
    #[arg(long, value_enum, default_value = "sha256")]
    function: Function,
    /// Number of write+read runs; medians are reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Write chunk size in KiB.
    #[arg(long, default_value_t = 1024)]
    chunk_kib: usize,
    /// Take the blob's bytes from this file (e.g. the one openssl hashed)
    /// instead of generating random bytes. The first 16 bytes are still
    /// replaced per run.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Hash what is read on the client and compare (costs client CPU).
    #[arg(long)]
    verify: bool,
    /// Skip the reads.
    #[arg(long)]
    no_read: bool,
    /// Before each run, time `openssl dgst -sha256 FILE` (needs --file) and
    /// report each run's throughput as a ratio of it: paired ratios are far
    /// less sensitive to a noisy machine than absolute figures.
    #[arg(long)]
    openssl: bool,
}

/// MiB/s of `openssl dgst -sha256` over `file` (its size is `size`).
fn openssl_mibs(file: &std::path::Path, size: u64) -> anyhow::Result<f64> {
    let t = Instant::now();
    let out = std::process::Command::new("openssl")
        .arg("dgst")
        .arg("-sha256")
        .arg(file)
        .output()
        .context("running openssl")?;
    let dt = t.elapsed();
    if !out.status.success() {
        bail!(
            "openssl dgst failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(mibs(size, dt))
}

fn load(a: &Args) -> anyhow::Result<Vec<u8>> {
    let size = usize::try_from(a.size_mib << 20).context("size")?;
    match &a.file {
        Some(p) => {
            let mut data = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            if data.len() < size {
                bail!(
                    "{} has {} bytes, fewer than --size-mib {}",
                    p.display(),
                    data.len(),
                    a.size_mib
                );
            }
            data.truncate(size);
            Ok(data)
        }
        None => {
            let mut data = vec![0u8; size];
            rand::rng().fill_bytes(&mut data);
            Ok(data)
        }
    }
}

/// Runs the benchmark and prints its result line.
pub async fn run(a: Args) -> anyhow::Result<()> {
    if a.size_mib == 0 || a.runs == 0 || a.chunk_kib == 0 {
        bail!("--size-mib, --runs and --chunk-kib must be positive");
    }
    let openssl_file = match (&a.file, a.openssl) {
        (Some(f), true) => Some(f.clone()),
        (None, true) => bail!("--openssl needs --file"),
        (_, false) => None,
    };
    let file_size = match &openssl_file {
        Some(f) => std::fs::metadata(f)
            .with_context(|| format!("{}", f.display()))?
            .len(),
        None => 0,
    };
    let func = a.function.digest_function();
    let mut data = Arc::new(load(&a)?);
    let size = data.len() as u64;
    let chunk = a.chunk_kib << 10;

    // In-process single-threaded hashing speed of the same bytes: the floor
    // any verifying server has to pay, independent of openssl.
    let t = Instant::now();
    let _ = Digest::of(func, &data);
    let local_hash = mibs(size, t.elapsed());
    println!(
        "bytestream {} {} MiB via {}: client-side {} hashing {local_hash:.0} MiB/s",
        a.target.label,
        a.size_mib,
        a.target.endpoint,
        func.name()
    );

    let channel = connect(&a.target.endpoint).await?;
    let mut client = ByteStreamClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);

    let mut writes = Vec::new();
    let mut reads = Vec::new();
    let mut openssl = Vec::new();
    let (mut write_ratios, mut read_ratios) = (Vec::new(), Vec::new());
    for run in 0..a.runs {
        let ossl = match &openssl_file {
            Some(f) => Some(openssl_mibs(f, file_size)?),
            None => None,
        };
        {
            let buf = Arc::get_mut(&mut data).context("blob buffer still shared")?;
            rand::rng().fill_bytes(&mut buf[..16]);
        }
        let d = Digest::of(func, &data);

        // Write.
        let name = write_name(
            &a.target.instance,
            &uuid::Uuid::new_v4().to_string(),
            &d,
            Compressor::Identity,
        );
        let n_chunks = data.len().div_ceil(chunk);
        let src = Arc::clone(&data);
        let reqs = futures::stream::iter((0..n_chunks).map(move |i| {
            let lo = i * chunk;
            let hi = (lo + chunk).min(src.len());
            WriteRequest {
                resource_name: if i == 0 { name.clone() } else { String::new() },
                write_offset: lo as i64,
                finish_write: hi == src.len(),
                data: src[lo..hi].to_vec(),
            }
        }));
        let t = Instant::now();
        let resp = client
            .write(reqs)
            .await
            .with_context(|| format!("ByteStream.Write of {d}"))?
            .into_inner();
        let wt = t.elapsed();
        if resp.committed_size != size as i64 {
            bail!(
                "Write of {d}: committed_size {} instead of {size}",
                resp.committed_size
            );
        }
        writes.push(mibs(size, wt));
        if let Some(o) = ossl {
            openssl.push(o);
            write_ratios.push(mibs(size, wt) / o);
        }

        // Read.
        let mut rt_line = String::new();
        if !a.no_read {
            let t = Instant::now();
            let mut stream = client
                .read(ReadRequest {
                    resource_name: read_name(&a.target.instance, &d, Compressor::Identity),
                    read_offset: 0,
                    read_limit: 0,
                })
                .await
                .with_context(|| format!("ByteStream.Read of {d}"))?
                .into_inner();
            let mut got = 0u64;
            let mut hasher = a.verify.then(|| func.hasher());
            let mut messages = 0u64;
            while let Some(m) = stream
                .message()
                .await
                .with_context(|| format!("ByteStream.Read of {d}"))?
            {
                got += m.data.len() as u64;
                messages += 1;
                if let Some(h) = hasher.as_mut() {
                    h.update(&m.data);
                }
            }
            let rt = t.elapsed();
            if got != size {
                bail!("Read of {d}: got {got} bytes instead of {size}");
            }
            if let Some(h) = hasher {
                if h.finish() != d.hash {
                    bail!("Read of {d}: content does not match its digest");
                }
            }
            reads.push(mibs(size, rt));
            if let Some(o) = ossl {
                read_ratios.push(mibs(size, rt) / o);
            }
            rt_line = format!(
                ", read {:.0} MiB/s in {:.2} s ({messages} messages)",
                mibs(size, rt),
                rt.as_secs_f64()
            );
        }
        let ossl_line = ossl
            .map(|o| format!(" [openssl sha256 just before: {o:.0} MiB/s]"))
            .unwrap_or_default();
        println!(
            "  run {}: write {:.0} MiB/s in {:.2} s{rt_line}{ossl_line}",
            run + 1,
            mibs(size, wt),
            wt.as_secs_f64()
        );
    }
    let (wm, rm) = (median(&writes), median(&reads));
    println!(
        "  median: write {wm:.0} MiB/s ({:.2}x client hashing), read {rm:.0} MiB/s ({:.2}x)",
        wm / local_hash,
        rm / local_hash
    );
    if !openssl.is_empty() {
        println!(
            "  median of paired ratios vs openssl: write {:.2}, read {:.2} (openssl median {:.0} MiB/s)",
            median(&write_ratios),
            median(&read_ratios),
            median(&openssl)
        );
    }
    Json::new("bytestream")
        .s("label", &a.target.label)
        .s("endpoint", &a.target.endpoint)
        .s("function", func.name())
        .i("size_bytes", size)
        .i("chunk_bytes", chunk as u64)
        .i("runs", a.runs as u64)
        .b("client_verify", a.verify)
        .n("client_hash_mibs", local_hash)
        .a("write_mibs", &writes)
        .n("write_mibs_median", wm)
        .a("read_mibs", &reads)
        .n("read_mibs_median", rm)
        .a("openssl_mibs", &openssl)
        .n("openssl_mibs_median", median(&openssl))
        .a("write_ratio_vs_openssl", &write_ratios)
        .n("write_ratio_vs_openssl_median", median(&write_ratios))
        .a("read_ratio_vs_openssl", &read_ratios)
        .n("read_ratio_vs_openssl_median", median(&read_ratios))
        .print();
    Ok(())
}
