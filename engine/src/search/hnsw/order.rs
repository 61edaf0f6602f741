//! The order of the nodes in the saved graph. A walk scores a node's neighbours one after another,
//! and on a graph numbered by row they lie anywhere in the codes: every one is a new stretch of
//! memory (a DRAM page, and with 4 KiB pages a TLB entry). Numbered breadth-first from the entry
//! on layer 0, a node's neighbours were mostly numbered together, when the first of their
//! neighbours was reached, so their codes sit side by side, and the nodes near the entry that every
//! walk passes through share a few pages. The file keeps each node's matrix row (`format`).
//!
//! The order depends only on the links (the entry, then each node's list in its order, nodes out of
//! reach of the entry by row), so a deterministic build stays deterministic.

/// The nodes in breadth-first order of layer 0 from `entry` (`order[new] = old`): a node's unseen
/// neighbours follow in list order; when the entry reaches no more, the first unseen node by id
/// starts the next search. `layer0` holds `n` lists of `1 + m0` words (count, then ids), every id
/// below `n`.
pub(super) fn breadth_first(layer0: &[u32], m0: usize, n: usize, entry: usize) -> Vec<u32> {
    let mut order = Vec::with_capacity(n);
    if n == 0 {
        return order;
    }
    let mut seen = vec![false; n];
    let mut next_root = 0usize;
    let mut root = entry;
    loop {
        seen[root] = true;
        order.push(root as u32);
        let mut at = order.len() - 1;
        while at < order.len() {
            let u = order[at] as usize;
            let list = &layer0[u * (1 + m0)..(u + 1) * (1 + m0)];
            let count = (list[0] as usize).min(m0);
            for &v in &list[1..=count] {
                let v = v as usize;
                if !seen[v] {
                    seen[v] = true;
                    order.push(v as u32);
                }
            }
            at += 1;
        }
        while next_root < n && seen[next_root] {
            next_root += 1;
        }
        if next_root == n {
            return order;
        }
        root = next_root;
    }
}

/// The inverse of a permutation of `0..n`: `inverse[old] = new`.
pub(super) fn inverse(order: &[u32]) -> Vec<u32> {
    let mut inv = vec![0u32; order.len()];
    for (new, &old) in order.iter().enumerate() {
        inv[old as usize] = new as u32;
    }
    inv
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breadth_first_visits_every_node_once_from_the_entry() {
        // 0 -> 1, 2; 1 -> 3; 2 -> 1; 3 -> (none); 4 -> 0 (unreached from the entry 2); 5 alone.
        let m0 = 2;
        let lists: [&[u32]; 6] = [&[1, 2], &[3], &[1], &[], &[0], &[]];
        let mut layer0 = Vec::new();
        for l in lists {
            layer0.push(l.len() as u32);
            layer0.extend_from_slice(l);
            layer0.resize(layer0.len() + m0 - l.len(), 0);
        }
        let order = breadth_first(&layer0, m0, 6, 2);
        assert_eq!(order, vec![2, 1, 3, 0, 4, 5]);
        let inv = inverse(&order);
        for (new, &old) in order.iter().enumerate() {
            assert_eq!(inv[old as usize] as usize, new);
        }
        assert!(breadth_first(&[], m0, 0, 0).is_empty());
    }
}
