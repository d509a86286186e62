//! Routes: which requests a limit's route matches, by method and path.
//!
//! A [`Route`] is a set of [`Methods`] and a [`PathPattern`], parsed from its
//! text, `"[METHODS] PATTERN"` (`"POST /v1/keys"`, `"POST,PUT,PATCH,DELETE *"`,
//! `"/v1/calls/{call_id}"` for any method; see
//! [`Limit::route`](crate::Limit::route)). A route that names `GET` also
//! matches `HEAD` (a server answers `HEAD` with the `GET` handler), unless it
//! opts out with [`Route::without_head`]. A match yields the path's
//! [`Captures`], which key extractors read.

mod methods;
mod pattern;
mod percent;

use std::fmt;
use std::str::FromStr;

pub(crate) use methods::Methods;
pub(crate) use pattern::{Captures, PathPattern, PathSegments};
pub(crate) use percent::PercentDecode;

use crate::error::ConfigError;

/// Methods and a path pattern: the requests one route of a limit matches.
///
/// The methods are those the route names; the `GET` it names brings `HEAD`
/// along unless [`Route::without_head`] leaves it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Route {
    /// The methods as named.
    methods: Methods,
    /// The methods matched: those named, and `HEAD` with a named `GET`
    /// unless the route leaves it out.
    matched: Methods,
    pattern: PathPattern,
}

impl Route {
    /// A route for `methods` and `pattern`; if `methods` holds `GET`, the
    /// route matches `HEAD` too.
    pub(crate) fn new(methods: Methods, pattern: PathPattern) -> Self {
        let matched = if methods.meets(Methods::GET) {
            methods.or(Methods::HEAD)
        } else {
            methods
        };
        Route {
            methods,
            matched,
            pattern,
        }
    }

    /// Parses `"[METHODS] PATTERN"`: methods as [`Methods`] parses them,
    /// then the path pattern; without methods, the route is for every
    /// method. Errors name the part at fault (`methods` or `path`).
    pub(crate) fn parse(text: &str) -> Result<Self, ConfigError> {
        let text = text.trim();
        let (methods, path) = match text.split_once(char::is_whitespace) {
            Some((methods, path)) => (methods.parse()?, path.trim()),
            None => (Methods::ANY, text),
        };
        let pattern = PathPattern::parse(path).map_err(|e| e.within("path"))?;
        Ok(Route::new(methods, pattern))
    }

    /// The same route without `HEAD`: a `HEAD` request does not match it
    /// (and goes on to the routes after it). The route must name `GET` and
    /// not name `HEAD`; the error's field is `head`.
    pub(crate) fn without_head(self) -> Result<Self, ConfigError> {
        let methods = self.methods;
        if !methods.meets(Methods::GET) {
            return Err(ConfigError::invalid(
                "head",
                format!(
                    "the route's methods ({methods}) do not include GET, \
                     so it has no HEAD to leave out"
                ),
            ));
        }
        if methods.meets(Methods::HEAD) {
            return Err(ConfigError::invalid(
                "head",
                format!(
                    "the route's methods ({methods}) include HEAD; \
                     list them without HEAD to leave it out"
                ),
            ));
        }
        Ok(Route {
            matched: methods,
            ..self
        })
    }

    /// The methods the route names (without the `HEAD` a `GET` brings).
    #[cfg(test)]
    pub(crate) fn methods(&self) -> Methods {
        self.methods
    }

    /// The path pattern.
    /// Whether this route matches every request `other` matches (so that
    /// `other`, after it in a limit, never matches). Literals are compared
    /// as written: two spellings of one segment are not seen as the same.
    pub(crate) fn covers(&self, other: &Route) -> bool {
        self.matched.contains(other.matched) && self.pattern.covers(&other.pattern)
    }

    /// Whether `earlier` routes, together, match every request this one
    /// matches: each of its methods is matched, on every path it matches,
    /// by one of them (the indices of those that take part, if so).
    pub(crate) fn covered_by<'r>(
        &self,
        earlier: impl IntoIterator<Item = &'r Route>,
    ) -> Option<Vec<usize>> {
        let mut methods = Methods::NONE;
        let mut by = Vec::new();
        for (i, route) in earlier.into_iter().enumerate() {
            if route.matched.meets(self.matched) && route.pattern.covers(&self.pattern) {
                methods = methods.or(route.matched);
                by.push(i);
            }
        }
        methods.contains(self.matched).then_some(by)
    }

    pub(crate) fn pattern(&self) -> &PathPattern {
        &self.pattern
    }

    /// Matches a request's method (as [`Methods::of`] gives it) and path;
    /// on success, the path's captures. Inline: most routes a request is
    /// tried against are turned away by the method, a bit test.
    #[inline]
    pub(crate) fn matches<'p>(
        &'p self,
        method: Methods,
        path: &'p PathSegments<'p>,
    ) -> Option<Captures<'p>> {
        if !self.matched.meets(method) {
            return None;
        }
        self.pattern.matches(path)
    }
}

