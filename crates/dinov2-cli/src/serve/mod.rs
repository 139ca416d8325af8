//! `dinov2 serve`: embeddings over HTTP for online use.
//!
//! - `POST /v1/embeddings`: OpenAI's shape; `input` is an image (a `data:image/...;base64,` URI
//!   or a base64 string) or a list of them; `encoding_format` `float` or `base64`.
//! - `POST /embed`: `{"inputs": ...}` as Text Embeddings Inference takes it, or one image as the
//!   raw body (`image/*`, `application/octet-stream`); answers a list of vectors.
//! - `GET /health` (and `/ready`): 200 once the warm-up pass ran and while a model thread runs,
//!   503 otherwise; `GET /info`: the model and the server's limits; `GET /metrics`: Prometheus.
//!
//! Images are decoded on the HTTP threads, then wait in one queue that model threads take
//! batches from (dynamic batching, [`batcher`]). Errors are JSON with a status: 400 bad JSON,
//! 413 too large, 422 a bad input (naming it), 429 the queue is full, 503 no model.

mod api;
mod batcher;
mod metrics;

use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dinov2::image::{decode_sized, preprocess, DecodeOptions, PixelValues, PreprocessConfig};
use dinov2::{Backend, Checkpoint, Dinov2, Embedder, Pooling};
use serde_json::json;
use tiny_http::{Header, Method, Request, Response, Server};

use crate::args::{with_backend, Device, ServeArgs};
use crate::embed_verb::{decode_options, preprocessing, Reopen};
use crate::error::{CliError, Result};
use crate::model_dir::resolve;
use api::ApiError;
use batcher::{Batching, Queue};
use metrics::Metrics;

/// What the HTTP threads need: the model's preprocessing, the queue, the limits and what
/// `/info` says.
struct State {
    preprocess: PreprocessConfig,
    decode: DecodeOptions,
    queue: Arc<Queue>,
    metrics: Arc<Metrics>,
    max_request_bytes: usize,
    max_inputs: usize,
    /// Values per vector, when every image gives as many.
    dims: Option<usize>,
    name: String,
    info: String,
}

/// Runs the serve verb until the process is stopped.
pub fn run(args: ServeArgs) -> Result<()> {
    let dir = resolve(&args.model)?;
    let checkpoint = Checkpoint::open(&dir)?;
    let preprocess = preprocessing(&dir, &args.decode, checkpoint.config.patch_size)?;
    let decode = decode_options(&args.decode, &preprocess);
    if args.pooling == Pooling::Registers && checkpoint.config.num_register_tokens == 0 {
        return Err(CliError(format!(
            "--pooling registers: {} has no register tokens",
            dir.display()
        )));
    }
    for (value, name) in [
        (args.max_batch_size, "--max-batch-size"),
        (args.max_inputs, "--max-inputs"),
        (args.http_threads, "--http-threads"),
        (args.max_queue, "--max-queue"),
        (args.streams, "--streams"),
    ] {
        if value == Some(0) {
            return Err(CliError(format!("{name} must be at least 1")));
        }
    }
    with_backend!(args.device, args.dtype, |backend| start(
        backend,
        &args,
        &checkpoint,
        preprocess,
        decode
    ))
}

