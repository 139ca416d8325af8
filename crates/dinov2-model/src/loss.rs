//! The classifier's loss, chosen by `problem_type` as transformers' `ForSequenceClassificationLoss`
//! chooses it. Computed in f64.

use dinov2_checkpoint::ProblemType;

use crate::error::{ModelError, Result};
use crate::Tensor;

/// Labels for the classification loss.
#[derive(Debug, Clone, PartialEq)]
pub enum Labels {
    /// Integer class ids `[B]` (`-100` is ignored).
    Classes(Vec<i64>),
    /// Float targets: `[B]` or `[B, num_labels]` for regression, `[B, num_labels]` for multi-label.
    Targets(Tensor),
}

/// The problem type transformers infers when the config has none.
pub fn resolve_problem_type(
    configured: Option<ProblemType>,
    num_labels: usize,
    labels: &Labels,
) -> ProblemType {
    configured.unwrap_or(match (num_labels, labels) {
        (1, _) => ProblemType::Regression,
        (_, Labels::Classes(_)) => ProblemType::SingleLabelClassification,
        _ => ProblemType::MultiLabelClassification,
    })
}

/// The loss of `logits` `[B, C]` against `labels`.
pub fn loss(problem: ProblemType, logits: &Tensor, labels: &Labels) -> Result<f64> {
    let c = logits.last_dim();
    let b = logits.rows();
    let bad = |reason: String| ModelError::input("labels", reason);
    match (problem, labels) {
        (ProblemType::SingleLabelClassification, Labels::Classes(ids)) => {
            if ids.len() != b {
                return Err(bad(format!("expected {b} class ids, found {}", ids.len())));
            }
            let (mut total, mut count) = (0.0f64, 0usize);
            for (row, &id) in logits.data.chunks_exact(c).zip(ids) {
                if id == -100 {
                    continue;
                }
                if id < 0 || id as usize >= c {
                    return Err(bad(format!("class id {id} is outside 0..{c}")));
                }
                let max = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
                let lse = max
                    + row
                        .iter()
                        .map(|&x| (x as f64 - max).exp())
                        .sum::<f64>()
                        .ln();
                total += lse - row[id as usize] as f64;
                count += 1;
            }
            Ok(total / count as f64)
        }
        (ProblemType::SingleLabelClassification, Labels::Targets(_)) => Err(bad(
            "single_label_classification needs integer class ids".into(),
        )),
        (ProblemType::Regression, labels) => {
            let targets: Vec<f64> = match labels {
                Labels::Classes(ids) => ids.iter().map(|&i| i as f64).collect(),
                Labels::Targets(t) => t.data.iter().map(|&v| v as f64).collect(),
            };
            if targets.len() != logits.len() {
                return Err(bad(format!(
                    "regression targets hold {} values, the logits {:?}",
                    targets.len(),
                    logits.shape
                )));
            }
            Ok(logits
                .data
                .iter()
                .zip(&targets)
                .map(|(&x, &y)| (x as f64 - y).powi(2))
                .sum::<f64>()
                / targets.len() as f64)
        }
        (ProblemType::MultiLabelClassification, Labels::Targets(t)) => {
            if t.shape != logits.shape {
                return Err(bad(format!(
                    "multi-label targets must be {:?}, found {:?}",
                    logits.shape, t.shape
                )));
            }
            let sum: f64 = logits
                .data
                .iter()
                .zip(&t.data)
                .map(|(&x, &y)| {
                    let (x, y) = (x as f64, y as f64);
                    x.max(0.0) - x * y + (-x.abs()).exp().ln_1p()
                })
                .sum();
            Ok(sum / t.len() as f64)
        }
        (ProblemType::MultiLabelClassification, Labels::Classes(_)) => Err(bad(
            "multi_label_classification needs float targets [B, num_labels]".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cross_entropy_ignores_minus_100() {
        let logits = Tensor::new(vec![2, 2], vec![0.0, 0.0, 5.0, -5.0]).unwrap();
        let l = loss(
            ProblemType::SingleLabelClassification,
            &logits,
            &Labels::Classes(vec![1, -100]),
        )
        .unwrap();
        assert!((l - std::f64::consts::LN_2).abs() < 1e-12);
        assert!(loss(
            ProblemType::SingleLabelClassification,
            &logits,
            &Labels::Classes(vec![2, 0])
        )
        .is_err());
    }
}