impl fmt::Display for Route {
    /// The route's text as [`Route::parse`] reads it: `POST /v1/keys`,
    /// `* /v1/calls/{id}` (without the `HEAD` a `GET` brings).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.methods, self.pattern)
    }
}

impl FromStr for Route {
    type Err = ConfigError;

    /// Parses `"[METHODS] PATTERN"`, as [`Route::parse`] does.
    fn from_str(text: &str) -> Result<Self, ConfigError> {
        Route::parse(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ConfigErrorKind;
    use http::Method;

    fn route(text: &str) -> Route {
        Route::parse(text).unwrap()
    }

    #[test]
    fn text_and_parts_give_the_same_route() {
        let pattern = |p| PathPattern::parse(p).unwrap();
        assert_eq!(
            route("POST /v1/keys"),
            Route::new(Methods::POST, pattern("/v1/keys"))
        );
        assert_eq!(
            route("  GET,HEAD   /x "),
            Route::new(Methods::GET.or(Methods::HEAD), pattern("/x"))
        );
        assert_eq!(
            route("/v1/calls/{id}"),
            Route::new(Methods::ANY, pattern("/v1/calls/{id}"))
        );
        assert_eq!(route("*"), Route::new(Methods::ANY, pattern("*")));
        assert_eq!(route("* *"), route("*"));
    }

    #[test]
    fn errors_name_the_part_at_fault() {
        let err = Route::parse("FETCH /x").unwrap_err();
        assert_eq!(
            (err.kind(), err.field()),
            (ConfigErrorKind::InvalidValue, "methods")
        );
        let err = Route::parse("GET /x/{id").unwrap_err();
        assert_eq!(
            (err.kind(), err.field()),
            (ConfigErrorKind::BadPattern, "path")
        );
        for text in ["POST /x", "HEAD /x", "GET,HEAD /x", "/x"] {
            let err = route(text).without_head().unwrap_err();
            assert_eq!(err.field(), "head", "{text}");
        }
    }

    #[test]
    fn get_brings_head_unless_left_out() {
        let path = PathSegments::new("/x");
        let head = Method::from_bytes(b"head").unwrap();
        let get = route("GET /x");
        assert!(get.matches(Methods::of(&Method::HEAD), &path).is_some());
        assert!(get.matches(Methods::of(&head), &path).is_some());
        let get = get.without_head().unwrap();
        assert_eq!(get.methods(), Methods::GET);
        assert!(get.matches(Methods::of(&Method::HEAD), &path).is_none());
        assert!(get.matches(Methods::of(&head), &path).is_none());
        assert!(get.matches(Methods::of(&Method::GET), &path).is_some());
        assert!(route("POST /x")
            .matches(Methods::of(&Method::HEAD), &path)
            .is_none());
    }

    #[test]
    fn a_route_matches_its_method_and_path_and_yields_the_captures() {
        let control = Route::new(
            Methods::POST,
            PathPattern::parse("/v1/calls/{call_id}/control").unwrap(),
        );
        assert_eq!(control, "POST /v1/calls/{call_id}/control".parse().unwrap());

        let path = PathSegments::new("/v1/calls/c_42/control");
        let captures = control.matches(Methods::of(&Method::POST), &path).unwrap();
        assert_eq!(captures.get("call_id"), Some("c_42"));
        assert!(control.matches(Methods::of(&Method::GET), &path).is_none());

        // GET brings HEAD along, unless the route leaves it out.
        let recording = Route::new(
            Methods::GET,
            PathPattern::parse("/v1/recordings/{id}").unwrap(),
        );
        let path = PathSegments::new("/v1/recordings/r_7");
        assert!(recording
            .matches(Methods::of(&Method::HEAD), &path)
            .is_some());
        let download = recording.without_head().unwrap();
        assert!(download
            .matches(Methods::of(&Method::HEAD), &path)
            .is_none());
        assert!(download.matches(Methods::of(&Method::GET), &path).is_some());
    }
}
