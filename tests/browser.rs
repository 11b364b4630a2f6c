//! The pages in a real browser: headless Chromium (driven by playwright-core) opens the
//! `/test` page of a server running its simulator and must see it connect and show live
//! `inventory:update` and `dashboard:data` events (tests/browser/test_page.mjs), and the
//! `/demo` page, which must show a change published during the test
//! (tests/browser/demo_page.mjs). Both pages run the JavaScript client.
//!
//! Needs Node.js, `npm ci` (playwright-core) and Debian's Chromium; `scripts/test.sh`
//! installs them. These tests fail, rather than skip, when they are missing, because a
//! browser check that silently does not run proves nothing.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// Runs `script` against a server with the simulator at `rate`, saving a screenshot to
/// `screenshot` (or a temporary file); asserts it succeeded and printed `expect`.
async fn browser_check(script: &str, rate: &str, screenshot: Option<String>, expect: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    assert!(
        root.join("node_modules/playwright-core").exists(),
        "node_modules/playwright-core is missing: run scripts/test.sh (or npm ci) first"
    );
    let server = spawn_server(&[("SIMULATE_RATE", rate)]);
    let url = format!("http://127.0.0.1:{}", server.port);
    let screenshot = screenshot.unwrap_or_else(|| {
        std::env::temp_dir()
            .join(format!("nilecast-{script}-{}.png", server.port))
            .display()
            .to_string()
    });
    let script = root.join("tests/browser").join(script);
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(script)
            .arg(&url)
            .arg(&screenshot)
            .current_dir(root)
            .output()
    })
    .await
    .expect("join the browser run")
    .expect("run node (is Node.js installed?)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains(expect),
        "browser check failed:\n{stdout}\n{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_test_page_shows_live_events_in_chromium() {
    browser_check("test_page.mjs", "50", None, "test page ok").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_page_shows_a_published_change_in_chromium() {
    // NILECAST_DEMO_SCREENSHOT=$PWD/docs/demo.png refreshes the screenshot in the docs.
    let screenshot = std::env::var("NILECAST_DEMO_SCREENSHOT").ok();
    browser_check("demo_page.mjs", "20", screenshot, "demo page ok").await;
}