/// Loads the model copies on `backend` (one per model thread), warms them up, and serves.
fn start<B: Backend + Reopen + Send + 'static>(
    backend: B,
    args: &ServeArgs,
    checkpoint: &Checkpoint,
    preprocess: PreprocessConfig,
    decode: DecodeOptions,
) -> Result<()> {
    let cuda = matches!(args.device, Device::Cuda(_));
    let max_batch = args.max_batch_size.unwrap_or(if cuda { 64 } else { 8 });
    let streams = args.streams.unwrap_or(if cuda { 2 } else { 1 });
    let max_queue = args.max_queue.unwrap_or(max_batch * 8);
    let max_inputs = args.max_inputs.unwrap_or(64);
    let load = |backend: B| -> Result<Embedder<B>> {
        let model = Dinov2::load(backend, checkpoint)?;
        Ok(Embedder::new(model, preprocess.clone())
            .with_pooling(args.pooling)
            .with_normalize(args.normalize)
            .with_decode_options(decode.clone()))
    };
    let mut embedders = vec![load(backend)?];
    for _ in 1..streams {
        let another = embedders[0].model().backend().reopen()?;
        embedders.push(load(another)?);
    }
    warm_up(&embedders, &preprocess, checkpoint.config.image_size)?;
    let dims = embedding_dims(args, checkpoint, &preprocess);
    let metrics = Arc::new(Metrics::default());
    metrics
        .ready
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let queue = Queue::start(
        embedders,
        Batching {
            max_batch,
            window: Duration::from_secs_f64(args.batch_wait_ms / 1e3),
        },
        max_queue,
        metrics.clone(),
    );
    let name = args
        .served_model_name
        .clone()
        .unwrap_or_else(|| args.model.clone());
    let c = &checkpoint.config;
    let info = json!({
        "model": name,
        "model_type": c.model_type.as_str(),
        "hidden_size": c.hidden_size,
        "num_hidden_layers": c.num_hidden_layers,
        "num_register_tokens": c.num_register_tokens,
        "patch_size": c.patch_size,
        "pooling": args.pooling.to_string(),
        "normalize": args.normalize,
        "dimensions": dims,
        "device": match args.device {
            Device::Cpu => "cpu".to_string(),
            Device::Cuda(n) => format!("cuda:{n}"),
        },
        "dtype": args.dtype.to_string(),
        "max_batch_size": max_batch,
        "batch_wait_ms": args.batch_wait_ms,
        "max_queue_images": max_queue,
        "max_inputs": max_inputs,
        "max_request_bytes": args.max_request_bytes,
        "model_threads": streams,
    })
    .to_string();
    let state = Arc::new(State {
        preprocess,
        decode,
        queue,
        metrics,
        max_request_bytes: args.max_request_bytes,
        max_inputs,
        dims,
        name,
        info,
    });
    listen(args, state)
}

/// One pass of each model copy on a blank image of the default size, so that the first
/// request does not pay for the set-up (and a model that cannot run fails here, not later).
fn warm_up<B: Backend>(
    embedders: &[Embedder<B>],
    preprocess: &PreprocessConfig,
    image_size: usize,
) -> Result<()> {
    let (h, w) = if preprocess.do_center_crop {
        (
            preprocess.crop_size.height as usize,
            preprocess.crop_size.width as usize,
        )
    } else {
        (image_size, image_size)
    };
    let blank = PixelValues {
        shape: [3, h, w],
        data: vec![0.0; 3 * h * w],
    };
    for e in embedders {
        e.embed_prepared(std::slice::from_ref(&blank))?;
    }
    Ok(())
}

/// Values per vector, when every image gives as many: not for the outputs that follow the
/// patch grid when the grid follows each image (no center crop).
fn embedding_dims(
    args: &ServeArgs,
    checkpoint: &Checkpoint,
    preprocess: &PreprocessConfig,
) -> Option<usize> {
    let c = &checkpoint.config;
    let h = c.hidden_size;
    let grid = preprocess.do_center_crop.then(|| {
        (preprocess.crop_size.height as usize / c.patch_size)
            * (preprocess.crop_size.width as usize / c.patch_size)
    });
    match args.pooling {
        Pooling::Cls | Pooling::Mean => Some(h),
        Pooling::ClsMean => Some(2 * h),
        Pooling::Registers => Some(c.num_register_tokens * h),
        Pooling::Patch => grid.map(|g| g * h),
        Pooling::Tokens => grid.map(|g| (c.num_prefix_tokens() + g) * h),
    }
}

/// Binds, then answers requests on `--http-threads` threads.
fn listen(args: &ServeArgs, state: Arc<State>) -> Result<()> {
    let addr = format!("{}:{}", args.host, args.port);
    let server =
        Server::http(&addr).map_err(|e| CliError(format!("cannot listen on {addr}: {e}")))?;
    let bound = server
        .server_addr()
        .to_ip()
        .map_or(addr.clone(), |a| a.to_string());
    eprintln!("listening on http://{bound}");
    let server = Arc::new(server);
    let threads = args
        .http_threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(4, |n| n.get().max(4)));
    std::thread::scope(|scope| {
        for i in 0..threads {
            let (server, state) = (server.clone(), state.clone());
            std::thread::Builder::new()
                .name(format!("dinov2-http-{i}"))
                .spawn_scoped(scope, move || {
                    while let Ok(request) = server.recv() {
                        answer(&state, request);
                    }
                })
                .map_err(|e| CliError(format!("cannot start HTTP threads: {e}")))?;
        }
        Ok(())
    })
}

