//! Command-line arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use dinov2::{Dtype, Head, Pooling};

use crate::embed::{FailureBudget, OnError, ProgressMode};

/// DINOv2 vision transformers with Hugging Face transformers parity.
#[derive(Debug, Parser)]
#[command(name = "dinov2", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a checkpoint on pixel values from a safetensors file and write its outputs.
    Forward(ForwardArgs),
    /// Describe a checkpoint: variant, sizes, parameters, dtype, head, labels.
    Info(InfoArgs),
    /// Write a checkpoint (an original .pth, a timm file, a training checkpoint, any model this
    /// program reads) as a transformers model directory: config.json, model.safetensors,
    /// preprocessor_config.json.
    Convert(ConvertArgs),
    /// Embed images (files, folders, @lists, tar archives and streams, Parquet tables) into
    /// Parquet, npy or safetensors vectors.
    Embed(EmbedArgs),
    /// Decode and preprocess images as the checkpoint's image processor does; write pixel values.
    Preprocess(PreprocessArgs),
    /// Classify images with a checkpoint's classification head: top labels with probabilities.
    Classify(ClassifyArgs),
    /// Time forward passes of an architecture or checkpoint, optionally beside PyTorch.
    Bench(BenchArgs),
    /// Serve embeddings over HTTP: OpenAI's /v1/embeddings, /embed, /health, /info, /metrics.
    ///
    /// /embed takes JSON (`{"inputs": ...}`), multipart/form-data files (`curl -F
    /// image=@cat.jpg`) or one image as the body, and answers JSON, or one float32 .npy array
    /// when Accept names application/x-npy (406 when it allows neither). Errors are JSON with
    /// a status: 400, 406, 413, 422, 429, 503, 504 (see the README).
    Serve(ServeArgs),
    /// Nearest neighbours by cosine similarity over an embed output (exact, on the CPU).
    Knn(KnnArgs),
    /// Near-duplicate groups by cosine similarity over an embed output (exact, on the CPU).
    Dedup(DedupArgs),
}

#[derive(Debug, Args)]
pub struct KnnArgs {
    /// The vectors searched: an embed output (.parquet, .npy or .safetensors with its
    /// .paths.txt, or a clip-retrieval folder).
    pub index: PathBuf,
    /// The vectors whose neighbours are asked (default: every vector of the index, its
    /// neighbours being the others).
    #[arg(long)]
    pub queries: Option<PathBuf>,
    /// Neighbours per query.
    #[arg(long, default_value_t = 10)]
    pub k: usize,
    /// Which output of a file holding several (--pooling cls,mean): a Parquet column or a
    /// safetensors tensor, e.g. `cls`.
    #[arg(long)]
    pub column: Option<String>,
    /// Parquet file: query, neighbor, rank (from 1), score (cosine similarity).
    #[arg(long)]
    pub output: PathBuf,
    /// Replace --output if it exists.
    #[arg(long)]
    pub overwrite: bool,
}

#[derive(Debug, Args)]
pub struct DedupArgs {
    /// An embed output (.parquet, .npy or .safetensors with its .paths.txt, or a
    /// clip-retrieval folder).
    pub input: PathBuf,
    /// Rows at least this similar (cosine) are duplicates; groups are closed under it (a
    /// duplicate of a duplicate is in the group).
    #[arg(long, default_value_t = 0.95, allow_negative_numbers = true)]
    pub threshold: f32,
    /// Which output of a file holding several (a Parquet column or a safetensors tensor).
    #[arg(long)]
    pub column: Option<String>,
    /// Parquet file, a row per input row: path, group (the row number of its first member),
    /// group_size, keep (false for every member but the first), duplicate_of, nearest,
    /// nearest_score.
    #[arg(long)]
    pub output: PathBuf,
    /// Replace --output if it exists.
    #[arg(long)]
    pub overwrite: bool,
}

pub use dinov2::Device;

