//! Protocol conformance: the Autobahn|Testsuite cases 1 to 10 (framing, pings, reserved
//! bits and opcodes, fragmentation, UTF-8, close handling, limits and performance,
//! auto-fragmentation), run by kosoku's fuzzing client against the `/echo` endpoint,
//! which is the same connection code as `/ws`, echoing. nilecast offers no
//! permessage-deflate, so cases 12 and 13 do not apply. Any FAILED case fails the test;
//! the HTML and JSON reports are left in `target/autobahn/`.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autobahn_cases_1_to_10_pass_on_the_echo_endpoint() {
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
        ("MAX_MESSAGE_BYTES", "20000000"),
        ("UPGRADES_PER_IP_PER_S", "0"),
    ]);
    let url = format!("ws://127.0.0.1:{}/echo", server.port);
    let report = root.join("target/autobahn");
    let output = tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(kosoku);
        cmd.arg(&url);
        // The suite has no section 8.
        for case in [1, 2, 3, 4, 5, 6, 7, 9, 10] {
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
