//! One client cannot stall the others: rbe-frontend forwards every client
//! to rbe-casd, so what one client holds open on the way (HTTP/2 windows,
//! streams, buffers) must not be what the next client needs.
//!
//! The stalled client here is a raw HTTP/2 client (the `h2` crate, no gRPC
//! library): it grants a 1 KiB window per stream and never releases any,
//! as a client that stops reading (or a malicious one) does. Real binaries,
//! real sockets; the bounds on time are there to detect a hang, nothing is
//! measured.

use std::time::Duration;

use bytes::{Buf, Bytes};
use futures::StreamExt as _;
use prost::Message;
use rbe_proto::bytestream::{byte_stream_client::ByteStreamClient, ReadRequest, WriteRequest};
use rbe_proto::reapi::{action_cache_client::ActionCacheClient, GetActionResultRequest};
use rbe_proto::resource::{self, Compressor};
use rbe_proto::{Digest, DigestFunction};
use rbe_testkit::{client, pseudo_random, Stack};
use tonic::Code;

/// How long a call may take before the test calls it hung.
const HANG: Duration = Duration::from_secs(20);
/// The per-stream window the stalled client grants, and never renews.
const STALLED_WINDOW: u32 = 1024;

fn sha(data: &[u8]) -> Digest {
    Digest::of(DigestFunction::Sha256, data)
}

/// A gRPC message frame: uncompressed flag, length, protobuf.
fn grpc_frame(msg: &impl Message) -> Bytes {
    let body = msg.encode_to_vec();
    let mut b = Vec::with_capacity(5 + body.len());
    b.push(0);
    b.extend_from_slice(&(body.len() as u32).to_be_bytes());
    b.extend_from_slice(&body);
    Bytes::from(b)
}

/// One raw HTTP/2 connection that grants `STALLED_WINDOW` bytes per stream.
/// Its connection task only keeps the connection alive: h2 never releases
/// received bytes by itself, so nothing is acknowledged unless the test
/// reads a body and releases capacity. A window size sent on the returned
/// channel becomes the connection's stream and connection windows (for a
/// client that resumes reading at a normal pace).
async fn stalled_connection(
    addr: &str,
) -> (
    h2::client::SendRequest<Bytes>,
    tokio::sync::mpsc::UnboundedSender<u32>,
) {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (send, mut conn) = h2::client::Builder::new()
        .initial_window_size(STALLED_WINDOW)
        .handshake::<_, Bytes>(tcp)
        .await
        .expect("HTTP/2 handshake");
    let (wtx, mut wrx) = tokio::sync::mpsc::unbounded_channel::<u32>();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = &mut conn => return,
                w = wrx.recv() => match w {
                    Some(w) => {
                        conn.set_target_window_size(w);
                        let _ = conn.set_initial_window_size(w);
                    }
                    None => {
                        let _ = conn.await;
                        return;
                    }
                },
            }
        }
    });
    (send, wtx)
}

/// Sends one unary-request gRPC call (`path`, one message) on `send` and
/// returns the response body once the response headers arrived.
async fn open_call(
    send: &h2::client::SendRequest<Bytes>,
    addr: &str,
    path: &str,
    msg: Bytes,
) -> h2::RecvStream {
    let mut ready = send.clone().ready().await.expect("stream slot");
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request");
    let (resp, mut body) = ready.send_request(req, false).expect("send_request");
    body.send_data(msg, true).expect("send_data");
    let resp = tokio::time::timeout(HANG, resp)
        .await
        .expect("response headers in time")
        .expect("response headers");
    assert_eq!(resp.status(), 200);
    resp.into_body()
}

async fn stalled_read(
    send: &h2::client::SendRequest<Bytes>,
    addr: &str,
    d: &Digest,
) -> h2::RecvStream {
    let req = ReadRequest {
        resource_name: resource::read_name("", d, Compressor::Identity),
        read_offset: 0,
        read_limit: 0,
    };
    open_call(
        send,
        addr,
        "/google.bytestream.ByteStream/Read",
        grpc_frame(&req),
    )
    .await
}

async fn upload(ch: &tonic::transport::Channel, data: &[u8]) -> Digest {
    let d = sha(data);
    let n = client::write(ch, "", &d, data, 1 << 20)
        .await
        .expect("upload");
    assert_eq!(n, data.len() as i64);
    d
}

