//! `dinov2 knn` and `dinov2 dedup`: nearest neighbours by cosine similarity over the vectors
//! `dinov2 embed` wrote (Parquet, npy or safetensors with their paths file, or a clip-retrieval
//! folder), by brute force on the CPU: blocked matrix products, exact, for collections up to a
//! few hundred thousand images. Past that, index a folder output with FAISS (autofaiss).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float16Type, Float32Type, Int8Type};
use arrow_array::{
    Array, ArrayRef, BooleanArray, Float32Array, RecordBatch, StringArray, UInt32Array,
};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;

use crate::args::{DedupArgs, KnnArgs};
use crate::error::{CliError, Result};

/// Unit vectors (a zero vector stays zero) and the path of each.
struct Vectors {
    paths: Vec<String>,
    dim: usize,
    values: Vec<f32>,
}

impl Vectors {
    fn len(&self) -> usize {
        self.paths.len()
    }

    #[cfg(test)]
    fn row(&self, i: usize) -> &[f32] {
        &self.values[i * self.dim..(i + 1) * self.dim]
    }
}

/// Queries per block of scores, and index rows per block: a block of scores is 256 x 8192
/// floats (8 MiB).
const QUERY_BLOCK: usize = 256;
const INDEX_BLOCK: usize = 8192;

fn bad(path: &Path, why: impl std::fmt::Display) -> CliError {
    CliError(format!("{}: {why}", path.display()))
}

/// Reads the vectors of an embed output, L2-normalized; `column` picks one output of several.
fn read_vectors(path: &Path, column: Option<&str>) -> Result<Vectors> {
    let (paths, dim, mut values) = if path.is_dir() {
        read_folder(path)?
    } else {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("parquet") => read_parquet(path, column, "path")?,
            Some("npy") => {
                let (dim, values) = read_npy(path)?;
                (read_paths(path)?, dim, values)
            }
            Some("safetensors") => {
                let (dim, values) = read_safetensors(path, column.unwrap_or("embeddings"))?;
                (read_paths(path)?, dim, values)
            }
            _ => {
                return Err(bad(
                    path,
                    "not an embed output: a .parquet, .npy or .safetensors file, or a folder",
                ))
            }
        }
    };
    if paths.is_empty() {
        return Err(bad(path, "no vectors (an embed output of no image?)"));
    }
    if dim == 0 {
        return Err(bad(path, "vectors of 0 values"));
    }
    if values.len() != paths.len() * dim {
        return Err(bad(
            path,
            format!(
                "{} vectors of {dim} values but {} paths",
                values.len() / dim,
                paths.len()
            ),
        ));
    }
    for v in values.chunks_exact_mut(dim) {
        let norm = v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
        if !norm.is_finite() {
            return Err(bad(path, "a vector holds values that are not finite"));
        }
        if norm > 0.0 {
            v.iter_mut().for_each(|x| *x = (*x as f64 / norm) as f32);
        }
    }
    Ok(Vectors { paths, dim, values })
}

/// `FILE.paths.txt`, one path per row.
fn read_paths(path: &Path) -> Result<Vec<String>> {
    let list = crate::embed::sibling(path, ".paths.txt");
    let text = std::fs::read_to_string(&list).map_err(|e| bad(&list, e))?;
    Ok(text.lines().map(str::to_owned).collect())
}