/// Runs `$body` with `$backend` bound to the backend `$device` names, in `$dtype`: the body is
/// written once and instantiated for each backend.
macro_rules! with_backend {
    ($device:expr, $dtype:expr, |$backend:ident| $body:expr) => {
        match $device {
            $crate::args::Device::Cpu => {
                let $backend = dinov2::CpuBackend::new($dtype)?;
                $body
            }
            $crate::args::Device::Cuda(ordinal) => {
                let $backend = dinov2::CudaBackend::new(ordinal, $dtype)?;
                $body
            }
        }
    };
}
pub(crate) use with_backend;

#[derive(Debug, Args)]
pub struct ForwardArgs {
    /// Model directory (config.json with model.safetensors, a sharded index or pytorch_model.bin),
    /// a weights file alone (an original facebookresearch .pth, a timm checkpoint: the config is
    /// told from its tensors, heads 64 wide), or a hub id such as facebook/dinov2-small (from the
    /// Hugging Face cache, downloaded when absent and a network is there).
    #[arg(long)]
    pub model: String,
    /// Safetensors file with `pixel_values` (B x C x H x W), optionally `bool_masked_pos`
    /// (B x num_patches, u8 or bool) and `labels` (for the classifier's loss); default: the
    /// --expect file.
    #[arg(long, required_unless_present = "expect")]
    pub input: Option<PathBuf>,
    /// Where to write the outputs (f32 tensors named as transformers names them).
    #[arg(long, required_unless_present = "expect")]
    pub output: Option<PathBuf>,
    /// Compare the outputs with these (a safetensors file of tensors named as transformers
    /// names them, such as `scripts/transformers_reference.py` writes, with the inputs in it or
    /// in --input): prints the relative L2 error of each and exits 1 beyond --tolerance.
    #[arg(long)]
    pub expect: Option<PathBuf>,
    /// Largest relative L2 error --expect accepts (default: 1e-5 in f32, 1e-2 in f16, 3e-2 in
    /// bf16).
    #[arg(long, requires = "expect", value_parser = parse_tolerance)]
    pub tolerance: Option<f64>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: Device,
    /// Compute precision, whatever the stored one: f32, f16, bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: Dtype,
    /// Also write hidden_states.0 .. hidden_states.L.
    #[arg(long)]
    pub hidden_states: bool,
    /// Also write attentions.0 .. attentions.{L-1}.
    #[arg(long)]
    pub attentions: bool,
    /// Resize position embeddings as transformers <= 4.44 and the original DINOv2 code do.
    #[arg(long)]
    pub legacy_interpolation: bool,
    /// Head to run (default: from `architectures` in config.json).
    #[arg(long)]
    pub head: Option<Head>,
    /// Backbone stages to output, e.g. `4,8,-1` (default: from config.json).
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    pub out_indices: Option<Vec<i64>>,
}

#[derive(Debug, Args)]
pub struct InfoArgs {
    /// Model directory (config.json with model.safetensors, a sharded index or pytorch_model.bin),
    /// a weights file alone (an original facebookresearch .pth, a timm checkpoint: the config is
    /// told from its tensors, heads 64 wide), or a hub id such as facebook/dinov2-small (from the
    /// Hugging Face cache, downloaded when absent and a network is there).
    #[arg(long)]
    pub model: String,
}

