//! `preprocessor_config.json`: the settings of Hugging Face's `BitImageProcessor`.
//!
//! Parsing follows transformers 5.17.0 (`BitImageProcessorPil`, `get_size_dict`,
//! `validate_preprocess_arguments`): a key that is missing or `null` takes the processor's class
//! default (see [`PreprocessConfig::bit_image_processor_defaults`], which differ from the
//! facebook/dinov2 file: CLIP mean/std and `shortest_edge` 224), unknown keys
//! (`image_processor_type`, `processor_class`, `use_square_size`, ...) are ignored, and a value
//! that cannot be used is an error naming the field.

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{ImageError, Result};

/// OpenAI CLIP normalisation, the `BitImageProcessor` class default.
pub const OPENAI_CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
/// OpenAI CLIP normalisation, the `BitImageProcessor` class default.
pub const OPENAI_CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];
/// ImageNet normalisation, used by every facebook/dinov2-* checkpoint.
pub const IMAGENET_MEAN: [f64; 3] = [0.485, 0.456, 0.406];
/// ImageNet normalisation, used by every facebook/dinov2-* checkpoint.
pub const IMAGENET_STD: [f64; 3] = [0.229, 0.224, 0.225];

/// Pillow's resampling filters, with their `resample` integer codes (`PIL.Image.Resampling`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resample {
    /// 0: nearest neighbour (Pillow's own index rule, no filtering).
    Nearest,
    /// 1: Lanczos, a = 3.
    Lanczos,
    /// 2: bilinear (triangle filter).
    Bilinear,
    /// 3: bicubic (Keys, a = -0.5); the DINOv2 setting.
    Bicubic,
    /// 4: box.
    Box,
    /// 5: Hamming-windowed sinc.
    Hamming,
    /// 6: Magic Kernel Sharp 2013 (Pillow >= 13).
    Mks2013,
    /// 7: Magic Kernel Sharp 2021 (Pillow >= 13).
    Mks2021,
}

impl Resample {
    /// The filter for a `resample` code, `None` for unknown codes.
    pub fn from_code(code: i64) -> Option<Resample> {
        Some(match code {
            0 => Resample::Nearest,
            1 => Resample::Lanczos,
            2 => Resample::Bilinear,
            3 => Resample::Bicubic,
            4 => Resample::Box,
            5 => Resample::Hamming,
            6 => Resample::Mks2013,
            7 => Resample::Mks2021,
            _ => return None,
        })
    }

    /// The `resample` code (`PIL.Image.Resampling` value).
    pub fn code(self) -> u8 {
        match self {
            Resample::Nearest => 0,
            Resample::Lanczos => 1,
            Resample::Bilinear => 2,
            Resample::Bicubic => 3,
            Resample::Box => 4,
            Resample::Hamming => 5,
            Resample::Mks2013 => 6,
            Resample::Mks2021 => 7,
        }
    }
}

/// How `size` determines the resized image (transformers' `SizeDict` forms that the PIL backend
/// can resize to).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeSpec {
    /// `{"shortest_edge": s}`: the short side becomes `s`, the long side `int(s * long / short)`.
    ShortestEdge(u32),
    /// `{"shortest_edge": s, "longest_edge": l}`: as above, but the long side is capped at `l`
    /// (transformers' `get_size_with_aspect_ratio`).
    ShortestLongest {
        /// Requested short side.
        shortest_edge: u32,
        /// Cap on the long side.
        longest_edge: u32,
    },
    /// `{"height": h, "width": w}`: a plain resize to `h x w`.
    Exact {
        /// Output height.
        height: u32,
        /// Output width.
        width: u32,
    },
    /// `{"max_height": h, "max_width": w}`: the largest size within `h x w` keeping the aspect ratio.
    MaxHeightWidth {
        /// Maximum output height.
        max_height: u32,
        /// Maximum output width.
        max_width: u32,
    },
}

/// A height and a width in pixels (`crop_size`, `pad_size`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeightWidth {
    /// Height in pixels.
    pub height: u32,
    /// Width in pixels.
    pub width: u32,
}