/// A 2-D float32 or float16 `.npy`: its row length and values.
fn read_npy(path: &Path) -> Result<(usize, Vec<f32>)> {
    let bytes = std::fs::read(path).map_err(|e| bad(path, e))?;
    let not = |why: &str| bad(path, format!("not a 2-D float .npy: {why}"));
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(not("no npy magic"));
    }
    let (len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        _ if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        _ => return Err(not("a truncated header")),
    };
    let header = bytes
        .get(start..start + len)
        .map(String::from_utf8_lossy)
        .ok_or_else(|| not("a truncated header"))?;
    if header.contains("'fortran_order': True") {
        return Err(not("Fortran order"));
    }
    let shape: Vec<usize> = header
        .split_once("'shape': (")
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(dims, _)| {
            dims.split(',')
                .filter(|d| !d.trim().is_empty())
                .map(|d| d.trim().parse().unwrap_or(usize::MAX))
                .collect()
        })
        .ok_or_else(|| not("no shape"))?;
    let [rows, dim] = shape[..] else {
        return Err(not("not two dimensions"));
    };
    let data = &bytes[start + len..];
    let values = if header.contains("'<f4'") {
        data.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect::<Vec<_>>()
    } else if header.contains("'<f2'") {
        data.chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect()
    } else if header.contains("'|i1'") {
        // --output-dtype int8: each vector scaled, which the cosine does not see.
        data.iter().map(|&b| f32::from(b as i8)).collect()
    } else {
        return Err(not("values neither float32, float16 nor int8"));
    };
    if rows.checked_mul(dim) != Some(values.len()) {
        return Err(not("fewer values than its shape"));
    }
    Ok((dim, values))
}

/// Tensor `name` of a safetensors file: 2-D, floats or int8.
fn read_safetensors(path: &Path, name: &str) -> Result<(usize, Vec<f32>)> {
    let bytes = std::fs::read(path).map_err(|e| bad(path, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(path, e))?;
    let (shape, data) = match st.tensor(name) {
        Ok(t) if t.dtype() == safetensors::Dtype::I8 => (
            t.shape().to_vec(),
            t.data().iter().map(|&b| f32::from(b as i8)).collect(),
        ),
        _ => {
            let t = dinov2::io::read_tensor(path, name)?;
            (t.shape, t.data)
        }
    };
    let [_, dim] = shape[..] else {
        return Err(bad(path, format!("{name} is not 2-D: {shape:?}")));
    };
    Ok((dim, data))
}

/// The vectors of a Parquet output: the column `column` (or `embedding`) of fixed-size lists
/// of float32 or float16, and the paths of `path_column`.
fn read_parquet(
    path: &Path,
    column: Option<&str>,
    path_column: &str,
) -> Result<(Vec<String>, usize, Vec<f32>)> {
    let file = File::open(path).map_err(|e| bad(path, e))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| bad(path, e))?
        .build()
        .map_err(|e| bad(path, e))?;
    let name = column.unwrap_or("embedding");
    let (mut paths, mut values, mut dim) = (Vec::new(), Vec::new(), 0);
    for batch in reader {
        let batch = batch.map_err(|e| bad(path, e))?;
        let names = || {
            batch
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let p = batch
            .column_by_name(path_column)
            .and_then(|c| c.as_string_opt::<i32>())
            .ok_or_else(|| bad(path, format!("no string column {path_column:?}")))?;
        paths.extend((0..p.len()).map(|i| p.value(i).to_string()));
        let col = batch.column_by_name(name).ok_or_else(|| {
            bad(
                path,
                format!("no column {name:?} (--column); its columns: {}", names()),
            )
        })?;
        // One vector per row: a fixed-size list, or a list whose rows have one length (pandas
        // and pyarrow write lists).
        let (row_dim, items) = if let Some(list) = col.as_fixed_size_list_opt() {
            (list.value_length() as usize, list.values().clone())
        } else if let Some(list) = col
            .as_list_opt::<i32>()
            .filter(|_| batch.column_by_name("grid_h").is_none())
        {
            let lengths: Vec<usize> = list
                .offsets()
                .windows(2)
                .map(|w| (w[1] - w[0]) as usize)
                .collect();
            let first = lengths.first().copied().unwrap_or(0);
            if lengths.iter().any(|&l| l != first) {
                return Err(bad(
                    path,
                    format!(
                        "column {name:?} holds lists of different lengths, not one vector per \
                         row (a patch grid or token output?)"
                    ),
                ));
            }
            let start = list.offsets()[0] as usize;
            (first, list.values().slice(start, first * list.len()))
        } else {
            let what = if batch.column_by_name("grid_h").is_some() {
                "patch grids or tokens (the grid_h, grid_w columns say so)".to_string()
            } else {
                col.data_type().to_string()
            };
            return Err(bad(
                path,
                format!("column {name:?} holds {what}, not one vector per row"),
            ));
        };
        if row_dim != dim && !values.is_empty() {
            return Err(bad(
                path,
                format!("vectors of {dim} and of {row_dim} values"),
            ));
        }
        dim = row_dim;
        if let Some(f) = items.as_primitive_opt::<Float32Type>() {
            values.extend_from_slice(f.values());
        } else if let Some(f) = items.as_primitive_opt::<Float16Type>() {
            values.extend(f.values().iter().map(|v| v.to_f32()));
        } else if let Some(f) = items.as_primitive_opt::<Int8Type>() {
            values.extend(f.values().iter().map(|&v| f32::from(v)));
        } else {
            return Err(bad(
                path,
                format!("column {name:?} holds {}, not floats", items.data_type()),
            ));
        }
    }
    Ok((paths, dim, values))
}

/// A clip-retrieval folder: `img_emb/img_emb_N.npy` with `metadata/metadata_N.parquet`.
fn read_folder(dir: &Path) -> Result<(Vec<String>, usize, Vec<f32>)> {
    let mut parts: Vec<PathBuf> = std::fs::read_dir(dir.join("img_emb"))
        .map_err(|e| bad(dir, format!("not an embed folder output: {e}")))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "npy"))
        .collect();
    parts.sort();
    let (mut paths, mut values, mut dim) = (Vec::new(), Vec::new(), 0);
    for npy in parts {
        let n = npy
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.strip_prefix("img_emb_"))
            .unwrap_or("0")
            .to_string();
        let (d, v) = read_npy(&npy)?;
        let meta = dir.join(format!("metadata/metadata_{n}.parquet"));
        let file = File::open(&meta).map_err(|e| bad(&meta, e))?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(|e| bad(&meta, e))?
            .build()
            .map_err(|e| bad(&meta, e))?;
        for batch in reader {
            let batch = batch.map_err(|e| bad(&meta, e))?;
            let p = batch
                .column_by_name("image_path")
                .and_then(|c| c.as_string_opt::<i32>())
                .ok_or_else(|| bad(&meta, "no image_path column"))?;
            paths.extend((0..p.len()).map(|i| p.value(i).to_string()));
        }
        dim = d;
        values.extend(v);
    }
    Ok((paths, dim, values))
}

