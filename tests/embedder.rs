//! The library's `Embedder` over lists and streams of images: a batch at a time, in order, each
//! bad input with its own error, and the same vectors whatever the batch size and whether the
//! next batch is decoded while one runs.

use std::path::{Path, PathBuf};

use dinov2::{CpuBackend, Embedder, Error, Pooling};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn embedder(batch_size: usize) -> Embedder<CpuBackend> {
    Embedder::from_dir(root().join("assets/models/dinov2-tiny-random"), CpuBackend)
        .unwrap()
        .with_pooling(Pooling::ClsMean)
        .with_batch_size(batch_size)
}

/// The sample photos twice over with a bad file and a missing one among them.
fn inputs(dir: &Path) -> Vec<PathBuf> {
    let mut photos: Vec<PathBuf> = std::fs::read_dir(root().join("assets/images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("jpg" | "png")))
        .collect();
    photos.sort();
    let bad = dir.join("bad.jpg");
    std::fs::write(&bad, b"not a JPEG").unwrap();
    let mut all = photos.clone();
    all.insert(3, bad);
    all.push(dir.join("missing.png"));
    all.extend(photos);
    all
}

#[test]
fn lists_and_streams_give_each_image_its_own_result_at_any_batch_size() {
    let dir = tempfile::tempdir().unwrap();
    let paths = inputs(dir.path());
    let alone = embedder(1).embed_paths(&paths);
    assert_eq!(alone.len(), paths.len());
    // Decoding the next batch while the model runs one (the default on CUDA) changes nothing.
    for (batch_size, overlap) in [(3, false), (8, false), (64, false), (3, true), (8, true)] {
        let e = embedder(batch_size).with_overlap(overlap);
        let listed = e.embed_paths(&paths);
        let streamed: Vec<(PathBuf, _)> = e.embed_stream(paths.iter().cloned()).collect();
        assert_eq!(streamed.len(), paths.len());
        for (i, path) in paths.iter().enumerate() {
            assert_eq!(&streamed[i].0, path, "in order");
            for got in [&listed[i], &streamed[i].1] {
                match (&alone[i], got) {
                    (Ok(a), Ok(b)) => assert_eq!(a, b, "{} at batch {batch_size}", path.display()),
                    (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
                    other => panic!("{}: {other:?}", path.display()),
                }
            }
        }
    }
    let name = |i: usize| paths[i].file_name().unwrap().to_string_lossy().into_owned();
    let failed: Vec<String> = (0..paths.len())
        .filter(|&i| alone[i].is_err())
        .map(name)
        .collect();
    assert_eq!(failed, ["bad.jpg", "missing.png"]);
    assert!(matches!(&alone[3], Err(Error::Image(_))), "{:?}", alone[3]);
}

#[test]
fn bytes_and_decoded_images_batch_the_same_way() {
    let dir = tempfile::tempdir().unwrap();
    let paths: Vec<PathBuf> = inputs(dir.path())
        .into_iter()
        .filter(|p| p.exists())
        .collect();
    let bytes: Vec<Vec<u8>> = paths.iter().map(|p| std::fs::read(p).unwrap()).collect();
    let refs: Vec<&[u8]> = bytes.iter().map(Vec::as_slice).collect();
    let want = embedder(1).embed_bytes(&refs);
    for overlap in [false, true] {
        let got = embedder(4).with_overlap(overlap).embed_bytes(&refs);
        assert_eq!(got.len(), want.len());
        for (a, b) in want.iter().zip(&got) {
            match (a, b) {
                (Ok(a), Ok(b)) => assert_eq!(a, b),
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
                other => panic!("{other:?}"),
            }
        }
    }
    let images: Vec<_> = refs
        .iter()
        .filter_map(|b| dinov2::image::decode(b, &Default::default()).ok())
        .collect();
    let good: Vec<_> = want
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .cloned()
        .collect();
    assert_eq!(embedder(5).embed_images(&images).unwrap(), good);
    let overlapped = embedder(2).with_overlap(true).embed_images(&images);
    assert_eq!(overlapped.unwrap(), good);
}