/// The preprocessing settings of a `preprocessor_config.json`.
///
/// [`Default`] gives the facebook/dinov2-* values: convert to RGB, resize the shortest edge to 256
/// with bicubic, center-crop 224x224, rescale by 1/255, normalise with the ImageNet mean/std.
#[derive(Debug, Clone, PartialEq)]
pub struct PreprocessConfig {
    /// Convert the decoded image to RGB (decoding always yields RGB here, so this changes nothing).
    pub do_convert_rgb: bool,
    /// Resize to [`PreprocessConfig::size`] with [`PreprocessConfig::resample`].
    pub do_resize: bool,
    /// Target size of the resize.
    pub size: SizeSpec,
    /// Pillow filter of the resize.
    pub resample: Resample,
    /// Center-crop (zero-padding where the image is smaller) to [`PreprocessConfig::crop_size`].
    pub do_center_crop: bool,
    /// Size of the center crop.
    pub crop_size: HeightWidth,
    /// Multiply by [`PreprocessConfig::rescale_factor`].
    pub do_rescale: bool,
    /// Usually 1/255.
    pub rescale_factor: f64,
    /// Subtract [`PreprocessConfig::image_mean`], divide by [`PreprocessConfig::image_std`] (per channel,
    /// in float32).
    pub do_normalize: bool,
    /// Per-channel mean (R, G, B).
    pub image_mean: [f64; 3],
    /// Per-channel standard deviation (R, G, B).
    pub image_std: [f64; 3],
    /// Zero-pad the result at the bottom and right to [`PreprocessConfig::pad_size`].
    pub do_pad: bool,
    /// Size of the padding (required when `do_pad`).
    pub pad_size: Option<HeightWidth>,
}

impl Default for PreprocessConfig {
    fn default() -> Self {
        PreprocessConfig {
            do_convert_rgb: true,
            do_resize: true,
            size: SizeSpec::ShortestEdge(256),
            resample: Resample::Bicubic,
            do_center_crop: true,
            crop_size: HeightWidth {
                height: 224,
                width: 224,
            },
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            image_mean: IMAGENET_MEAN,
            image_std: IMAGENET_STD,
            do_pad: false,
            pad_size: None,
        }
    }
}

const ORIGIN_MEMORY: &str = "in-memory preprocessor config";

/// Overrides of a checkpoint's resolution, as `dinov2 embed --resize/--crop/--no-crop` and the
/// Python binding's `resize`/`crop` give them ([`PreprocessConfig::with_resolution`]). Each sets a
/// `BitImageProcessor` field, so transformers can do the same.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resolution {
    /// Resize so that the shortest edge has this many pixels (`size.shortest_edge`).
    pub resize: Option<u32>,
    /// Center-crop to this size (`crop_size`, `do_center_crop: true`).
    pub crop: Option<HeightWidth>,
    /// Keep the whole resized image (`do_center_crop: false`).
    pub no_crop: bool,
}

impl PreprocessConfig {
    /// The class defaults of transformers' `BitImageProcessorPil`, used for keys missing from a
    /// `preprocessor_config.json`: shortest edge 224, crop 224x224, bicubic, CLIP mean/std.
    pub fn bit_image_processor_defaults() -> Self {
        PreprocessConfig {
            size: SizeSpec::ShortestEdge(224),
            image_mean: OPENAI_CLIP_MEAN,
            image_std: OPENAI_CLIP_STD,
            ..PreprocessConfig::default()
        }
    }

    /// This configuration with `resolution`'s overrides, checked for a model of `patch` x `patch`
    /// patches: an error ([`ImageError::Resolution`]) when a center crop has more pixels than
    /// [`crate::MAX_RESIZED_PIXELS`] or is smaller than one patch, or when an uncropped resize
    /// makes the shortest edge smaller than one patch.
    pub fn with_resolution(mut self, resolution: &Resolution, patch: usize) -> Result<Self> {
        if let Some(edge) = resolution.resize {
            self.size = SizeSpec::ShortestEdge(edge);
            self.do_resize = true;
        }
        if let Some(crop) = resolution.crop {
            self.crop_size = crop;
            self.do_center_crop = true;
        }
        if resolution.no_crop {
            self.do_center_crop = false;
        }
        let fail = |detail: String| Err(ImageError::Resolution { detail });
        let HeightWidth { height, width } = self.crop_size;
        let limit = crate::MAX_RESIZED_PIXELS;
        if self.do_center_crop && height as u64 * width as u64 > limit {
            return fail(format!(
                "center crop {height}x{width}: more pixels than the limit of {limit}"
            ));
        }
        if self.do_center_crop && (height.min(width) as usize) < patch {
            return fail(format!(
                "center crop {height}x{width}: smaller than one {patch}x{patch} patch"
            ));
        }
        if let (false, true, SizeSpec::ShortestEdge(edge)) =
            (self.do_center_crop, self.do_resize, self.size)
        {
            if (edge as usize) < patch {
                return fail(format!(
                    "shortest edge {edge} (the resize, or size in preprocessor_config.json) \
                     without a crop: smaller than one {patch}x{patch} patch"
                ));
            }
        }
        Ok(self)
    }

