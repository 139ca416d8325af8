//! `dinov2 serve`: embeddings over HTTP for online use.
//!
//! - `POST /v1/embeddings`: OpenAI's shape; `input` is an image (a `data:image/...;base64,` URI,
//!   a base64 string, or with `--allow-urls` an `http(s)://` URL) or a list of them;
//!   `encoding_format` `float` or `base64`.
//! - `POST /embed`: `{"inputs": ...}` as Text Embeddings Inference takes it, files as
//!   `multipart/form-data` (`curl -F image=@cat.jpg`), or one image as the raw body (`image/*`,
//!   `application/octet-stream`); answers a list of vectors, or with `Accept: application/x-npy`
//!   one `.npy` array `[N, D]`.
//! - A request picks one of the poolings the server offers (`--pooling cls,mean,...`) with
//!   `"pooling"` in its JSON or `?pooling=`; with several, the model threads return every token
//!   and the HTTP threads pool them.
//! - `GET /health` (and `/ready`): 200 once the warm-up pass ran and while a model thread runs,
//!   503 otherwise; `GET /info`: the model and the server's limits; `GET /metrics`: Prometheus.
//!
//! Images are decoded on the HTTP threads, then wait in one queue that model threads take
//! batches from (dynamic batching, [`batcher`]). Errors are JSON with a status: 400 bad JSON or
//! multipart, 406 an answer type not offered, 413 too large, 422 a bad input (naming it), 429
//! the queue is full, 503 no model.

mod api;
mod batcher;
mod http;
mod metrics;
mod multipart;

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dinov2::image::decode_and_preprocess;
use dinov2::image::{fixed_grid, DecodeOptions, PixelValues, PreprocessConfig};
use dinov2::{cut_to_patches, Backend, Checkpoint, Dinov2, Embedder, Pooling};
use serde_json::json;

use crate::args::{with_backend, Device, ServeArgs};
use crate::embed::Outputs;
use crate::embed_verb::{check_poolings, decode_options, devices, preprocessing, Reopen};
use crate::error::{CliError, Result};
use crate::fetch::Fetcher;
use crate::model_dir::resolve;
use api::ApiError;
use batcher::{Batching, Queue};
use metrics::Metrics;

/// What the HTTP threads need: the model's preprocessing, the queue, the limits and what
/// `/info` says.
struct State {
    preprocess: PreprocessConfig,
    /// The model's patch size: images are cut to their whole patches, so that sizes with one
    /// patch grid share passes.
    patch: usize,
    decode: DecodeOptions,
    queue: Arc<Queue>,
    metrics: Arc<Metrics>,
    max_request_bytes: usize,
    max_inputs: usize,
    /// With `--allow-urls`: fetches inputs given as URLs.
    fetch: Option<Fetcher>,
    /// The poolings offered (the first is the default). With several, the model threads return
    /// every token and each request's vectors are pooled from them here.
    outputs: Outputs,
    /// For each pooling, the values per vector when every image gives as many.
    dims: Vec<Option<usize>>,
    name: String,
    info: String,
    /// Set by SIGTERM or SIGINT: the server stops accepting, and `/health` answers 503.
    stop: Arc<AtomicBool>,
}

/// Runs the serve verb until the process is stopped.
pub fn run(args: ServeArgs) -> Result<()> {
    let dir = resolve(&args.model)?;
    let checkpoint = Checkpoint::open(&dir)?;
    let preprocess = preprocessing(&dir, &args.decode, checkpoint.config.patch_size)?;
    let decode = decode_options(&args.decode, &preprocess);
    check_poolings(&args.pooling, &checkpoint.config, &dir)?;
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
    let (device, more_gpus) = devices(args.device, args.gpus.as_deref())?;
    with_backend!(device, args.dtype, |backend| start(
        backend,
        &more_gpus,
        &args,
        &checkpoint,
        preprocess,
        decode
    ))
}

