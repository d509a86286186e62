//! Keys from request extensions: what an auth layer learnt about the caller.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use super::{Key, KeyError, KeyErrorKind, KeyExtractor, RequestView};

/// A key read from a value of type `T` in the request's extensions, put there
/// by a layer that runs before the rate limiter (an auth layer's `Account`).
///
/// ```
/// use tower_ratelimit::key::{Extension, Key};
///
/// #[derive(Clone)]
/// struct Account { id: u64 }
///
/// let by_account = Extension::new(|a: &Account| Key::from(a.id));
/// # let _ = by_account;
/// ```
pub struct Extension<T, F> {
    read: F,
    _type: PhantomData<fn(&T)>,
}

impl<T, F> Extension<T, F>
where
    T: Send + Sync + 'static,
    F: for<'x> Fn(&'x T) -> Key<'x> + Send + Sync + 'static,
{
    /// Reads the key from the `T` in the request's extensions with `read`.
    pub fn new(read: F) -> Self {
        Extension {
            read,
            _type: PhantomData,
        }
    }
}

impl<T, F: Clone> Clone for Extension<T, F> {
    fn clone(&self) -> Self {
        Extension {
            read: self.read.clone(),
            _type: PhantomData,
        }
    }
}

impl<T, F> fmt::Debug for Extension<T, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Extension")
            .field("type", &std::any::type_name::<T>())
            .finish()
    }
}

impl<T, F> KeyExtractor for Extension<T, F>
where
    T: Send + Sync + 'static,
    F: for<'x> Fn(&'x T) -> Key<'x> + Send + Sync + 'static,
{
    fn extract<'a>(&self, request: &RequestView<'a>) -> Result<Key<'a>, KeyError> {
        match request.extensions().get::<T>() {
            Some(value) => Ok((self.read)(value)),
            None => Err(KeyError::new(
                KeyErrorKind::Missing,
                self.describe().into_owned(),
            )),
        }
    }

    fn describe(&self) -> Cow<'_, str> {
        Cow::Owned(format!(
            "{} (set by an authentication layer)",
            short_type_name::<T>()
        ))
    }
}

fn short_type_name<T>() -> &'static str {
    let full = std::any::type_name::<T>();
    full.rsplit("::").next().unwrap_or(full)
}
