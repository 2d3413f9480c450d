//! Source hygiene: every module of the crate opens with a `//!` comment.

#[test]
fn every_module_starts_with_a_doc_comment() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut checked = 0;
    for dir in ["src", "src/bin", "tests", "benches"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        for e in entries {
            let path = e.unwrap().path();
            if path.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                assert!(
                    text.starts_with("//!"),
                    "{} does not start with a //! comment",
                    path.display()
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 10, "checked {checked} files");
}
