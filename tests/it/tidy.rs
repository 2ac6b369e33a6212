//! Tidy checks on the source tree, run with the tests (rust-analyzer's `tidy`): every
//! source file opens with a `//!` comment saying what it owns, no source file passes
//! 800 lines and no function 120, so the code stays readable in one sitting.

use std::path::{Path, PathBuf};

/// The longest a source file may be.
const MAX_FILE_LINES: usize = 800;
/// The longest a function may be, from its `fn` line to its closing brace.
const MAX_FUNCTION_LINES: usize = 120;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf()
}

/// Every `.rs` file under `crates/` and `tests/`, outside build output.
fn source_files() -> Vec<PathBuf> {
    let root = workspace_root();
    let mut files = Vec::new();
    let mut dirs = vec![root.join("crates"), root.join("tests")];
    while let Some(dir) = dirs.pop() {
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if path.is_dir() {
                if name != "target" && !name.starts_with('.') {
                    dirs.push(path);
                }
            } else if name.ends_with(".rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    assert!(files.len() > 50, "found only {} source files", files.len());
    files
}

fn relative(path: &Path) -> String {
    path.strip_prefix(workspace_root())
        .unwrap_or(path)
        .display()
        .to_string()
}

#[test]
fn every_source_file_opens_with_a_module_comment() {
    let missing: Vec<String> = source_files()
        .iter()
        .filter(|path| {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            !text.trim_start().starts_with("//!")
        })
        .map(|path| relative(path))
        .collect();
    assert!(
        missing.is_empty(),
        "these files do not open with a `//!` comment saying what they own:\n{}",
        missing.join("\n")
    );
}

#[test]
fn no_source_file_is_longer_than_800_lines() {
    let long: Vec<String> = source_files()
        .iter()
        .filter_map(|path| {
            let lines = std::fs::read_to_string(path)
                .unwrap_or_default()
                .lines()
                .count();
            (lines > MAX_FILE_LINES).then(|| format!("{}: {lines} lines", relative(path)))
        })
        .collect();
    assert!(
        long.is_empty(),
        "split these files (at most {MAX_FILE_LINES} lines):\n{}",
        long.join("\n")
    );
}

/// Whether `line` (trimmed) starts a function: `fn`, after any visibility and
/// `const`, `async` or `unsafe`.
fn starts_function(line: &str) -> bool {
    let mut rest = line;
    loop {
        if let Some(after) = rest.strip_prefix("pub(") {
            match after.find(')') {
                Some(close) => rest = after[close + 1..].trim_start(),
                None => return false,
            }
            continue;
        }
        let next = ["pub ", "const ", "async ", "unsafe "]
            .iter()
            .find_map(|word| rest.strip_prefix(word));
        match next {
            Some(after) => rest = after,
            None => return rest.starts_with("fn "),
        }
    }
}

/// Functions longer than the limit in `text`, as (line, length). Relies on rustfmt's
/// layout: a function ends at the first `}` line with the indentation of its `fn`.
fn long_functions(text: &str) -> Vec<(usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut long = Vec::new();
    for (start, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        if !starts_function(trimmed) || trimmed.ends_with(';') {
            continue;
        }
        let indent = line.len() - trimmed.len();
        let close = format!("{}}}", " ".repeat(indent));
        let end = lines[start..]
            .iter()
            .position(|l| *l == close)
            .map_or(lines.len(), |offset| start + offset);
        let length = end - start + 1;
        if length > MAX_FUNCTION_LINES {
            long.push((start + 1, length));
        }
    }
    long
}

#[test]
fn no_function_is_longer_than_120_lines() {
    let mut long = Vec::new();
    for path in source_files() {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        for (line, length) in long_functions(&text) {
            long.push(format!("{}:{line}: {length} lines", relative(&path)));
        }
    }
    assert!(
        long.is_empty(),
        "split these functions (at most {MAX_FUNCTION_LINES} lines):\n{}",
        long.join("\n")
    );
}

#[test]
fn the_function_length_check_sees_a_long_function() {
    let body = "    let x = 1;\n".repeat(MAX_FUNCTION_LINES);
    let text = format!("fn short() {{\n}}\n\npub(in crate::a) async fn long() {{\n{body}}}\n");
    assert_eq!(long_functions(&text), vec![(4, MAX_FUNCTION_LINES + 2)]);
    assert!(starts_function("pub(crate) const unsafe fn f() {"));
    assert!(!starts_function("let fn_name = 1;"));
}
