//! House rules of this crate that a compiler does not check: every module says what it is
//! for in a `//!` line at its top.

use std::path::Path;

#[test]
fn every_module_opens_with_a_doc_comment() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for dir in ["src", "tests"] {
        for e in std::fs::read_dir(root.join(dir)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().and_then(|x| x.to_str()) != Some("rs") {
                continue;
            }
            let text = std::fs::read_to_string(&p).unwrap();
            assert!(
                text.starts_with("//!"),
                "{} does not open with a //! line",
                p.display()
            );
        }
    }
}
