//! A batch gives each image the result it gets alone, for every head and with masks.

mod common;

use common::golden_dir;
use dinov2::io::read_forward_inputs;
use dinov2::{Checkpoint, CpuBackend, Dinov2, ForwardOptions, Head, Tensor};

fn image(batch: &Tensor, i: usize) -> Tensor {
    let per = batch.len() / batch.shape[0];
    let mut shape = batch.shape.clone();
    shape[0] = 1;
    Tensor::new(shape, batch.data[i * per..(i + 1) * per].to_vec()).unwrap()
}

fn rel(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
        .sum();
    let den: f64 = b.iter().map(|&y| (y as f64).powi(2)).sum();
    (num / den).sqrt()
}

fn check(case: &str, run: &str, head: Head) {
    let dir = golden_dir().join(case);
    let model = Dinov2::load(CpuBackend, &Checkpoint::open(&dir).unwrap()).unwrap();
    let inputs = read_forward_inputs(&dir.join(format!("{run}.inputs.safetensors"))).unwrap();
    let pixels = &inputs.pixel_values;
    let b = pixels.shape[0];
    assert!(b > 1, "{case}/{run} is not a batch");
    let opts = ForwardOptions {
        hidden_states: true,
        attentions: head == Head::Model,
        ..Default::default()
    };
    let mask = inputs.bool_masked_pos.as_deref();
    let together = model
        .run(head, pixels, mask, None, &opts)
        .unwrap()
        .into_named();
    for i in 0..b {
        let m = mask.map(|m| &m[i * m.len() / b..(i + 1) * m.len() / b]);
        let alone = model
            .run(head, &image(pixels, i), m, None, &opts)
            .unwrap()
            .into_named();
        for ((name, all), (_, one)) in together.iter().zip(&alone) {
            let err = rel(&image(all, i).data, &one.data);
            assert!(
                err < 1e-6,
                "{case}/{run} image {i} `{name}`: batch vs single {err:.2e}"
            );
        }
    }
}

#[test]
fn model_with_mask() {
    check("dinov2_mlp", "rect24x40_mask", Head::Model);
}

#[test]
fn registers_model_with_mask() {
    check("registers_mlp", "rect24x40_mask", Head::Model);
}

#[test]
fn classifier() {
    check("classifier_single", "logits", Head::Classifier);
}

#[test]
fn backbone() {
    check("backbone", "rect24x40", Head::Backbone);
}

#[test]
fn stacking_needs_images_of_one_size() {
    use dinov2::image::PixelValues;
    let image = |h: usize, w: usize, v: f32| PixelValues {
        shape: [3, h, w],
        data: vec![v; 3 * h * w],
    };
    let batch = dinov2::stack_images(&[image(2, 3, 1.0), image(2, 3, 2.0)]).unwrap();
    assert_eq!(batch.shape, vec![2, 3, 2, 3]);
    assert_eq!(&batch.data[..18], &[1.0; 18]);
    assert_eq!(&batch.data[18..], &[2.0; 18]);
    let mixed = dinov2::stack_images(&[image(2, 3, 1.0), image(3, 2, 1.0)]).unwrap_err();
    assert!(mixed.to_string().contains("different sizes"), "{mixed}");
    let empty = dinov2::stack_images(&[]).unwrap_err();
    assert!(empty.to_string().contains("empty"), "{empty}");
    let mut short = image(2, 3, 1.0);
    short.data.pop();
    assert!(dinov2::stack_images(&[short]).is_err());
    // Shapes whose element count overflows are errors, not a capacity overflow or a wrapped
    // product that passes for the data's length.
    for shape in [
        [1 << 40, 1 << 40, 1 << 40],
        [1 << 32, 1 << 32, 0],
        [usize::MAX, 2, 1],
    ] {
        let huge = PixelValues {
            shape,
            data: vec![],
        };
        let e = dinov2::stack_images(std::slice::from_ref(&huge)).unwrap_err();
        assert!(e.to_string().contains("do not fill its shape"), "{e}");
        // Left as it is, for the model to refuse.
        assert_eq!(dinov2::cut_to_patches(huge, 14).shape, shape);
    }
}