fn json_header() -> Header {
    Header::from_bytes("Content-Type", "application/json").expect("a valid header")
}

/// Answers one request, and counts it.
fn answer(state: &State, mut request: Request) {
    let t = Instant::now();
    let path = request.url().split('?').next().unwrap_or("").to_string();
    let method = request.method().clone();
    let (status, body, content_type) = match route(state, &method, &path, &mut request) {
        Ok((body, content_type)) => (200, body, content_type),
        Err(e) => (e.status, e.body(), json_header()),
    };
    let endpoint = match path.as_str() {
        "/v1/embeddings" | "/embed" | "/health" | "/ready" | "/info" | "/metrics" => path.as_str(),
        _ => "other",
    };
    state.metrics.record_request(endpoint, status, t.elapsed());
    let response = Response::from_string(body)
        .with_status_code(status)
        .with_header(content_type);
    // A client that went away is not an error of the server's.
    let _ = request.respond(response);
}

/// The body and content type of a successful answer, or the error.
fn route(
    state: &State,
    method: &Method,
    path: &str,
    request: &mut Request,
) -> std::result::Result<(String, Header), ApiError> {
    let text = || Header::from_bytes("Content-Type", "text/plain; version=0.0.4").expect("valid");
    match (method, path) {
        (Method::Get, "/health" | "/ready") => {
            if state.metrics.healthy() {
                Ok((json!({"status": "ok"}).to_string(), json_header()))
            } else {
                Err(ApiError::new(503, "no model thread is running"))
            }
        }
        (Method::Get, "/info") => Ok((state.info.clone(), json_header())),
        (Method::Get, "/metrics") => Ok((state.metrics.render(state.queue.waiting()), text())),
        (Method::Post, "/v1/embeddings") => {
            let body = read_body(request, state.max_request_bytes)?;
            let parsed = api::embeddings_request(&body, state.max_inputs, state.dims)?;
            let vectors = embed(state, parsed.images)?;
            Ok((
                api::embeddings_response(&vectors, parsed.encoding, &state.name),
                json_header(),
            ))
        }
        (Method::Post, "/embed") => {
            let is_json = request.headers().iter().any(|h| {
                h.field.equiv("Content-Type")
                    && h.value
                        .as_str()
                        .trim_start()
                        .starts_with("application/json")
            });
            let body = read_body(request, state.max_request_bytes)?;
            let images = if is_json {
                api::embed_request(&body, state.max_inputs)?
            } else if body.is_empty() {
                return Err(ApiError::new(422, "an empty body: send an image, or JSON"));
            } else {
                vec![body]
            };
            let vectors = embed(state, images)?;
            Ok((api::embed_response(&vectors), json_header()))
        }
        (_, "/health" | "/ready" | "/info" | "/metrics" | "/v1/embeddings" | "/embed") => Err(
            ApiError::new(405, format!("{method} is not allowed on {path}")),
        ),
        _ => Err(ApiError::new(404, format!("no endpoint {path}"))),
    }
}

/// The request's body, refused (413) past `limit` bytes before it is read.
fn read_body(request: &mut Request, limit: usize) -> std::result::Result<Vec<u8>, ApiError> {
    let too_large = || {
        ApiError::new(
            413,
            format!("the body is larger than {limit} bytes (--max-request-bytes)"),
        )
    };
    if request.body_length().is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    request
        .as_reader()
        .take(limit as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| ApiError::new(400, format!("cannot read the body: {e}")))?;
    if body.len() > limit {
        return Err(too_large());
    }
    Ok(body)
}

/// Decodes and preprocesses `images` on this thread, then queues them for the model.
fn embed(state: &State, images: Vec<Vec<u8>>) -> std::result::Result<Vec<Vec<f32>>, ApiError> {
    let t = Instant::now();
    let pixels = images
        .iter()
        .enumerate()
        .map(|(i, bytes)| {
            decode_sized(bytes, &format!("input[{i}]"), &state.decode)
                .and_then(|d| preprocess(&d.image, &state.preprocess))
                .map_err(|e| ApiError::new(422, e.to_string()))
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    state.metrics.record_decode(images.len(), t.elapsed());
    state.queue.embed(pixels)
}