/// Runs `f` and fails the test if it does not finish within `HANG`.
async fn in_time<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(HANG, f).await {
        Ok(v) => v,
        Err(_) => panic!("{what} hung while stalled streams were open"),
    }
}

/// Eight ByteStream Reads of a large blob that never take their data, on
/// one connection: every other client's CAS, action cache, ByteStream and
/// Execute calls still answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_reads_do_not_stall_other_clients() {
    let mut s = Stack::start().await;
    let ch = s.channel();
    let big = pseudo_random(8 << 20, 71);
    let other = pseudo_random(8 << 20, 72);
    let d_big = upload(&ch, &big).await;
    let d_other = upload(&ch, &other).await;

    let (stalled, _window) = stalled_connection(&s.addr).await;
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(stalled_read(&stalled, &s.addr, &d_big).await);
    }
    // Let casd's replies fill whatever the frontend buffers for them.
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Another client, its own connection.
    let ch2 = s.channel();
    let absent = sha(b"isolation: not uploaded");
    let missing = in_time(
        "FindMissingBlobs",
        client::find_missing(&ch2, "", &[d_big, absent]),
    )
    .await
    .expect("FindMissingBlobs");
    assert_eq!(missing, vec![absent]);

    let st = in_time(
        "GetActionResult",
        ActionCacheClient::new(ch2.clone()).get_action_result(GetActionResultRequest {
            action_digest: Some(absent.to_reapi()),
            digest_function: DigestFunction::Sha256.to_reapi(),
            ..Default::default()
        }),
    )
    .await
    .expect_err("no such action result");
    assert_eq!(st.code(), Code::NotFound, "{st:?}");

    let r = in_time(
        "a no-op Execute",
        rbe_testkit::exec::run_command(&ch2, &["true"], &[], 60, None),
    )
    .await
    .expect("Execute");
    assert_eq!(r.result.expect("result").exit_code, 0);

    let got = in_time("a ByteStream Read", client::read(&ch2, "", &d_other))
        .await
        .expect("Read");
    assert!(got == other, "the other client's read returned wrong bytes");
    let fresh = pseudo_random(3 << 20, 73);
    in_time("a ByteStream Write", upload(&ch2, &fresh)).await;

    assert!(s.alive(), "a daemon died");
    drop(held);
}

/// A Read whose client takes no data for `limits.stream_idle_timeout_secs`
/// is ended: a client that resumes reading gets what was already on its way
/// and then DEADLINE_EXCEEDED naming the limit, not the rest of the blob.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_takes_nothing_is_cut_off_with_a_status() {
    let s = Stack::start_configured("", "[limits]\nstream_idle_timeout_secs = 1\n", "").await;
    let ch = s.channel();
    let big = pseudo_random(8 << 20, 74);
    let d = upload(&ch, &big).await;
    let (stalled, window) = stalled_connection(&s.addr).await;
    let mut body = stalled_read(&stalled, &s.addr, &d).await;
    tokio::time::sleep(Duration::from_secs(4)).await;

    // Resume: take everything at full speed, releasing as we go.
    window.send(16 << 20).expect("connection task");
    let mut received = 0usize;
    let drained = in_time("reading the rest of the stalled stream", async {
        while let Some(chunk) = body.data().await {
            let chunk = chunk.expect("data");
            received += chunk.remaining();
            let _ = body.flow_control().release_capacity(chunk.len());
        }
        body.trailers()
            .await
            .expect("trailers")
            .expect("grpc trailers")
    })
    .await;
    let code = drained
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let message = drained
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert_eq!(
        code,
        (Code::DeadlineExceeded as i32).to_string(),
        "{drained:?}"
    );
    assert!(message.contains("stream_idle_timeout_secs"), "{message}");
    assert!(
        received < big.len(),
        "the whole blob arrived after the stall"
    );

    // The blob is still readable in full by a client that reads.
    assert!(client::read(&ch, "", &d).await.expect("read") == big);
}