/// Loads the model copies on `backend` and on each of `more_gpus` (`--streams` per device, one
/// per model thread), warms them up, and serves.
fn start<B: Backend + Reopen + Send + 'static>(
    backend: B,
    more_gpus: &[usize],
    args: &ServeArgs,
    checkpoint: &Checkpoint,
    preprocess: PreprocessConfig,
    decode: DecodeOptions,
) -> Result<()> {
    let cuda = matches!(args.device, Device::Cuda(_)) || args.gpus.is_some();
    let max_batch = args.max_batch_size.unwrap_or(if cuda { 64 } else { 8 });
    let streams = args.streams.unwrap_or(if cuda { 2 } else { 1 });
    let max_queue = args.max_queue.unwrap_or(max_batch * 8);
    let max_inputs = args.max_inputs.unwrap_or(64);
    // One pooling runs on the model's backend; several are taken from every token on the host.
    let outputs = Outputs {
        poolings: args.pooling.clone(),
        normalize: args.normalize,
        prefix: checkpoint.config.num_prefix_tokens(),
        layers: 1,
    };
    let load = |backend: B| -> Result<Embedder<B>> {
        let model = Dinov2::load(backend, checkpoint)?;
        Ok(Embedder::new(model, preprocess.clone())
            .with_pooling(outputs.pass())
            .with_normalize(outputs.pass_normalizes())
            .with_decode_options(decode.clone()))
    };
    let mut embedders = vec![load(backend)?];
    for _ in 1..streams {
        let another = embedders[0].model().backend().reopen()?;
        embedders.push(load(another)?);
    }
    for &gpu in more_gpus {
        let first = embedders.len();
        let on_gpu = embedders[0].model().backend().on_gpu(gpu)?;
        embedders.push(load(on_gpu)?);
        for _ in 1..streams {
            let another = embedders[first].model().backend().reopen()?;
            embedders.push(load(another)?);
        }
    }
    warm_up(&embedders, &preprocess, checkpoint.config.image_size)?;
    let dims: Vec<Option<usize>> = (args.pooling.iter())
        .map(|&p| embedding_dims(p, checkpoint, &preprocess))
        .collect();
    let metrics = Arc::new(Metrics::default());
    metrics.ready.store(true, Ordering::SeqCst);
    let queue = Queue::start(
        embedders,
        Batching {
            max_batch,
            window: Duration::from_secs_f64(args.batch_wait_ms / 1e3),
        },
        max_queue,
        args.request_timeout,
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
        "pooling": args.pooling[0].to_string(),
        "poolings": args.pooling.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        "normalize": args.normalize,
        "dimensions": dims[0],
        "dimensions_by_pooling": (args.pooling.iter().zip(&dims))
            .map(|(p, d)| (p.to_string(), json!(d)))
            .collect::<serde_json::Map<_, _>>(),
        "device": match &args.gpus {
            Some(gpus) => format!("cuda:{gpus:?}"),
            None => args.device.to_string(),
        },
        "dtype": args.dtype.to_string(),
        "max_batch_size": max_batch,
        "batch_wait_ms": args.batch_wait_ms,
        "max_images_in_flight": max_queue,
        "max_inputs": max_inputs,
        "max_request_bytes": args.max_request_bytes,
        "model_threads": streams * (1 + more_gpus.len()),
        "request_timeout_s": args.request_timeout.as_secs_f64(),
        "allow_urls": args.allow_urls,
    })
    .to_string();
    let state = Arc::new(State {
        preprocess,
        patch: checkpoint.config.patch_size,
        decode,
        queue,
        metrics,
        max_request_bytes: args.max_request_bytes,
        max_inputs,
        fetch: args.allow_urls.then(|| {
            Fetcher::new(
                args.url_timeout,
                args.url_timeout,
                args.url_timeout,
                args.max_request_bytes,
            )
        }),
        outputs,
        dims,
        name,
        info,
        stop: Arc::new(AtomicBool::new(false)),
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
    pooling: Pooling,
    checkpoint: &Checkpoint,
    preprocess: &PreprocessConfig,
) -> Option<usize> {
    let c = &checkpoint.config;
    let grid = fixed_grid(preprocess, c.patch_size);
    let shape = pooling.fixed_shape(c.hidden_size, c.num_register_tokens, grid)?;
    Some(shape.iter().product())
}

/// Binds, then answers requests on `--http-threads` connection threads.
fn listen(args: &ServeArgs, state: Arc<State>) -> Result<()> {
    let addr = format!("{}:{}", args.host, args.port);
    let listener =
        TcpListener::bind(&addr).map_err(|e| CliError(format!("cannot listen on {addr}: {e}")))?;
    let bound = listener
        .local_addr()
        .map_or(addr.clone(), |a| a.to_string());
    eprintln!("listening on http://{bound}");
    let threads = args
        .http_threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(4, |n| n.get().max(4)));
    let limits = http::Limits {
        max_body: state.max_request_bytes,
    };
    // SIGTERM (an orchestrator's stop) or SIGINT (Ctrl-C): stop accepting, answer /health 503
    // so that load balancers move on, finish the requests under way, exit 0.
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, state.stop.clone())
            .map_err(|e| CliError(format!("cannot handle signal {signal}: {e}")))?;
    }
    http::serve(listener, threads, limits, &*state, &state.stop)
        .map_err(|e| CliError(format!("serving on {bound}: {e}")))?;
    eprintln!("stopped: every request under way was answered");
    Ok(())
}

