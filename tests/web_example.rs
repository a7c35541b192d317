//! The runnable web example (`examples/web`) end to end: a live broker, the example's own
//! backend (`node examples/web/server.js`, signing token requests with the broker's
//! secret), and its page in headless Chromium (`tests/console/web_example.mjs`, Debian's
//! `chromium` through playwright-core, as `tests/console.rs`). The page connects with the
//! project's JavaScript client, asks the backend for a push and a chat message, and must
//! show both. `.ci/run` installs the browser; without it the test says so and, outside
//! CI, skips.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Server, ADMIN, SECRET};

/// A child process killed when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `node examples/web/server.js` on port 0 against `server` and returns it with
/// its URL, read from the line it prints once it listens.
fn start_example(root: &Path, server: &Server) -> (Killed, String) {
    let mut child = Command::new("node")
        .arg(root.join("examples/web/server.js"))
        .env("SHARDCAST_URL", format!("http://{}", server.addr))
        .env("SHARDCAST_SECRET", SECRET)
        .env("SHARDCAST_ADMIN_KEY", ADMIN)
        .env("HOST", "127.0.0.1")
        .env("PORT", "0")
        .stdout(Stdio::piped())
        .spawn()
        .expect("node (Node ≥ 18)");
    let stdout = child.stdout.take().expect("stdout");
    let child = Killed(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("{line}");
            let _ = tx.send(line);
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("examples/web/server.js printed no start-up line within 20 s");
    let url = line
        .strip_prefix("example: ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("unexpected start-up line {line:?}"))
        .to_string();
    (child, url)
}

#[test]
fn the_web_example_shows_a_push_and_a_chat_message_in_chromium() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let Some((dir, chromium)) = common::browser("web example browser test") else {
        return;
    };
    let server = Server::start(&[]);
    let (_example, url) = start_example(root, &server);
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("web-example");
    std::fs::create_dir_all(&out).expect("screenshot dir");
    let shot = out.join("web-example.png");
    let _ = std::fs::remove_file(&shot);
    let mut driver = Killed(
        Command::new("node")
            .arg(dir.join("web_example.mjs"))
            .args([url.as_str(), "webuser", out.to_str().expect("path")])
            .env("CHROMIUM", &chromium)
            .spawn()
            .expect("node"),
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = driver.0.try_wait().expect("wait") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the browser test did not finish within 120 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        status.success(),
        "a web example step failed (see the output above)"
    );
    let len = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(len > 10_000, "web-example.png: {len} bytes");

    // What the page asked for went through the broker: the notification is stored for
    // the user and the chat message is in its history.
    let (status, v) = server.http(
        "GET",
        "/message-log?domain=default&toId=webuser",
        Some(ADMIN),
        None,
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["content"]["total"], 1, "{v}");
    assert_eq!(v["content"]["list"][0]["fromId"], "support", "{v}");
}
