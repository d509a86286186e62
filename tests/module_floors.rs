//! The crate's modules import one way. The crate's docs ("How the crate is
//! built", in `src/lib.rs`) stand the modules in floors, top to bottom; this
//! reads that table and every source file, and checks that each module
//! imports only from the floors below its own, so the table and the code
//! cannot part.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The table's floors, top first, as each module's floor. A line's first
/// column (up to two spaces) names a floor's modules; one that ends with a
/// comma goes on on the next line.
fn floors(lib: &str) -> BTreeMap<String, usize> {
    let table = lib
        .split("# How the crate is built")
        .nth(1)
        .and_then(|section| section.split("```text").nth(1))
        .and_then(|table| table.split("```").next())
        .expect("src/lib.rs has the table of floors");
    let mut floors = BTreeMap::new();
    let mut floor = 0;
    let mut goes_on = false;
    for line in table.lines() {
        let line = line.trim_start_matches("//!").trim();
        let Some(column) = line.split("  ").next().filter(|c| !c.is_empty()) else {
            continue;
        };
        for module in column.split(',').map(str::trim).filter(|m| !m.is_empty()) {
            let before = floors.insert(module.to_string(), floor);
            assert_eq!(before, None, "{module} stands on two floors");
        }
        goes_on = column.ends_with(',');
        if !goes_on {
            floor += 1;
        }
    }
    assert!(!goes_on, "the table's last floor ends with a comma");
    floors
}

/// The modules `src/lib.rs` declares.
fn declared(lib: &str) -> Vec<String> {
    lib.lines()
        .filter_map(|line| {
            let line = line.trim();
            let rest = line
                .strip_prefix("pub mod ")
                .or_else(|| line.strip_prefix("mod "))?;
            Some(rest.trim_end_matches(';').to_string())
        })
        .collect()
}

/// The module each name the crate's root re-exports comes from
/// (`pub use decision::{Basis, Decision};` makes `crate::Decision` a
/// `decision` import).
fn reexports(lib: &str) -> BTreeMap<String, String> {
    let mut names = BTreeMap::new();
    for line in lib.lines() {
        let Some(path) = line.trim().strip_prefix("pub use ") else {
            continue;
        };
        let path = path.trim_end_matches(';');
        let Some((module, items)) = path.split_once("::") else {
            continue;
        };
        let items = items.trim_start_matches('{').trim_end_matches('}');
        for item in items.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let name = item.rsplit("::").next().unwrap_or(item);
            names.insert(name.to_string(), module.to_string());
        }
    }
    names
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

/// The code of `text`, without comments (whole-line ones: doc links are
/// not imports) and without its unit tests (a `#[cfg(test)]` module, last
/// in a file).
fn code(text: &str) -> String {
    let text = text.split("\n#[cfg(test)]\nmod ").next().unwrap_or(text);
    text.lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first segments of the paths `code` names under `crate::`
/// (`crate::store::Store` gives `store`, `crate::{a::X, Y}` gives `a` and
/// `Y`).
fn crate_paths(code: &str) -> Vec<String> {
    let ident = |s: &str| -> String {
        s.trim()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut found = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        if code[..at].ends_with('$') {
            continue;
        }
        let rest = &code[at + "crate::".len()..];
        match rest.strip_prefix('{') {
            Some(group) => {
                let group = group.split('}').next().unwrap_or("");
                found.extend(group.split(',').map(ident).filter(|i| !i.is_empty()));
            }
            None => found.push(ident(rest)),
        }
    }
    found
}

#[test]
fn every_module_imports_only_from_the_floors_below_its_own() {
    let lib = fs::read_to_string(src().join("lib.rs")).unwrap();
    let floors = floors(&lib);
    let reexports = reexports(&lib);

    let mut declared = declared(&lib);
    declared.sort();
    let tabled: Vec<String> = floors.keys().cloned().collect();
    assert_eq!(declared, tabled, "the table names every module once");

    let mut files = Vec::new();
    sources(&src(), &mut files);
    let mut checked = 0;
    let mut back_up = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(src()).unwrap();
        let first = relative.components().next().unwrap().as_os_str();
        let module = first.to_str().unwrap().trim_end_matches(".rs");
        if module == "lib" {
            continue;
        }
        let own = floors[module];
        let text = fs::read_to_string(file).unwrap();
        for name in crate_paths(&code(&text)) {
            let target = reexports.get(&name).unwrap_or(&name);
            let Some(&floor) = floors.get(target.as_str()) else {
                continue;
            };
            checked += 1;
            if target != module && floor <= own {
                back_up.push(format!(
                    "{} (floor {own}) imports {name} from {target} (floor {floor})",
                    relative.display()
                ));
            }
        }
    }
    assert!(
        checked > 100,
        "only {checked} imports read: is the parser right?"
    );
    assert!(
        back_up.is_empty(),
        "imports that do not go down:\n{}",
        back_up.join("\n")
    );
}

#[test]
fn the_reader_finds_imports_in_every_form_and_skips_comments_and_unit_tests() {
    let text = "use crate::store::Store;\n\
                use crate::{policy::Quota, Decision};\n\
                /// See [`x`](crate::admin).\n\
                fn f() { crate::key::hash(); }\n\
                #[cfg(test)]\nmod tests {\n    use crate::layer::X;\n}\n";
    assert_eq!(
        crate_paths(&code(text)),
        ["store", "policy", "Decision", "key"]
    );
    let lib = "//! # How the crate is built\n//! ```text\n\
               //! a, b   top\n//! c,     goes on\n//! d      still c's floor\n\
               //! e      ground\n//! ```\n";
    let floors = floors(lib);
    assert_eq!(
        floors.into_iter().collect::<Vec<_>>(),
        [
            ("a".to_string(), 0),
            ("b".to_string(), 0),
            ("c".to_string(), 1),
            ("d".to_string(), 1),
            ("e".to_string(), 2)
        ]
    );
}
