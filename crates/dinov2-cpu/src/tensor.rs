//! A host tensor: a shape and row-major f32 data.

/// A row-major f32 tensor in host memory.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor {
    /// Wraps `data` with `shape`; `None` when the sizes disagree (or the shape's product
    /// overflows).
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Option<Self> {
        (Self::elements(&shape) == Some(data.len())).then_some(Tensor { shape, data })
    }

    /// The number of elements a tensor of `shape` holds; `None` where that overflows `usize`.
    pub fn elements(shape: &[usize]) -> Option<usize> {
        shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
    }

    /// A zero-filled tensor.
    pub fn zeros(shape: Vec<usize>) -> Self {
        let n = shape.iter().product();
        Tensor {
            shape,
            data: vec![0.0; n],
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// True when the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Size of the last dimension (1 for a scalar).
    pub fn last_dim(&self) -> usize {
        self.shape.last().copied().unwrap_or(1)
    }

    /// Number of rows when viewed as a matrix over the last dimension.
    pub fn rows(&self) -> usize {
        self.len() / self.last_dim().max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::Tensor;

    #[test]
    fn a_shape_whose_product_overflows_holds_no_data() {
        // 2^32 · 2^32 wraps to 0 in usize: it must not pass for an empty tensor.
        assert_eq!(Tensor::new(vec![1 << 32, 1 << 32], vec![]), None);
        assert_eq!(Tensor::elements(&[usize::MAX, 2]), None);
        assert_eq!(Tensor::elements(&[]), Some(1));
        assert!(Tensor::new(vec![2, 0, 3], vec![]).is_some());
        assert!(Tensor::new(vec![2, 3], vec![0.0; 6]).is_some());
    }
}
