//! ARCHITECTURE.md's code map cannot drift silently: every module file under `src/` is named in
//! it (as `name`, `parent::name` or `name.rs`), so a new module fails this test until the map
//! says what it owns.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src/") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_module_in_src_is_in_the_code_map() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let map = std::fs::read_to_string(root.join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    assert!(files.len() > 10, "found only {files:?}");
    let missing: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let stem = f.file_stem()?.to_str()?;
            // `foo/mod.rs` is the module `foo`.
            let name = if stem == "mod" {
                f.parent()?.file_name()?.to_str()?
            } else {
                stem
            };
            let named = [
                format!("`{name}`"),
                format!("::{name}`"),
                format!("{name}.rs"),
            ]
            .iter()
            .any(|n| map.contains(n.as_str()));
            (!named).then(|| f.strip_prefix(root).unwrap_or(f).display().to_string())
        })
        .collect();
    assert!(
        missing.is_empty(),
        "not in ARCHITECTURE.md's code map: {missing:?}"
    );
}
