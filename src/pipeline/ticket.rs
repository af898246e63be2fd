//! A request submitted to the step scheduler ([`super::Pipeline::submit`]) and its
//! handle: a [`Ticket`] yields the progress and then the answer, and cancels the
//! request when dropped before the answer came (its jobs leave the running batch at the
//! next step).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::mpsc::Receiver;
use std::sync::Arc;

use anyhow::{anyhow, bail, Result};

use super::{Image, Mask, Output, Pair};
use crate::diffusion::method::{Inversion, Settings};

/// What a request asks for.
#[derive(Clone, Debug)]
pub enum Request {
    /// One DiffStyle transfer (its images inverted first, or found in the cache).
    Transfer { pair: Pair, settings: Settings, mask: Option<Mask> },
    /// The DDIM inversion of one image by `inv_steps` steps (kept in the cache when
    /// the pipeline has one).
    Invert { image: Image, inv_steps: usize },
}

/// What a request yields.
#[derive(Clone, Debug)]
pub enum Answer {
    /// A transfer's image, and the most jobs that shared a step with its generation.
    Output { output: Output, batch: usize },
    /// An inversion, its id in the cache ([`super::Pipeline::cached`]), and the most
    /// jobs that shared a step with it (0 when it came from the cache).
    Inversion { inversion: Arc<Inversion>, id: String, batch: usize },
}

impl Answer {
    pub fn into_output(self) -> Result<Output> {
        match self {
            Answer::Output { output, .. } => Ok(output),
            Answer::Inversion { .. } => bail!("an inversion was answered where an image was expected"),
        }
    }

    pub fn into_inversion(self) -> Result<Arc<Inversion>> {
        match self {
            Answer::Inversion { inversion, .. } => Ok(inversion),
            Answer::Output { .. } => bail!("an image was answered where an inversion was expected"),
        }
    }
}

/// The error of a request cancelled before its answer (find it with
/// `err.downcast_ref::<Cancelled>()`).
#[derive(Debug)]
pub struct Cancelled;

impl std::fmt::Display for Cancelled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request was cancelled")
    }
}

impl std::error::Error for Cancelled {}

/// What the engine thread tells a ticket.
pub(super) enum Event {
    /// The request's steps done changed (read them from its state).
    Progress,
    Done(Result<Answer>),
}

/// Shared by a ticket and the engine thread.
#[derive(Default)]
pub(super) struct TicketState {
    pub cancelled: AtomicBool,
    /// Steps done and steps in all (inversions and generation).
    pub done: AtomicUsize,
    pub total: AtomicUsize,
}

/// Cancels a request from elsewhere (another thread, a guard in an async task).
#[derive(Clone)]
pub struct Canceller(Arc<TicketState>);

impl Canceller {
    pub fn cancel(&self) {
        self.0.cancelled.store(true, Relaxed);
    }
}

/// A submitted request: see the module documentation. Events come over a channel that
/// several requests of one batch call may share (`tag` tells them apart).
pub struct Ticket {
    state: Arc<TicketState>,
    events: Receiver<(usize, Event)>,
    answered: bool,
}

impl Ticket {
    pub(super) fn new(state: Arc<TicketState>, events: Receiver<(usize, Event)>) -> Self {
        Self { state, events, answered: false }
    }

    /// Steps done and steps in all, so far (the total is known once the engine has
    /// taken the request; an inversion that another request already started counts as
    /// far as it has got).
    pub fn progress(&self) -> (usize, usize) {
        (self.state.done.load(Relaxed), self.state.total.load(Relaxed))
    }

    /// Asks the engine to drop the request at its next step; [`Ticket::wait`] then
    /// answers [`Cancelled`] (or the answer, if it came first).
    pub fn cancel(&self) {
        self.state.cancelled.store(true, Relaxed);
    }

    /// A handle that cancels this request from elsewhere.
    pub fn canceller(&self) -> Canceller {
        Canceller(self.state.clone())
    }

    /// Waits for the answer, calling `progress(done, total)` as steps complete.
    pub fn wait(mut self, progress: &mut dyn FnMut(usize, usize)) -> Result<Answer> {
        let mut told = 0;
        loop {
            match self.events.recv() {
                Ok((_, Event::Progress)) => {
                    let (d, t) = self.progress();
                    told = d;
                    progress(d, t)
                }
                Ok((_, Event::Done(r))) => {
                    self.answered = true;
                    // The last step is told with the answer.
                    let (d, t) = self.progress();
                    if r.is_ok() && d != told {
                        progress(d, t);
                    }
                    return r;
                }
                Err(_) => return Err(anyhow!("the engine thread stopped before answering")),
            }
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        // Nobody waits for the answer any more: the engine drops the work.
        if !self.answered {
            self.cancel();
        }
    }
}
