//! Actions in `[backing] mode = "jit"` (issue 13): the executing casd (A)
//! keeps nothing of its own; a second real casd (B) is the backing store
//! that holds the inputs. An action's inputs are hydrated through A just
//! before it runs, pinned under one lease while it runs, and reclaimed
//! from A's scratch when rbe-workerd releases the lease, whichever way
//! the action ended. Concurrent actions sharing an input never lose it to
//! another's release.
//!
//! "Nothing pinned" is A's Stats `pinned_blobs`; "none in the scratch" is
//! the blob's file being absent from A's store directory (FindMissingBlobs
//! answers for B in jit mode, so it cannot tell).

use std::time::{Duration, Instant};

use prost::Message;
use rbe_proto::reapi::ExecuteResponse;
use rbe_proto::Digest;
use rbe_testkit::{client, disk_tmp, pseudo_random, Casd, Stack};
use tonic::transport::Channel;
use tonic::Code;

mod exec_kit;
use exec_kit::*;

async fn stdout_of(ch: &Channel, r: &ExecuteResponse) -> String {
    let res = r.result.as_ref().expect("result");
    let d = res.stdout_digest.as_ref().expect("stdout digest");
    let bytes = client::read(ch, "", &Digest::from_reapi(F, d).expect("digest"))
        .await
        .expect("read stdout");
    String::from_utf8(bytes).expect("utf-8").trim().to_owned()
}

/// The backing casd B, and the stack (casd A in jit mode in front of B,
/// frontend, worker with `slots` slots).
struct Jit {
    _dir: tempfile::TempDir,
    b: Casd,
    stack: Stack,
}

impl Jit {
    async fn start(slots: u32) -> Jit {
        let dir = tempfile::Builder::new()
            .prefix("rbe-jit-exec-")
            .tempdir_in(disk_tmp())
            .expect("tempdir");
        let b = Casd::start(&dir.path().join("b"), "1GiB", "").await;
        let url = format!("unix:{}", b.layout.casd_socket().display());
        let stack = Stack::start_configured_in(
            dir.path(),
            &format!("[backing]\nmode = \"jit\"\nurl = \"{url}\"\n"),
            "",
            &format!("[worker]\nslots = {slots}\n"),
        )
        .await;
        Jit {
            _dir: dir,
            b,
            stack,
        }
    }

    /// Which of `ds` have a file in A's scratch.
    fn in_scratch(&self, ds: &[Digest]) -> Vec<Digest> {
        ds.iter()
            .filter(|d| store_path(&self.stack.casd.layout.cas_dir, d).exists())
            .copied()
            .collect()
    }
}

/// An action on inputs only B has succeeds, its inputs fetched from B;
/// afterwards nothing is pinned and none of its inputs is in A's scratch.
/// Run again, it fetches them again and leaves A's store exactly as the
/// first run did (what stays is the Action, the Command and the outputs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jit_action_hydrates_its_inputs_and_its_scratch_is_reclaimed_after() {
    let jit = Jit::start(2).await;
    let (a, b) = (jit.stack.casd.channel().await, jit.b.channel().await);
    let mut blobs: Blobs = Vec::new();
    let input = blob(&mut blobs, pseudo_random(300_000, 7));
    let sub = directory(&mut blobs, &[("in".into(), input, false)], &[]);
    let root = directory(&mut blobs, &[], &[("d".into(), sub)]);
    let inputs = [input, sub, root];
    let ad = action(
        &mut blobs,
        "sha256sum d/in | cut -c1-64 | tee out",
        root,
        &["out"],
        Some(60),
        "once",
    );
    upload(&b, &blobs).await;
    let ch = jit.stack.channel();

    let r = execute(&ch, ad).await;
    assert_eq!(code_of(&r), Code::Ok, "{r:?}");
    assert_eq!(stdout_of(&ch, &r).await, input.hex());
    let first = casd_stats(&a).await;
    assert!(
        first.backing_fetches >= 5,
        "inputs, Action, Command from B: {first:?}"
    );
    assert_eq!(first.pinned_blobs, 0, "{first:?}");
    assert!(
        jit.in_scratch(&inputs).is_empty(),
        "inputs left in the scratch"
    );

    let r = execute(&ch, ad).await;
    assert_eq!(code_of(&r), Code::Ok, "{r:?}");
    let second = casd_stats(&a).await;
    assert_eq!(second.pinned_blobs, 0, "{second:?}");
    assert!(
        second.backing_fetches >= first.backing_fetches + inputs.len() as u64,
        "the inputs were fetched again: {first:?} then {second:?}"
    );
    assert_eq!(
        (second.blobs, second.bytes),
        (first.blobs, first.bytes),
        "the scratch is back where it was"
    );
    assert!(jit.in_scratch(&inputs).is_empty());
}

