//! Byte sizes and file modes as they may be written in TOML.

use serde::de::{self, Deserializer, Visitor};
use std::fmt;

/// Why [`parse_size`] rejected its input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseSizeError {
    /// The string was empty or only whitespace.
    #[error("empty size")]
    Empty,
    /// The numeric part is missing or malformed.
    #[error("invalid number in size {0:?}")]
    InvalidNumber(String),
    /// The suffix is not a known unit.
    #[error("unknown unit {0:?} (expected B, K, KB, KiB, M, MB, MiB, G, GB, GiB, T, TB, TiB)")]
    UnknownUnit(String),
    /// The value does not fit in 64 bits.
    #[error("size {0:?} is too large")]
    Overflow(String),
}

/// Parses a byte size such as `4096`, `512MiB`, `10G`, `1.5 GiB` or `2GB`.
///
/// Single-letter units and `KiB`/`MiB`/`GiB`/`TiB` are powers of 1024 (as in
/// systemd unit files); `KB`/`MB`/`GB`/`TB` are powers of 1000. Units are
/// case-insensitive. Fractions are allowed and rounded down to whole bytes.
pub fn parse_size(s: &str) -> Result<u64, ParseSizeError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(ParseSizeError::Empty);
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let mult: u128 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return Err(ParseSizeError::UnknownUnit(unit.trim().to_owned())),
    };
    let invalid = || ParseSizeError::InvalidNumber(s.to_owned());
    let overflow = || ParseSizeError::Overflow(s.to_owned());
    let (int, frac) = match num.split_once('.') {
        Some((i, f)) => (i, f),
        None => (num, ""),
    };
    if int.is_empty() || frac.contains('.') || (num.contains('.') && frac.is_empty()) {
        return Err(invalid());
    }
    // Integer arithmetic in u128 keeps "0.5KiB" exact where f64 would not
    // be for large values.
    let int: u128 = int.parse().map_err(|_| overflow())?;
    let mut total = int.checked_mul(mult).ok_or_else(overflow)?;
    if !frac.is_empty() {
        // More digits than this cannot change the result for any unit.
        let frac = &frac[..frac.len().min(18)];
        let digits: u128 = frac.parse().map_err(|_| invalid())?;
        let scale = 10u128.pow(frac.len() as u32);
        total += digits * mult / scale;
    }
    u64::try_from(total).map_err(|_| overflow())
}

/// A byte count that may be written as an integer or a [`parse_size`] string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Size(pub u64);

impl<'de> serde::Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte count such as 4096 or \"512MiB\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Size, E> {
                Ok(Size(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Size, E> {
                u64::try_from(v)
                    .map(Size)
                    .map_err(|_| E::custom(format!("size must not be negative, got {v}")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Size, E> {
                parse_size(v).map(Size).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A permission mode: an integer (TOML `0o660`) or an octal string (`"0660"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mode(pub u32);

impl<'de> serde::Deserialize<'de> for Mode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Mode;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a file mode such as 0o660 or \"0660\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Mode, E> {
                match u32::try_from(v) {
                    Ok(m) if m <= 0o7777 => Ok(Mode(m)),
                    _ => Err(E::custom(format!("mode {v:#o} is out of range"))),
                }
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Mode, E> {
                self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Mode, E> {
                let digits = v.strip_prefix("0o").unwrap_or(v);
                let m = i64::from_str_radix(digits, 8)
                    .map_err(|_| E::custom(format!("{v:?} is not an octal mode")))?;
                self.visit_i64(m)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("50GiB"), Ok(50 << 30));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("10G"), Ok(10 << 30));
        assert_eq!(parse_size("10 g"), Ok(10 << 30));
        assert_eq!(parse_size("2GB"), Ok(2_000_000_000));
        assert_eq!(parse_size("1.5KiB"), Ok(1536));
        assert_eq!(parse_size("7B"), Ok(7));
        assert_eq!(parse_size(""), Err(ParseSizeError::Empty));
        assert!(matches!(
            parse_size("5XB"),
            Err(ParseSizeError::UnknownUnit(_))
        ));
        assert!(matches!(
            parse_size("GiB"),
            Err(ParseSizeError::InvalidNumber(_))
        ));
        assert!(matches!(
            parse_size("1.GiB"),
            Err(ParseSizeError::InvalidNumber(_))
        ));
        assert!(matches!(
            parse_size("1.2.3"),
            Err(ParseSizeError::InvalidNumber(_))
        ));
        assert!(matches!(
            parse_size("99999999TiB"),
            Err(ParseSizeError::Overflow(_))
        ));
    }
}
