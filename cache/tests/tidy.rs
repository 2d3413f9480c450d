//! Every module of the crate opens with a `//!` line saying what it is for.

#[test]
fn every_module_says_what_it_is_for() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut stack = vec![root.join("src"), root.join("tests")];
    let mut seen = 0;
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).expect("read_dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&p).expect("read");
                assert!(
                    text.starts_with("//! "),
                    "{} does not open with a //! line",
                    p.display()
                );
                seen += 1;
            }
        }
    }
    assert!(seen >= 10, "only {seen} files found");
}
