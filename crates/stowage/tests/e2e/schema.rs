//! The REST socket against its document: schemathesis (PyPI) generates
//! requests from `docs/openapi.yaml`, including malformed ones and
//! sequences that follow the document's links, and checks every answer
//! against it (see `schema_check.py` for the checks).

use stowage_testkit::Daemon;

use crate::BIN;

/// Long enough for every phase (examples, coverage, fuzzing, stateful) to
/// run; the run is bounded by this, not by a number of cases.
const SECONDS: &str = "60";

#[test]
fn every_rest_answer_is_one_the_document_declares() {
    let d = Daemon::start(BIN);
    let dir = env!("CARGO_MANIFEST_DIR");
    // schemathesis keeps a cache in its working directory.
    let work = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("python3")
        .current_dir(work.path())
        .arg(format!("{dir}/tests/e2e/schema_check.py"))
        .arg(d.socket())
        .arg(format!("{dir}/../../docs/openapi.yaml"))
        .arg(SECONDS)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A run that generated nothing would pass too: it must have tested.
    let summary = stdout
        .lines()
        .find(|l| l.contains(" generated, "))
        .unwrap_or_else(|| panic!("no summary in {stdout}"));
    let generated: u64 = summary.trim().split(' ').next().unwrap().parse().unwrap();
    assert!(generated >= 500, "{summary}");
    println!("schemathesis: {}", summary.trim());
}
