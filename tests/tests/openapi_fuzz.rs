//! The contract, checked by an independent client: schemathesis (pinned in
//! `tests/schemathesis/requirements.txt`, installed by `tests/setup`) generates requests from
//! `edge/openapi.yaml`, valid and invalid, and sends them to an in-process edge with a valid key.
//! Every check is on (`tests/schemathesis/schemathesis.toml`): a server error, a status, header
//! or body the spec does not allow, valid data refused, invalid data accepted, or any warning
//! (such as most generated data being refused) fails the test. `tests/schemathesis/hooks.py`
//! teaches it partial success (a 2xx must reject exactly the events the schema calls invalid)
//! and gives every idempotency key a unique suffix (a reused key with another body is `422`).
//! The seed is fixed so a failure reproduces; `SLUICE_FUZZ_SEED` picks another.
//!
//! The edge runs with the defaults a client sees, except for rules that depend on the clock or
//! on how fast a client sends, which a schema cannot state: the timestamp window is widened (a
//! generated date-time lies anywhere in years 0001-9999) and the debug endpoint's per-key rate is
//! raised (the fuzzer sends hundreds of requests a second).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sluice_tests::edge_harness::InProcessEdge;

/// The whole run, generation included; the test fails if schemathesis is still going then.
const BUDGET: Duration = Duration::from_secs(120);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `SLUICE_SCHEMATHESIS`, else the virtualenv `tests/setup` creates under `target/`.
fn schemathesis() -> PathBuf {
    let path = std::env::var_os("SLUICE_SCHEMATHESIS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/schemathesis/bin/schemathesis"));
    assert!(
        path.is_file(),
        "{} is missing: run `tests/setup` (or point SLUICE_SCHEMATHESIS at a schemathesis binary)",
        path.display()
    );
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_difference_between_the_spec_and_the_edge() {
    let bin = schemathesis();
    let e = InProcessEdge::start(|c| {
        // Year 0001 is about 63.1e9 s before the epoch; ahead of now is clamped (the default).
        c.validation.max_past_secs = 100_000_000_000;
        c.limits.debug_requests_per_sec = 100_000;
    })
    .await;
    let (addr, key) = (e.addr(), e.key.clone());
    let seed = std::env::var("SLUICE_FUZZ_SEED").unwrap_or_else(|_| "20261202".into());
    let work = e.dir.path().join("schemathesis");
    std::fs::create_dir_all(&work).unwrap();
    let log = work.join("output.txt");
    let status = {
        let (work, log) = (work.clone(), log.clone());
        tokio::task::spawn_blocking(move || {
            // Output to a file: a pipe nobody reads while waiting would fill up and stall it.
            let out = std::fs::File::create(&log).unwrap();
            let err = out.try_clone().unwrap();
            let mut child = Command::new(&bin)
                .current_dir(repo())
                .env("SCHEMATHESIS_HOOKS", "hooks")
                .env("PYTHONPATH", repo().join("tests/schemathesis"))
                .args(["--config-file", "tests/schemathesis/schemathesis.toml", "run", "edge/openapi.yaml"])
                .arg(format!("--url=http://{addr}"))
                .arg(format!("--header=Authorization: Bearer {key}"))
                .arg(format!("--seed={seed}"))
                // One worker: CPython 3.11's parser is not thread-safe under Hypothesis' lambda
                // introspection ("AST constructor recursion depth mismatch").
                // Every check is on in the config file, which turns two off for the SDK routes; a
                // `--checks` flag would override that. No stateful phase: no operation's answer
                // feeds another's request.
                .args(["--max-examples=200", "--no-color", "--workers=1"])
                .arg("--phases=examples,coverage,fuzzing")
                .args(["--generation-database=none", "--report-dir"])
                .arg(&work)
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
            let started = Instant::now();
            loop {
                if let Some(status) = child.try_wait().expect("schemathesis status") {
                    return Some(status);
                }
                if started.elapsed() > BUDGET {
                    let _ = child.kill();
                    let _ = child.wait();
                    return None;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
        .await
        .expect("schemathesis task")
    };
    let stdout = std::fs::read_to_string(&log).unwrap_or_default();
    let status = status.unwrap_or_else(|| panic!("schemathesis ran over its {BUDGET:?} budget:\n{stdout}"));
    assert!(status.success(), "schemathesis found contract defects:\n{stdout}");
    // A run that tested nothing also exits 0: every operation of the spec must have been tested.
    let total = summary_count(&stdout, "Selected:");
    assert!(total.is_some_and(|n| n > 0) && summary_count(&stdout, "Tested:") == total, "{stdout}");
    e.shutdown().await;
}

/// The number after `label` in schemathesis' summary (`Selected: 5/5`, `Tested: 5`).
fn summary_count(stdout: &str, label: &str) -> Option<usize> {
    let rest = stdout.lines().find_map(|l| l.trim().strip_prefix(label))?;
    rest.trim().split('/').next_back()?.parse().ok()
}
