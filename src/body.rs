//! The response body of a rate-limited service.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use smallvec::SmallVec;

use crate::inflight::Permit;

/// The in-flight slots a request holds so far, in claim order.
pub(crate) type Held = SmallVec<[Permit; 1]>;

/// The in-flight slots a response holds (see
/// [`Quota::in_flight`](crate::Quota::in_flight)): boxed behind a thin
/// pointer, one word in every response future and body.
pub(crate) type Slots = Option<Box<Held>>;

/// Adds `permit` to `slots`, boxing them at the first (so a request that
/// takes no slot never touches the heap, and one that does boxes them once).
pub(crate) fn hold(slots: &mut Slots, permit: Permit) {
    slots.get_or_insert_with(Box::default).push(permit);
}

/// The permits in `slots`, in claim order.
pub(crate) fn held(slots: &Slots) -> &[Permit] {
    slots.as_deref().map_or(&[], |held| held.as_slice())
}

pin_project! {
    /// The inner service's body, or the body of a response the layer produced
    /// itself (a refusal). No foreign body type shows in the API.
    ///
    /// A request of an in-flight-capped limit holds its slot in this body:
    /// the slot is freed when the body has been sent to its end, or dropped.
    ///
    /// The usual body, the inner service's holding nothing, is stored as it
    /// is: a response with it is no larger than the inner service's (its
    /// moves stay cheap). Anything else is boxed.
    #[derive(Debug)]
    pub struct ResponseBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<B> {
        Inner { #[pin] body: B },
        Other { other: Pin<Box<Other<B>>> },
    }
}

pin_project! {
    #[project = OtherProj]
    #[derive(Debug)]
    enum Other<B> {
        /// The inner service's body, and the slots it holds until it ends
        /// (`None` once it has).
        Holding { #[pin] body: B, slots: Slots },
        /// A complete body produced by the layer.
        Full { data: Option<Bytes> },
    }
}

impl<B> ResponseBody<B> {
    /// Wraps the inner service's body.
    pub fn new(body: B) -> Self {
        ResponseBody {
            kind: Kind::Inner { body },
        }
    }

    /// Wraps the inner service's body, which holds `slots` until it ends.
    pub(crate) fn holding(body: B, slots: Slots) -> Self {
        match slots {
            None => Self::new(body),
            slots => Self::other(Other::Holding { body, slots }),
        }
    }

    /// A complete body produced by the layer.
    pub fn full(data: Bytes) -> Self {
        Self::other(Other::Full {
            data: (!data.is_empty()).then_some(data),
        })
    }

    fn other(other: Other<B>) -> Self {
        ResponseBody {
            kind: Kind::Other {
                other: Box::pin(other),
            },
        }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body,
    B::Data: From<Bytes>,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.project().kind.project() {
            KindProj::Inner { body } => body.poll_frame(cx),
            KindProj::Other { other } => match other.as_mut().project() {
                OtherProj::Holding { body, slots } => {
                    let frame = body.poll_frame(cx);
                    if slots.is_some() && matches!(frame, Poll::Ready(None)) {
                        // The whole body is out: free the slots now, not
                        // when the connection gets round to dropping it.
                        *slots = None;
                    }
                    frame
                }
                OtherProj::Full { data } => {
                    Poll::Ready(data.take().map(|d| Ok(Frame::data(d.into()))))
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Other { other } => match &**other {
                Other::Holding { body, .. } => body.is_end_stream(),
                Other::Full { data } => data.is_none(),
            },
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Other { other } => match &**other {
                Other::Holding { body, .. } => body.size_hint(),
                Other::Full { data } => {
                    SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
                }
            },
        }
    }
}
