//! MambaRec's graphs: the training interactions (MMRec's `.inter` files), the normalized
//! user–item adjacency, the item–item kNN graphs, and the sparse × dense product that
//! propagates embeddings over them.

use std::collections::BTreeMap;
use std::path::Path;

use kiln_kernels::cpu::Isa;
use kiln_kernels::cpu::gemm::{self, Act};
use rayon::prelude::*;

use crate::{ModelError, Result};

/// A sparse matrix in compressed rows, columns sorted within a row.
#[derive(Clone, Debug, PartialEq)]
pub struct Csr {
    pub rows: usize,
    pub cols: usize,
    pub indptr: Vec<usize>,
    pub indices: Vec<u32>,
    pub values: Vec<f32>,
}

impl Csr {
    /// From `(row, col, value)` triples; duplicates are summed (as scipy's and torch's
    /// coalescing do).
    pub fn from_triples(rows: usize, cols: usize, mut t: Vec<(u32, u32, f32)>) -> Self {
        t.sort_by_key(|&(r, c, _)| (r, c));
        let mut indptr = vec![0usize; rows + 1];
        let mut indices = Vec::with_capacity(t.len());
        let mut values: Vec<f32> = Vec::with_capacity(t.len());
        let mut last = None;
        for (r, c, v) in t {
            if last == Some((r, c)) {
                *values.last_mut().expect("a previous entry") += v;
                continue;
            }
            last = Some((r, c));
            indptr[r as usize + 1] += 1;
            indices.push(c);
            values.push(v);
        }
        for i in 0..rows {
            indptr[i + 1] += indptr[i];
        }
        Csr {
            rows,
            cols,
            indptr,
            indices,
            values,
        }
    }

    pub fn nnz(&self) -> usize {
        self.values.len()
    }

    /// Row `r`: its column indices and values.
    pub fn row(&self, r: usize) -> (&[u32], &[f32]) {
        let span = self.indptr[r]..self.indptr[r + 1];
        (&self.indices[span.clone()], &self.values[span])
    }

    /// `self · x` for `x[cols, dim]` row-major → `[rows, dim]`, rows in parallel.
    pub fn spmm(&self, x: &[f32], dim: usize) -> Vec<f32> {
        assert_eq!(
            x.len(),
            self.cols * dim,
            "spmm: x is not [{}, {dim}]",
            self.cols
        );
        let mut y = vec![0f32; self.rows * dim];
        y.par_chunks_mut(dim.max(1) * 64)
            .enumerate()
            .for_each(|(chunk, out)| {
                for (j, yr) in out.chunks_exact_mut(dim).enumerate() {
                    let (cols, vals) = self.row(chunk * 64 + j);
                    for (&c, &v) in cols.iter().zip(vals) {
                        let xr = &x[c as usize * dim..][..dim];
                        yr.iter_mut().zip(xr).for_each(|(a, b)| *a += v * b);
                    }
                }
            });
        y
    }
}

/// The interactions of a MambaRec dataset: every user's training items (`x_label` 0), with
/// multiplicity (a repeated row counts twice in the reference's adjacency).
#[derive(Clone, Debug)]
pub struct Interactions {
    pub n_users: usize,
    pub n_items: usize,
    /// Per user, `(item, count)` sorted by item.
    train: Vec<Vec<(u32, u32)>>,
}

