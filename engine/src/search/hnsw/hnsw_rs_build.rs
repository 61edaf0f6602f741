//! The graph built by hnsw_rs, under the distance `|a - b|^2 / 2`, which for unit vectors is
//! `1 - a.b`, the inner-product order, computed without cancellation: a vector's distance to itself is
//! exactly 0, and near-duplicate passages stay distinguishable. (hnsw_rs's own `DistDot` computes
//! `1 - a.b`, asserts it is >= 0 without tolerance and panics when a stored vector is searched for
//! itself and rounding makes `a.a` exceed 1.)
//!
//! Nodes that the build left with fewer than two incoming layer-0 links are then linked from their
//! nearest neighbours (`reach_the_unreached`), so that a walk can reach every passage.

use anndists::dist::distances::Distance;
use hnsw_rs::hnsw::Hnsw;

use super::{CodeBook, GraphParts, HnswParams, MAX_LAYER, NONE};
use crate::search::simd;
use crate::store::npy::NpyMatrix;

/// `|a - b|^2 / 2`: `1 - a.b` for unit vectors (the build distance).
#[derive(Debug, Clone, Copy, Default)]
pub struct UnitDistance;

impl Distance<f32> for UnitDistance {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        0.5 * simd::l2_sq(a, b)
    }
}

/// Builds the links over every row with hnsw_rs, inserting in parallel (rayon); `progress` is called
/// with the number of rows inserted so far. The code book and codes are left empty.
pub(super) fn build(
    matrix: &NpyMatrix,
    params: HnswParams,
    progress: &(dyn Fn(usize) + Sync),
) -> GraphParts {
    let n = matrix.rows();
    let dim = matrix.cols();
    let graph = Hnsw::new(
        params.m,
        n.max(1),
        MAX_LAYER,
        params.ef_construction,
        UnitDistance,
    );
    const STEP: usize = 16_384;
    let mut done = 0;
    for a in (0..n).step_by(STEP) {
        let b = (a + STEP).min(n);
        let rows = matrix.rows_f32(a, b);
        let items: Vec<(&[f32], usize)> = (a..b)
            .map(|r| (&rows[(r - a) * dim..(r - a + 1) * dim], r))
            .collect();
        graph.parallel_insert_slice(&items);
        done += b - a;
        progress(done);
    }
    export(&graph, matrix, 2 * params.m, params.ef_construction)
}
/// hnsw_rs's links in the flat layout (node ids are matrix rows: they were inserted so).
fn export(
    graph: &Hnsw<'_, f32, UnitDistance>,
    matrix: &NpyMatrix,
    cap0: usize,
    ef: usize,
) -> GraphParts {
    let (n, dim) = (matrix.rows(), matrix.cols());
    let mut lists: Vec<Vec<Vec<u32>>> = vec![Vec::new(); n];
    let mut levels = vec![0u8; n];
    for p in graph.get_point_indexation() {
        let row = p.get_origin_id();
        let level = p.get_point_id().0 as usize;
        levels[row] = level as u8;
        lists[row] = p
            .get_neighborhood_id()
            .into_iter()
            .take(level + 1)
            .map(|l| l.iter().map(|nb| nb.d_id as u32).collect())
            .collect();
    }
    // hnsw_rs can list, on layer l, a point whose own level is below l; a walk that moved there would
    // find no list to go on with. Such links are dropped (the walk treats a missing list as damage).
    for l in lists.iter_mut() {
        for (layer, nbs) in l.iter_mut().enumerate().skip(1) {
            nbs.retain(|&v| levels[v as usize] as usize >= layer);
        }
    }
    reach_the_unreached(&mut lists, cap0, |u| {
        let v = matrix.rows_f32(u, u + 1);
        graph
            .search(&v, 8, ef)
            .into_iter()
            .map(|nb| nb.d_id as u32)
            .filter(|&r| r as usize != u)
            .collect()
    });
    let top = levels.iter().copied().max().unwrap_or(0) as usize;
    let entry = levels.iter().position(|&l| l as usize == top).unwrap_or(0);
    let m0 = lists
        .iter()
        .map(|l| l.first().map_or(0, Vec::len))
        .max()
        .unwrap_or(0);
    let m = lists
        .iter()
        .flat_map(|l| l.iter().skip(1).map(Vec::len))
        .max()
        .unwrap_or(0);
    let mut layer0 = vec![0u32; n * (m0 + 1)];
    let mut upper_at = vec![NONE; n];
    let mut upper = Vec::new();
    for (row, l) in lists.iter().enumerate() {
        let slot = &mut layer0[row * (m0 + 1)..(row + 1) * (m0 + 1)];
        if let Some(l0) = l.first() {
            slot[0] = l0.len() as u32;
            slot[1..=l0.len()].copy_from_slice(l0);
        }
        let lv = levels[row] as usize;
        if lv > 0 {
            upper_at[row] = upper.len() as u32;
            for layer in 1..=lv {
                let nb = l.get(layer).map_or(&[][..], Vec::as_slice);
                upper.push(nb.len() as u32);
                upper.extend_from_slice(nb);
                upper.extend(std::iter::repeat_n(0, m - nb.len()));
            }
        }
    }
    GraphParts {
        m0,
        m,
        top,
        entry,
        dim,
        levels,
        layer0,
        upper_at,
        upper,
        book: CodeBook {
            mins: Vec::new(),
            steps: Vec::new(),
        },
        codes: Vec::new(),
    }
}