#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// The checkpoint to convert: a model directory, a weights file alone or a hub id.
    #[arg(long)]
    pub model: String,
    /// The folder to write (created; refused when it holds files).
    #[arg(long)]
    pub output: PathBuf,
    /// Store the values as f32, f16 or bf16 (rounded to nearest even); default: as stored.
    #[arg(long)]
    pub dtype: Option<Dtype>,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// A released architecture with random weights: vits14, vitb14, vitl14, vitg14 (+ `-reg`).
    #[arg(long)]
    pub arch: Option<String>,
    /// Or a model directory, or a weights file alone (its config told from its tensors).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: Device,
    /// Compute precision: f32, f16, bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: Dtype,
    /// Batch sizes to time, e.g. 1,8,64.
    #[arg(long, value_delimiter = ',', default_value = "8", value_parser = count(1, 1 << 16))]
    pub batch_size: Vec<usize>,
    /// Square input side in pixels.
    #[arg(long, default_value_t = 224, value_parser = count(1, 1 << 14))]
    pub image_size: usize,
    /// Untimed passes before timing.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Timed passes; the median is reported.
    #[arg(long, default_value_t = 3, value_parser = count(1, 1 << 20))]
    pub repeats: usize,
    /// Python with torch 2.11 + transformers 5.17: times the same model in PyTorch in this run
    /// (SDPA attention, eager unless --peer-compile).
    #[arg(long)]
    pub peer: Option<PathBuf>,
    /// Run the peer under torch.compile (compiled during its warm-up passes).
    #[arg(long, requires = "peer")]
    pub peer_compile: bool,
    /// Time ours and the peer's passes in turn instead of all of the peer's before ours: on a
    /// machine whose speed drifts over minutes, both sides then see the same drift. A turn is
    /// an untimed pass and a timed one. No memory is reported (the processes interleave).
    #[arg(long, requires = "peer")]
    pub alternate: bool,
    /// Also time this many copies of the model at once, each on its own thread and, on CUDA,
    /// its own stream, as `dinov2 embed --streams` runs them: their throughput together (the
    /// peer runs one).
    #[arg(long, default_value_t = 1, value_parser = count(1, 16))]
    pub streams: usize,
    /// Also write the results as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// How to decode the images, and the preprocessing settings that override the checkpoint's
/// `preprocessor_config.json` (each is a `BitImageProcessor` field, so transformers can do the
/// same).
#[derive(Debug, Args)]
pub struct DecodeArgs {
    /// Rotate images by their EXIF orientation tag (transformers does not).
    #[arg(long)]
    pub apply_exif_orientation: bool,
    /// Refuse images with more pixels than this (decompression bombs).
    #[arg(long, default_value_t = dinov2::image::DEFAULT_MAX_PIXELS)]
    pub max_pixels: u64,
    /// Refuse images with a side longer than this many pixels.
    #[arg(long, default_value_t = dinov2::image::DEFAULT_MAX_DIMENSION)]
    pub max_side: u32,
    /// Refuse images with a side shorter than this many pixels, e.g. `--min-side 32` against
    /// the icons and tracking pixels of a web crawl (default 1: every image, as transformers
    /// takes them).
    #[arg(long, default_value_t = 1, value_name = "PIXELS",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub min_side: u32,
    /// Decode large JPEGs at 1/2, 1/4 or 1/8 scale where the resize shrinks them at least twice
    /// as much (Pillow's `Image.draft`, as its `thumbnail` does): about 1.8x faster decoding and
    /// preprocessing of 12-megapixel photos, with the pixels of that drafted image rather than
    /// of a full decode, so embeddings differ slightly from transformers' on such images.
    #[arg(long)]
    pub draft: bool,
    /// Resize so that the shortest edge has this many pixels (`size.shortest_edge`; 256 for the
    /// released checkpoints).
    #[arg(long, value_name = "PIXELS", value_parser = clap::value_parser!(u32).range(1..))]
    pub resize: Option<u32>,
    /// Center-crop to N x N or HxW pixels (`crop_size`; 224 for the released checkpoints), e.g.
    /// `--resize 512 --crop 448` for a 32 x 32 patch grid.
    #[arg(long, value_name = "N|HxW", value_parser = parse_crop, conflicts_with = "no_crop")]
    pub crop: Option<(u32, u32)>,
    /// Keep the whole resized image (`do_center_crop: false`): grids follow each image's aspect
    /// ratio, the pixels past the last whole patch are dropped as the model does.
    #[arg(long)]
    pub no_crop: bool,
}

/// A finite relative error of at least 0.
fn parse_tolerance(s: &str) -> Result<f64, String> {
    s.trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .ok_or_else(|| format!("{s:?}: expected a relative error such as 1e-5"))
}