impl Interactions {
    /// A tab-separated file with a header naming `userID`, `itemID` and `x_label` (other
    /// columns are ignored); ids must be below `n_users` / `n_items`.
    pub fn read(path: &Path, n_users: usize, n_items: usize) -> Result<Self> {
        let err =
            |line: usize, m: String| ModelError::Config(format!("{}:{line}: {m}", path.display()));
        let text = std::fs::read_to_string(path)
            .map_err(|e| ModelError::Config(format!("{}: {e}", path.display())))?;
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap_or("").split('\t').collect();
        let col = |name: &str| {
            header
                .iter()
                .position(|h| h.trim() == name)
                .ok_or_else(|| err(1, format!("no {name} column (the header is {header:?})")))
        };
        let (cu, ci, cl) = (col("userID")?, col("itemID")?, col("x_label")?);
        let mut train: Vec<BTreeMap<u32, u32>> = vec![BTreeMap::new(); n_users];
        for (n, line) in lines.enumerate() {
            let lineno = n + 2;
            if line.trim().is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split('\t').collect();
            let field = |c: usize, what: &str, below: usize| -> Result<usize> {
                let s = fields.get(c).map(|s| s.trim()).unwrap_or("");
                let v: usize = s.parse().map_err(|_| {
                    err(
                        lineno,
                        format!("{what} {s:?} is not a non-negative integer"),
                    )
                })?;
                if v >= below {
                    return Err(err(
                        lineno,
                        format!("{what} {v} is out of range (0..{below})"),
                    ));
                }
                Ok(v)
            };
            let (u, i) = (field(cu, "userID", n_users)?, field(ci, "itemID", n_items)?);
            if field(cl, "x_label", 3)? == 0 {
                *train[u].entry(i as u32).or_insert(0) += 1;
            }
        }
        Ok(Interactions {
            n_users,
            n_items,
            train: train.into_iter().map(|m| m.into_iter().collect()).collect(),
        })
    }

    /// The reference's `get_adj_mat`: `A = [[0, R], [Rᵀ, 0]]` over users ++ items,
    /// `D^-½ A D^-½` (`D` the row sums, `0^-½` taken as 0), and its user × item block (whose
    /// row `u` lists exactly user `u`'s training items).
    pub fn normalized_adjacency(&self) -> (Csr, Csr) {
        let (nu, ni) = (self.n_users, self.n_items);
        let mut deg = vec![0f32; nu + ni];
        for (u, row) in self.train.iter().enumerate() {
            for &(i, c) in row {
                deg[u] += c as f32;
                deg[nu + i as usize] += c as f32;
            }
        }
        let dinv: Vec<f32> = deg
            .iter()
            .map(|&d| if d > 0.0 { d.powf(-0.5) } else { 0.0 })
            .collect();
        let mut full = Vec::new();
        let mut block = Vec::new();
        for (u, row) in self.train.iter().enumerate() {
            for &(i, c) in row {
                let v = dinv[u] * c as f32 * dinv[nu + i as usize];
                full.push((u as u32, (nu + i as usize) as u32, v));
                full.push(((nu + i as usize) as u32, u as u32, v));
                block.push((u as u32, i, v));
            }
        }
        (
            Csr::from_triples(nu + ni, nu + ni, full),
            Csr::from_triples(nu, ni, block),
        )
    }
}

