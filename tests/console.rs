//! The web console in a real browser: `tests/console/console.mjs` drives headless
//! Chromium (Debian's `chromium`, through playwright-core) against a live broker. `.ci/run`
//! installs both; on a machine without them the test says so and, outside CI, skips.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Server, ADMIN};

#[test]
fn console_connects_shows_a_push_marks_it_read_and_chats_in_chromium() {
    let Some((dir, chromium)) = common::browser("console browser test") else {
        return;
    };
    let server = Server::start(&[]);
    let (alice, bob) = (server.token("alice"), server.token("bob"));
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console");
    std::fs::create_dir_all(&out).expect("screenshot dir");
    let mut child = Command::new("node")
        .arg(dir.join("console.mjs"))
        .args([
            &format!("http://{}", server.addr),
            ADMIN,
            &alice,
            &bob,
            out.to_str().expect("path"),
        ])
        .env("CHROMIUM", &chromium)
        .spawn()
        .expect("node");
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the browser test did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        status.success(),
        "a console step failed (see the output above)"
    );
    for shot in ["console-desktop.png", "console-phone.png"] {
        let len = std::fs::metadata(out.join(shot))
            .map(|m| m.len())
            .unwrap_or(0);
        assert!(len > 10_000, "{shot}: {len} bytes");
    }
}
