//! `dinov2 info`: what a checkpoint is.

use dinov2::{Checkpoint, ConfigSource, Head, ModelType};

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
    println!("model:        {}", ckpt.path.display());
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
    let classifier_named = head == "classifier";
    println!(
        "head:         {head}{}",
        match (w.has_classifier(), classifier_named) {
            (true, _) => ", classifier weights present",
            (false, true) => ", but the classifier weights are missing: classify cannot run",
            (false, false) => "",
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
    let mut naming = vec![if w.original_naming() {
        "original facebookresearch/timm (converted on load)".to_owned()
    } else {
        "transformers".to_owned()
    }];
    if w.timm_no_embed_class() {
        naming.push("timm's CLS token with its position folded in".into());
    }
    if w.zero_mask_token() {
        naming.push("no mask token (timm drops it): a zero one stands in".into());
    }
    if let Some((prefix, ignored)) = w.backbone_prefix() {
        naming.push(format!(
            "the backbone under `{prefix}`, {ignored} other tensors left out"
        ));
    }
    println!("naming:       {}", naming.join("; "));
    println!(
        "config:       {}",
        match &ckpt.config_source {
            ConfigSource::File(path) => path.display().to_string(),
            ConfigSource::Inferred(_) => format!(
                "told from the tensors (no config.json; heads taken {} wide, as in every released DINOv2)",
                c.head_dim
            ),
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
    let pre = dinov2::preprocess_config(&ckpt.path)?;
    let has_pre = ckpt.path.join("preprocessor_config.json").is_file();
    println!(
        "preprocess:   {}{}",
        describe_preprocessing(&pre),
        if has_pre {
            ""
        } else {
            " (no preprocessor_config.json: facebook/dinov2's)"
        }
    );
    // What `dinov2 embed` writes per image at the preprocessed size (a square crop, or the
    // pretraining size without one).
    let side = if pre.do_center_crop {
        (pre.crop_size.height as usize, pre.crop_size.width as usize)
    } else {
        (c.image_size, c.image_size)
    };
    let grid = (side.0 / c.patch_size, side.1 / c.patch_size);
    let h = c.hidden_size;
    let registers = if c.num_register_tokens > 0 {
        format!(", registers {}x{h}", c.num_register_tokens)
    } else {
        String::new()
    };
    println!(
        "embedding:    cls {h}, mean {h}, cls+mean {}, patch {}x{}x{h} at {}x{} px{registers}, \
         tokens {}x{h}",
        2 * h,
        grid.0,
        grid.1,
        side.0,
        side.1,
        c.num_prefix_tokens() + grid.0 * grid.1
    );
    for p in w.paths() {
        println!("file:         {}", p.display());
    }
    Ok(())
}

/// The preprocessing in a line: resize, crop, scaling.
fn describe_preprocessing(p: &dinov2::image::PreprocessConfig) -> String {
    use dinov2::image::SizeSpec;
    let mut parts = Vec::new();
    if p.do_resize {
        let size = match p.size {
            SizeSpec::ShortestEdge(s) => format!("shortest edge {s}"),
            SizeSpec::ShortestLongest {
                shortest_edge,
                longest_edge,
            } => format!("shortest edge {shortest_edge}, longest at most {longest_edge}"),
            SizeSpec::Exact { height, width } => format!("{height}x{width}"),
            SizeSpec::MaxHeightWidth {
                max_height,
                max_width,
            } => format!("within {max_height}x{max_width}"),
        };
        parts.push(format!("resize to {size} ({:?})", p.resample).to_lowercase());
    }
    if p.do_center_crop {
        parts.push(format!(
            "center crop {}x{}",
            p.crop_size.height, p.crop_size.width
        ));
    }
    if p.do_rescale {
        if (p.rescale_factor - 1.0 / 255.0).abs() < 1e-15 {
            parts.push("rescale 1/255".into());
        } else {
            parts.push(format!("rescale {}", p.rescale_factor));
        }
    }
    if p.do_normalize {
        parts.push(format!(
            "normalize mean {:?} std {:?}",
            p.image_mean, p.image_std
        ));
    }
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}
