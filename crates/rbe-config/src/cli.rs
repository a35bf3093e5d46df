//! The command-line options every daemon shares: where its configuration
//! comes from, and whether to only check it.

use std::path::PathBuf;

/// `--config-dir` (repeatable) and `--check-config`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ConfigArgs {
    /// Configuration directory, lowest precedence first; repeatable.
    /// Default: /usr/lib/rbe, /run/rbe, /etc/rbe.
    #[arg(long = "config-dir", value_name = "DIR")]
    pub config_dirs: Vec<PathBuf>,
    /// Validate the configuration, print it, and exit.
    #[arg(long)]
    pub check_config: bool,
}

impl ConfigArgs {
    /// The directories to read, defaulting to [`crate::default_dirs`].
    pub fn dirs(&self) -> Vec<PathBuf> {
        if self.config_dirs.is_empty() {
            crate::default_dirs()
        } else {
            self.config_dirs.clone()
        }
    }
}
