//! Offload between hosts whose casds stand in front of one backing store
//! (a third rbe-casd on a Unix socket): no blob moves between the hosts.
//! The executor's casd fetches the inputs through from the store, the
//! origin's casd fetches the outputs through when the client reads them,
//! `max_transfer_bytes` does not apply, and `orphan_policy = "auto"`
//! finishes an orphan. Hosts in front of different stores transfer as
//! before. "No blob moved" is the frontends' `inputs_pulled_bytes` and
//! `outputs_pulled_bytes` (every byte rbe-transfer copies between hosts)
//! staying 0, with the executor's casd showing `backing_fetches`. Tests
//! assert behaviour, never wall time.

use std::time::Duration;

use rbe_proto::casd::{casd_client::CasdClient, StatsRequest, StatsResponse};
use rbe_proto::reapi::ExecuteResponse;
use rbe_testkit::cluster::LocalCluster;
use rbe_testkit::{disk_tmp, Casd};
use tonic::transport::Channel;

mod offload_kit;
use offload_kit::*;

/// A backing store (a plain casd) and the `[backing]` drop-in that puts a
/// host's casd in front of it.
struct Store {
    casd: Casd,
    url: String,
}

impl Store {
    async fn start(dir: &std::path::Path, name: &str) -> Store {
        let casd = Casd::start(&dir.join(name), "2GiB", "").await;
        let url = format!("unix:{}", casd.layout.casd_socket().display());
        Store { casd, url }
    }

    fn dropin(&self, mode: &str) -> String {
        format!(
            "[backing]\nmode = \"{mode}\"\nurl = \"{}\"\nrequest_timeout_secs = 10\n",
            self.url
        )
    }
}

/// Hosts a (1 slot) and b (4 slots), both casds in front of one store in
/// `mode`, with `frontend` as both frontends' drop-in. The temp dir and
/// the store come back too, for the caller to hold as long as the cluster.
async fn in_front_of_one_store(
    mode: &str,
    frontend: &str,
) -> (tempfile::TempDir, Store, LocalCluster) {
    let dir = tempdir();
    let store = Store::start(dir.path(), "store").await;
    let casd = vec![store.dropin(mode), store.dropin(mode)];
    let c = LocalCluster::start_with_casd(&[("a", 1), ("b", 4)], frontend, &casd).await;
    (dir, store, c)
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("rbe-shared-")
        .tempdir_in(disk_tmp())
        .expect("tempdir")
}

async fn casd_stats(ch: &Channel) -> StatsResponse {
    CasdClient::new(ch.clone())
        .stats(StatsRequest {})
        .await
        .expect("Stats")
        .into_inner()
}

