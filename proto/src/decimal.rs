//! Fixed-point decimals written as strings, the way exchanges put prices on the wire.

/// Appends `mantissa × 10^-scale` as a decimal string with exactly `scale` fraction digits:
/// `(6412350, 2)` → `64123.50`, `(5, 4)` → `0.0005`, `(0, 4)` → `0.0000`, `(-15, 1)` → `-1.5`.
/// Integer arithmetic only: no float ever touches a price.
pub fn write_decimal(buf: &mut Vec<u8>, mantissa: i64, scale: u8) {
    let mut itoa_buf = itoa::Buffer::new();
    if mantissa < 0 {
        buf.push(b'-');
    }
    // One integer conversion, then the point put in place: this runs for every price and size
    // of every message (and 40 times per book checksum).
    let digits = itoa_buf.format(mantissa.unsigned_abs()).as_bytes();
    let scale = usize::from(scale);
    if scale == 0 {
        buf.extend_from_slice(digits);
    } else if digits.len() > scale {
        let (int, frac) = digits.split_at(digits.len() - scale);
        buf.extend_from_slice(int);
        buf.push(b'.');
        buf.extend_from_slice(frac);
    } else {
        buf.extend_from_slice(b"0.");
        buf.resize(buf.len() + scale - digits.len(), b'0');
        buf.extend_from_slice(digits);
    }
}

/// Parses a decimal string with at most `scale` fraction digits back into a mantissa.
/// Returns `None` for anything that is not `-?digits(.digits)?` or has too many fraction digits.
pub fn parse_decimal(s: &str, scale: u8) -> Option<i64> {
    let (neg, body) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    if int.is_empty() || frac.len() > usize::from(scale) {
        return None;
    }
    if !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut m: i64 = int.parse().ok()?;
    for i in 0..usize::from(scale) {
        let d = frac.as_bytes().get(i).map_or(0, |b| i64::from(b - b'0'));
        m = m.checked_mul(10)?.checked_add(d)?;
    }
    Some(if neg { -m } else { m })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(m: i64, s: u8) -> String {
        let mut v = Vec::new();
        write_decimal(&mut v, m, s);
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn formats_with_fixed_fraction_digits() {
        assert_eq!(fmt(6412350, 2), "64123.50");
        assert_eq!(fmt(5, 4), "0.0005");
        assert_eq!(fmt(0, 4), "0.0000");
        assert_eq!(fmt(-15, 1), "-1.5");
        assert_eq!(fmt(42, 0), "42");
        assert_eq!(fmt(i64::MIN, 2), "-92233720368547758.08");
    }

    #[test]
    fn parse_round_trips() {
        for (m, s) in [(6412350, 2), (5, 4), (0, 4), (-15, 1), (42, 0), (123456789, 8)] {
            assert_eq!(parse_decimal(&fmt(m, s), s), Some(m), "{m} scale {s}");
        }
        assert_eq!(parse_decimal("1.234", 2), None);
        assert_eq!(parse_decimal("abc", 2), None);
        assert_eq!(parse_decimal(".5", 2), None);
        assert_eq!(parse_decimal("1.5", 2), Some(150));
    }
}
