//! The response future of [`RateLimit`](crate::RateLimit).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::{Extensions, Response};
use pin_project_lite::pin_project;

use crate::body::{ResponseBody, Slots};
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
            // The decision, already in an extensions map (one word, where
            // the decision itself is some 200 bytes moved with the future):
            // empty unless decision extensions are on.
            extensions: Extensions,
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
    pub(crate) fn inner(
        future: F,
        headers: Option<PendingHeaders>,
        extensions: Extensions,
        slots: Slots,
    ) -> Self {
        ResponseFuture {
            state: State::Inner {
                future,
                headers,
                extensions,
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
                extensions,
                slots,
            } => {
                let (mut parts, body) = ready!(future.poll(cx))?.into_parts();
                if let Some(headers) = headers.take() {
                    headers.write(&mut parts.headers);
                }
                // Moves the map in whole when the response has none.
                parts.extensions.extend(std::mem::take(extensions));
                let body = ResponseBody::holding(body, slots.take());
                Poll::Ready(Ok(Response::from_parts(parts, body)))
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
