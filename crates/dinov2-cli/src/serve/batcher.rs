//! Dynamic batching: requests' preprocessed images wait in one queue; each model thread takes the
//! first waiting request, then whatever else arrives within the batching window, up to the
//! largest batch, runs the images of each size together, and answers every request. A bounded
//! number of images may be in flight (admitted before they are decoded, until answered): past
//! it a request is refused (HTTP 429) at once, rather than waiting without end.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dinov2::image::PixelValues;
use dinov2::{stack_images, Backend, Embedder, Embedding, ModelError};

use super::api::ApiError;
use super::metrics::Metrics;

/// One image's answer: its embedding, or why it has none.
type Answer = Result<Embedding, ApiError>;

/// Images of one size: `(request, image)` positions, in order of arrival.
type SizeGroup = ([usize; 3], Vec<(usize, usize)>);

/// One request's images, and where its answer goes: one embedding per image, in order. It holds
/// its images' room in flight until it is answered or dropped, and is dropped unrun once its
/// client stopped waiting (the deadline).
struct Job {
    pixels: Vec<PixelValues>,
    reply: Sender<Result<Vec<Embedding>, ApiError>>,
    deadline: Instant,
    _permit: Permit,
}

/// The queue in front of the model threads.
pub struct Queue {
    tx: Mutex<Sender<Job>>,
    /// Images admitted and not yet answered (or dropped), and the most that may be.
    in_flight: Arc<AtomicUsize>,
    capacity: usize,
    /// How long a request waits for its answer.
    timeout: Duration,
    metrics: Arc<Metrics>,
}

/// Room for a request's images in flight, given back when dropped.
pub struct Permit {
    in_flight: Arc<AtomicUsize>,
    images: usize,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.in_flight.fetch_sub(self.images, Ordering::SeqCst);
    }
}

/// How model threads batch.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    /// Images per pass at most.
    pub max_batch: usize,
    /// How long a model thread waits for more requests once it has one.
    pub window: Duration,
}

impl Queue {
    /// A queue of at most `capacity` images in flight, each request answered within `timeout`,
    /// served by one thread per embedder; they stop when the queue is dropped.
    pub fn start<B: Backend + Send + 'static>(
        embedders: Vec<Embedder<B>>,
        batching: Batching,
        capacity: usize,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Arc<Queue> {
        let (tx, rx) = channel::<Job>();
        let queue = Arc::new(Queue {
            tx: Mutex::new(tx),
            in_flight: Arc::new(AtomicUsize::new(0)),
            capacity,
            timeout,
            metrics,
        });
        let rx = Arc::new(Mutex::new(rx));
        for (i, embedder) in embedders.into_iter().enumerate() {
            let (rx, queue) = (rx.clone(), Arc::downgrade(&queue));
            let alive = queue
                .upgrade()
                .map(|q| q.metrics.clone())
                .expect("the queue is alive while it starts");
            alive.workers.fetch_add(1, Ordering::SeqCst);
            std::thread::Builder::new()
                .name(format!("dinov2-model-{i}"))
                .spawn(move || {
                    // Counted down however the thread ends, so that /health sees it.
                    struct Alive(Arc<Metrics>);
                    impl Drop for Alive {
                        fn drop(&mut self) {
                            self.0.workers.fetch_sub(1, Ordering::SeqCst);
                        }
                    }
                    let _alive = Alive(alive);
                    while let Some(jobs) = next_jobs(&rx, batching) {
                        let Some(queue) = queue.upgrade() else {
                            return;
                        };
                        run_jobs(&embedder, jobs, batching.max_batch, &queue.metrics);
                    }
                })
                .expect("a model thread starts");
        }
        queue
    }

    /// Room for `images` more images in flight; 429 when there is none (a request larger than
    /// the whole capacity is let in alone, when nothing else is in flight).
    pub fn admit(&self, images: usize) -> Result<Permit, ApiError> {
        let admitted = self
            .in_flight
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n.saturating_add(images) <= self.capacity || n == 0).then(|| n + images)
            });
        match admitted {
            Ok(_) => Ok(Permit {
                in_flight: self.in_flight.clone(),
                images,
            }),
            Err(n) => Err(ApiError::new(
                429,
                format!(
                    "busy: {n} images in flight, at most {} (--max-queue): retry later",
                    self.capacity
                ),
            )),
        }
    }

    /// Queues `pixels` (admitted by `permit`) and waits for their embeddings: 503 when no model
    /// thread runs, 504 past the timeout (the job is then dropped unrun, and its room given
    /// back, when a model thread reaches it).
    pub fn embed(
        &self,
        pixels: Vec<PixelValues>,
        permit: Permit,
    ) -> Result<Vec<Embedding>, ApiError> {
        let (reply, answer) = channel();
        let unavailable = || ApiError::new(503, "no model thread is running");
        let job = Job {
            pixels,
            reply,
            deadline: Instant::now() + self.timeout,
            _permit: permit,
        };
        self.tx
            .lock()
            .map_err(|_| unavailable())?
            .send(job)
            .map_err(|_| unavailable())?;
        let result = match answer.recv_timeout(self.timeout) {
            Ok(result) => result,
            Err(RecvTimeoutError::Timeout) => Err(ApiError::new(
                504,
                format!(
                    "no answer within {:.0} s (--request-timeout): the model is overloaded or stuck",
                    self.timeout.as_secs_f64()
                ),
            )),
            // The model thread ended without answering (it dropped the job).
            Err(RecvTimeoutError::Disconnected) => Err(unavailable()),
        };
        result
    }

    /// Images admitted and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }
}

