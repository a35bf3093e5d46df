//! What the frontend keeps of completed operations, and how it lists them:
//! bounded in bytes, whatever clients make it record. Real binaries, real
//! gRPC; cache hits make operations without running anything.

use std::collections::HashSet;

use prost::Message;
use rbe_proto::longrunning::{
    operation, operations_client::OperationsClient, GetOperationRequest, ListOperationsRequest,
    Operation,
};
use rbe_proto::reapi::{
    action_cache_client::ActionCacheClient, execution_client::ExecutionClient, ActionResult,
    ExecuteRequest, ExecuteResponse, ExecutedActionMetadata, UpdateActionResultRequest,
    WaitExecutionRequest,
};
use rbe_proto::wkt::Any;
use rbe_proto::{Digest, DigestFunction};
use rbe_testkit::Stack;
use tonic::transport::Channel;
use tonic::Code;

const F: DigestFunction = DigestFunction::Sha256;

/// Stores, for a made-up action, a result carrying `padding` bytes of
/// auxiliary metadata (a client may put anything there; casd keeps it).
async fn cached_action(ch: &Channel, seed: &str, padding: usize) -> Digest {
    let action = Digest::of(F, format!("operations test action {seed}").as_bytes());
    let result = ActionResult {
        exit_code: 0,
        execution_metadata: Some(ExecutedActionMetadata {
            auxiliary_metadata: vec![Any {
                type_url: "type.googleapis.com/rbe.test.Padding".into(),
                value: vec![7; padding],
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    ActionCacheClient::new(ch.clone())
        .max_encoding_message_size(64 << 20)
        .max_decoding_message_size(64 << 20)
        .update_action_result(UpdateActionResultRequest {
            action_digest: Some(action.to_reapi()),
            action_result: Some(result),
            digest_function: F.to_reapi(),
            ..Default::default()
        })
        .await
        .expect("UpdateActionResult");
    action
}

/// Executes a cached action; the name of the (completed) operation.
async fn hit(ch: &Channel, action: &Digest) -> String {
    let mut s = ExecutionClient::new(ch.clone())
        .max_decoding_message_size(64 << 20)
        .execute(ExecuteRequest {
            action_digest: Some(action.to_reapi()),
            digest_function: F.to_reapi(),
            ..Default::default()
        })
        .await
        .expect("Execute")
        .into_inner();
    let op = s.message().await.expect("stream").expect("an operation");
    assert!(op.done, "a cache hit is done at once");
    let r = response_of(&op);
    assert!(r.cached_result);
    op.name
}

fn response_of(op: &Operation) -> ExecuteResponse {
    match op.result.as_ref() {
        Some(operation::Result::Response(any)) => {
            ExecuteResponse::decode(any.value.as_slice()).expect("ExecuteResponse")
        }
        other => panic!("no response in {other:?}"),
    }
}

fn ops(ch: &Channel) -> OperationsClient<Channel> {
    OperationsClient::new(ch.clone()).max_decoding_message_size(64 << 20)
}

/// Every page of ListOperations with `page_size`: (names, encoded sizes).
async fn list_all(ch: &Channel, page_size: i32) -> (Vec<Vec<String>>, Vec<usize>) {
    let (mut pages, mut sizes) = (Vec::new(), Vec::new());
    let mut token = String::new();
    loop {
        let page = ops(ch)
            .list_operations(ListOperationsRequest {
                name: "operations".into(),
                page_size,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .expect("ListOperations")
            .into_inner();
        sizes.push(page.encoded_len());
        pages.push(page.operations.iter().map(|o| o.name.clone()).collect());
        if page.next_page_token.is_empty() {
            return (pages, sizes);
        }
        assert!(pages.len() < 1000, "paging does not end");
        token = page.next_page_token;
    }
}

/// Many cache hits of a large result: the completed operations kept stay
/// under `execution.max_retained_bytes`; the oldest are forgotten (NOT_FOUND,
/// as when expired), the newest still answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_operations_are_bounded_in_bytes() {
    let s = Stack::start_configured("", "[execution]\nmax_retained_bytes = \"1MiB\"\n", "").await;
    let ch = s.channel();
    let action = cached_action(&ch, "large", 300 << 10).await;
    let mut names = Vec::new();
    for _ in 0..12 {
        names.push(hit(&ch, &action).await);
    }
    let first = match ops(&ch)
        .get_operation(GetOperationRequest {
            name: names[0].clone(),
        })
        .await
    {
        Ok(_) => panic!("the oldest of 12 operations of 300 KiB is still kept"),
        Err(st) => st,
    };
    assert_eq!(first.code(), Code::NotFound, "{first:?}");
    let waited = match ExecutionClient::new(ch.clone())
        .wait_execution(WaitExecutionRequest {
            name: names[0].clone(),
        })
        .await
    {
        Ok(_) => panic!("WaitExecution found a forgotten operation"),
        Err(st) => st,
    };
    assert_eq!(waited.code(), Code::NotFound, "{waited:?}");
    assert!(waited.message().contains("expired"), "{waited:?}");
    let last = ops(&ch)
        .get_operation(GetOperationRequest {
            name: names[11].clone(),
        })
        .await
        .expect("the newest is kept")
        .into_inner();
    assert!(last.done);
    assert!(response_of(&last).cached_result);

    let (pages, _) = list_all(&ch, 0).await;
    let listed: Vec<String> = pages.concat();
    assert!(
        !listed.is_empty() && listed.len() <= 3,
        "1 MiB holds at most three 300 KiB results, {} listed",
        listed.len()
    );
    assert!(listed.contains(&names[11]));
}

/// ListOperations honours page_size up to a server maximum and a byte bound
/// per page, and its tokens walk every operation exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_operations_pages_are_bounded_and_complete() {
    let s = Stack::start().await;
    let ch = s.channel();
    let small = cached_action(&ch, "small", 10).await;
    let large = cached_action(&ch, "large", 900 << 10).await;
    let mut names = HashSet::new();
    for _ in 0..250 {
        names.insert(hit(&ch, &small).await);
    }
    for _ in 0..12 {
        names.insert(hit(&ch, &large).await);
    }

    // No page_size: a default page, not everything.
    let (pages, _) = list_all(&ch, 0).await;
    assert_eq!(pages[0].len(), 100, "default page size");
    let walked: Vec<String> = pages.concat();
    assert_eq!(walked.len(), names.len(), "each operation listed once");
    assert_eq!(walked.iter().cloned().collect::<HashSet<_>>(), names);

    // A huge page_size: pages stop at the byte bound, well under the
    // 8 MiB message limit (about 11 MiB of operations in all).
    let (pages, sizes) = list_all(&ch, 1_000_000).await;
    assert!(pages.len() >= 3, "{} pages", pages.len());
    for (p, n) in pages.iter().zip(&sizes) {
        assert!(
            *n <= 4 << 20,
            "a page of {} operations is {n} bytes",
            p.len()
        );
        assert!(p.len() <= 1000);
    }
    let walked: Vec<String> = pages.concat();
    assert_eq!(walked.len(), names.len());
    assert_eq!(walked.iter().cloned().collect::<HashSet<_>>(), names);
}
