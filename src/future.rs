//! The response future of [`RateLimit`](crate::RateLimit).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::Response;
use pin_project_lite::pin_project;

use crate::body::{ResponseBody, Slots};
use crate::decision::{Decision, Kept};
use crate::headers::PendingHeaders;

type Boxed<B, E> = Pin<Box<dyn Future<Output = Result<Response<ResponseBody<B>>, E>> + Send>>;

pin_project! {
    /// The response of the inner service with rate-limit headers added, or a
    /// response the layer produced itself.
    pub struct ResponseFuture<F, B, E> {
        #[pin]
        state: State<F, B, E>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B, E> {
        Inner {
            #[pin]
            future: F,
            headers: Option<PendingHeaders>,
            // The decision, current while `future` is polled (see
            // `Decision::current`), and put into the response's extensions
            // if `extend` (then it is built).
            decision: Option<Kept>,
            extend: bool,
            slots: Slots,
        },
        Produced {
            response: Option<Response<ResponseBody<B>>>,
        },
        Deciding {
            future: Boxed<B, E>,
        },
    }
}

impl<F, B, E> ResponseFuture<F, B, E> {
    /// The inner service's `future`, whose response gets `headers` and
    /// whose body holds `slots`. `decision` is [`Decision::current`] while
    /// `future` is polled, and goes into the response's extensions if
    /// `extend`.
    #[inline]
    pub(crate) fn inner(
        future: F,
        headers: Option<PendingHeaders>,
        decision: Option<Kept>,
        extend: bool,
        slots: Slots,
    ) -> Self {
        ResponseFuture {
            state: State::Inner {
                future,
                headers,
                decision,
                extend,
                slots,
            },
        }
    }

    pub(crate) fn produced(response: Response<ResponseBody<B>>) -> Self {
        ResponseFuture {
            state: State::Produced {
                response: Some(response),
            },
        }
    }

    pub(crate) fn deciding(future: Boxed<B, E>) -> Self {
        ResponseFuture {
            state: State::Deciding { future },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Inner {
                future,
                headers,
                decision,
                extend,
                slots,
            } => {
                let polled = Decision::in_scope(decision.as_ref(), || future.poll(cx));
                let mut response = ready!(polled)?;
                if let Some(headers) = headers.take() {
                    headers.write(response.headers_mut());
                }
                if *extend {
                    if let Some(Kept::Built(decision)) = decision.take() {
                        response.extensions_mut().insert(decision);
                    }
                }
                let slots = slots.take();
                Poll::Ready(Ok(response.map(|body| ResponseBody::holding(body, slots))))
            }
            StateProj::Produced { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                None => panic!("ResponseFuture polled after completion"),
            },
            StateProj::Deciding { future } => future.as_mut().poll(cx),
        }
    }
}

impl<F, B, E> fmt::Debug for ResponseFuture<F, B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Inner { .. } => "Inner",
            State::Produced { .. } => "Produced",
            State::Deciding { .. } => "Deciding",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}
