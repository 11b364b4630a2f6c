//! Protocol conformance: the Autobahn|Testsuite cases 1 to 13 (framing, pings, reserved
//! bits and opcodes, fragmentation, UTF-8, close handling, limits and performance,
//! auto-fragmentation, and permessage-deflate: compressed echoes of every size and
//! every offer of window size and context takeover), run by kosoku's fuzzing client
//! against the `/echo` endpoint, which is the same connection code as `/ws`, echoing,
//! with `PERMESSAGE_DEFLATE` on (cases 1 to 10 offer no compression). Any FAILED case
//! fails the test; the HTML and JSON reports are left in `target/autobahn/`.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autobahn_cases_1_to_13_pass_on_the_echo_endpoint() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let kosoku = root.join("target/kosoku/bin/kosoku");
    assert!(
        kosoku.exists(),
        "{} is missing: run scripts/test.sh, which installs it",
        kosoku.display()
    );
    // Case 9 sends messages of up to 16 MiB and a thousand messages in a row.
    let server = spawn_server(&[
        ("NILECAST_ECHO_ENDPOINT", "true"),
        ("PERMESSAGE_DEFLATE", "true"),
        // kosoku ends a compression case (12.*, 13.*) early when a ping arrives in the
        // middle of it, and the heartbeat pings every connection every 25 s. The
        // heartbeat is nilecast's own and has tests of its own (tests/heartbeat.rs):
        // here it is set beyond the run.
        ("HEARTBEAT_INTERVAL_MS", "3600000"),
        ("HEARTBEAT_TIMEOUT_MS", "3600000"),
        ("MAX_MESSAGE_BYTES", "20000000"),
        ("UPGRADES_PER_IP_PER_S", "0"),
    ]);
    let url = format!("ws://127.0.0.1:{}/echo", server.port);
    let report = root.join("target/autobahn");
    // Reports are named by the server's port: clear the last run's.
    let _ = std::fs::remove_dir_all(&report);
    let output = tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(kosoku);
        cmd.arg(&url);
        // The suite has no section 8.
        for case in [1, 2, 3, 4, 5, 6, 7, 9, 10, 12, 13] {
            cmd.arg("-i").arg(format!("{case}.*"));
        }
        cmd.arg("-p").arg("2").arg("-o").arg(&report).output()
    })
    .await
    .expect("join kosoku")
    .expect("run kosoku");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "Autobahn cases failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("wrote reports for"),
        "kosoku ran no cases:\n{stdout}\n{stderr}"
    );
}