/// The reference's `build_sim` + `build_knn_normalized_graph(topk = k, sparse, 'sym')`:
/// cosine similarities of the rows of `feat[n, dim]` (the row itself included), each row's
/// `k` largest kept, then `s_ij · deg_i^-½ · deg_j^-½` with `deg` the sum of a row's kept
/// similarities. Similarities are f32 products of the normalized rows (as `torch.mm`); ties
/// go to the lower index. A zero row has no cosine: an error.
pub fn knn_graph(feat: &[f32], n: usize, dim: usize, k: usize) -> std::result::Result<Csr, String> {
    if feat.len() != n * dim {
        return Err(format!("{} values, expected {n} × {dim}", feat.len()));
    }
    let k = k.min(n);
    let mut normed = vec![0f32; n * dim];
    for (r, (src, dst)) in feat
        .chunks_exact(dim)
        .zip(normed.chunks_exact_mut(dim))
        .enumerate()
    {
        let norm = src.iter().map(|v| v * v).sum::<f32>().sqrt();
        if !(norm > 0.0 && norm.is_finite()) {
            return Err(format!(
                "row {r} has norm {norm}: cosine similarity is undefined"
            ));
        }
        dst.iter_mut().zip(src).for_each(|(d, s)| *d = s / norm);
    }
    // normedᵀ `[dim, n]`, packed once; rows go through in blocks.
    let mut t = vec![0f32; dim * n];
    for r in 0..n {
        for c in 0..dim {
            t[c * n + r] = normed[r * dim + c];
        }
    }
    let packed = gemm::pack_b(&t, dim, n);
    drop(t);
    let zero = vec![0f32; n];
    let isa = Isa::best();
    const BLOCK: usize = 256;
    let mut kept: Vec<(u32, f32)> = Vec::with_capacity(n * k);
    for start in (0..n).step_by(BLOCK) {
        let m = BLOCK.min(n - start);
        let sims = gemm::gemm(
            isa,
            &normed[start * dim..][..m * dim],
            m,
            dim,
            &packed,
            n,
            &zero,
            Act::None,
        );
        let tops: Vec<Vec<(u32, f32)>> = sims
            .par_chunks_exact(n)
            .map(|row| {
                let mut idx: Vec<(u32, f32)> = row
                    .iter()
                    .enumerate()
                    .map(|(j, &s)| (j as u32, s))
                    .collect();
                let by = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
                if idx.len() > k {
                    idx.select_nth_unstable_by(k - 1, by);
                    idx.truncate(k);
                }
                idx.sort_by(by);
                idx
            })
            .collect();
        tops.into_iter().for_each(|t| kept.extend(t));
    }
    let deg: Vec<f32> = kept
        .chunks_exact(k)
        .map(|r| r.iter().map(|&(_, s)| s).sum())
        .collect();
    let dinv: Vec<f32> = deg
        .iter()
        .map(|&d| {
            let v = d.powf(-0.5);
            if v.is_infinite() { 0.0 } else { v }
        })
        .collect();
    let triples = kept
        .chunks_exact(k)
        .enumerate()
        .flat_map(|(r, row)| {
            let dinv = &dinv;
            row.iter()
                .map(move |&(c, s)| (r as u32, c, dinv[r] * s * dinv[c as usize]))
        })
        .collect();
    Ok(Csr::from_triples(n, n, triples))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triples_are_summed_and_sorted() {
        let m = Csr::from_triples(
            3,
            3,
            vec![(2, 0, 1.0), (0, 2, 2.0), (0, 1, 3.0), (0, 2, 0.5)],
        );
        assert_eq!(m.indptr, vec![0, 2, 2, 3]);
        assert_eq!(m.indices, vec![1, 2, 0]);
        assert_eq!(m.values, vec![3.0, 2.5, 1.0]);
        let y = m.spmm(&[1.0, 10.0, 2.0, 20.0, 3.0, 30.0], 2);
        assert_eq!(
            y,
            vec![
                3.0 * 2.0 + 2.5 * 3.0,
                3.0 * 20.0 + 2.5 * 30.0,
                0.0,
                0.0,
                1.0,
                10.0
            ]
        );
    }

    #[test]
    fn knn_keeps_the_most_similar_rows_and_normalizes() {
        // Rows 0 and 1 point the same way, 2 is orthogonal: with k = 2, row 0 keeps 0 and 1.
        let f = [1.0, 0.0, 2.0, 0.0, 0.0, 3.0];
        let g = knn_graph(&f, 3, 2, 2).unwrap();
        let (cols, vals) = g.row(0);
        assert_eq!(cols, &[0, 1]);
        // deg 0 = deg 1 = 2 → each kept 1 becomes 1/2.
        assert!(vals.iter().all(|v| (v - 0.5).abs() < 1e-7), "{vals:?}");
        assert!(
            knn_graph(&[0.0, 0.0, 1.0, 0.0], 2, 2, 1)
                .unwrap_err()
                .contains("row 0")
        );
    }
}
