//! The HNSW graph (hnsw_rs) over the unit vectors, searched by inner product.
//!
//! The graph's distance is `|a - b|^2 / 2`, which for unit vectors is `1 - a.b`, the inner-product
//! order, computed without cancellation: a vector's distance to itself is exactly 0, and near-duplicate
//! passages stay distinguishable. (hnsw_rs's own `DistDot` computes `1 - a.b`, asserts it is >= 0
//! without tolerance and panics when a stored vector is searched for itself and rounding makes `a.a`
//! exceed 1.) Results are re-scored with the exact inner product from the matrix, so their scores and
//! tie order equal exact search's.
//!
//! hnsw_rs's dump (`graph.hnsw.graph` + `graph.hnsw.data`) stores the vectors a second time, beside
//! `vectors.npy`: the data file costs `4 * dim` bytes per passage (27 GiB at 8.8M x 768).

use std::path::Path;

use anndists::dist::distances::Distance;
use hnsw_rs::api::AnnT;
use hnsw_rs::hnsw::Hnsw;
use hnsw_rs::hnswio::HnswIo;

use super::{sort_hits, Hit};
use crate::error::{Error, Result};
use crate::store::npy::NpyMatrix;

/// The basename of hnsw_rs's dump files inside an index folder.
pub const GRAPH_BASENAME: &str = "graph";

/// `|a - b|^2 / 2`: `1 - a.b` for unit vectors.
#[derive(Debug, Clone, Copy, Default)]
pub struct UnitDistance;

impl Distance<f32> for UnitDistance {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        0.5 * super::simd::l2_sq(a, b)
    }
}

/// Build parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HnswParams {
    /// Neighbours per node (hnsw_rs `max_nb_connection`).
    pub m: usize,
    pub ef_construction: usize,
}

impl Default for HnswParams {
    fn default() -> Self {
        HnswParams {
            m: 32,
            ef_construction: 200,
        }
    }
}

/// The default search-time `ef`.
pub const DEFAULT_EF: usize = 128;

pub struct HnswIndex {
    graph: Hnsw<'static, f32, UnitDistance>,
}

const MAX_LAYER: usize = 16;

impl HnswIndex {
    /// Builds the graph over every row, inserting in parallel (rayon); `progress` is called with the
    /// number of rows inserted so far.
    pub fn build(
        matrix: &NpyMatrix,
        params: HnswParams,
        progress: &(dyn Fn(usize) + Sync),
    ) -> Self {
        let n = matrix.rows();
        let graph = Hnsw::new(
            params.m,
            n.max(1),
            MAX_LAYER,
            params.ef_construction,
            UnitDistance,
        );
        let step = 16_384;
        let mut done = 0;
        for a in (0..n).step_by(step) {
            let b = (a + step).min(n);
            let rows = matrix.rows_f32(a, b);
            let dim = matrix.cols();
            let items: Vec<(&[f32], usize)> = (a..b)
                .map(|r| (&rows[(r - a) * dim..(r - a + 1) * dim], r))
                .collect();
            graph.parallel_insert_slice(&items);
            done += b - a;
            progress(done);
        }
        HnswIndex { graph }
    }

    /// Writes `graph.hnsw.graph` and `graph.hnsw.data` into `dir` (through a temporary folder, then
    /// renamed into place).
    pub fn save(&self, dir: &Path) -> Result<()> {
        let tmp = dir.join(".graph.tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        self.graph.file_dump(&tmp, GRAPH_BASENAME).map_err(|e| {
            Error::Msg(format!(
                "{}: cannot write the HNSW graph: {e}",
                tmp.display()
            ))
        })?;
        for ext in ["hnsw.graph", "hnsw.data"] {
            let name = format!("{GRAPH_BASENAME}.{ext}");
            let from = tmp.join(&name);
            let f = std::fs::File::open(&from).map_err(|e| Error::io(&from, e))?;
            f.sync_all().map_err(|e| Error::io(&from, e))?;
            std::fs::rename(&from, dir.join(&name)).map_err(|e| Error::io(dir.join(&name), e))?;
        }
        let _ = std::fs::remove_dir_all(&tmp);
        crate::store::sync_dir(&dir.join(GRAPH_BASENAME));
        Ok(())
    }

    /// Loads the graph of an index folder. The loader object is kept for the life of the process
    /// (hnsw_rs ties the graph's lifetime to it).
    pub fn load(dir: &Path) -> Result<Self> {
        for ext in ["hnsw.graph", "hnsw.data"] {
            let p = dir.join(format!("{GRAPH_BASENAME}.{ext}"));
            if !p.is_file() {
                return Err(Error::ModelNotFound(format!(
                    "{}: the HNSW graph is missing; build it with `simlm-index hnsw {}` or search with --exact",
                    p.display(),
                    dir.display()
                )));
            }
        }
        // hnsw_rs asserts on some corrupt inputs: turn a panic into an error.
        let res = std::panic::catch_unwind(|| {
            let io: &'static mut HnswIo = Box::leak(Box::new(HnswIo::new(dir, GRAPH_BASENAME)));
            io.load_hnsw::<f32, UnitDistance>()
        });
        match res {
            Ok(Ok(graph)) => Ok(HnswIndex { graph }),
            Ok(Err(e)) => Err(Error::invalid(
                dir.join("graph.hnsw.graph"),
                None,
                format!("cannot load the HNSW graph: {e}; rebuild it with `simlm-index hnsw`"),
            )),
            Err(_) => Err(Error::invalid(
                dir.join("graph.hnsw.graph"),
                None,
                "the HNSW graph is damaged; rebuild it with `simlm-index hnsw`",
            )),
        }
    }

    pub fn len(&self) -> usize {
        self.graph.get_nb_point()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `k` nearest rows by the graph, re-scored exactly against `matrix`.
    pub fn search(&self, matrix: &NpyMatrix, query: &[f32], k: usize, ef: usize) -> Vec<Hit> {
        let found = self.graph.search(query, k, ef.max(k));
        let mut hits: Vec<Hit> = found
            .into_iter()
            .map(|n| {
                let row = n.d_id;
                let v = matrix.rows_f32(row, row + 1);
                Hit {
                    row,
                    score: super::simd::dot(query, &v),
                }
            })
            .collect();
        sort_hits(&mut hits);
        hits
    }
}
