//! The README shows each platform's policy file; this keeps the copies true.

/// A policy file without its leading comment block (the page it reads).
fn without_header(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines
        .iter()
        .position(|l| !l.starts_with('#') && !l.is_empty())
        .unwrap_or(lines.len());
    lines[start..].join("\n").trim_end().to_owned()
}

#[test]
fn every_preset_in_the_readme_is_its_file() {
    let root = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    for name in ["flireo", "nixflex", "talkpilot", "exotel"] {
        let file =
            std::fs::read_to_string(format!("{root}/examples/policies/{name}.toml")).unwrap();
        let marker = format!("`examples/policies/{name}.toml`:\n\n```toml\n");
        let start = readme
            .find(&marker)
            .unwrap_or_else(|| panic!("the README shows {name}.toml"))
            + marker.len();
        let end = start + readme[start..].find("\n```").unwrap();
        assert_eq!(
            &readme[start..end],
            without_header(&file),
            "README's copy of {name}.toml"
        );
        tower_ratelimit::Policy::from_toml(&file).unwrap();
    }
}
