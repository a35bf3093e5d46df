//! rbe-systemd
