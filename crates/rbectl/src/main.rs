//! rbectl: the rbe admin CLI.

mod ask;
mod cluster;
mod cluster_status;
mod config_check;
mod local;
mod pki;
mod status;
mod tls;
mod token;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(version, about = "rbe admin tool")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run rbe-casd, rbe-frontend and rbe-workerd as child processes, without systemd.
    Local(local::LocalArgs),
    /// Configuration commands.
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
    /// Bearer tokens of rbe-frontend: create, list, revoke.
    Token {
        #[command(subcommand)]
        cmd: token::TokenCmd,
    },
    /// This host's casd: its store and, with [backing], the backing
    /// store's latency, errors and hit rates.
    Status(status::StatusArgs),
    /// The hosts of an rbe cluster.
    Cluster {
        #[command(subcommand)]
        cmd: ClusterCmd,
    },
    /// A private CA and certificates for the frontend's TLS.
    Tls {
        #[command(subcommand)]
        cmd: tls::TlsCmd,
    },
}

#[derive(Subcommand)]
enum ClusterCmd {
    /// Create the cluster key (DIR/cluster.key) and the cluster CA
    /// (DIR/cluster/ca.crt, DIR/cluster/ca.key). Once per cluster: copy
    /// cluster.key and ca.crt to every host.
    Init(cluster::InitArgs),
    /// Issue the peer certificate of host NODE (DNS name and CN = NODE,
    /// server and client use) signed by the cluster CA:
    /// DIR/cluster/NODE.crt and NODE.key.
    Issue(cluster::IssueArgs),
    /// Members, their state and load, and the offload counters, as this
    /// host's frontend sees them.
    Status(cluster_status::StatusArgs),
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Validate the configuration of each daemon without starting anything.
    Check(config_check::CheckArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Local(a) => local::run(a),
        Cmd::Config {
            cmd: ConfigCmd::Check(a),
        } => config_check::run(a),
        Cmd::Token { cmd } => token::run(cmd),
        Cmd::Tls { cmd } => tls::run(cmd),
        Cmd::Status(a) => status::run(a),
        Cmd::Cluster {
            cmd: ClusterCmd::Init(a),
        } => cluster::init(a),
        Cmd::Cluster {
            cmd: ClusterCmd::Issue(a),
        } => cluster::issue(a),
        Cmd::Cluster {
            cmd: ClusterCmd::Status(a),
        } => cluster_status::run(a),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rbectl: {e:#}");
            ExitCode::FAILURE
        }
    }
}
