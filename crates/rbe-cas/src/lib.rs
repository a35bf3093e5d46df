//! rbe-cas
