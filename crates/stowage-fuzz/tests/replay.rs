//! Replays every committed fuzz corpus (`fuzz/corpus/TARGET/`) through its
//! target on the stable toolchain: what a fuzzer once found stays fixed,
//! and the seeds that reach deep states keep passing. `bench/fuzz` grows
//! the corpora.

use std::path::Path;

#[test]
fn every_corpus_passes_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    let mut report = Vec::new();
    for (name, target) in stowage_fuzz::TARGETS {
        let dir = root.join(name);
        let mut inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        inputs.sort();
        assert!(
            !inputs.is_empty(),
            "{name}: an empty corpus replays nothing"
        );
        for input in &inputs {
            let data = std::fs::read(input).unwrap();
            let outcome = std::panic::catch_unwind(|| target(&data));
            assert!(outcome.is_ok(), "{name}: {} fails", input.display());
        }
        report.push(format!("{name}: {}", inputs.len()));
    }
    println!("replayed {}", report.join(", "));
}