/// Waits until host 0 knows its own store id and every member's (from
/// their reports), and returns them: own first, then the members'.
async fn store_ids(c: &LocalCluster) -> Vec<u64> {
    formed(c).await;
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let s = c.status(0).await;
        let mut ids = vec![s.own.as_ref().map_or(0, |l| l.store_id)];
        ids.extend(
            s.members
                .iter()
                .map(|m| m.load.as_ref().map_or(0, |l| l.store_id)),
        );
        if ids.iter().all(|&id| id != 0) {
            return ids;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "store ids not reported: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// An action whose output is its input twice: a blob no host had, so
/// the origin would have to pull it from an executor it shares nothing
/// with.
fn doubling(size: usize) -> Act {
    act_sized("cat in.txt in.txt > out; sleep 2", size)
}

/// Every response ran; each output is readable at the origin and is the
/// input twice. Returns how many ran elsewhere.
async fn check_results(c: &LocalCluster, acts: &[Act], responses: &[ExecuteResponse]) -> usize {
    let ch = c.hosts[0].stack.channel();
    let mut elsewhere = 0;
    for (a, r) in acts.iter().zip(responses) {
        let bytes = output_of(&ch, r).await;
        if host_of(r) != "a" {
            elsewhere += 1;
        }
        assert_eq!(bytes, a.input.repeat(2), "the output is the input twice");
    }
    elsewhere
}

/// The invariant: an offloaded action ran on b, and no byte of it went
/// between a and b; b's casd fetched its inputs from the store.
async fn nothing_moved(c: &LocalCluster, offloaded: usize) {
    assert!(offloaded > 0, "nothing was offloaded");
    let (a, b) = (c.status(0).await, c.status(1).await);
    assert!(
        counter(&a, "shared_store_offers") >= offloaded as u64,
        "{a:?}"
    );
    assert!(counter(&b, "shared_store_hosted") >= 1, "{b:?}");
    assert_eq!(counter(&a, "outputs_pulled_bytes"), 0, "{a:?}");
    assert_eq!(counter(&b, "inputs_pulled_bytes"), 0, "{b:?}");
    assert_eq!(counter(&a, "offers_too_large"), 0, "{a:?}");
    let fetched = casd_stats(&c.hosts[1].stack.casd.channel().await)
        .await
        .backing_fetches;
    assert!(fetched > 0, "b's casd fetched nothing from the store");
}

async fn offload_through_a_shared_store(mode: &str) {
    let (_dir, store, c) = in_front_of_one_store(mode, "").await;
    let ids = store_ids(&c).await;
    assert_eq!(ids[0], ids[1], "one store, one id: {ids:x?}");
    let acts: Vec<Act> = (0..6).map(|_| doubling(0)).collect();
    let responses = burst(&c, &acts).await;
    let elsewhere = check_results(&c, &acts, &responses).await;
    nothing_moved(&c, elsewhere).await;
    // The origin wrote the action cache (through to the store): a rerun
    // is all hits.
    let again = burst(&c, &acts).await;
    assert!(again.iter().all(|r| r.cached_result), "{again:?}");
    // The ids in casd's Stats are the gossiped ones.
    let s = casd_stats(&c.hosts[0].stack.casd.channel().await).await;
    assert_eq!(
        (s.backing_store_id, s.backing_mode.as_str()),
        (ids[0], mode)
    );
    assert_eq!(s.backing_address, store.url);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offload_through_a_shared_cache_mode_store_moves_no_blob() {
    offload_through_a_shared_store("cache").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offload_through_a_shared_jit_mode_store_moves_no_blob() {
    offload_through_a_shared_store("jit").await;
}

/// `max_transfer_bytes = 1KiB` keeps 4 KiB trees at home between hosts
/// that would copy them (`cluster_faults.rs`); through a shared store
/// nothing is copied, so they are offloaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_trees_over_max_transfer_bytes_are_offloaded_through_a_shared_store() {
    let (_dir, _store, c) =
        in_front_of_one_store("cache", "[offload]\nmax_transfer_bytes = \"1KiB\"\n").await;
    store_ids(&c).await;
    let acts: Vec<Act> = (0..6).map(|_| doubling(64 << 10)).collect();
    let responses = burst(&c, &acts).await;
    let elsewhere = check_results(&c, &acts, &responses).await;
    nothing_moved(&c, elsewhere).await;
    let b = c.status(1).await;
    assert_eq!(counter(&b, "hosted_too_large"), 0, "{b:?}");
}

/// Hosts in front of two different stores share nothing: inputs go to
/// the executor and outputs come back, as without a backing store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_in_front_of_different_stores_transfer_as_before() {
    let dir = tempdir();
    let (one, two) = (
        Store::start(dir.path(), "one").await,
        Store::start(dir.path(), "two").await,
    );
    let casd = vec![one.dropin("cache"), two.dropin("cache")];
    let c = LocalCluster::start_with_casd(&[("a", 1), ("b", 4)], "", &casd).await;
    let ids = store_ids(&c).await;
    assert_ne!(ids[0], ids[1], "{ids:x?}");
    let acts: Vec<Act> = (0..6).map(|_| doubling(0)).collect();
    let responses = burst(&c, &acts).await;
    let elsewhere = check_results(&c, &acts, &responses).await;
    assert!(elsewhere > 0, "nothing was offloaded");
    let (a, b) = (c.status(0).await, c.status(1).await);
    assert_eq!(counter(&a, "shared_store_offers"), 0, "{a:?}");
    assert_eq!(counter(&b, "shared_store_hosted"), 0, "{b:?}");
    assert!(counter(&b, "inputs_pulled_bytes") > 0, "{b:?}");
    assert!(counter(&a, "outputs_pulled_bytes") > 0, "{a:?}");
}

/// With `orphan_policy = "auto"` and a shared store, b finishes the
/// orphan of a killed origin; its result reaches b's action cache and,
/// written through, the shared store's, where a retry through any host
/// finds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_finishes_an_orphan_when_the_store_is_shared() {
    let (_dir, store, c) = in_front_of_one_store(
        "cache",
        "[offload]\norphan_policy = \"auto\"\norphan_grace_secs = 1\n",
    )
    .await;
    store_ids(&c).await;
    let (orphan, _runs) = finish_an_orphan(&c).await;
    let found = queued_action_result(&store.casd.channel().await, orphan).await;
    let r = found.expect("the shared store's action cache has the orphan's result");
    assert_eq!(r.exit_code, 0, "{r:?}");
}

/// Inputs the shared store lacks (a client that never uploaded them): the
/// executor pulls nothing, its casd finds them missing in the store at
/// Materialize, and the origin's client gets FAILED_PRECONDITION with one
/// MISSING violation per blob, as for a local action; not dispatched
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_the_shared_store_lacks_fail_precondition_listing_them() {
    let (_dir, _store, c) = in_front_of_one_store("cache", "").await;
    store_ids(&c).await;
    // a's one slot is busy, so the next action goes to b.
    let blocker = occupy(&c, 0, 30, None).await;
    fails_listing_missing_inputs(&c, act_with(1, 2)).await;
    let (a, b) = (c.status(0).await, c.status(1).await);
    assert_eq!(counter(&a, "shared_store_offers"), 1, "{a:?}");
    assert_eq!(counter(&a, "leases_lost"), 0, "{a:?}");
    assert_eq!(counter(&b, "inputs_pulled_bytes"), 0, "{b:?}");
    drop(blocker);
}

/// The id follows casd: b's casd is restarted in front of another store
/// (and b's frontend reloaded); while casd is away b keeps its last id,
/// and once it is back b reports the new one, so a and b share nothing
/// any more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_id_follows_a_casd_restarted_in_front_of_another_store() {
    let dir = tempdir();
    let (one, two) = (
        Store::start(dir.path(), "one").await,
        Store::start(dir.path(), "two").await,
    );
    let casd = vec![one.dropin("cache"), one.dropin("cache")];
    let mut c = LocalCluster::start_with_casd(&[("a", 1), ("b", 4)], "", &casd).await;
    let ids = store_ids(&c).await;
    assert_eq!(ids[0], ids[1], "{ids:x?}");
    let b = &mut c.hosts[1].stack.casd;
    b.kill9();
    let dropin = b.layout.config_dir.join("casd.toml.d/50-test.toml");
    std::fs::write(&dropin, two.dropin("cache")).expect("drop-in");
    b.restart().await;
    let new = casd_stats(&b.channel().await).await.backing_store_id;
    assert_ne!(new, ids[0]);
    let pid = c.hosts[1].stack.frontend_pid().expect("b runs");
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(hup.success());
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let s = c.status(0).await;
        let seen = s
            .members
            .iter()
            .find(|m| m.node == "b")
            .and_then(|m| m.load.as_ref())
            .map_or(0, |l| l.store_id);
        if seen == new {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "b's new store id not seen: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