impl http::Handler for &State {
    fn answer(&self, request: &http::Request) -> http::Response {
        answer(self, request)
    }

    /// Counted as the endpoint `refused`: the request was not read far enough to know it.
    fn refused(&self, status: u16) {
        self.metrics
            .record_request("refused", status, Duration::ZERO);
    }
}

/// Answers one request, and counts it.
fn answer(state: &State, request: &http::Request) -> http::Response {
    let t = Instant::now();
    let response = match route(state, request) {
        Ok(response) => response,
        Err(e) => http::Response::json(e.status, e.body()),
    };
    let path = request.path.as_str();
    let endpoint = match path {
        "/v1/embeddings" | "/embed" | "/health" | "/ready" | "/info" | "/metrics" => path,
        _ => "other",
    };
    state
        .metrics
        .record_request(endpoint, response.status, t.elapsed());
    response
}

/// The answer to a request, or the error.
fn route(state: &State, request: &http::Request) -> std::result::Result<http::Response, ApiError> {
    let ok = |body: String| http::Response::json(200, body);
    let path = request.path.as_str();
    match (request.method.as_str(), path) {
        ("GET", "/health" | "/ready") => {
            if state.stop.load(Ordering::SeqCst) {
                Err(ApiError::new(503, "stopping"))
            } else if state.metrics.healthy() {
                Ok(ok(json!({"status": "ok"}).to_string()))
            } else {
                Err(ApiError::new(503, "no model thread is running"))
            }
        }
        ("GET", "/info") => Ok(ok(state.info.clone())),
        ("GET", "/metrics") => Ok(http::Response {
            status: 200,
            content_type: "text/plain; version=0.0.4",
            body: state.metrics.render(state.queue.in_flight()).into_bytes(),
        }),
        ("POST", "/v1/embeddings") => {
            let parsed =
                api::embeddings_request(&request.body, state.max_inputs, state.fetch.as_ref())?;
            let k = state.pooling(chosen(parsed.pooling, request)?)?;
            api::check_dimensions(parsed.dimensions, state.dims[k])?;
            let images: Vec<&[u8]> = parsed.images.iter().map(Vec::as_slice).collect();
            let vectors = embed(state, &images, k, false)?;
            Ok(ok(api::embeddings_response(
                &vectors,
                parsed.encoding,
                &state.name,
            )))
        }
        ("POST", "/embed") => {
            let content_type = request.header("content-type").unwrap_or("");
            let is_json = content_type
                .trim_start()
                .to_ascii_lowercase()
                .starts_with("application/json");
            let npy = wants_npy(request)?;
            if is_json {
                let parsed =
                    api::embed_request(&request.body, state.max_inputs, state.fetch.as_ref())?;
                let k = state.pooling(chosen(parsed.pooling, request)?)?;
                let images: Vec<&[u8]> = parsed.images.iter().map(Vec::as_slice).collect();
                return answer_embed(state, &images, k, npy);
            }
            if let Some(boundary) = multipart::boundary(content_type) {
                let boundary = boundary.map_err(|e| ApiError::new(400, e))?;
                let parts = multipart::parts(&request.body, &boundary)
                    .map_err(|e| ApiError::new(400, e))?;
                // A `pooling` field (`curl -F pooling=mean`) picks as the query does.
                let field = parts
                    .iter()
                    .find(|p| !p.is_file && p.name.as_deref() == Some("pooling"))
                    .map(|p| String::from_utf8_lossy(p.content).trim().to_string());
                let files: Vec<&[u8]> = (parts.iter().filter(|p| p.is_file))
                    .map(|p| p.content)
                    .collect();
                if files.is_empty() {
                    return Err(ApiError::new(
                        422,
                        "no files in the multipart body: send them as `curl -F image=@cat.jpg`",
                    ));
                }
                api::check_count(files.len(), state.max_inputs)?;
                let k = state.pooling(chosen(field, request)?)?;
                return answer_embed(state, &files, k, npy);
            }
            if request.body.is_empty() {
                return Err(ApiError::new(422, "an empty body: send an image, or JSON"));
            }
            let k = state.pooling(chosen(None, request)?)?;
            answer_embed(state, &[request.body.as_slice()], k, npy)
        }
        (method, "/health" | "/ready" | "/info" | "/metrics" | "/v1/embeddings" | "/embed") => Err(
            ApiError::new(405, format!("{method} is not allowed on {path}")),
        ),
        _ => Err(ApiError::new(404, format!("no endpoint {path}"))),
    }
}

