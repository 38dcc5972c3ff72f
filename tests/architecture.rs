//! The layering ARCHITECTURE.md promises, checked against the source: every module of the
//! crate may import only the modules listed for it here. A new `crate::x` import that points
//! the wrong way (say, restore reaching into capture, or config into anything above it) fails
//! this test, naming the file and line; a new top-level module fails it until it is placed.
//! Change this table only together with ARCHITECTURE.md's "Layers" section.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Each top-level module and the modules it may import (`crate::<name>`), lowest first.
const ALLOWED: &[(&str, &[&str])] = &[
    ("wire", &[]),
    ("fault", &[]),
    ("audit", &[]),
    ("statement", &["wire"]),
    ("config", &["audit", "fault"]),
    ("control", &["audit"]),
    ("tls", &["config"]),
    ("telemetry", &["audit", "config", "statement"]),
    ("pgconn", &["config", "tls"]),
    (
        "gates",
        &[
            "audit",
            "config",
            "control",
            "statement",
            "telemetry",
            "wire",
        ],
    ),
    (
        "footprint",
        &[
            "audit",
            "config",
            "control",
            "statement",
            "telemetry",
            "wire",
        ],
    ),
    (
        "restore",
        &["audit", "config", "pgconn", "statement", "telemetry"],
    ),
    ("in_doubt", &["audit", "config", "pgconn", "telemetry"]),
    (
        "capture",
        &[
            "audit",
            "config",
            "fault",
            "footprint",
            "gates",
            "statement",
            "telemetry",
            "wire",
        ],
    ),
    (
        "proxy",
        &[
            "audit",
            "capture",
            "config",
            "control",
            "fault",
            "footprint",
            "gates",
            "in_doubt",
            "pgconn",
            "statement",
            "telemetry",
            "tls",
            "wire",
        ],
    ),
    ("signals", &["config", "telemetry"]),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file of `src/` belongs to (`None` for lib.rs and main.rs).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel.components().next()?.as_os_str().to_str()?.to_string();
    match first.strip_suffix(".rs") {
        Some("lib" | "main") => None,
        Some(m) => Some(m.to_string()),
        None => Some(first),
    }
}

/// Every `crate::<name>` a line names outside a `//` comment.
fn imports(line: &str) -> Vec<String> {
    let code = line.split("//").next().unwrap_or_default();
    code.match_indices("crate::")
        .filter(|(i, _)| !code[..*i].ends_with(|c: char| c.is_alphanumeric() || c == '_'))
        .map(|(i, m)| {
            code[i + m.len()..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

#[test]
fn every_import_points_down_the_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut wrong = Vec::new();
    for file in &files {
        let Some(module) = module_of(&src, file) else {
            continue;
        };
        let Some(may) = allowed.get(module.as_str()) else {
            wrong.push(format!(
                "{}: module `{module}` is not placed in tests/architecture.rs ALLOWED (nor in ARCHITECTURE.md's layers)",
                file.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            for target in imports(line) {
                if target != module && !may.contains(&target.as_str()) {
                    wrong.push(format!(
                        "{}:{}: `{module}` imports `crate::{target}`, which it may not (allowed: {may:?})\n    {}",
                        file.display(),
                        n + 1,
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layering ({}):\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

#[test]
fn the_import_scanner_sees_what_it_must() {
    assert_eq!(imports("use crate::capture::router::Collect;"), ["capture"]);
    assert_eq!(
        imports("    let x = crate::a::f(crate::b::g); // crate::c"),
        ["a", "b"]
    );
    assert!(imports("//! see crate::capture").is_empty());
    assert!(imports("let my_crate::x = 1;").is_empty());
}
