//! Tests that run inside a private network namespace of their own.
//!
//! ```ignore
//! #[test]
//! fn my_test() {
//!     if util::netns::enter("my_test", &["tc"]) {
//!         // Inside the namespace: `lo` is down until the body sets it up.
//!     }
//! }
//! ```
//!
//! The test re-executes its own binary under `unshare -n` (with
//! [`CHILD_ENV`] set, running only itself), so whatever it does to the
//! network never touches the host's. Where it cannot run — `unshare -n`
//! not permitted (not root, a container without `CAP_SYS_ADMIN`), or a
//! tool missing (`unshare`, `ip` and the ones asked for) — the test is
//! skipped with the reason on stderr ([`super::skip`]), except under
//! `CI=true`, where `.ci/run` installs the tools and a skip fails the test.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Instant;

/// Set in the child's environment: we are inside the namespace.
pub const CHILD_ENV: &str = "MSGLOOP_NETNS_CHILD";

/// `true` inside the namespace: run the test body. `false` in the parent,
/// once the child passed (or the test was skipped, see [`super::skip`]); a
/// failing child fails the parent with its output.
pub fn enter(test_name: &str, tools: &[&str]) -> bool {
    if std::env::var_os(CHILD_ENV).is_some() {
        return true;
    }
    let _g = super::serial();
    let version_flag = |tool: &str| match tool {
        "ip" | "tc" => "-V",
        _ => "--version",
    };
    for tool in ["unshare", "ip"].iter().chain(tools) {
        if let Err(e) = Command::new(tool).arg(version_flag(tool)).output() {
            super::skip(
                test_name,
                format_args!(
                    "`{tool}` cannot be run ({e}); install util-linux, iproute2 and nftables"
                ),
            );
            return false;
        }
    }
    let probe = Command::new("unshare")
        .args(["-n", "--", "true"])
        .output()
        .expect("run unshare");
    if !probe.status.success() {
        let err = String::from_utf8_lossy(&probe.stderr).trim().to_string();
        if err.contains("Operation not permitted") || err.contains("Permission denied") {
            // Not root, or a container without CAP_SYS_ADMIN.
            super::skip(
                test_name,
                format_args!("`unshare -n` is not permitted here: {err}"),
            );
        } else {
            super::skip(
                test_name,
                format_args!("`unshare -n -- true` failed ({}): {err}", probe.status),
            );
        }
        return false;
    }
    let exe = std::env::current_exe().expect("current_exe");
    let start = Instant::now();
    let out = Command::new("unshare")
        .arg("-n")
        .arg("--")
        .arg(&exe)
        .args(["--exact", test_name, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .stdin(Stdio::null())
        .output()
        .expect("run the test binary under unshare -n");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!(
        "--- in the namespace ({:.1} s) ---",
        start.elapsed().as_secs_f64()
    );
    print!("{stdout}");
    eprint!("{stderr}");
    // What the child skipped (see `super::skip`) must show in this
    // process's uncaptured stderr too, not only in the captured output.
    for line in stderr.lines().filter(|l| l.starts_with("SKIPPED ")) {
        let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
    }
    assert!(
        out.status.success(),
        "{test_name}: the run in the namespace failed ({}); its output is above",
        out.status
    );
    assert!(
        stdout.contains("1 passed"),
        "the child ran no test (name filter `{test_name}` matched nothing?)"
    );
    false
}
