//! `[instances] separate_action_cache` keeps its promise through a backing
//! store: a result stored for a separate instance is served to that
//! instance on any host in front of the store, and to no other instance
//! (the backing store's action cache is one namespace; casd keys such
//! results apart there).
#![allow(clippy::unwrap_used)]

mod common;

use common::blob;
use rbe_proto::reapi::action_cache_client::ActionCacheClient;
use rbe_proto::reapi::{
    ActionResult, GetActionResultRequest, OutputFile, UpdateActionResultRequest,
};
use rbe_proto::{Digest, DigestFunction};
use rbe_testkit::{client, Casd};
use tonic::transport::Channel;
use tonic::Code;

const SEPARATE: &str = "\n[instances]\nseparate_action_cache = [\"private\"]\n";

async fn get(ch: &Channel, instance: &str, action: &Digest) -> Result<ActionResult, tonic::Status> {
    ActionCacheClient::new(ch.clone())
        .get_action_result(GetActionResultRequest {
            instance_name: instance.into(),
            action_digest: Some(action.to_reapi()),
            digest_function: DigestFunction::Sha256.to_reapi(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

async fn update(ch: &Channel, instance: &str, action: &Digest, out: &Digest) {
    ActionCacheClient::new(ch.clone())
        .update_action_result(UpdateActionResultRequest {
            instance_name: instance.into(),
            action_digest: Some(action.to_reapi()),
            action_result: Some(ActionResult {
                output_files: vec![OutputFile {
                    path: "out".into(),
                    digest: Some(out.to_reapi()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            digest_function: DigestFunction::Sha256.to_reapi(),
            ..Default::default()
        })
        .await
        .unwrap();
}

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
        update(&a, "private", &action, &out.0).await;

        // The same instance on another host: served through the store.
        assert_eq!(
            get(&c, "private", &action)
                .await
                .unwrap()
                .output_files
                .len(),
            1,
            "{mode}"
        );
        // Any other instance, on either host or at the store itself: a miss.
        for (ch, instance) in [(&a, ""), (&c, ""), (&c, "other"), (&b, "")] {
            let e = get(ch, instance, &action).await.unwrap_err();
            assert_eq!(e.code(), Code::NotFound, "{mode} {instance:?}: {e:?}");
        }

        // A shared-instance result is the plain key at the store, as before.
        let shared = blob(60, 73).0;
        update(&a, "", &shared, &out.0).await;
        assert!(get(&b, "", &shared).await.is_ok(), "{mode}");
        assert_eq!(
            get(&c, "private", &shared).await.unwrap_err().code(),
            Code::NotFound,
            "{mode}"
        );
    }
}