/// Links to nodes that few or no layer-0 lists point to. Insertion can leave a node whose only
/// links lead to a hub whose list is full, and that no list points to: no walk reaches it, not even
/// one for its own vector (on the MS MARCO pool, 24 such nodes, and 36 passages not found first for
/// their own vector). Each node with fewer than `MIN_IN` incoming links is looked up in the built
/// graph (`nearest(u)`: rows near u's vector, best first); it is added to the lists of the nearest that
/// have room (hnsw_rs fills layer-0 lists to 16-17 of 64 on average), and they to its own.
fn reach_the_unreached(
    lists: &mut [Vec<Vec<u32>>],
    cap0: usize,
    nearest: impl Fn(usize) -> Vec<u32> + Sync,
) {
    use rayon::prelude::*;
    const MIN_IN: usize = 2;
    let mut incoming = vec![0usize; lists.len()];
    for l in lists.iter() {
        for &v in l.first().map_or(&[][..], Vec::as_slice) {
            incoming[v as usize] += 1;
        }
    }
    let weak: Vec<usize> = (0..lists.len()).filter(|&u| incoming[u] < MIN_IN).collect();
    let found: Vec<Vec<u32>> = weak.par_iter().map(|&u| nearest(u)).collect();
    for (&u, near) in weak.iter().zip(found) {
        for v in near {
            if incoming[u] >= MIN_IN {
                break;
            }
            let v = v as usize;
            if v >= lists.len() || lists[v].is_empty() || lists[u].is_empty() {
                continue;
            }
            if lists[v][0].len() < cap0 && !lists[v][0].contains(&(u as u32)) {
                lists[v][0].push(u as u32);
                incoming[u] += 1;
                if lists[u][0].len() < cap0 && !lists[u][0].contains(&(v as u32)) {
                    lists[u][0].push(v as u32);
                    incoming[v] += 1;
                }
            }
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreached_nodes_get_links_where_there_is_room() {
        // Node 3 links to 0 only and nobody links to it; node 0's list is full (capacity 3).
        let mut lists: Vec<Vec<Vec<u32>>> = vec![
            vec![vec![1, 2, 4]],
            vec![vec![0, 2]],
            vec![vec![0, 1, 4]],
            vec![vec![0]],
            vec![vec![0, 1]],
        ];
        reach_the_unreached(
            &mut lists,
            3,
            |u| if u == 3 { vec![0, 2, 1] } else { vec![] },
        );
        assert_eq!(lists[0][0], vec![1, 2, 4], "a full list is left alone");
        assert_eq!(lists[2][0], vec![0, 1, 4], "a full list is left alone");
        assert_eq!(lists[1][0], vec![0, 2, 3]);
        assert_eq!(lists[3][0], vec![0, 1]);
        // Every node but 3 had 2 incoming links; 3 now has one (the only list with room).
        let incoming_3 = lists.iter().filter(|l| l[0].contains(&3)).count();
        assert_eq!(incoming_3, 1);
    }
}
