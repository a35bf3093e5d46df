//! rbe-workerd: runs actions. Not built yet: remote execution arrives with
//! the next release (see ARCHITECTURE.md). This binary exists so that the
//! packages and units have their final shape; it refuses to start.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!(
        "rbe-workerd: remote execution is not built yet in rbe {}; \
         rbe currently serves as a remote cache (rbe-frontend + rbe-casd)",
        env!("CARGO_PKG_VERSION")
    );
    // EX_UNAVAILABLE, so systemd does not restart it in a loop.
    ExitCode::from(69)
}