/// For each query, calls `each(query, scores)` with the cosine similarity of every index row,
/// block by block: `scores[j - start]` for index rows `start..start + scores.len()`.
fn scan(index: &Vectors, queries: &Vectors, mut each: impl FnMut(usize, usize, &[f32])) {
    let d = index.dim;
    for q0 in (0..queries.len()).step_by(QUERY_BLOCK) {
        let q1 = (q0 + QUERY_BLOCK).min(queries.len());
        let q = &queries.values[q0 * d..q1 * d];
        for i0 in (0..index.len()).step_by(INDEX_BLOCK) {
            let i1 = (i0 + INDEX_BLOCK).min(index.len());
            let scores = dinov2::crates::cpu::linear(
                q,
                q1 - q0,
                d,
                &index.values[i0 * d..i1 * d],
                i1 - i0,
                None,
            );
            for (r, row) in scores.chunks_exact(i1 - i0).enumerate() {
                each(q0 + r, i0, row);
            }
        }
    }
}

/// Keeps the `k` best `(score, index)` pairs, best first (ties: the lower index first).
fn keep_best(best: &mut Vec<(f32, usize)>, k: usize, score: f32, j: usize) {
    if best.len() == k && best.last().is_some_and(|&(s, _)| score <= s) {
        return;
    }
    let at = best.partition_point(|&(s, i)| s > score || (s == score && i < j));
    best.insert(at, (score, j));
    best.truncate(k);
}

