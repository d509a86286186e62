//! What an extractor can see of a request.

use http::{Extensions, HeaderMap, Method, Uri};

use crate::route::Captures;

/// A borrowed view of a request for [`KeyExtractor`](super::KeyExtractor)s:
/// its method, URI, headers, extensions and the path captures of the route
/// that matched.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    method: &'a Method,
    uri: &'a Uri,
    headers: &'a HeaderMap,
    extensions: &'a Extensions,
    captures: Option<Captures<'a>>,
}

impl<'a> RequestView<'a> {
    /// A view of a request's parts, without path captures (to try an
    /// extractor on a request of your own).
    pub fn from_request<B>(request: &'a http::Request<B>) -> Self {
        Self::new(request, None)
    }

    /// A view of a request's parts, with the captures of the matched route.
    pub(crate) fn new<B>(request: &'a http::Request<B>, captures: Option<Captures<'a>>) -> Self {
        RequestView {
            method: request.method(),
            uri: request.uri(),
            headers: request.headers(),
            extensions: request.extensions(),
            captures,
        }
    }

    /// The request's method.
    pub fn method(&self) -> &'a Method {
        self.method
    }

    /// The request's URI.
    pub fn uri(&self) -> &'a Uri {
        self.uri
    }

    /// The request's headers.
    pub fn headers(&self) -> &'a HeaderMap {
        self.headers
    }

    /// The request's extensions (where auth layers put what they learnt).
    pub fn extensions(&self) -> &'a Extensions {
        self.extensions
    }

    /// The raw (percent-encoded) value of the matched route's capture `name`.
    pub fn capture(&self, name: &str) -> Option<&'a str> {
        self.captures?.get(name)
    }
}
