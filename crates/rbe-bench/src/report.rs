//! Result lines and small statistics helpers.

use std::fmt::Write;
use std::time::Duration;

/// One JSON object printed on a single line, fields in insertion order.
pub struct Json {
    fields: Vec<(String, String)>,
}

fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn number(v: f64) -> String {
    if !v.is_finite() {
        return "null".to_string();
    }
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() || s == "-" {
        "0".to_string()
    } else {
        s.to_string()
    }
}

impl Json {
    /// Starts a result line for benchmark `bench`.
    pub fn new(bench: &str) -> Self {
        Json {
            fields: vec![("bench".to_string(), quote(bench))],
        }
    }

    /// A string field.
    pub fn s(mut self, k: &str, v: &str) -> Self {
        self.fields.push((k.to_string(), quote(v)));
        self
    }

    /// A number field (3 decimals at most).
    pub fn n(mut self, k: &str, v: f64) -> Self {
        self.fields.push((k.to_string(), number(v)));
        self
    }

    /// An integer field.
    pub fn i(mut self, k: &str, v: u64) -> Self {
        self.fields.push((k.to_string(), v.to_string()));
        self
    }

    /// A boolean field.
    pub fn b(mut self, k: &str, v: bool) -> Self {
        self.fields.push((k.to_string(), v.to_string()));
        self
    }

    /// An array of numbers.
    pub fn a(mut self, k: &str, v: &[f64]) -> Self {
        let items: Vec<String> = v.iter().map(|x| number(*x)).collect();
        self.fields
            .push((k.to_string(), format!("[{}]", items.join(","))));
        self
    }

    /// Prints the line on stdout.
    pub fn print(&self) {
        let body: Vec<String> = self
            .fields
            .iter()
            .map(|(k, v)| format!("{}:{v}", quote(k)))
            .collect();
        println!("{{{}}}", body.join(","));
    }
}

/// Median of `v` (mean of the middle two for even lengths); NaN when empty.
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Nearest-rank percentile `p` (0-100) of `v`; NaN when empty.
pub fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

/// Milliseconds as a float.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// MiB per second for `bytes` moved in `d`.
pub fn mibs(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1u64 << 20) as f64 / d.as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&[7.0], 50.0), 7.0);
    }

    #[test]
    fn json_line() {
        let mut j = Json::new("x").s("a", "q\"").n("b", 1.5).i("c", 3);
        j = j.a("d", &[1.0, 2.25]).b("e", true).n("f", f64::NAN);
        let body: Vec<String> = j.fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(
            body.join(" "),
            "bench=\"x\" a=\"q\\\"\" b=1.5 c=3 d=[1,2.25] e=true f=null"
        );
    }
}