/// A Write whose client sends nothing more for the idle timeout is ended
/// with DEADLINE_EXCEEDED; what it did send is kept for a resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_sends_nothing_is_cut_off_and_can_resume() {
    let s = Stack::start_configured("", "[limits]\nstream_idle_timeout_secs = 1\n", "").await;
    let ch = s.channel();
    let data = pseudo_random(2 << 20, 75);
    let d = sha(&data);
    let name = resource::write_name(
        "",
        "0b0e9b6c-8f5e-4a43-9c51-7d2f0e6a1c11",
        &d,
        Compressor::Identity,
    );
    let first = WriteRequest {
        resource_name: name.clone(),
        write_offset: 0,
        finish_write: false,
        data: data[..1 << 20].to_vec(),
    };
    // One message, then nothing: the stream stays open and silent.
    let requests = futures::stream::iter(vec![first]).chain(futures::stream::pending());
    let st = in_time(
        "a silent Write",
        ByteStreamClient::new(ch.clone())
            .max_encoding_message_size(8 << 20)
            .write(requests),
    )
    .await
    .expect_err("a silent Write is ended");
    assert_eq!(st.code(), Code::DeadlineExceeded, "{st:?}");
    assert!(st.message().contains("stream_idle_timeout_secs"), "{st:?}");

    // casd kept the part that arrived; the upload resumes from there.
    let committed = ByteStreamClient::new(ch.clone())
        .query_write_status(rbe_proto::bytestream::QueryWriteStatusRequest {
            resource_name: name.clone(),
        })
        .await
        .expect("QueryWriteStatus")
        .into_inner()
        .committed_size;
    assert_eq!(committed, 1 << 20);
    let rest = WriteRequest {
        resource_name: name,
        write_offset: committed,
        finish_write: true,
        data: data[committed as usize..].to_vec(),
    };
    let done = ByteStreamClient::new(ch.clone())
        .max_encoding_message_size(8 << 20)
        .write(futures::stream::iter(vec![rest]))
        .await
        .expect("resumed Write")
        .into_inner();
    assert_eq!(done.committed_size, data.len() as i64);
    assert!(client::read(&ch, "", &d).await.expect("read") == data);
}

/// Streams to casd are limited (`limits.max_proxied_streams`): a stream
/// beyond waits for a slot, which a stalled stream gives back when it is
/// cut; a stream that finds every slot held by clients that are still
/// working gets RESOURCE_EXHAUSTED naming the limit, with a retry hint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxied_streams_are_limited_and_stalled_ones_give_their_slot_back() {
    let s = Stack::start_configured(
        "",
        "[limits]\nmax_proxied_streams = 1\nstream_idle_timeout_secs = 2\n",
        "",
    )
    .await;
    let ch = s.channel();
    let big = pseudo_random(8 << 20, 76);
    let d = upload(&ch, &big).await;

    // The only slot is held by a reader that stopped: it is cut, and the
    // next reader gets the slot.
    let (stalled, _window) = stalled_connection(&s.addr).await;
    let held = stalled_read(&stalled, &s.addr, &d).await;
    let got = in_time(
        "a Read waiting for a stalled stream's slot",
        client::read(&ch, "", &d),
    )
    .await
    .expect("Read");
    assert!(got == big);
    drop(held);

    // The only slot is held by a writer that keeps sending (slowly, but
    // within the idle timeout): the next stream is refused.
    let data = pseudo_random(64 << 10, 77);
    let wd = sha(&data);
    let name = resource::write_name(
        "",
        "5d1c3a8e-2f4b-4c6d-9e7f-0a1b2c3d4e5f",
        &wd,
        Compressor::Identity,
    );
    let msgs: Vec<WriteRequest> = (0..10)
        .map(|i| WriteRequest {
            resource_name: if i == 0 { name.clone() } else { String::new() },
            write_offset: (i * 1024) as i64,
            finish_write: false,
            data: data[i * 1024..(i + 1) * 1024].to_vec(),
        })
        .collect();
    let slow = futures::stream::iter(msgs).then(|m| async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        m
    });
    let mut bs = ByteStreamClient::new(ch.clone());
    let writer = tokio::spawn(async move { bs.write(slow).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let st = in_time("a Read while every slot is busy", client::read(&ch, "", &d))
        .await
        .expect_err("no slot");
    assert_eq!(st.code(), Code::ResourceExhausted, "{st:?}");
    assert!(
        st.message().contains("limits.max_proxied_streams"),
        "{st:?}"
    );
    writer.abort();
}