    /// The `preprocessor_config.json` text of this config, for transformers' `BitImageProcessor`
    /// (every field written, so that class defaults do not apply); [`PreprocessConfig::from_json`]
    /// reads it back equal.
    pub fn to_json(&self) -> String {
        let size = match self.size {
            SizeSpec::ShortestEdge(s) => serde_json::json!({ "shortest_edge": s }),
            SizeSpec::ShortestLongest {
                shortest_edge,
                longest_edge,
            } => {
                serde_json::json!({ "shortest_edge": shortest_edge, "longest_edge": longest_edge })
            }
            SizeSpec::Exact { height, width } => {
                serde_json::json!({ "height": height, "width": width })
            }
            SizeSpec::MaxHeightWidth {
                max_height,
                max_width,
            } => serde_json::json!({ "max_height": max_height, "max_width": max_width }),
        };
        let hw = |s: HeightWidth| serde_json::json!({ "height": s.height, "width": s.width });
        let mut value = serde_json::json!({
            "image_processor_type": "BitImageProcessor",
            "do_convert_rgb": self.do_convert_rgb,
            "do_resize": self.do_resize,
            "size": size,
            "resample": self.resample.code(),
            "do_center_crop": self.do_center_crop,
            "crop_size": hw(self.crop_size),
            "do_rescale": self.do_rescale,
            "rescale_factor": self.rescale_factor,
            "do_normalize": self.do_normalize,
            "image_mean": self.image_mean,
            "image_std": self.image_std,
            "do_pad": self.do_pad,
        });
        if let Some(pad) = self.pad_size {
            value["pad_size"] = hw(pad);
        }
        let mut text = serde_json::to_string_pretty(&value).unwrap_or_default();
        text.push('\n');
        text
    }

    /// Reads and parses a `preprocessor_config.json` file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ImageError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        parse(&text, &path.display().to_string())
    }

    /// Parses the text of a `preprocessor_config.json`.
    pub fn from_json(text: &str) -> Result<Self> {
        parse(text, ORIGIN_MEMORY)
    }
}

fn parse(text: &str, origin: &str) -> Result<PreprocessConfig> {
    let value: Value = serde_json::from_str(text).map_err(|e| ImageError::ConfigSyntax {
        origin: origin.to_string(),
        found: format!("invalid JSON ({e})"),
    })?;
    let Value::Object(map) = value else {
        return Err(ImageError::ConfigSyntax {
            origin: origin.to_string(),
            found: format!("a JSON {}", kind(&value)),
        });
    };
    Parser { origin, map: &map }.config()
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A short rendering of a JSON value for error messages.
fn show(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 80 {
        let cut: String = text.chars().take(77).collect();
        format!("{cut}...")
    } else {
        text
    }
}

struct Parser<'a> {
    origin: &'a str,
    map: &'a Map<String, Value>,
}