/// Refuses an existing `output` unless `overwrite`: checked before any work.
fn check_output(output: &Path, overwrite: bool) -> Result<()> {
    if output.exists() && !overwrite {
        return Err(CliError(format!(
            "{} exists: --overwrite replaces it",
            output.display()
        )));
    }
    Ok(())
}

/// Writes `columns` as a Parquet file at `path` (built in memory, then written atomically).
fn write_parquet(path: &Path, columns: Vec<(&str, ArrayRef)>) -> Result<()> {
    let batch = RecordBatch::try_from_iter(columns).map_err(|e| bad(path, e))?;
    let mut bytes = Vec::new();
    let mut w = ArrowWriter::try_new(&mut bytes, batch.schema(), None).map_err(|e| bad(path, e))?;
    w.write(&batch).map_err(|e| bad(path, e))?;
    w.close().map_err(|e| bad(path, e))?;
    crate::embed::write_atomic(path, &bytes)
}

/// Runs `dinov2 knn`.
pub fn knn(args: KnnArgs) -> Result<()> {
    if args.k == 0 {
        return Err(CliError("--k must be at least 1".into()));
    }
    check_output(&args.output, args.overwrite)?;
    let index = read_vectors(&args.index, args.column.as_deref())?;
    let separate = match &args.queries {
        Some(q) => Some(read_vectors(q, args.column.as_deref())?),
        None => None,
    };
    let queries = separate.as_ref().unwrap_or(&index);
    if queries.dim != index.dim {
        return Err(CliError(format!(
            "the queries have {} values per vector, the index {}",
            queries.dim, index.dim
        )));
    }
    // Without queries, each row's neighbours are the others.
    let exclude_self = args.queries.is_none();
    let mut best: Vec<Vec<(f32, usize)>> = vec![Vec::with_capacity(args.k + 1); queries.len()];
    scan(&index, queries, |q, start, scores| {
        for (o, &s) in scores.iter().enumerate() {
            let j = start + o;
            if !(exclude_self && j == q) {
                keep_best(&mut best[q], args.k, s, j);
            }
        }
    });
    let (mut query, mut neighbor, mut rank, mut score) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (q, list) in best.iter().enumerate() {
        for (r, &(s, j)) in list.iter().enumerate() {
            query.push(queries.paths[q].as_str());
            neighbor.push(index.paths[j].as_str());
            rank.push(r as u32 + 1);
            score.push(s);
        }
    }
    let pairs = query.len();
    write_parquet(
        &args.output,
        vec![
            ("query", Arc::new(StringArray::from(query)) as ArrayRef),
            ("neighbor", Arc::new(StringArray::from(neighbor))),
            ("rank", Arc::new(UInt32Array::from(rank))),
            ("score", Arc::new(Float32Array::from(score))),
        ],
    )?;
    eprintln!(
        "{} queries against {} vectors of {}: {pairs} neighbours written to {}",
        queries.len(),
        index.len(),
        index.dim,
        args.output.display()
    );
    Ok(())
}

/// The representative of `i`'s set (path halving).
fn find(parent: &mut [usize], mut i: usize) -> usize {
    while parent[i] != i {
        parent[i] = parent[parent[i]];
        i = parent[i];
    }
    i
}

