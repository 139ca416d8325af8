//! `dinov2 bench`: forward-pass throughput of a released architecture (random weights) or a
//! checkpoint, per batch size, with the PyTorch peer timed in the same invocation when asked.

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use dinov2::{
    flops_per_image, released_json, Backend, Checkpoint, Dinov2, Dinov2Config, ForwardOptions,
    Tensor,
};
use serde_json::{json, Value};

use crate::args::{with_backend, BenchArgs, Device};
use crate::error::{CliError, Result};

const PEER_SCRIPT: &str = include_str!("../../../benches/peer_torch.py");

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Deterministic pixel values in roughly the normalized range.
fn pixels(batch: usize, size: usize) -> Tensor {
    let n = batch * 3 * size * size;
    let data = (0..n)
        .map(|i| ((i.wrapping_mul(2_654_435_761) >> 7) % 4001) as f32 / 1000.0 - 2.0)
        .collect();
    Tensor::new(vec![batch, 3, size, size], data).expect("sizes agree")
}

fn run_peer(python: &PathBuf, config_json: &str, args: &BenchArgs) -> Result<Vec<Value>> {
    let dir = std::env::temp_dir().join(format!("dinov2-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)
        .map_err(|e| CliError(format!("cannot create {}: {e}", dir.display())))?;
    let script = dir.join("peer_torch.py");
    std::fs::write(&script, PEER_SCRIPT)
        .map_err(|e| CliError(format!("cannot write {}: {e}", script.display())))?;
    let batches: Vec<String> = args.batch_size.iter().map(|b| b.to_string()).collect();
    let device = match args.device {
        Device::Cpu => "cpu".to_owned(),
        Device::Cuda(n) => format!("cuda:{n}"),
    };
    let out = Command::new(python)
        .arg(&script)
        .args([
            "--config",
            config_json,
            "--device",
            &device,
            "--dtype",
            &args.dtype.to_string(),
        ])
        .args([
            "--batch-sizes",
            &batches.join(","),
            "--image-size",
            &args.image_size.to_string(),
        ])
        .args([
            "--warmup",
            &args.warmup.to_string(),
            "--repeats",
            &args.repeats.to_string(),
        ])
        .args(["--threads", &rayon::current_num_threads().to_string()])
        .output()
        .map_err(|e| {
            CliError(format!(
                "cannot run the peer with {}: {e}",
                python.display()
            ))
        })?;
    let _ = std::fs::remove_dir_all(&dir);
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().last().unwrap_or("no message");
        return Err(CliError(format!("the PyTorch peer failed: {last}")));
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str(l).map_err(|e| CliError(format!("the peer printed {l:?}: {e}")))
        })
        .collect()
}

/// Runs the bench verb.
pub fn run(args: BenchArgs) -> Result<()> {
    let (name, config, config_json, checkpoint) = match (&args.arch, &args.model) {
        (Some(arch), None) => {
            let value = released_json(arch).ok_or_else(|| {
                CliError(format!(
                    "--arch {arch}: expected one of {}",
                    dinov2::RELEASED.join(", ")
                ))
            })?;
            let config = Dinov2Config::from_json(&value)?;
            (arch.clone(), config, value.to_string(), None)
        }
        (None, Some(dir)) => {
            let ckpt = Checkpoint::open(dir)?;
            let path = dir.join("config.json");
            let text = std::fs::read_to_string(&path)
                .map_err(|e| CliError(format!("cannot read {}: {e}", path.display())))?;
            (
                dir.display().to_string(),
                ckpt.config.clone(),
                text,
                Some(ckpt),
            )
        }
        _ => return Err(CliError("give exactly one of --arch and --model".into())),
    };
    with_backend!(args.device, args.dtype, |backend| {
        let model = match &checkpoint {
            Some(ckpt) => Dinov2::load(backend, ckpt)?,
            None => Dinov2::random(backend, &config, 0)?,
        };
        bench_on(&model, &name, &config_json, &args)
    })
}

fn bench_on<B: Backend>(
    model: &Dinov2<B>,
    name: &str,
    config_json: &str,
    args: &BenchArgs,
) -> Result<()> {
    let config = model.config();
    let device = model.backend().name();
    let peer = match &args.peer {
        Some(python) => Some(run_peer(python, config_json, args)?),
        None => None,
    };
    let size = args.image_size;
    let gflop = flops_per_image(config, size, size) / 1e9;
    let threads = rayon::current_num_threads();
    println!(
        "{name} on {device} ({threads} CPU threads), {} at {size}x{size}: {gflop:.2} GFLOP/image",
        args.dtype
    );
    println!(
        "{:>6} {:>12} {:>10} {:>10} {:>12} {:>8}",
        "batch", "ms/batch", "img/s", "GFLOP/s", "torch img/s", "ratio"
    );
    let mut results = Vec::new();
    for &b in &args.batch_size {
        let x = pixels(b, size);
        let opts = ForwardOptions::default();
        for _ in 0..args.warmup {
            model.forward(&x, None, &opts)?;
        }
        let mut times = Vec::new();
        for _ in 0..args.repeats.max(1) {
            let t = Instant::now();
            model.forward(&x, None, &opts)?;
            times.push(t.elapsed().as_secs_f64());
        }
        let med = median(times);
        let ips = b as f64 / med;
        let peer_ips = peer
            .as_ref()
            .and_then(|p| p.iter().find(|r| r["batch"].as_u64() == Some(b as u64)))
            .and_then(|r| r["images_per_s"].as_f64());
        println!(
            "{b:>6} {:>12.1} {ips:>10.2} {:>10.1} {:>12} {:>8}",
            med * 1e3,
            ips * gflop,
            peer_ips.map_or("-".into(), |p| format!("{p:.2}")),
            peer_ips.map_or("-".into(), |p| format!("{:.2}x", ips / p)),
        );
        results.push(json!({
            "arch": name, "device": device, "threads": threads, "dtype": args.dtype.to_string(), "batch": b,
            "image_size": size, "median_s": med, "images_per_s": ips, "gflop_per_image": gflop,
            "peer_images_per_s": peer_ips,
        }));
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&json!({"results": results, "peer": peer}))
            .map_err(|e| CliError(e.to_string()))?;
        std::fs::File::create(path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .map_err(|e| CliError(format!("cannot write {}: {e}", path.display())))?;
    }
    Ok(())
}