/// The pooling a request names: in its body (JSON field, form field) or in its query
/// (`?pooling=`, where a space stands for the `+` of `cls+mean`); 422 when the two differ.
fn chosen(
    in_body: Option<String>,
    request: &http::Request,
) -> std::result::Result<Option<String>, ApiError> {
    let in_query = request.query_param("pooling").map(|q| q.replace(' ', "+"));
    match (in_body, in_query) {
        (Some(b), Some(q)) if b != q => Err(ApiError::new(
            422,
            format!("pooling {b:?} in the body, {q:?} in the query: name one"),
        )),
        (b, q) => Ok(b.or(q)),
    }
}

/// Whether the client asks for an `.npy` answer rather than JSON, from every `Accept` header:
/// each media range with its `q` (0 refuses), the most specific range deciding for each type;
/// npy where it is named and weighs at least as much as JSON. 406 when it accepts neither. No
/// `Accept` (or an empty one) means JSON.
fn wants_npy(request: &http::Request) -> std::result::Result<bool, ApiError> {
    let ranges: Vec<(String, f32)> = request
        .headers_named("accept")
        .flat_map(|h| h.split(','))
        .filter_map(|range| {
            let mut parts = range.split(';');
            let kind = parts.next()?.trim().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q=").or(p.trim().strip_prefix("Q=")))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            (!kind.is_empty()).then_some((kind, q))
        })
        .collect();
    if ranges.is_empty() {
        return Ok(false);
    }
    // The weight of `kind`, from its most specific range: exact, then `type/*`, then `*/*`.
    let weight = |kind: &str| -> (f32, bool) {
        let family = format!("{}/*", kind.split('/').next().unwrap_or(""));
        for (pattern, exact) in [(kind, true), (family.as_str(), false), ("*/*", false)] {
            if let Some((_, q)) = ranges.iter().find(|(k, _)| k == pattern) {
                return (*q, exact);
            }
        }
        (0.0, false)
    };
    let (npy, named) = weight("application/x-npy");
    let (json, _) = weight("application/json");
    if npy <= 0.0 && json <= 0.0 {
        let accept: Vec<&str> = request.headers_named("accept").collect();
        return Err(ApiError::new(
            406,
            format!(
                "Accept: {}: answers are application/json or application/x-npy",
                accept.join(", ")
            ),
        ));
    }
    Ok(npy > json || (npy > 0.0 && npy == json && named))
}

