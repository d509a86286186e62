//! An arbitrary pattern through `PathPattern::parse`; when it compiles, the
//! arbitrary paths that follow it (one per line) are matched against it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_ratelimit::policy::{PathPattern, PathSegments};
use tower_ratelimit::ConfigErrorKind;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let pattern = lines.next().unwrap_or_default();
    match PathPattern::parse(pattern) {
        Ok(compiled) => {
            assert_eq!(compiled.as_str(), pattern);
            for path in lines {
                let segments = PathSegments::new(path);
                for i in 0..=segments.len() {
                    let _ = segments.get(i);
                }
                if let Some(captures) = compiled.matches(&segments) {
                    for name in compiled.capture_names() {
                        assert!(
                            captures.get(name).is_some(),
                            "capture {name} of {pattern} on {path}"
                        );
                    }
                }
            }
        }
        Err(err) => assert_eq!(err.kind(), ConfigErrorKind::BadPattern),
    }
});