/// Runs `dinov2 dedup`.
pub fn dedup(args: DedupArgs) -> Result<()> {
    if !(-1.0..=1.0).contains(&args.threshold) {
        return Err(CliError(format!(
            "--threshold {}: a cosine similarity, from -1 to 1",
            args.threshold
        )));
    }
    check_output(&args.output, args.overwrite)?;
    let v = read_vectors(&args.input, args.column.as_deref())?;
    let n = v.len();
    let mut parent: Vec<usize> = (0..n).collect();
    // Each row's most similar other row.
    let mut nearest: Vec<(f32, usize)> = vec![(f32::NEG_INFINITY, usize::MAX); n];
    scan(&v, &v, |q, start, scores| {
        for (o, &s) in scores.iter().enumerate() {
            let j = start + o;
            if j == q {
                continue;
            }
            if s > nearest[q].0 || (s == nearest[q].0 && j < nearest[q].1) {
                nearest[q] = (s, j);
            }
            if j > q && s >= args.threshold {
                let (a, b) = (find(&mut parent, q), find(&mut parent, j));
                // The lower index represents the set: a group is named by its first row.
                parent[a.max(b)] = a.min(b);
            }
        }
    });
    let group: Vec<usize> = (0..n).map(|i| find(&mut parent, i)).collect();
    let mut sizes = vec![0usize; n];
    group.iter().for_each(|&g| sizes[g] += 1);
    let keep: Vec<bool> = (0..n).map(|i| group[i] == i).collect();
    let duplicates = keep.iter().filter(|k| !**k).count();
    let groups = (0..n).filter(|&g| sizes[g] > 1).count();
    write_parquet(
        &args.output,
        vec![
            (
                "path",
                Arc::new(StringArray::from_iter_values(&v.paths)) as ArrayRef,
            ),
            (
                "group",
                Arc::new(UInt32Array::from_iter_values(
                    group.iter().map(|&g| g as u32),
                )),
            ),
            (
                "group_size",
                Arc::new(UInt32Array::from_iter_values(
                    group.iter().map(|&g| sizes[g] as u32),
                )),
            ),
            ("keep", Arc::new(BooleanArray::from(keep))),
            (
                "duplicate_of",
                Arc::new(StringArray::from(
                    (0..n)
                        .map(|i| (group[i] != i).then(|| v.paths[group[i]].as_str()))
                        .collect::<Vec<_>>(),
                )),
            ),
            (
                "nearest",
                Arc::new(StringArray::from(
                    nearest
                        .iter()
                        .map(|&(_, j)| v.paths.get(j).map(String::as_str))
                        .collect::<Vec<_>>(),
                )),
            ),
            (
                "nearest_score",
                Arc::new(Float32Array::from(
                    nearest
                        .iter()
                        .map(|&(s, j)| (j != usize::MAX).then_some(s))
                        .collect::<Vec<_>>(),
                )),
            ),
        ],
    )?;
    eprintln!(
        "{n} vectors: {groups} groups of near-duplicates (cosine >= {}), {duplicates} rows to drop \
         (keep = false); wrote {}",
        args.threshold,
        args.output.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_best_in_order() {
        let mut best = Vec::new();
        for (j, s) in [0.1, 0.9, 0.5, 0.9, 0.7].into_iter().enumerate() {
            keep_best(&mut best, 3, s, j);
        }
        assert_eq!(best, [(0.9, 1), (0.9, 3), (0.7, 4)]);
    }

    #[test]
    fn scans_every_pair_across_blocks() {
        // More rows than a query block: every pair scored once, as the plain dot product.
        let (n, d) = (QUERY_BLOCK + 3, 4);
        let values: Vec<f32> = (0..n * d).map(|i| ((i * 7919) % 13) as f32 - 6.0).collect();
        let v = Vectors {
            paths: (0..n).map(|i| i.to_string()).collect(),
            dim: d,
            values,
        };
        let mut seen = vec![0usize; n];
        scan(&v, &v, |q, start, scores| {
            for (o, &s) in scores.iter().enumerate() {
                let j = start + o;
                let want: f32 = v.row(q).iter().zip(v.row(j)).map(|(a, b)| a * b).sum();
                assert!((s - want).abs() <= 1e-4 * want.abs().max(1.0), "{q},{j}");
            }
            seen[q] += scores.len();
        });
        assert!(seen.iter().all(|&c| c == n));
    }
}
