//! What a run measured: per-connection receipts, the delivery check, latency
//! percentiles, and CPU and memory samples of the server and of the load generator.

use std::collections::HashMap;

use hdrhistogram::Histogram;
use serde::Serialize;

/// What one connection received.
#[derive(Debug, Default)]
pub struct Receipts {
    pub seqs: Vec<u64>,
    pub latencies_us: Vec<u64>,
}

#[derive(Debug, Default, Serialize, Clone, Copy)]
pub struct Delivery {
    pub expected: u64,
    pub delivered: u64,
    pub missing: u64,
    pub duplicates: u64,
}

/// Compares what each connection received with what was published on its key.
pub fn check_delivery(published: &[(u64, usize)], receipts: &[(usize, &Receipts)]) -> Delivery {
    let mut by_key: HashMap<usize, Vec<u64>> = HashMap::new();
    for &(seq, key) in published {
        by_key.entry(key).or_default().push(seq);
    }
    let mut d = Delivery::default();
    for (key, r) in receipts {
        let expected = by_key.get(key).map_or(&[][..], |v| v.as_slice());
        let mut got = r.seqs.clone();
        got.sort_unstable();
        let before = got.len();
        got.dedup();
        d.duplicates += (before - got.len()) as u64;
        d.delivered += before as u64;
        d.expected += expected.len() as u64;
        d.missing += expected
            .iter()
            .filter(|s| got.binary_search(s).is_err())
            .count() as u64;
    }
    d
}

#[derive(Debug, Default, Serialize, Clone, Copy)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

pub fn latency<'a>(receipts: impl Iterator<Item = &'a Receipts>) -> Latency {
    // Three significant figures over 1 us .. 1 h.
    let Ok(mut h) = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3) else {
        return Latency::default();
    };
    for r in receipts {
        for &us in &r.latencies_us {
            let _ = h.record(us.max(1));
        }
    }
    if h.is_empty() {
        return Latency::default();
    }
    let ms = |v: u64| v as f64 / 1000.0;
    Latency {
        p50_ms: ms(h.value_at_quantile(0.5)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        p999_ms: ms(h.value_at_quantile(0.999)),
        max_ms: ms(h.max()),
    }
}

/// CPU time and RSS of a process, from /proc.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcSample {
    pub cpu_s: f64,
    pub rss_kib: u64,
}

/// Clock ticks per second of /proc/PID/stat times: 100 on every Linux this runs on
/// (USER_HZ); reading it would need libc for one constant.
const TICKS_PER_SECOND: f64 = 100.0;

/// CPU time and RSS of `pids` summed (several nodes of one cluster), or of this
/// process when `pids` is empty.
pub fn sample(pids: &[u32]) -> ProcSample {
    if pids.is_empty() {
        return sample_one("/proc/self");
    }
    pids.iter().map(|p| sample_one(&format!("/proc/{p}"))).fold(
        ProcSample {
            cpu_s: 0.0,
            rss_kib: 0,
        },
        |a, b| ProcSample {
            cpu_s: a.cpu_s + b.cpu_s,
            rss_kib: a.rss_kib + b.rss_kib,
        },
    )
}

fn sample_one(dir: &str) -> ProcSample {
    let cpu_s = std::fs::read_to_string(format!("{dir}/stat"))
        .ok()
        .and_then(|stat| {
            // Fields after the command name (which may contain spaces) start at ") ".
            let rest = &stat[stat.rfind(')')? + 2..];
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = fields.get(11)?.parse().ok()?;
            let stime: f64 = fields.get(12)?.parse().ok()?;
            Some((utime + stime) / TICKS_PER_SECOND)
        })
        .unwrap_or(0.0);
    let rss_kib = std::fs::read_to_string(format!("{dir}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0);
    ProcSample { cpu_s, rss_kib }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_check_counts_missing_and_duplicates() {
        let published = vec![(1, 0), (2, 1), (3, 0), (4, 0)];
        let a = Receipts {
            seqs: vec![1, 3, 3],
            latencies_us: vec![],
        };
        let b = Receipts {
            seqs: vec![2],
            latencies_us: vec![],
        };
        let d = check_delivery(&published, &[(0, &a), (1, &b)]);
        assert_eq!(
            (d.expected, d.delivered, d.missing, d.duplicates),
            (4, 4, 1, 1)
        );
    }

    #[test]
    fn samples_this_process() {
        let s = sample(&[]);
        assert!(s.rss_kib > 0);
    }
}
