//! `rbectl token create|list|revoke`: the frontend's bearer tokens.
//!
//! The file is the one `[auth] tokens` of frontend.toml names, unless
//! `--file` says otherwise; the frontend reads it on start and on
//! `systemctl reload rbe-frontend`.

use anyhow::Context;
use rbe_auth::tokens::{self, NewFileOwner, TokensError};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

#[derive(clap::Subcommand)]
pub enum TokenCmd {
    /// Create a token; prints it once (only its hash is kept).
    Create(CreateArgs),
    /// List the tokens: name, creation and expiry time.
    List(FileArgs),
    /// Revoke a token by name.
    Revoke(RevokeArgs),
}

#[derive(clap::Args)]
pub struct FileArgs {
    /// The tokens file. Default: `[auth] tokens` of frontend.toml.
    #[arg(long, value_name = "PATH")]
    file: Option<PathBuf>,
    /// Configuration directory to find frontend.toml in, lowest precedence
    /// first; repeatable. Default: /usr/lib/rbe, /run/rbe, /etc/rbe.
    #[arg(long = "config-dir", value_name = "DIR")]
    config_dirs: Vec<PathBuf>,
}

#[derive(clap::Args)]
pub struct CreateArgs {
    /// The identity the token proves (letters, digits, '.', '_', '@', '-').
    name: String,
    /// Make the token stop working after this many days.
    #[arg(long, value_name = "DAYS", value_parser = clap::value_parser!(u64).range(1..=36_500))]
    expires_in: Option<u64>,
    #[command(flatten)]
    file: FileArgs,
}

#[derive(clap::Args)]
pub struct RevokeArgs {
    /// The token's name.
    name: String,
    #[command(flatten)]
    file: FileArgs,
}

impl FileArgs {
    fn path(&self) -> anyhow::Result<PathBuf> {
        if let Some(p) = &self.file {
            return Ok(p.clone());
        }
        let dirs = if self.config_dirs.is_empty() {
            rbe_config::default_dirs()
        } else {
            self.config_dirs.clone()
        };
        let settings = rbe_config::load_frontend(&dirs)
            .context("cannot find the tokens file in frontend.toml (or pass --file)")?;
        Ok(settings.auth.tokens)
    }
}

const RELOAD: &str = "systemctl reload rbe-frontend";

pub fn run(cmd: TokenCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        TokenCmd::Create(a) => create(a),
        TokenCmd::List(a) => list(a),
        TokenCmd::Revoke(a) => revoke(a),
    }
}

/// Adds "run as root" to the usual cause of a failure on /etc/rbe.
fn explain(e: TokensError) -> anyhow::Error {
    let denied = matches!(&e, TokensError::Io { error, .. }
        if error.kind() == std::io::ErrorKind::PermissionDenied);
    if denied {
        anyhow::Error::new(e).context("cannot change the tokens file (run as root?)")
    } else {
        e.into()
    }
}

fn create(a: CreateArgs) -> anyhow::Result<ExitCode> {
    let path = a.file.path()?;
    // The frontend reads the file as group rbe; where that group exists a
    // new file belongs to it.
    let gid = nix::unistd::Group::from_name("rbe")
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw());
    let expires_in = a.expires_in.map(|d| Duration::from_secs(d * 86_400));
    let (secret, rec) = tokens::create(
        &path,
        &a.name,
        expires_in,
        SystemTime::now(),
        NewFileOwner { gid },
    )
    .map_err(explain)?;
    let token = secret.expose();
    println!("{token}");
    println!(
        "Token {:?} added to {} (expires: {}). This is the only time it is shown;",
        rec.name(),
        path.display(),
        rec.expires_str()
    );
    println!("rbe keeps only its hash. Give it to the client, for Bazel as:");
    println!("  --remote_header=authorization=Bearer {token}");
    println!("It works once the frontend has reloaded: {RELOAD}");
    Ok(ExitCode::SUCCESS)
}

fn list(a: FileArgs) -> anyhow::Result<ExitCode> {
    let path = a.path()?;
    let recs = tokens::list(&path).map_err(explain)?;
    if recs.is_empty() {
        eprintln!("no tokens in {}", path.display());
        return Ok(ExitCode::SUCCESS);
    }
    let now = SystemTime::now();
    let width = recs
        .iter()
        .map(|r| r.name().len())
        .max()
        .unwrap_or(4)
        .max(4);
    println!(
        "{:<width$}  {:<20}  {:<20}  HASH",
        "NAME", "CREATED", "EXPIRES"
    );
    for r in &recs {
        let expires = if r.is_expired(now) {
            format!("{} (expired)", r.expires_str())
        } else {
            r.expires_str()
        };
        println!(
            "{:<width$}  {:<20}  {:<20}  {}…",
            r.name(),
            r.created_str(),
            expires,
            r.hash().short()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn revoke(a: RevokeArgs) -> anyhow::Result<ExitCode> {
    let path = a.file.path()?;
    let rec = tokens::revoke(&path, &a.name).map_err(explain)?;
    println!(
        "Token {:?} removed from {}. It stops working once the frontend has reloaded: {RELOAD}",
        rec.name(),
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}
