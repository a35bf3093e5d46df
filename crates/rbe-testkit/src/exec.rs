//! A minimal remote-execution client for tests that only need to run a
//! command (an empty input root) and look at the ExecuteResponse.

use prost::Message;
use rbe_proto::longrunning::{operation, Operation};
use rbe_proto::reapi::{
    execution_client::ExecutionClient, platform, Action, Command, Directory, ExecuteRequest,
    ExecuteResponse, Platform, RequestMetadata,
};
use rbe_proto::{Digest, DigestFunction};

/// Uploads a Command running `argv` (PATH=/usr/bin:/bin) with `properties`
/// as its platform, and its Action; Executes it with cache lookup skipped,
/// as Bazel invocation `invocation` when given, and returns the final
/// ExecuteResponse.
pub async fn run_command<C: crate::grpc::Grpc>(
    ch: &C,
    argv: &[&str],
    properties: &[(&str, &str)],
    timeout_secs: i64,
    invocation: Option<&str>,
) -> Result<ExecuteResponse, tonic::Status> {
    let mut stream = start_command(ch, argv, properties, timeout_secs, invocation).await?;
    while let Some(op) = stream.message().await? {
        if let Some(operation::Result::Response(any)) = op.result {
            return ExecuteResponse::decode(any.value.as_slice())
                .map_err(|e| tonic::Status::internal(e.to_string()));
        }
        if let Some(operation::Result::Error(st)) = op.result {
            return Err(tonic::Status::new(st.code.into(), st.message));
        }
    }
    Err(tonic::Status::unknown("the stream ended without a result"))
}

/// Like [`run_command`] (a `do_not_cache` action, never merged with
/// another), but returns the Execute stream as soon as it is open.
pub async fn start_command<C: crate::grpc::Grpc>(
    ch: &C,
    argv: &[&str],
    properties: &[(&str, &str)],
    timeout_secs: i64,
    invocation: Option<&str>,
) -> Result<tonic::Streaming<Operation>, tonic::Status> {
    let md = invocation.map(|id| RequestMetadata {
        tool_invocation_id: id.to_owned(),
        ..Default::default()
    });
    start_command_with(ch, argv, properties, timeout_secs, md.as_ref()).await
}

/// [`start_command`] sending the whole `metadata` as Bazel's
/// RequestMetadata header.
pub async fn start_command_with<C: crate::grpc::Grpc>(
    ch: &C,
    argv: &[&str],
    properties: &[(&str, &str)],
    timeout_secs: i64,
    metadata: Option<&RequestMetadata>,
) -> Result<tonic::Streaming<Operation>, tonic::Status> {
    let f = DigestFunction::Sha256;
    let platform = Some(Platform {
        properties: properties
            .iter()
            .map(|(n, v)| platform::Property {
                name: (*n).to_owned(),
                value: (*v).to_owned(),
            })
            .collect(),
    });
    let command = Command {
        arguments: argv.iter().map(|s| (*s).to_owned()).collect(),
        environment_variables: vec![rbe_proto::reapi::command::EnvironmentVariable {
            name: "PATH".into(),
            value: "/usr/bin:/bin".into(),
        }],
        ..Default::default()
    }
    .encode_to_vec();
    let root = Directory::default().encode_to_vec();
    let cd = Digest::of(f, &command);
    let rd = Digest::of(f, &root);
    let action = Action {
        command_digest: Some(cd.to_reapi()),
        input_root_digest: Some(rd.to_reapi()),
        timeout: Some(rbe_proto::wkt::Duration {
            seconds: timeout_secs,
            nanos: 0,
        }),
        do_not_cache: true,
        platform,
        ..Default::default()
    }
    .encode_to_vec();
    let ad = Digest::of(f, &action);
    crate::client::batch_update(ch, "", &[(cd, command), (rd, root), (ad, action)]).await?;
    let mut req = tonic::Request::new(ExecuteRequest {
        action_digest: Some(ad.to_reapi()),
        skip_cache_lookup: true,
        digest_function: f.to_reapi(),
        ..Default::default()
    });
    if let Some(md) = metadata {
        with_metadata(&mut req, md);
    }
    Ok(ExecutionClient::new(ch.clone())
        .max_decoding_message_size(64 << 20)
        .execute(req)
        .await?
        .into_inner())
}

/// Sets `md` as Bazel's RequestMetadata header of `req`.
pub fn with_metadata<T>(req: &mut tonic::Request<T>, md: &RequestMetadata) {
    req.metadata_mut().insert_bin(
        "build.bazel.remote.execution.v2.requestmetadata-bin",
        tonic::metadata::MetadataValue::from_bytes(&md.encode_to_vec()),
    );
}

/// The ResourceUsage in a response's auxiliary metadata, if any.
pub fn resource_usage(r: &ExecuteResponse) -> Option<rbe_proto::worker::ResourceUsage> {
    let md = r.result.as_ref()?.execution_metadata.as_ref()?;
    md.auxiliary_metadata
        .iter()
        .find(|a| a.type_url.ends_with("/rbe.worker.v1.ResourceUsage"))
        .and_then(|a| rbe_proto::worker::ResourceUsage::decode(a.value.as_slice()).ok())
}
