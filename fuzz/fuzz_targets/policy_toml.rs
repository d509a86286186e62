//! Arbitrary UTF-8 through `Policy::from_toml`: a policy or a `ConfigError`
//! with a position inside the text, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_ratelimit::Policy;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(err) = Policy::from_toml(text) {
        let line = err.line().expect("every file error has a line");
        let column = err.column().expect("every file error has a column");
        let content = text
            .split('\n')
            .nth(line - 1)
            .expect("the line is in the text");
        assert!(
            column >= 1 && column <= content.chars().count() + 1,
            "{err}"
        );
        assert!(!err.message().is_empty());
        let _ = err.to_string();
    }
});
