//! `Expect: 100-continue` decided by the application (RFC 9110 §10.1.1).
//!
//! hyper's server answers `100 Continue` to the client as soon as the request body is first
//! polled, and the upstream client polls it at once. So the forwarded body of such a request
//! is held back by a [`ContinueGate`]: it does not poll the client's body until the upstream
//! answers `100` (relayed to the client by that first poll), and never when the upstream
//! refuses first with a final non-2xx status (the client then sees only that response; a 2xx
//! opens the gate: the application streams the body). An upstream
//! that says nothing for [`CONTINUE_TIMEOUT`] gets the body anyway, as a client may send it
//! after waiting (curl waits 1 s); the client then sees a `100 Continue` from the proxy.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::task::AtomicWaker;
use http::{HeaderMap, Request, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

/// How long the upstream may take to answer an expectation before the body is sent anyway.
pub const CONTINUE_TIMEOUT: Duration = Duration::from_secs(1);

const WAITING: u8 = 0;
const CONTINUE: u8 = 1;
const FINAL: u8 = 2;

/// What the upstream answered to the expectation so far.
#[derive(Debug, Default)]
struct Answer {
    state: AtomicU8,
    /// The task polling the gated body (the upstream connection's).
    task: AtomicWaker,
}

impl Answer {
    fn set(&self, state: u8) {
        if self
            .state
            .compare_exchange(WAITING, state, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.task.wake();
        }
    }
}

/// The upstream's answer to an expectation, told to the gate by the forwarding code.
#[derive(Debug)]
pub struct ExpectAnswer(Option<Arc<Answer>>);

impl ExpectAnswer {
    /// The final response arrived with `status`. A 2xx before any `100` means the application
    /// wants the body after all (it streams it, e.g. an echo): the gate opens, as curl sends
    /// the body on a 2xx. Any other status refuses it: a gate still waiting never opens.
    pub fn final_response(&self, status: StatusCode) {
        if let Some(answer) = &self.0 {
            answer.set(if status.is_success() { CONTINUE } else { FINAL });
        }
    }
}

pin_project_lite::pin_project! {
    /// A request body that, for a request expecting `100-continue`, is not polled until the
    /// upstream asked for it (or [`CONTINUE_TIMEOUT`] passed). Other bodies pass through.
    pub struct ContinueGate<B> {
        #[pin]
        inner: B,
        // `None`: open.
        wait: Option<Box<Wait>>,
    }
}

struct Wait {
    answer: Arc<Answer>,
    timer: Pin<Box<Sleep>>,
}

impl<B: Body> ContinueGate<B> {
    /// Gates `request`'s body if it expects `100-continue` and has a body, and registers for
    /// the upstream's interim responses; otherwise the body passes through untouched.
    pub fn request(request: Request<B>) -> (Request<ContinueGate<B>>, ExpectAnswer) {
        // Interim responses come from HTTP/1 upstreams only.
        let gated = request.version() <= Version::HTTP_11
            && expects_continue(request.headers())
            && !request.body().is_end_stream();
        let (mut request, answer) = if gated {
            let answer = Arc::new(Answer::default());
            let wait = Box::new(Wait {
                answer: answer.clone(),
                timer: Box::pin(tokio::time::sleep(CONTINUE_TIMEOUT)),
            });
            let request = request.map(|inner| ContinueGate {
                inner,
                wait: Some(wait),
            });
            (request, Some(answer))
        } else {
            let request = request.map(|inner| ContinueGate { inner, wait: None });
            (request, None)
        };
        if let Some(answer) = &answer {
            request.extensions_mut().insert(Interim(answer.clone()));
            let answer = answer.clone();
            hyper::ext::on_informational(&mut request, move |response| {
                if response.status() == StatusCode::CONTINUE {
                    answer.set(CONTINUE);
                }
            });
        }
        (request, ExpectAnswer(answer))
    }
}

/// Extension on a gated request: where an upstream client other than hyper's (the HTTP/1
/// codec's) reports the interim responses it reads.
#[derive(Clone, Debug)]
pub struct Interim(Arc<Answer>);

impl Interim {
    /// The upstream sent an interim response with `status`; a `100` opens the gate.
    pub fn received(&self, status: StatusCode) {
        if status == StatusCode::CONTINUE {
            self.0.set(CONTINUE);
        }
    }
}

/// `Expect: 100-continue` (the only expectation defined; case-insensitive).
fn expects_continue(headers: &HeaderMap) -> bool {
    headers
        .get_all(http::header::EXPECT)
        .iter()
        .any(|value| value.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

impl<B: Body> Body for ContinueGate<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        if let Some(wait) = this.wait.as_mut() {
            wait.answer.task.register(cx.waker());
            match wait.answer.state.load(Ordering::Acquire) {
                CONTINUE => *this.wait = None,
                FINAL => return Poll::Pending,
                _ if wait.timer.as_mut().poll(cx).is_ready() => *this.wait = None,
                _ => return Poll::Pending,
            }
        }
        this.inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
