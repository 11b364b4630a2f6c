//! Wall-clock helpers: milliseconds since the Unix epoch and their ISO-8601 form.
//!
//! Every timestamp on the wire is `YYYY-MM-DDTHH:MM:SS.mmmZ` (docs/protocol.md, its conventions).
//! Formatting is done here by hand because it is on the publish path (once per change)
//! and the civil-date arithmetic is twenty lines, not worth a date crate.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Microseconds since the Unix epoch.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Formats milliseconds since the epoch as ISO-8601 UTC with milliseconds.
pub fn iso8601(ms: u64) -> String {
    let secs = ms / 1000;
    let millis = ms % 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Howard Hinnant's `civil_from_days`: days since 1970-01-01 to (year, month, day).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Howard Hinnant's `days_from_civil`: (year, month, day) to days since 1970-01-01.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Milliseconds since the epoch as (year, month, day, hour, minute, second, micros).
pub fn civil(ms: u64) -> (i64, u32, u32, u32, u32, u32, u32) {
    let secs = ms / 1000;
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    (
        y,
        m,
        d,
        (rem / 3600) as u32,
        ((rem % 3600) / 60) as u32,
        (rem % 60) as u32,
        (ms % 1000) as u32 * 1000,
    )
}

/// (year, month, day, hour, minute, second, micros) in UTC to milliseconds since the
/// epoch (0 for instants before it).
pub fn from_civil(y: i64, m: u32, d: u32, h: u32, mi: u32, s: u32, us: u32) -> u64 {
    let days = days_from_civil(y, m.max(1), d.max(1));
    let secs = days * 86_400 + i64::from(h) * 3600 + i64::from(mi) * 60 + i64::from(s);
    (secs.max(0) as u64) * 1000 + u64::from(us / 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(iso8601(1_795_680_000_000), "2026-11-26T08:00:00.000Z");
    }

    #[test]
    fn civil_round_trips() {
        for ms in [0, 951_782_400_123, 1_795_680_000_000, 4_102_444_799_999] {
            let (y, m, d, h, mi, s, us) = civil(ms);
            assert_eq!(from_civil(y, m, d, h, mi, s, us), ms);
        }
    }
}
