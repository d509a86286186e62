//! Sets of HTTP methods a route applies to.

use std::fmt;

use http::Method;

use crate::error::ConfigError;

/// A set of HTTP methods, as a bit set.
///
/// A request's method is matched by name, ignoring ASCII case: the standard
/// names are case-sensitive in HTTP, but some servers and frameworks read
/// `get` or `Post` as `GET` or `POST`, so a set that names a method also
/// holds every spelling of it (a client cannot leave a route by changing the
/// case of its method). Other extension methods (`PURGE`) are only in
/// [`Methods::ANY`].
///
/// A set is only the methods it names: that a route naming `GET` also
/// matches `HEAD` is the route's rule (see [`Route`](super::Route)).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Methods(u16);

const NAMES: [(&str, u16); 9] = [
    ("GET", 1),
    ("HEAD", 1 << 1),
    ("POST", 1 << 2),
    ("PUT", 1 << 3),
    ("PATCH", 1 << 4),
    ("DELETE", 1 << 5),
    ("OPTIONS", 1 << 6),
    ("CONNECT", 1 << 7),
    ("TRACE", 1 << 8),
];
/// Methods outside the standard nine.
const OTHER: u16 = 1 << 15;

impl Methods {
    /// Every method, including extension methods.
    pub(crate) const ANY: Methods = Methods(u16::MAX);
    /// No method.
    pub(crate) const NONE: Methods = Methods(0);
    /// `GET`.
    pub(crate) const GET: Methods = Methods(1);
    /// `HEAD`.
    pub(crate) const HEAD: Methods = Methods(1 << 1);
    /// `POST`.
    #[cfg(test)]
    pub(crate) const POST: Methods = Methods(1 << 2);
    /// `DELETE`.
    #[cfg(test)]
    pub(crate) const DELETE: Methods = Methods(1 << 5);
    /// `POST`, `PUT`, `PATCH` and `DELETE`.
    #[cfg(test)]
    pub(crate) const WRITES: Methods = Methods(1 << 2 | 1 << 3 | 1 << 4 | 1 << 5);

    /// Both sets.
    #[must_use]
    pub(crate) const fn or(self, other: Methods) -> Methods {
        Methods(self.0 | other.0)
    }

    /// The set of `method` alone (its name read ignoring ASCII case): a
    /// request's method, worked out once and then matched against every
    /// route with [`Methods::meets`].
    #[inline]
    pub(crate) fn of(method: &Method) -> Methods {
        Methods(bit(method))
    }

    /// Whether every method of `other` is in this set.
    pub(crate) const fn contains(self, other: Methods) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether the two sets share a method.
    #[inline]
    pub(crate) fn meets(self, other: Methods) -> bool {
        self.0 & other.0 != 0
    }
}

#[inline]
fn bit(method: &Method) -> u16 {
    match *method {
        Method::GET => 1,
        Method::HEAD => 1 << 1,
        Method::POST => 1 << 2,
        Method::PUT => 1 << 3,
        Method::PATCH => 1 << 4,
        Method::DELETE => 1 << 5,
        Method::OPTIONS => 1 << 6,
        Method::CONNECT => 1 << 7,
        Method::TRACE => 1 << 8,
        // An extension method: a standard name in another case is that
        // method (some servers read it so); any other name is just "other".
        _ => NAMES
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(method.as_str()))
            .map_or(OTHER, |&(_, b)| b),
    }
}

impl std::str::FromStr for Methods {
    type Err = ConfigError;

    /// Parses `GET`, `POST,PUT`, `*` or `ANY` (names are case-insensitive).
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let mut set = 0u16;
        for name in s.split(',').map(str::trim) {
            if name == "*" || name.eq_ignore_ascii_case("ANY") {
                return Ok(Methods::ANY);
            }
            match NAMES.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
                Some((_, b)) => set |= b,
                None => {
                    return Err(ConfigError::invalid(
                        "methods",
                        format!(
                            "unknown method `{}` (use GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, CONNECT, TRACE or *)",
                            name.escape_debug()
                        ),
                    ))
                }
            }
        }
        Ok(Methods(set))
    }
}

impl fmt::Debug for Methods {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Methods {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Methods::ANY {
            return f.write_str("*");
        }
        let mut first = true;
        for (name, b) in NAMES {
            if self.0 & b != 0 {
                if !first {
                    f.write_str(",")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn method(name: &str) -> Method {
        Method::from_bytes(name.as_bytes()).unwrap()
    }

    #[test]
    fn a_standard_name_in_any_case_is_that_method() {
        for (name, set) in [
            ("get", Methods::GET),
            ("Get", Methods::GET),
            ("hEAD", Methods::HEAD),
            ("post", Methods::POST),
            ("Delete", Methods::DELETE),
            ("options", "OPTIONS".parse().unwrap()),
            ("trace", "TRACE".parse().unwrap()),
        ] {
            assert!(set.meets(Methods::of(&method(name))), "{name}");
        }
        assert!(!Methods::WRITES
            .or(Methods::HEAD)
            .meets(Methods::of(&method("get"))));
    }

    #[test]
    fn other_extension_methods_are_only_in_any() {
        for name in ["PURGE", "gets", "GET2", "HEADX"] {
            let m = method(name);
            assert!(Methods::ANY.meets(Methods::of(&m)), "{name}");
            let all_nine: Methods = "GET,HEAD,POST,PUT,PATCH,DELETE,OPTIONS,CONNECT,TRACE"
                .parse()
                .unwrap();
            assert!(!all_nine.meets(Methods::of(&m)), "{name}");
        }
    }

    #[test]
    fn a_set_is_only_the_methods_it_names() {
        assert!(!Methods::GET.meets(Methods::of(&Method::HEAD)));
        assert_eq!("get".parse::<Methods>().unwrap(), Methods::GET);
        assert_eq!(Methods::GET.or(Methods::HEAD).to_string(), "GET,HEAD");
    }

    #[test]
    fn a_set_holds_every_spelling_of_its_methods_and_any_holds_extensions() {
        let writes: Methods = "POST,PUT,PATCH,DELETE".parse().unwrap();
        assert!(writes.meets(Methods::of(&Method::PATCH)));
        assert!(!writes.meets(Methods::of(&Method::GET)));
        assert!(Methods::ANY.meets(Methods::of(&Method::from_bytes(b"PURGE").unwrap())));
        assert!(writes.meets(Methods::of(&Method::from_bytes(b"patch").unwrap())));
        assert!(!writes.meets(Methods::of(&Method::from_bytes(b"PURGE").unwrap())));
    }
}