/// 20 actions at once, sharing one input and each with one of its own:
/// all succeed on the right bytes, and nothing stays pinned or in the
/// scratch, though each action's release came while others still held the
/// shared input (or were fetching it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_jit_actions_sharing_an_input_all_succeed_and_leave_nothing_pinned() {
    const N: u64 = 20;
    let jit = Jit::start(6).await;
    let (a, b) = (jit.stack.casd.channel().await, jit.b.channel().await);
    let mut blobs: Blobs = Vec::new();
    let shared_bytes = pseudo_random(200_000, 1);
    let shared = blob(&mut blobs, shared_bytes.clone());
    let common = directory(&mut blobs, &[("in".into(), shared, false)], &[]);
    let mut inputs = vec![shared, common];
    let mut runs = Vec::new();
    for i in 0..N {
        let own_bytes = pseudo_random(10_000 + i as usize, 100 + i);
        let own = blob(&mut blobs, own_bytes.clone());
        let root = directory(
            &mut blobs,
            &[("own".into(), own, false)],
            &[("c".into(), common)],
        );
        inputs.extend([own, root]);
        let ad = action(
            &mut blobs,
            "cat c/in own | sha256sum | cut -c1-64 | tee out",
            root,
            &["out"],
            Some(60),
            &format!("shared {i}"),
        );
        let mut want = shared_bytes.clone();
        want.extend_from_slice(&own_bytes);
        runs.push((ad, Digest::of(F, &want).hex()));
    }
    upload(&b, &blobs).await;
    let ch = jit.stack.channel();
    let results = futures::future::join_all(runs.iter().map(|(ad, want)| {
        let ch = ch.clone();
        async move {
            let r = execute(&ch, *ad).await;
            assert_eq!(code_of(&r), Code::Ok, "{r:?}");
            assert_eq!(&stdout_of(&ch, &r).await, want);
        }
    }));
    results.await;
    let s = casd_stats(&a).await;
    assert_eq!(s.pinned_blobs, 0, "{s:?}");
    assert!(
        jit.in_scratch(&inputs).is_empty(),
        "inputs left in the scratch"
    );
}

/// An input B lacks: FAILED_PRECONDITION naming it as MISSING, and what
/// was fetched of the tree is neither pinned nor kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jit_action_whose_input_the_backing_store_lacks_is_missing_and_pins_nothing() {
    let jit = Jit::start(2).await;
    let (a, b) = (jit.stack.casd.channel().await, jit.b.channel().await);
    let mut blobs: Blobs = Vec::new();
    let present = blob(&mut blobs, b"present\n".to_vec());
    let lacking = Digest::of(F, b"only the client has this\n");
    let root = directory(
        &mut blobs,
        &[("p".into(), present, false), ("x".into(), lacking, false)],
        &[],
    );
    let ad = action(
        &mut blobs,
        "cat p x > out",
        root,
        &["out"],
        Some(60),
        "missing",
    );
    upload(&b, &blobs).await;
    let ch = jit.stack.channel();
    let r = execute(&ch, ad).await;
    assert_eq!(code_of(&r), Code::FailedPrecondition, "{r:?}");
    let subjects: Vec<String> = r
        .status
        .iter()
        .flat_map(|st| st.details.iter())
        .filter(|a| a.type_url.ends_with("google.rpc.PreconditionFailure"))
        .filter_map(|a| rbe_proto::rpc::PreconditionFailure::decode(a.value.as_slice()).ok())
        .flat_map(|pf| pf.violations)
        .filter(|v| v.r#type == "MISSING")
        .map(|v| v.subject)
        .collect();
    assert_eq!(
        subjects,
        vec![format!("blobs/{}/{}", lacking.hex(), lacking.size)]
    );
    let s = casd_stats(&a).await;
    assert_eq!(s.pinned_blobs, 0, "{s:?}");
    assert!(
        jit.in_scratch(&[present, root]).is_empty(),
        "the partial tree was kept"
    );
}

/// A timed-out action and a cancelled one release their inputs too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timed_out_and_cancelled_jit_actions_leave_nothing_pinned() {
    let jit = Jit::start(2).await;
    let (a, b) = (jit.stack.casd.channel().await, jit.b.channel().await);
    let mut blobs: Blobs = Vec::new();
    let input = blob(&mut blobs, pseudo_random(50_000, 3));
    let root = directory(&mut blobs, &[("in".into(), input, false)], &[]);
    let slow = action(&mut blobs, "sleep 60", root, &["out"], Some(1), "timeout");
    let cancelled = action(&mut blobs, "sleep 60", root, &["out"], Some(120), "cancel");
    upload(&b, &blobs).await;
    let ch = jit.stack.channel();

    let r = execute(&ch, slow).await;
    assert_eq!(code_of(&r), Code::DeadlineExceeded, "{r:?}");
    let s = casd_stats(&a).await;
    assert_eq!(s.pinned_blobs, 0, "after a timeout: {s:?}");
    assert!(jit.in_scratch(&[input, root]).is_empty());

    let stream = cancel_once_pinned(&ch, &a, cancelled, 2).await;
    // Released with a reclaim, which ends before the pins are seen gone
    // only by the worker; give it the same bound.
    let until = Instant::now() + Duration::from_secs(60);
    while !jit.in_scratch(&[input, root]).is_empty() {
        assert!(
            Instant::now() < until,
            "inputs left in the scratch after the cancel"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(stream);
}
