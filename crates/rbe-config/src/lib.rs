//! rbe-config