/// The next requests for one pass: the first to arrive, then those arriving within the window
/// while fewer than `max_batch` images are taken. `None` when the queue is gone.
fn next_jobs(rx: &Mutex<Receiver<Job>>, batching: Batching) -> Option<Vec<Job>> {
    let rx = rx.lock().ok()?;
    // Jobs whose clients stopped waiting are dropped, not run.
    let first = loop {
        let job = rx.recv().ok()?;
        if job.deadline > Instant::now() {
            break job;
        }
    };
    let mut images = first.pixels.len();
    let mut jobs = vec![first];
    let deadline = Instant::now() + batching.window;
    while images < batching.max_batch {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(job) if job.deadline <= Instant::now() => {}
            Ok(job) => {
                images += job.pixels.len();
                jobs.push(job);
            }
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    Some(jobs)
}

/// Runs the images of `jobs`, those of one size together in passes of at most `max_batch`, and
/// answers each job: its vectors, or the first error among its images.
fn run_jobs<B: Backend>(
    embedder: &Embedder<B>,
    jobs: Vec<Job>,
    max_batch: usize,
    metrics: &Metrics,
) {
    // (job, image) of each size, in order of first appearance.
    let mut sizes: Vec<SizeGroup> = Vec::new();
    for (j, job) in jobs.iter().enumerate() {
        for (i, p) in job.pixels.iter().enumerate() {
            match sizes.iter_mut().find(|(shape, _)| *shape == p.shape) {
                Some((_, members)) => members.push((j, i)),
                None => sizes.push((p.shape, vec![(j, i)])),
            }
        }
    }
    let mut results: Vec<Vec<Option<Answer>>> = jobs
        .iter()
        .map(|j| (0..j.pixels.len()).map(|_| None).collect())
        .collect();
    for (_, members) in sizes {
        for pass in members.chunks(max_batch.max(1)) {
            let t = Instant::now();
            let images: Vec<PixelValues> = pass
                .iter()
                .map(|&(j, i)| jobs[j].pixels[i].clone())
                .collect();
            // A panic fails this pass's requests, not the server.
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
                let batch = stack_images(&images)?;
                embedder.embed_batch_each(&batch)
            }))
            .unwrap_or_else(|_| {
                Err(dinov2::Error::Model(ModelError::Unsupported(
                    "the model thread panicked on this batch".into(),
                )))
            });
            metrics.record_pass(pass.len(), t.elapsed());
            match outcome {
                Ok(each) if each.len() == pass.len() => {
                    for (&(j, i), r) in pass.iter().zip(each) {
                        results[j][i] = Some(r.map_err(model_error));
                    }
                }
                Ok(each) => {
                    let e = ApiError::new(
                        500,
                        format!(
                            "the model gave {} results for {} images",
                            each.len(),
                            pass.len()
                        ),
                    );
                    pass.iter()
                        .for_each(|&(j, i)| results[j][i] = Some(Err(e.clone())));
                }
                Err(e) => {
                    let e = model_error(e);
                    pass.iter()
                        .for_each(|&(j, i)| results[j][i] = Some(Err(e.clone())));
                }
            }
        }
    }
    for (job, results) in jobs.into_iter().zip(results) {
        let answer = results
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                r.unwrap_or_else(|| Err(ApiError::new(500, "an image was not run")))
                    .map_err(|e| ApiError::new(e.status, format!("input[{i}]: {}", e.message)))
            })
            .collect();
        // A client that went away no longer waits.
        let _ = job.reply.send(answer);
    }
}

/// The status of a model error: 422 for an input the model rejects, 413 for one too large for
/// the device even alone, 500 otherwise.
fn model_error(e: dinov2::Error) -> ApiError {
    match &e {
        dinov2::Error::Model(ModelError::Input { .. }) => ApiError::new(422, e.to_string()),
        dinov2::Error::Model(ModelError::OutOfMemory { .. }) => ApiError::new(
            413,
            format!("{e}: the image does not fit the device even alone"),
        ),
        _ => ApiError::new(500, e.to_string()),
    }
}