/// `/embed`'s answer: the vectors of `images` for pooling `k`, as JSON or one `.npy` array.
fn answer_embed(
    state: &State,
    images: &[&[u8]],
    k: usize,
    npy: bool,
) -> std::result::Result<http::Response, ApiError> {
    let vectors = embed(state, images, k, npy)?;
    if npy {
        return npy_answer(&vectors);
    }
    Ok(http::Response::json(200, api::embed_response(&vectors)))
}

/// The vectors as one `.npy` float32 array `[N, D]`; 406 when their lengths differ (patch grids
/// of different sizes), which no single array holds.
fn npy_answer(vectors: &[Vec<f32>]) -> std::result::Result<http::Response, ApiError> {
    let d = vectors.first().map_or(0, Vec::len);
    if vectors.iter().any(|v| v.len() != d) {
        return Err(ApiError::new(
            406,
            "the vectors differ in length (patch grids of different sizes): no single .npy \
             array holds them; ask for application/json",
        ));
    }
    let mut body = crate::embed::npy_header("<f4", &[vectors.len(), d]);
    for v in vectors {
        body.extend(bytemuck::cast_slice::<f32, u8>(v));
    }
    Ok(http::Response {
        status: 200,
        content_type: "application/x-npy",
        body,
    })
}

impl State {
    /// The index of the pooling a request asks for (`None`: the default, the first).
    fn pooling(&self, asked: Option<String>) -> std::result::Result<usize, ApiError> {
        let Some(asked) = asked else {
            return Ok(0);
        };
        let offered = || {
            (self.outputs.poolings.iter())
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let pooling: Pooling = asked
            .parse()
            .map_err(|e: String| ApiError::new(422, format!("pooling: {e}")))?;
        self.outputs
            .poolings
            .iter()
            .position(|&p| p == pooling)
            .ok_or_else(|| {
                ApiError::new(
                    422,
                    format!(
                        "pooling {pooling}: this server gives {} (--pooling)",
                        offered()
                    ),
                )
            })
    }
}

/// Decodes and preprocesses `images` on this thread, queues them for the model, and returns
/// their vectors for pooling `k` of `state.poolings`. With `one_array`, images whose vectors
/// would differ in length (patch grids of several sizes) are refused (406) before the model
/// runs: no single `.npy` array holds them.
fn embed(
    state: &State,
    images: &[&[u8]],
    k: usize,
    one_array: bool,
) -> std::result::Result<Vec<Vec<f32>>, ApiError> {
    // Admitted before the costly decoding, so that a busy server refuses at once.
    let permit = state.queue.admit(images.len())?;
    let t = Instant::now();
    let pixels = images
        .iter()
        .enumerate()
        .map(|(i, bytes)| {
            decode_and_preprocess(
                bytes,
                &format!("input[{i}]"),
                &state.decode,
                &state.preprocess,
            )
            .map(|(p, _)| cut_to_patches(p, state.patch))
            .map_err(|e| ApiError::new(422, dinov2::Error::from(e).to_string()))
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    state.metrics.record_decode(images.len(), t.elapsed());
    let pooling = state.outputs.poolings[k];
    if one_array && pooling.has_grid() && pixels.windows(2).any(|w| w[0].shape != w[1].shape) {
        return Err(ApiError::new(
            406,
            "the images have patch grids of different sizes: no single .npy array holds their \
             vectors; ask for application/json",
        ));
    }
    let embeddings = state.queue.embed(pixels, permit)?;
    if state.outputs.poolings.len() == 1 {
        return Ok(embeddings.into_iter().map(|e| e.values).collect());
    }
    embeddings
        .iter()
        .enumerate()
        .map(|(i, e)| {
            (state.outputs.pooled(e, pooling))
                .map(|p| p.values)
                .ok_or_else(|| {
                    ApiError::new(
                        500,
                        format!("input[{i}]: the model did not return every token"),
                    )
                })
        })
        .collect()
}
