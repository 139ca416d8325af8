//! Which task head runs: chosen from `architectures` in config.json or by the caller.

use dinov2_checkpoint::Dinov2Config;

use crate::backend::Backend;
use crate::error::{ModelError, Result};
use crate::loss::Labels;
use crate::model::{Dinov2, ForwardOptions};
use crate::outputs::Output;
use crate::Tensor;

/// A transformers task head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    /// `Dinov2Model` / `Dinov2WithRegistersModel`.
    Model,
    /// `...ForImageClassification`.
    Classifier,
    /// `...Backbone`.
    Backbone,
}

impl Head {
    /// The head named by the first entry of `architectures` (the bare model when there is none).
    pub fn from_config(config: &Dinov2Config) -> Result<Self> {
        match config.architectures.first().map(String::as_str) {
            None => Ok(Head::Model),
            Some(a) if a.ends_with("ForImageClassification") => Ok(Head::Classifier),
            Some(a) if a.ends_with("Backbone") => Ok(Head::Backbone),
            Some(a) if a.ends_with("Model") => Ok(Head::Model),
            Some(a) => Err(ModelError::Unsupported(format!(
                "architecture {a:?} in config.json is not one of *Model, *ForImageClassification, *Backbone"
            ))),
        }
    }

    /// The word used on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Head::Model => "model",
            Head::Classifier => "classifier",
            Head::Backbone => "backbone",
        }
    }
}

impl std::str::FromStr for Head {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "model" => Ok(Head::Model),
            "classifier" => Ok(Head::Classifier),
            "backbone" => Ok(Head::Backbone),
            _ => Err(format!(
                "unknown head {s:?}: expected model, classifier or backbone"
            )),
        }
    }
}

impl<B: Backend> Dinov2<B> {
    /// Runs `head` on the inputs; a mask or labels the head does not take are errors.
    pub fn run(
        &self,
        head: Head,
        pixels: &Tensor,
        mask: Option<&[bool]>,
        labels: Option<&Labels>,
        opts: &ForwardOptions,
    ) -> Result<Output> {
        if mask.is_some() && head != Head::Model {
            return Err(ModelError::input(
                "bool_masked_pos",
                format!("the {} head takes no mask", head.as_str()),
            ));
        }
        if labels.is_some() && head != Head::Classifier {
            return Err(ModelError::input(
                "labels",
                format!("the {} head takes no labels", head.as_str()),
            ));
        }
        Ok(match head {
            Head::Model => Output::Model(self.forward(pixels, mask, opts)?),
            Head::Classifier => Output::Classifier(self.classify(pixels, labels, opts)?),
            Head::Backbone => Output::Backbone(self.backbone(pixels, opts)?),
        })
    }
}
