//! `dinov2 info`: what a checkpoint is.

use dinov2::{Checkpoint, Head, ModelType};

use crate::args::InfoArgs;
use crate::error::Result;

/// Prints a description of the checkpoint.
pub fn run(args: InfoArgs) -> Result<()> {
    let ckpt = Checkpoint::open(crate::model_dir::resolve(&args.model)?)?;
    let c = &ckpt.config;
    let w = &ckpt.weights;
    let variant = match c.model_type {
        ModelType::Dinov2 => "DINOv2".to_owned(),
        ModelType::Dinov2WithRegisters => {
            format!("DINOv2 with {} register tokens", c.num_register_tokens)
        }
    };
    let ffn = if c.use_swiglu_ffn {
        format!("SwiGLU, hidden {}", c.ffn_hidden_size())
    } else {
        format!(
            "MLP ({}), hidden {}",
            c.hidden_act_name,
            c.ffn_hidden_size()
        )
    };
    let head = Head::from_config(c)
        .map(|h| h.as_str().to_owned())
        .unwrap_or_else(|e| e.to_string());
    let dtypes: Vec<String> = w
        .dtype_counts()
        .iter()
        .map(|(d, n)| format!("{d} ({n} values)"))
        .collect();
    println!("model:        {}", ckpt.dir.display());
    println!(
        "variant:      {variant} (model_type {})",
        c.model_type.as_str()
    );
    println!(
        "architecture: {}",
        if c.architectures.is_empty() {
            "(none)".into()
        } else {
            c.architectures.join(", ")
        }
    );
    println!(
        "head:         {head}{}",
        if w.has_classifier() {
            ", classifier weights present"
        } else {
            ""
        }
    );
    println!(
        "sizes:        hidden {}, {} layers, {} heads of {}, {ffn}",
        c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.head_dim
    );
    println!(
        "patches:      {}x{} pixels, pretrained at {} px ({}x{} position grid), {} channels",
        c.patch_size,
        c.patch_size,
        c.image_size,
        c.grid_side(),
        c.grid_side(),
        c.num_channels
    );
    println!("parameters:   {}", w.num_parameters());
    println!("stored dtype: {}", dtypes.join(", "));
    println!(
        "naming:       {}",
        if w.original_naming() {
            "original facebookresearch (converted on load)"
        } else {
            "transformers"
        }
    );
    println!(
        "layer norm:   eps {:e}; qkv bias {}; mask token {}",
        c.layer_norm_eps, c.qkv_bias, c.use_mask_token
    );
    println!("backbone:     out_features {:?}", c.out_features);
    let preview: Vec<&str> = c.id2label.values().take(5).map(String::as_str).collect();
    println!(
        "labels:       {}{}",
        c.num_labels(),
        if preview.is_empty() {
            String::new()
        } else {
            format!(
                " ({}{})",
                preview.join(", "),
                if c.num_labels() > 5 { ", ..." } else { "" }
            )
        }
    );
    for p in w.paths() {
        println!("file:         {}", p.display());
    }
    Ok(())
}