impl Parser<'_> {
    fn err(&self, field: &str, expected: &str, found: &Value) -> ImageError {
        ImageError::ConfigField {
            origin: self.origin.to_string(),
            field: field.to_string(),
            expected: expected.to_string(),
            found: show(found),
        }
    }

    /// The value of a key; `null` counts as missing (transformers then uses the class default).
    fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn flag(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(self.err(key, "true or false", other)),
        }
    }

    fn positive(&self, field: &str, value: &Value) -> Result<u32> {
        value
            .as_u64()
            .filter(|&v| v > 0)
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| self.err(field, "a positive integer (pixels)", value))
    }

    fn number(&self, field: &str, value: &Value) -> Result<f64> {
        value
            .as_f64()
            .filter(|v| v.is_finite())
            .ok_or_else(|| self.err(field, "a finite number", value))
    }

    /// `{"height": h, "width": w}`, an int `n` (n x n) or `[h, w]` (`crop_size`, `pad_size`).
    fn height_width(&self, key: &str, value: &Value) -> Result<HeightWidth> {
        const EXPECTED: &str =
            "{\"height\": h, \"width\": w}, an integer n (n x n) or a list [h, w] of positive integers";
        match value {
            Value::Number(_) => {
                let n = self.positive(key, value)?;
                Ok(HeightWidth {
                    height: n,
                    width: n,
                })
            }
            Value::Array(items) if items.len() == 2 => Ok(HeightWidth {
                height: self.positive(key, &items[0])?,
                width: self.positive(key, &items[1])?,
            }),
            Value::Object(obj) => {
                let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
                keys.sort_unstable();
                if keys != ["height", "width"] {
                    return Err(self.err(key, EXPECTED, value));
                }
                Ok(HeightWidth {
                    height: self.positive(&format!("{key}.height"), &obj["height"])?,
                    width: self.positive(&format!("{key}.width"), &obj["width"])?,
                })
            }
            other => Err(self.err(key, EXPECTED, other)),
        }
    }

    fn size(&self, default_to_square: bool) -> Result<Option<SizeSpec>> {
        const EXPECTED: &str = "{\"shortest_edge\": s}, {\"shortest_edge\": s, \"longest_edge\": l}, \
             {\"height\": h, \"width\": w}, {\"max_height\": h, \"max_width\": w}, an integer or a list \
             [h, w] of positive integers";
        let Some(value) = self.get("size") else {
            return Ok(None);
        };
        let spec = match value {
            Value::Number(_) => {
                let n = self.positive("size", value)?;
                if default_to_square {
                    SizeSpec::Exact {
                        height: n,
                        width: n,
                    }
                } else {
                    SizeSpec::ShortestEdge(n)
                }
            }
            Value::Array(items) if items.len() == 2 => SizeSpec::Exact {
                height: self.positive("size", &items[0])?,
                width: self.positive("size", &items[1])?,
            },
            Value::Object(obj) => {
                let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
                keys.sort_unstable();
                let field = |name: &str| self.positive(&format!("size.{name}"), &obj[name]);
                match keys.as_slice() {
                    ["shortest_edge"] => SizeSpec::ShortestEdge(field("shortest_edge")?),
                    ["longest_edge", "shortest_edge"] => SizeSpec::ShortestLongest {
                        shortest_edge: field("shortest_edge")?,
                        longest_edge: field("longest_edge")?,
                    },
                    ["height", "width"] => SizeSpec::Exact {
                        height: field("height")?,
                        width: field("width")?,
                    },
                    ["max_height", "max_width"] => SizeSpec::MaxHeightWidth {
                        max_height: field("max_height")?,
                        max_width: field("max_width")?,
                    },
                    _ => return Err(self.err("size", EXPECTED, value)),
                }
            }
            other => return Err(self.err("size", EXPECTED, other)),
        };
        Ok(Some(spec))
    }

    fn channels(&self, key: &str) -> Result<Option<[f64; 3]>> {
        const EXPECTED: &str = "a number or a list of 3 numbers (R, G, B)";
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        let out = match value {
            Value::Number(_) => [self.number(key, value)?; 3],
            Value::Array(items) if items.len() == 3 => [
                self.number(key, &items[0])?,
                self.number(key, &items[1])?,
                self.number(key, &items[2])?,
            ],
            other => return Err(self.err(key, EXPECTED, other)),
        };
        Ok(Some(out))
    }

    fn config(&self) -> Result<PreprocessConfig> {
        let base = PreprocessConfig::bit_image_processor_defaults();
        let default_to_square = self.flag("default_to_square", false)?;
        let resample = match self.get("resample") {
            None => base.resample,
            Some(value) => value
                .as_i64()
                .and_then(Resample::from_code)
                .ok_or_else(|| {
                    self.err(
                        "resample",
                        "a PIL resampling code 0..=7 (0 nearest, 1 lanczos, 2 bilinear, 3 bicubic, \
                         4 box, 5 hamming, 6 mks2013, 7 mks2021)",
                        value,
                    )
                })?,
        };
        let crop_size = match self.get("crop_size") {
            None => base.crop_size,
            Some(v) => self.height_width("crop_size", v)?,
        };
        let pad_size = match self.get("pad_size") {
            None => None,
            Some(v) => Some(self.height_width("pad_size", v)?),
        };
        let rescale_factor = match self.get("rescale_factor") {
            None => base.rescale_factor,
            Some(v) => self.number("rescale_factor", v)?,
        };
        let image_mean = self.channels("image_mean")?.unwrap_or(base.image_mean);
        let image_std = self.channels("image_std")?.unwrap_or(base.image_std);
        if let Some(bad) = image_std.iter().find(|s| **s == 0.0) {
            let found = self.get("image_std").cloned().unwrap_or(Value::from(*bad));
            return Err(self.err("image_std", "non-zero standard deviations", &found));
        }
        let config = PreprocessConfig {
            do_convert_rgb: self.flag("do_convert_rgb", base.do_convert_rgb)?,
            do_resize: self.flag("do_resize", base.do_resize)?,
            size: self.size(default_to_square)?.unwrap_or(base.size),
            resample,
            do_center_crop: self.flag("do_center_crop", base.do_center_crop)?,
            crop_size,
            do_rescale: self.flag("do_rescale", base.do_rescale)?,
            rescale_factor,
            do_normalize: self.flag("do_normalize", base.do_normalize)?,
            image_mean,
            image_std,
            do_pad: self.flag("do_pad", false)?,
            pad_size,
        };
        if config.do_pad && config.pad_size.is_none() {
            return Err(self.err(
                "pad_size",
                "{\"height\": h, \"width\": w} because do_pad is true",
                &Value::Null,
            ));
        }
        Ok(config)
    }
}
