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
    #[derive(Debug)]
    pub struct ResponseBody<B> {
        #[pin]
        kind: Kind<B>,
        slots: Slots,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<B> {
        Inner { #[pin] body: B },
        Full { data: Option<Bytes> },
    }
}

impl<B> ResponseBody<B> {
    /// Wraps the inner service's body.
    pub fn new(body: B) -> Self {
        ResponseBody {
            kind: Kind::Inner { body },
            slots: None,
        }
    }

    /// Wraps the inner service's body, which holds `slots` until it ends.
    pub(crate) fn holding(body: B, slots: Slots) -> Self {
        ResponseBody {
            kind: Kind::Inner { body },
            slots,
        }
    }

    /// A complete body produced by the layer.
    pub fn full(data: Bytes) -> Self {
        ResponseBody {
            kind: Kind::Full {
                data: (!data.is_empty()).then_some(data),
            },
            slots: None,
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
        let this = self.project();
        let frame = match this.kind.project() {
            KindProj::Inner { body } => {
                let frame = body.poll_frame(cx);
                if this.slots.is_some() && matches!(frame, Poll::Ready(None)) {
                    // The whole body is out: free the slots now, not when
                    // the connection gets round to dropping it.
                    *this.slots = None;
                }
                frame
            }
            KindProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d.into())))),
        };
        frame
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Full { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}
