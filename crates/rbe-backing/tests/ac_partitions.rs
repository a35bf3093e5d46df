//! `[instances] separate_action_cache` keeps its promise through a backing
//! store: a result stored for a separate instance is served to that
//! instance on any host in front of the store, and to no other instance
//! (the backing store's action cache is one namespace; casd keys such
//! results apart there).
#![allow(clippy::unwrap_used)]

mod common;

use common::{blob, get_result_in, result_with, update_result, update_result_in};
use rbe_testkit::{client, Casd};
use tonic::Code;

const SEPARATE: &str = "\n[instances]\nseparate_action_cache = [\"private\"]\n";

#[tokio::test]
async fn a_separate_instances_results_reach_only_that_instance_on_every_host() {
    for mode in ["cache", "jit"] {
        let dir = tempfile::tempdir_in(rbe_testkit::disk_tmp()).unwrap();
        let b = Casd::start(&dir.path().join("b"), "2GiB", "").await;
        let url = format!("unix:{}", b.layout.casd_socket().display());
        let host = |name: &'static str| {
            let dropin = format!(
                "[backing]\nmode = \"{mode}\"\nurl = \"{url}\"\nrequest_timeout_secs = 10\n{SEPARATE}"
            );
            let root = dir.path().join(name);
            async move { Casd::start(&root, "2GiB", &dropin).await }
        };
        // A and C: two hosts, each with a fresh store, in front of B.
        let (ha, hc) = (host("a").await, host("c").await);
        let (a, b, c) = (ha.channel().await, b.channel().await, hc.channel().await);

        let out = blob(3000, 71);
        client::write(&a, "private", &out.0, &out.1, 1 << 20)
            .await
            .unwrap();
        let action = blob(60, 72).0;
        update_result_in(&a, "private", &action, result_with(&out.0))
            .await
            .unwrap();

        // The same instance on another host: served through the store.
        assert_eq!(
            get_result_in(&c, "private", &action)
                .await
                .unwrap()
                .output_files
                .len(),
            1,
            "{mode}"
        );
        // Any other instance, on either host or at the store itself: a miss.
        for (ch, instance) in [(&a, ""), (&c, ""), (&c, "other"), (&b, "")] {
            let e = get_result_in(ch, instance, &action).await.unwrap_err();
            assert_eq!(e.code(), Code::NotFound, "{mode} {instance:?}: {e:?}");
        }

        // A shared-instance result is the plain key at the store, as before.
        let shared = blob(60, 73).0;
        update_result(&a, &shared, &out.0).await.unwrap();
        assert!(get_result_in(&b, "", &shared).await.is_ok(), "{mode}");
        assert_eq!(
            get_result_in(&c, "private", &shared)
                .await
                .unwrap_err()
                .code(),
            Code::NotFound,
            "{mode}"
        );
    }
}
