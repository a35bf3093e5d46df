//! rbe-testkit