/// A number of seconds, 0 to a year.
fn parse_seconds(s: &str) -> Result<std::time::Duration, String> {
    s.trim()
        .parse::<f64>()
        .ok()
        .filter(|v| (0.0..=365.0 * 86400.0).contains(v))
        .map(std::time::Duration::from_secs_f64)
        .ok_or_else(|| format!("{s:?}: expected a number of seconds from 0 to 31536000"))
}

/// `I/N` with N at least 1 and I below N.
fn parse_shard(s: &str) -> Result<(usize, usize), String> {
    let bad = || format!("{s:?}: expected I/N with 0 <= I < N, such as 0/4");
    let (i, n) = s.split_once('/').ok_or_else(bad)?;
    let (i, n) = (
        i.trim().parse::<usize>().map_err(|_| bad())?,
        n.trim().parse::<usize>().map_err(|_| bad())?,
    );
    if n == 0 || i >= n {
        return Err(bad());
    }
    Ok((i, n))
}

/// `N` or `HxW`, both at least 1.
fn parse_crop(s: &str) -> Result<(u32, u32), String> {
    let dim = |v: &str| -> Result<u32, String> {
        match v.trim().parse::<u32>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("{s:?}: expected a size such as 224 or 448x336")),
        }
    };
    match s.split_once(['x', 'X']) {
        Some((h, w)) => Ok((dim(h)?, dim(w)?)),
        None => dim(s).map(|n| (n, n)),
    }
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Model directory (config.json with model.safetensors, a sharded index or pytorch_model.bin),
    /// a weights file alone (an original facebookresearch .pth, a timm checkpoint: the config is
    /// told from its tensors, heads 64 wide), or a hub id such as facebook/dinov2-small (from the
    /// Hugging Face cache, downloaded when absent and a network is there).
    #[arg(long, env = "DINOV2_MODEL")]
    pub model: String,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu", env = "DINOV2_DEVICE")]
    pub device: Device,
    /// Compute precision: f32, f16, bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: Dtype,
    /// cls (pooler_output), mean, cls+mean, patch, registers or tokens, or several, e.g.
    /// `cls,mean,patch`: the first is the default, and a request picks another with
    /// `"pooling"` in its JSON, a `pooling` form field or `?pooling=` (then the model threads
    /// return every token and each request's vectors are pooled from them). Each answer is one
    /// flat vector per image.
    #[arg(long, default_value = "cls", value_delimiter = ',')]
    pub pooling: Vec<Pooling>,
    /// L2-normalize each vector (each token's vector for the token poolings).
    #[arg(long)]
    pub normalize: bool,
    /// Address to listen on (0.0.0.0 for every interface).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0: any free port, printed at start).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Name answered as `model` (default: --model as given).
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// Images per model pass at most, gathered from concurrent requests (default: 8 on the CPU,
    /// 64 on CUDA).
    #[arg(long)]
    pub max_batch_size: Option<usize>,
    /// Milliseconds a model thread waits for more requests to join a pass once it has one.
    #[arg(long, default_value_t = 5.0, value_parser = parse_wait_ms)]
    pub batch_wait_ms: f64,
    /// Images in flight (decoding, waiting or running) at most; a request past it is answered
    /// 429 at once, except that a request larger than the limit is let in alone when nothing
    /// else is in flight (default: 8 passes' worth).
    #[arg(long)]
    pub max_queue: Option<usize>,
    /// Seconds a request waits for the model before it is answered 504.
    #[arg(long, default_value = "120", value_name = "SECONDS", value_parser = parse_timeout)]
    pub request_timeout: std::time::Duration,
    /// Images one request may hold at most (default 64; more is answered 413).
    #[arg(long)]
    pub max_inputs: Option<usize>,
    /// Fetch inputs given as http:// or https:// URLs (JSON requests), 8 at a time per request,
    /// each within --url-timeout, a request's images together within --max-request-bytes; a URL
    /// that fails is answered 422 naming it. Off by default: the server would fetch whatever its clients name,
    /// on its own network too, so only for trusted clients.
    #[arg(long)]
    pub allow_urls: bool,
    /// Seconds one URL may take to fetch in all (connecting, redirects, reading), with
    /// --allow-urls.
    #[arg(long, default_value = "10", value_name = "SECONDS", value_parser = parse_timeout, requires = "allow_urls")]
    pub url_timeout: std::time::Duration,
    /// Bytes one request's body may hold at most (more is answered 413 before it is read).
    #[arg(long, default_value_t = 64 << 20)]
    pub max_request_bytes: usize,
    /// Connection threads, reading requests and decoding their images (default: the cores, at
    /// least 4); connections wait in a queue of 4 per thread, and beyond it are answered 503.
    #[arg(long, value_parser = count(1, 1024))]
    pub http_threads: Option<usize>,
    /// Model threads, each with its own copy of the model (on CUDA its own stream; default: 2
    /// on CUDA, 1 on the CPU). With --gpus, per GPU.
    #[arg(long, value_parser = count(1, 64))]
    pub streams: Option<usize>,
    /// Serve from these GPUs at once, e.g. `0,1` (implies CUDA): each holds --streams copies of
    /// the model, all taking passes from the one queue.
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "ORDINALS",
        conflicts_with = "device"
    )]
    pub gpus: Option<Vec<usize>>,
    #[command(flatten)]
    pub decode: DecodeArgs,
}

