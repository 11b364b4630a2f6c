//! JSON lines to markdown: one table per scenario, one row per server, with each
//! figure's ratio to nilecast's.

use std::collections::BTreeMap;
use std::io::Read;

use serde_json::Value;

/// The figures shown per scenario: (JSON pointer, column title, higher is better).
const COLUMNS: [(&str, &str, bool); 11] = [
    ("/deliveries_per_s", "deliveries/s", true),
    ("/latency/p50_ms", "p50 ms", false),
    ("/latency/p99_ms", "p99 ms", false),
    (
        "/server_cpu_s_per_million",
        "server CPU s / M deliveries",
        false,
    ),
    ("/wire_bytes_per_delivery", "wire bytes / delivery", false),
    ("/rss_per_connection_bytes", "RSS B / conn", false),
    (
        "/extra/best_deliveries_per_s_p99_under_50ms",
        "deliveries/s at p99 < 50 ms",
        true,
    ),
    ("/extra/resume_ms", "resume ms", false),
    ("/extra/broadcast_ms", "broadcast to all ms", false),
    ("/missing", "missing", false),
    (
        "/loadgen_core_share",
        "load generator core (deciding step)",
        false,
    ),
];

pub fn run(files: &[String]) -> anyhow::Result<()> {
    let mut text = String::new();
    if files.is_empty() {
        std::io::stdin().read_to_string(&mut text)?;
    }
    for f in files {
        text.push_str(&std::fs::read_to_string(f)?);
        text.push('\n');
    }
    let runs: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l.trim()).ok())
        .collect();
    let mut by_scenario: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for r in &runs {
        let scenario = r["scenario"].as_str().unwrap_or("?");
        // Broadcast runs at different rates are different comparisons.
        let key = match (scenario, r["rate"].as_f64()) {
            ("broadcast", Some(rate)) => format!("broadcast at {rate:.0} changes/s"),
            _ => scenario.to_string(),
        };
        by_scenario.entry(key).or_default().push(r);
    }
    for (scenario, rows) in by_scenario {
        let columns: Vec<_> = COLUMNS
            .iter()
            .filter(|(ptr, _, _)| {
                rows.iter()
                    .any(|r| r.pointer(ptr).is_some_and(|v| !v.is_null()))
            })
            .collect();
        let reference = rows
            .iter()
            .find(|r| r["server"] == "nilecast" && r["protocol"] == "native")
            .copied();
        println!("### {scenario}\n");
        let first = rows[0];
        println!(
            "{} connections, {} keys, rate {} changes/s, {} s\n",
            first["connections"],
            first["keys"],
            first["rate"]
                .as_f64()
                .map_or("-".into(), |r| format!("{r:.0}")),
            first["duration_s"]
                .as_f64()
                .map_or("-".into(), |d| format!("{d:.1}"))
        );
        let titles: Vec<&str> = columns.iter().map(|(_, t, _)| *t).collect();
        println!(
            "| server | protocol | subscribed | {} |",
            titles.join(" | ")
        );
        println!("|---|---|---|{}|", vec!["---"; titles.len()].join("|"));
        for r in &rows {
            let cells: Vec<String> = columns
                .iter()
                .map(|(ptr, _, higher)| {
                    let Some(v) = r.pointer(ptr).and_then(Value::as_f64) else {
                        return "-".into();
                    };
                    let base = reference
                        .and_then(|n| n.pointer(ptr))
                        .and_then(Value::as_f64);
                    let ratio = match base {
                        Some(b)
                            if b > 0.0
                                && v > 0.0
                                && !std::ptr::eq(*r, reference.unwrap_or(&Value::Null))
                                && *ptr != "/missing" =>
                        {
                            // "x times nilecast": >1 means the peer's figure is larger.
                            let _ = higher;
                            format!(" ({:.2}x)", v / b)
                        }
                        _ => String::new(),
                    };
                    let shown = if *ptr == "/missing" {
                        format!("{v:.0}")
                    } else if *ptr == "/loadgen_core_share" {
                        // Marked where the load generator may have made the decision.
                        let mark = if r["loadgen_may_have_decided"] == true {
                            " (load-bound?)"
                        } else {
                            ""
                        };
                        return format!("{:.0}%{mark}", v * 100.0);
                    } else {
                        human(v)
                    };
                    format!("{shown}{ratio}")
                })
                .collect();
            println!(
                "| {} | {} | {} | {} |",
                r["server"].as_str().unwrap_or("?"),
                r["protocol"].as_str().unwrap_or("?"),
                r["subscribed"],
                cells.join(" | ")
            );
        }
        println!();
    }
    Ok(())
}

fn human(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}
