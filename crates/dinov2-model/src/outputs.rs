//! What a forward pass returns, per head, as host tensors named as transformers names them.

use crate::Tensor;

/// `Dinov2Model` / `Dinov2WithRegistersModel` outputs.
#[derive(Debug, Clone)]
pub struct ModelOutput {
    /// `[B, 1 + R + N, h]`, after the final LayerNorm.
    pub last_hidden_state: Tensor,
    /// `[B, h]`: the normalized CLS token.
    pub pooler_output: Tensor,
    /// `L + 1` tensors `[B, 1 + R + N, h]`: the embeddings, then each layer's output (not normalized).
    pub hidden_states: Option<Vec<Tensor>>,
    /// `L` tensors `[B, heads, 1 + R + N, 1 + R + N]`: post-softmax attention probabilities.
    pub attentions: Option<Vec<Tensor>>,
}

/// `Dinov2ForImageClassification` outputs.
#[derive(Debug, Clone)]
pub struct ClassifierOutput {
    /// `[B, num_labels]`.
    pub logits: Tensor,
    /// The loss, when labels were given.
    pub loss: Option<f64>,
    pub hidden_states: Option<Vec<Tensor>>,
    pub attentions: Option<Vec<Tensor>>,
}

/// `Dinov2Backbone` outputs.
#[derive(Debug, Clone)]
pub struct BackboneOutput {
    /// One per selected stage, in stage order: `[B, h, gh, gw]`, or `[B, 1 + R + N, h]` when the
    /// config does not reshape.
    pub feature_maps: Vec<Tensor>,
    pub hidden_states: Option<Vec<Tensor>>,
    pub attentions: Option<Vec<Tensor>>,
}

/// Any head's output.
#[derive(Debug, Clone)]
pub enum Output {
    Model(ModelOutput),
    Classifier(ClassifierOutput),
    Backbone(BackboneOutput),
}

fn push_list(out: &mut Vec<(String, Tensor)>, prefix: &str, list: Option<Vec<Tensor>>) {
    for (i, t) in list.into_iter().flatten().enumerate() {
        out.push((format!("{prefix}.{i}"), t));
    }
}

impl Output {
    /// The tensors under transformers' output names (`last_hidden_state`, `hidden_states.0`, ...);
    /// the loss is a 0-dimensional tensor.
    pub fn into_named(self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        let (hidden, attentions) = match self {
            Output::Model(m) => {
                out.push(("last_hidden_state".into(), m.last_hidden_state));
                out.push(("pooler_output".into(), m.pooler_output));
                (m.hidden_states, m.attentions)
            }
            Output::Classifier(c) => {
                out.push(("logits".into(), c.logits));
                if let Some(loss) = c.loss {
                    out.push((
                        "loss".into(),
                        Tensor {
                            shape: vec![],
                            data: vec![loss as f32],
                        },
                    ));
                }
                (c.hidden_states, c.attentions)
            }
            Output::Backbone(b) => {
                push_list(&mut out, "feature_maps", Some(b.feature_maps));
                (b.hidden_states, b.attentions)
            }
        };
        push_list(&mut out, "hidden_states", hidden);
        push_list(&mut out, "attentions", attentions);
        out
    }
}
