//! rbe-net