/// A parser of whole numbers from `min` to `max` (threads, copies, sizes: past `max` a typo
/// rather than a wish, which would exhaust the machine before any error).
fn count(min: usize, max: usize) -> impl Fn(&str) -> Result<usize, String> + Clone {
    move |s: &str| {
        s.trim()
            .parse::<usize>()
            .ok()
            .filter(|n| (min..=max).contains(n))
            .ok_or_else(|| format!("{s:?}: expected a whole number from {min} to {max}"))
    }
}

/// A timeout: more than 0 seconds, at most a year.
fn parse_timeout(s: &str) -> Result<std::time::Duration, String> {
    parse_seconds(s).and_then(|d| {
        if d.is_zero() {
            Err(format!("{s:?}: a timeout must be more than 0 seconds"))
        } else {
            Ok(d)
        }
    })
}

/// Milliseconds, 0 to 10 s.
fn parse_wait_ms(s: &str) -> Result<f64, String> {
    s.trim()
        .parse::<f64>()
        .ok()
        .filter(|v| (0.0..=10_000.0).contains(v))
        .ok_or_else(|| format!("{s:?}: expected milliseconds from 0 to 10000"))
}

#[derive(Debug, Args)]
pub struct EmbedArgs {
    /// Model directory (config.json with model.safetensors, a sharded index or pytorch_model.bin),
    /// a weights file alone (an original facebookresearch .pth, a timm checkpoint: the config is
    /// told from its tensors, heads 64 wide), or a hub id such as facebook/dinov2-small (from the
    /// Hugging Face cache, downloaded when absent and a network is there).
    #[arg(long, env = "DINOV2_MODEL")]
    pub model: String,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu", env = "DINOV2_DEVICE")]
    pub device: Device,
    /// Compute precision: f32, f16, bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: Dtype,
    /// Images per forward pass (default: 8 on the CPU, where larger batches lose cache locality;
    /// 128 on CUDA).
    #[arg(long, env = "DINOV2_BATCH_SIZE")]
    pub batch_size: Option<usize>,
    /// cls (pooler_output), mean (of the patch tokens), cls+mean, patch (the token grid),
    /// registers (the register tokens of a model with registers) or tokens (every token:
    /// last_hidden_state); several, e.g. `cls,patch`, come from one pass, each in its own column
    /// (Parquet) or tensor (safetensors).
    #[arg(long, default_value = "cls", value_delimiter = ',')]
    pub pooling: Vec<Pooling>,
    /// L2-normalize each vector (each token's vector with --pooling patch, registers or tokens).
    #[arg(long)]
    pub normalize: bool,
    /// Pool these hidden states instead of the final output, concatenated in this order, e.g.
    /// `9,10,11,12` (0 = the embeddings, i = layer i's output), each through the final LayerNorm
    /// as DINOv2's get_intermediate_layers(norm=True) does.
    #[arg(long, value_delimiter = ',')]
    pub layers: Option<Vec<usize>>,
    /// With --layers: pool the hidden states as they are, without the final LayerNorm.
    #[arg(long, requires = "layers")]
    pub no_layer_norm: bool,
    /// Type of the written values: f32, f16 (half the size; rounded to nearest even), int8 (each
    /// vector scaled to ±127: a quarter of the size, for cosine search) or binary (the sign bits,
    /// packed: 1/32 of the size, for Hamming search).
    #[arg(long, value_enum, default_value = "f32")]
    pub output_dtype: crate::embed::ValueType,
    /// Output file: .parquet, .npy (with FILE.paths.txt) or .safetensors (with FILE.paths.txt);
    /// or a folder name ending in / for clip-retrieval's layout (img_emb/img_emb_0.npy and
    /// metadata/metadata_0.parquet, read by embedding-reader and autofaiss). Parquet patch and
    /// token outputs also hold each image's grid and `region` (the part of the image the grid
    /// covers). A finished job writes FILE.done.json last; a running one holds
    /// FILE.partial/lock, so that a second job on the same output is refused. `-` writes an
    /// Arrow IPC stream to standard output instead, the Parquet output's columns, a record batch
    /// as each chunk of rows is done (not resumable).
    #[arg(long)]
    pub output: String,
    /// Replace an existing output (or interrupted job).
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// Continue an interrupted job with the same inputs and options; on a finished output
    /// (with its FILE.done.json) succeed at once when they match, refuse when they do not.
    #[arg(long)]
    pub resume: bool,
    /// skip: report bad inputs and embed the rest (exit status 1 at the end, unless
    /// --max-failures allows them); fail: stop at the first.
    #[arg(long, value_enum, default_value = "skip")]
    pub on_error: OnError,
    /// Bad inputs a job may skip and still exit 0: a count (`100`) or a share of its inputs
    /// (`0.5%`; of this shard's, with --shard). Default 0: any bad input makes the exit status 1.
    /// A job that embedded nothing exits 1 whatever the budget. The output and
    /// FILE.errors.jsonl are written either way; also checked when --resume finds the job
    /// finished. With --on-error skip (the default); refused with --on-error fail.
    #[arg(long, value_name = "N|P%", value_parser = FailureBudget::parse)]
    pub max_failures: Option<FailureBudget>,
    /// Decoding threads (default: all cores).
    #[arg(long, value_parser = count(0, 1024))]
    pub workers: Option<usize>,
    /// Copies of the model running batches at the same time, each on its own CUDA stream, so
    /// that one's uploads and host work overlap another's compute (default: 2 on CUDA, 1 on the
    /// CPU, where one already uses every core). With --gpus, per GPU.
    #[arg(long, value_parser = count(1, 64))]
    pub streams: Option<usize>,
    /// Run on these GPUs at once, e.g. `0,1,2,3` (implies CUDA): each holds its own copies of the
    /// model and takes the next batch when free; the output is one file, in input order.
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "ORDINALS",
        conflicts_with = "device"
    )]
    pub gpus: Option<Vec<usize>>,
    /// Embed only shard I of N (`--shard 3/8`): the I-th of N equal runs of the images the
    /// inputs expand to (in the order given; folders sorted by path),
    /// so that N jobs (machines) with the same inputs share the work without overlap, each
    /// writing its own output (and reading its part of an archive or table in one piece). A
    /// stream (`pipe:`, `-`, a compressed archive) counts as one input: its images are known
    /// only as it is read.
    #[arg(long, value_name = "I/N", value_parser = parse_shard)]
    pub shard: Option<(usize, usize)>,
    /// Inputs decoded together, then grouped by patch grid into passes of --batch-size: with
    /// --no-crop, where sizes vary, a wider window fills more passes (default: 4 batches with
    /// --no-crop, 1 batch otherwise). Memory holds this many decoded images per model thread,
    /// and per window being decoded (--decoders).
    #[arg(long, value_name = "INPUTS")]
    pub window: Option<usize>,
    /// Windows decoded at once (default: 2 on CUDA, so that the workers decode one while the
    /// other waits for its slowest image or is stacked into passes; 1 on the CPU, whose cores
    /// the model shares).
    #[arg(long, value_parser = count(1, 8), hide = true)]
    pub decoders: Option<usize>,
    /// Rows per committed chunk of the resumable job (what an interrupted job keeps), and per
    /// record batch of an Arrow stream (`--output -`).
    #[arg(long, default_value_t = 1024, value_parser = count(1, 1 << 30))]
    pub chunk_rows: usize,
    /// How progress is shown on stderr: a bar on a terminal and lines elsewhere (auto), or JSON
    /// lines for a program watching the job (jsonl).
    #[arg(long, value_enum, default_value = "auto")]
    pub progress: ProgressMode,
    /// Seconds between progress lines (and jsonl progress events); a bar moves on its own.
    #[arg(long, default_value = "30", value_name = "SECONDS", value_parser = parse_seconds)]
    pub progress_every: std::time::Duration,
    /// The column of a Parquet input holding the images (encoded bytes, or a struct with a
    /// `bytes` field as Hugging Face datasets store an Image), or their http(s) URLs (a text
    /// column such as img2dataset's `url`, fetched as the job runs); a column of bytes is found
    /// when there is one such column, or one named image, img, jpg, jpeg, png or webp.
    #[arg(long, value_name = "NAME")]
    pub image_column: Option<String>,
    /// The column of a Parquet input naming each row in the output (strings or integers, e.g.
    /// img2dataset's `key`), instead of TABLE.parquet#ROW.
    #[arg(long, value_name = "NAME")]
    pub id_column: Option<String>,
    #[command(flatten)]
    pub decode: DecodeArgs,
    /// Image files, folders (searched recursively, sorted by path), @lists (one path or URL per
    /// line), .tar archives (webdataset shards: image members read in place, named
    /// ARCHIVE.tar/MEMBER), .parquet tables of images (each row's image, named TABLE.parquet#ROW
    /// from row 0), http(s) URLs of images (fetched by the decoding threads: raise --workers for
    /// many), and tar streams read as the job runs (members named STREAM/MEMBER): `pipe:COMMAND`
    /// (the command's output, e.g. `'pipe:aws s3 cp s3://bucket/00042.tar -'`), `-` (standard
    /// input), .tar.gz, .tgz or .tar.zst archives, and the http(s) URLs of tar archives. Brace
    /// patterns expand as webdataset's shard names do:
    /// `'https://host/shards/{00000..00999}.tar'` is a thousand streams.
    #[arg(required = true)]
    pub inputs: Vec<String>,
}

#[derive(Debug, Args)]
pub struct PreprocessArgs {
    /// Model directory or hub id (its preprocessor_config.json; the DINOv2 defaults without one).
    #[arg(long)]
    pub model: String,
    /// Safetensors file: one f32 tensor [3, H, W] per image, named by its path as given.
    #[arg(long)]
    pub output: PathBuf,
    #[command(flatten)]
    pub decode: DecodeArgs,
    /// Image files.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ClassifyArgs {
    /// Model directory, weights file or hub id of an image classifier (e.g.
    /// facebook/dinov2-small-imagenet1k-1-layer).
    #[arg(long)]
    pub model: String,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: Device,
    /// Compute precision: f32, f16, bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: Dtype,
    /// How many labels to print per image.
    #[arg(long, default_value_t = 5)]
    pub top_k: usize,
    #[command(flatten)]
    pub decode: DecodeArgs,
    /// Image files.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
}
