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

/// The other way round: every `name.rs` the document mentions is a file of the project (under
/// `src/`, `tests/`, `examples/`, `fuzz/` or `cross/`, or `build.rs` beside Cargo.toml), so a
/// renamed or deleted module cannot leave a stale name behind.
#[test]
fn every_file_the_document_names_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let mut files = Vec::new();
    for dir in ["src", "tests", "examples", "fuzz", "cross"] {
        if root.join(dir).is_dir() {
            rust_files(&root.join(dir), &mut files);
        }
    }
    if root.join("build.rs").is_file() {
        files.push(root.join("build.rs"));
    }
    let paths: Vec<String> = files
        .iter()
        .filter_map(|f| f.strip_prefix(root).ok()?.to_str().map(str::to_owned))
        .collect();
    let mut named = Vec::new();
    for word in doc.split(|c: char| !(c.is_ascii_alphanumeric() || "_/.".contains(c))) {
        if let Some(stem) = word.strip_suffix(".rs") {
            if !stem.is_empty() {
                named.push(word.trim_start_matches('/').to_owned());
            }
        }
    }
    assert!(named.len() > 30, "found only {named:?}");
    let stale: Vec<&String> = named
        .iter()
        .filter(|n| {
            !paths
                .iter()
                .any(|p| p == *n || p.ends_with(&format!("/{n}")))
        })
        .collect();
    assert!(
        stale.is_empty(),
        "ARCHITECTURE.md names files that do not exist: {stale:?}"
    );
}
