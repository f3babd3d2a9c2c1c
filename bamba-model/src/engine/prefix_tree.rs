//! A radix tree over token ids for the engine's prefix cache, generic over what it stores.
//!
//! Each node covers a run of tokens (its edge from the parent) and owns a *segment* for exactly
//! those tokens (the attention layers' K/V of them) and, optionally, a *snapshot* of the recurrent
//! state after its last token (every Mamba layer's conv window and SSM state). A sequence's K/V is
//! the concatenation of the segments on its path, so every cached token's K/V is stored once
//! however many sequences share it. A Mamba state cannot be cut at an arbitrary token, so a lookup
//! resumes from the deepest snapshot on the matched path; the tokens between it and the end of the
//! match are recomputed by the caller.
//!
//! Memory is bounded by a byte budget ([`TreeBudget`]: segments and snapshots together, and each
//! kind on its own): inserting past it evicts the least recently used snapshot (made or resumed
//! from longest ago) — the least recently used leaf's where only the segments are over theirs. A leaf's goes with the leaf (and with ancestors left with
//! neither a snapshot nor children); an inner node's goes alone, its segment staying for the
//! sequences below it. Snapshots dominate a hybrid model's cache (a Bamba-9B state is the K/V of
//! ~10,000 tokens), so an old grid point inside a long path is dropped before a recent leaf. What a caller took from a lookup stays
//! valid after eviction: segments and snapshots are handed out as clones (reference-counted tensors
//! in the engine), so eviction only drops the tree's reference.

use std::collections::HashMap;

/// The per-token data of a node: it can be cut in two at a token offset.
pub trait Segment: Clone {
    /// The first `at` tokens and the rest.
    fn split(&self, at: usize) -> (Self, Self);
    /// Bytes it occupies.
    fn bytes(&self) -> u64;
}

/// The deepest snapshot found for a sequence, with the segments leading to it.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit<K, S> {
    /// Tokens the snapshot covers (the sequence's first `resume_at` tokens).
    pub resume_at: usize,
    /// Tokens of the sequence the tree holds (`>= resume_at`).
    pub matched: usize,
    /// Segments of the first `resume_at` tokens, root first.
    pub segments: Vec<K>,
    /// The snapshot at the end of the matched prefix.
    pub snapshot: S,
}

/// Bytes a tree may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeBudget {
    /// Segments and snapshots together.
    pub total: u64,
    /// Segments (K/V) alone.
    pub segments: u64,
    /// Snapshots alone.
    pub snapshots: u64,
}

impl TreeBudget {
    /// `bytes` of segments and snapshots together, shared as they come.
    pub fn shared(bytes: u64) -> Self {
        TreeBudget { total: bytes, segments: bytes, snapshots: bytes }
    }
}

/// Counters and sizes of a tree.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TreeStats {
    /// Bytes of the stored segments (K/V).
    pub segment_bytes: u64,
    /// Bytes of the stored snapshots.
    pub snapshot_bytes: u64,
    /// Snapshots stored.
    pub snapshots: usize,
    /// Snapshots evicted so far.
    pub evicted_nodes: u64,
}

#[derive(Debug)]
struct Node<K, S> {
    parent: usize,
    tokens: Vec<u32>,
    segment: Option<K>,
    snapshot: Option<Snapshot<S>>,
    children: HashMap<u32, usize>,
}

#[derive(Debug)]
struct Snapshot<S> {
    value: S,
    bytes: u64,
    /// When it was made or last resumed from (the tree's clock).
    used: u64,
}

/// See the module docs. Node 0 is the root (no tokens).
#[derive(Debug)]
pub struct PrefixTree<K, S> {
    nodes: Vec<Option<Node<K, S>>>,
    free: Vec<usize>,
    budget: TreeBudget,
    clock: u64,
    stats: TreeStats,
}

impl<K: Segment, S: Clone> PrefixTree<K, S> {
    /// An empty tree holding at most what `budget` allows.
    pub fn new(budget: TreeBudget) -> Self {
        let root = Node { parent: 0, tokens: Vec::new(), segment: None, snapshot: None, children: HashMap::new() };
        PrefixTree { nodes: vec![Some(root)], free: Vec::new(), budget, clock: 0, stats: TreeStats::default() }
    }

    /// What the tree holds now.
    pub fn stats(&self) -> TreeStats {
        self.stats
    }

    /// Bytes held (segments and snapshots).
    pub fn bytes(&self) -> u64 {
        self.stats.segment_bytes + self.stats.snapshot_bytes
    }

    /// Drops every segment and snapshot; the budget and the eviction count stay.
    pub fn clear(&mut self) {
        let evicted_nodes = self.stats.evicted_nodes;
        *self = PrefixTree::new(self.budget);
        self.stats.evicted_nodes = evicted_nodes;
    }

    fn node(&self, id: usize) -> &Node<K, S> {
        self.nodes[id].as_ref().expect("live node")
    }

    fn node_mut(&mut self, id: usize) -> &mut Node<K, S> {
        self.nodes[id].as_mut().expect("live node")
    }

    /// Walks `tokens` from the root: the nodes passed whole (root excluded), with the position after
    /// each, then the node entered but left part way and how many of its tokens matched.
    fn walk(&self, tokens: &[u32]) -> (Vec<(usize, usize)>, Option<(usize, usize)>) {
        let (mut at, mut id, mut path) = (0, 0, Vec::new());
        while at < tokens.len() {
            let Some(&child) = self.node(id).children.get(&tokens[at]) else { break };
            let edge = &self.node(child).tokens;
            let common = edge.iter().zip(&tokens[at..]).take_while(|(a, b)| a == b).count();
            if common < edge.len() {
                return (path, Some((child, common)));
            }
            at += common;
            path.push((child, at));
            id = child;
        }
        (path, None)
    }

    /// The deepest snapshot for a prefix of `tokens`; marks that snapshot as used.
    pub fn lookup(&mut self, tokens: &[u32]) -> Option<Hit<K, S>> {
        let (path, partial) = self.walk(tokens);
        let matched = reach(&path, partial);
        let deepest = path.iter().rposition(|&(id, _)| self.node(id).snapshot.is_some())?;
        self.clock += 1;
        let (id, resume_at) = path[deepest];
        let segments = path[..=deepest].iter().filter_map(|&(id, _)| self.node(id).segment.clone()).collect();
        let found = self.nodes[id].as_mut().and_then(|n| n.snapshot.as_mut()).expect("found above");
        found.used = self.clock;
        let snapshot = found.value.clone();
        Some(Hit { resume_at, matched, segments, snapshot })
    }

    /// Tokens of `tokens` the tree already holds segments for (its first `n`).
    pub fn held(&self, tokens: &[u32]) -> usize {
        let (path, partial) = self.walk(tokens);
        reach(&path, partial)
    }

    /// Stores the snapshot `snapshot()` makes (with its bytes) as the state after `tokens`, unless the
    /// tree has one there already. `segment(from)` gives the segment of `tokens[from..]`, called only
    /// for the tokens the tree does not hold yet. Evicts the least recently used snapshots to stay
    /// within the budget; returns `false` when the new one itself could not be kept (it alone exceeds
    /// what eviction can free).
    pub fn insert(
        &mut self,
        tokens: &[u32],
        segment: impl FnOnce(usize) -> K,
        snapshot: impl FnOnce() -> (S, u64),
    ) -> bool {
        if tokens.is_empty() {
            return false;
        }
        let (path, partial) = self.walk(tokens);
        let mut at = path.last().map_or(0, |&(_, at)| at);
        let mut id = path.last().map_or(0, |&(id, _)| id);
        if let Some((child, common)) = partial {
            id = self.split(child, common);
            at += common;
        }
        if at < tokens.len() {
            let new = Node {
                parent: id,
                tokens: tokens[at..].to_vec(),
                segment: Some(segment(at)),
                snapshot: None,
                children: HashMap::new(),
            };
            self.stats.segment_bytes += new.segment.as_ref().map_or(0, Segment::bytes);
            let child = self.alloc(new);
            self.node_mut(id).children.insert(tokens[at], child);
            id = child;
        }
        self.clock += 1;
        let used = self.clock;
        match &mut self.node_mut(id).snapshot {
            Some(existing) => existing.used = used,
            none => {
                let (value, bytes) = snapshot();
                *none = Some(Snapshot { value, bytes, used });
                self.stats.snapshot_bytes += bytes;
                self.stats.snapshots += 1;
            }
        }
        self.evict_to_budget();
        self.nodes.get(id).is_some_and(Option::is_some)
    }

    /// Cuts node `id` after `at` of its tokens; returns the new upper node (which keeps the parent link).
    fn split(&mut self, id: usize, at: usize) -> usize {
        let node = self.node_mut(id);
        let rest = node.tokens.split_off(at);
        let (upper_segment, lower_segment) = match &node.segment {
            Some(s) => {
                let (a, b) = s.split(at);
                (Some(a), Some(b))
            }
            None => (None, None),
        };
        node.segment = lower_segment;
        let upper_tokens = std::mem::replace(&mut node.tokens, rest);
        let parent = node.parent;
        let first_lower = node.tokens[0];
        let upper = Node {
            parent,
            tokens: upper_tokens,
            segment: upper_segment,
            snapshot: None,
            children: HashMap::from([(first_lower, id)]),
        };
        let first_upper = upper.tokens[0];
        let upper = self.alloc(upper);
        self.node_mut(id).parent = upper;
        self.node_mut(parent).children.insert(first_upper, upper);
        upper
    }

    fn alloc(&mut self, node: Node<K, S>) -> usize {
        match self.free.pop() {
            Some(id) => {
                self.nodes[id] = Some(node);
                id
            }
            None => {
                self.nodes.push(Some(node));
                self.nodes.len() - 1
            }
        }
    }

    fn evict_to_budget(&mut self) {
        loop {
            let (budget, stats) = (self.budget, self.stats);
            let snapshots_over = self.bytes() > budget.total || stats.snapshot_bytes > budget.snapshots;
            if !snapshots_over && stats.segment_bytes <= budget.segments {
                return;
            }
            // only a leaf's removal frees segments: over their budget alone, the oldest leaf goes
            let oldest = self
                .nodes
                .iter()
                .enumerate()
                .skip(1)
                .filter_map(|(id, n)| n.as_ref().map(|n| (id, n)))
                .filter(|(_, n)| snapshots_over || n.children.is_empty())
                .filter_map(|(id, n)| n.snapshot.as_ref().map(|s| (s.used, id)))
                .min();
            let Some((_, id)) = oldest else { return };
            if self.node(id).children.is_empty() {
                self.remove(id);
            } else {
                let dropped = self.node_mut(id).snapshot.take().expect("found above");
                self.stats.snapshot_bytes -= dropped.bytes;
                self.stats.snapshots -= 1;
            }
        }
    }

    /// Removes leaf `id`, then its ancestors left with neither a snapshot nor children.
    fn remove(&mut self, mut id: usize) {
        while id != 0 {
            let node = self.nodes[id].take().expect("live node");
            self.free.push(id);
            self.stats.evicted_nodes += 1;
            self.stats.segment_bytes -= node.segment.as_ref().map_or(0, Segment::bytes);
            if let Some(snapshot) = node.snapshot {
                self.stats.snapshot_bytes -= snapshot.bytes;
                self.stats.snapshots -= 1;
            }
            let parent = self.node_mut(node.parent);
            parent.children.remove(&node.tokens[0]);
            if !parent.children.is_empty() || parent.snapshot.is_some() {
                return;
            }
            id = node.parent;
        }
    }
}

/// Tokens a walk matched: those of the nodes passed whole, then those of the node left part way.
fn reach(path: &[(usize, usize)], partial: Option<(usize, usize)>) -> usize {
    path.last().map_or(0, |&(_, at)| at) + partial.map_or(0, |(_, common)| common)
}

#[cfg(test)]
mod tests {
    //! The tree against a plain list of (sequence, snapshot) pairs, with the tokens themselves as
    //! segments, so that a hit's concatenated segments must spell the matched prefix exactly.

    use super::*;
    use proptest::prelude::*;

    impl Segment for Vec<u32> {
        fn split(&self, at: usize) -> (Self, Self) {
            (self[..at].to_vec(), self[at..].to_vec())
        }
        fn bytes(&self) -> u64 {
            self.len() as u64
        }
    }

    /// Inserts and lookups over a 3-token alphabet, so that sequences share prefixes often.
    #[derive(Debug, Clone)]
    enum Op {
        Insert(Vec<u32>),
        Lookup(Vec<u32>),
    }

    fn op() -> impl Strategy<Value = Op> {
        let seq = || proptest::collection::vec(0u32..3, 1..12);
        prop_oneof![seq().prop_map(Op::Insert), seq().prop_map(Op::Lookup)]
    }

    fn insert(tree: &mut PrefixTree<Vec<u32>, Vec<u32>>, seq: &[u32]) -> bool {
        tree.insert(seq, |from| seq[from..].to_vec(), || (seq.to_vec(), 2))
    }

    /// Sizes recomputed from the live nodes.
    fn recount(tree: &PrefixTree<Vec<u32>, Vec<u32>>) -> (u64, u64, usize) {
        let live = tree.nodes.iter().skip(1).flatten();
        let segments = live.clone().map(|n| n.segment.as_ref().map_or(0, Segment::bytes)).sum();
        let snapshots: Vec<u64> = live.filter_map(|n| n.snapshot.as_ref().map(|s| s.bytes)).collect();
        (segments, snapshots.iter().sum(), snapshots.len())
    }

    proptest! {
        #[test]
        fn unbounded_tree_finds_the_longest_stored_prefix(ops in proptest::collection::vec(op(), 1..40)) {
            let mut tree = PrefixTree::new(TreeBudget::shared(u64::MAX));
            let mut stored: Vec<Vec<u32>> = Vec::new();
            for op in ops {
                match op {
                    Op::Insert(seq) => {
                        prop_assert!(insert(&mut tree, &seq));
                        if !stored.contains(&seq) {
                            stored.push(seq);
                        }
                    }
                    Op::Lookup(seq) => {
                        let want = stored.iter().filter(|s| seq.starts_with(s)).max_by_key(|s| s.len());
                        let longest_shared = stored
                            .iter()
                            .map(|s| s.iter().zip(&seq).take_while(|(a, b)| a == b).count())
                            .max()
                            .unwrap_or(0);
                        prop_assert_eq!(tree.held(&seq), longest_shared);
                        match (tree.lookup(&seq), want) {
                            (None, None) => {}
                            (Some(hit), Some(want)) => {
                                prop_assert_eq!(&hit.snapshot, want);
                                prop_assert_eq!(hit.resume_at, want.len());
                                prop_assert_eq!(hit.segments.concat(), want.clone());
                                prop_assert_eq!(hit.matched, longest_shared);
                            }
                            (got, want) => prop_assert!(false, "lookup {:?}: got {:?}, want {:?}", seq, got, want),
                        }
                    }
                }
                let (segments, snapshot_bytes, snapshots) = recount(&tree);
                let stats = tree.stats();
                prop_assert_eq!((stats.segment_bytes, stats.snapshot_bytes, stats.snapshots), (segments, snapshot_bytes, snapshots));
                prop_assert_eq!(snapshots, stored.len());
                // each stored token is held once: segments never exceed the distinct prefixes
                let mut prefixes: Vec<&[u32]> = stored.iter().flat_map(|s| (1..=s.len()).map(move |n| &s[..n])).collect();
                prefixes.sort();
                prefixes.dedup();
                prop_assert_eq!(segments, prefixes.len() as u64);
            }
        }

        #[test]
        fn a_bounded_tree_stays_within_budget_and_evicts_least_recently_used(
            ops in proptest::collection::vec(op(), 1..60),
            budget in 4u64..40,
            segments in 2u64..40,
            snapshots in 2u64..20,
            shared in any::<bool>(),
        ) {
            let budget = if shared { TreeBudget::shared(budget) } else { TreeBudget { total: budget, segments, snapshots } };
            let mut tree = PrefixTree::new(budget);
            let mut stored: Vec<Vec<u32>> = Vec::new();
            for op in ops {
                match op {
                    Op::Insert(seq) => {
                        let kept = insert(&mut tree, &seq);
                        // kept means found whole; a sequence that cannot fit is never kept
                        prop_assert_eq!(kept, tree.lookup(&seq).is_some_and(|h| h.resume_at == seq.len()));
                        if seq.len() as u64 + 2 > budget.total || seq.len() as u64 > budget.segments || 2 > budget.snapshots {
                            prop_assert!(!kept);
                        }
                        if kept && !stored.contains(&seq) {
                            stored.push(seq);
                        }
                    }
                    Op::Lookup(seq) => {
                        // whatever is found was stored, and spells its prefix
                        if let Some(hit) = tree.lookup(&seq) {
                            prop_assert!(stored.contains(&hit.snapshot));
                            prop_assert!(seq.starts_with(&hit.snapshot));
                            prop_assert_eq!(hit.segments.concat(), hit.snapshot.clone());
                        }
                    }
                }
                prop_assert!(tree.bytes() <= budget.total);
                prop_assert!(tree.stats().segment_bytes <= budget.segments);
                prop_assert!(tree.stats().snapshot_bytes <= budget.snapshots);
                let (segments, snapshot_bytes, snapshots) = recount(&tree);
                let stats = tree.stats();
                prop_assert_eq!((stats.segment_bytes, stats.snapshot_bytes, stats.snapshots), (segments, snapshot_bytes, snapshots));
                // no node is kept that leads to no snapshot
                for node in tree.nodes.iter().skip(1).flatten() {
                    prop_assert!(node.snapshot.is_some() || !node.children.is_empty());
                }
            }
        }
    }

    #[test]
    fn the_least_recently_used_snapshot_goes_first() {
        let mut tree = PrefixTree::new(TreeBudget::shared(3 * (4 + 2)));
        for seq in [[0, 0, 0, 0], [1, 1, 1, 1], [2, 2, 2, 2]] {
            assert!(insert(&mut tree, &seq));
        }
        tree.lookup(&[0, 0, 0, 0, 9]).unwrap();
        assert!(insert(&mut tree, &[0, 2, 2, 2]));
        assert!(tree.lookup(&[1, 1, 1, 1]).is_none(), "the oldest unused sequence is evicted");
        assert!(tree.lookup(&[0, 0, 0, 0]).is_some() && tree.lookup(&[2, 2, 2, 2]).is_some());
        assert_eq!(tree.stats().evicted_nodes, 1);
    }

    #[test]
    fn a_cleared_tree_holds_nothing_and_fills_again_within_its_budget() {
        let mut tree = PrefixTree::new(TreeBudget::shared(2 * (4 + 2)));
        for seq in [[0, 0, 0, 0], [1, 1, 1, 1], [2, 2, 2, 2]] {
            assert!(insert(&mut tree, &seq));
        }
        tree.clear();
        assert_eq!((tree.bytes(), tree.stats().snapshots, tree.stats().evicted_nodes), (0, 0, 1));
        assert!(tree.lookup(&[2, 2, 2, 2, 9]).is_none());
        for seq in [[3, 3, 3, 3], [4, 4, 4, 4], [5, 5, 5, 5]] {
            assert!(insert(&mut tree, &seq));
        }
        assert_eq!(recount(&tree), (8, 4, 2), "the budget still holds two sequences");
        assert_eq!(tree.lookup(&[5, 5, 5, 5, 9]).map(|h| h.resume_at), Some(4));
    }

    #[test]
    fn each_kind_is_bounded_by_its_own_budget() {
        // the segments over theirs: the oldest leaf goes, though the snapshots fit
        let mut tree = PrefixTree::new(TreeBudget { total: 100, segments: 8, snapshots: 100 });
        for seq in [[0, 0, 0, 0], [1, 1, 1, 1], [2, 2, 2, 2]] {
            assert!(insert(&mut tree, &seq));
        }
        assert!(tree.lookup(&[0, 0, 0, 0, 9]).is_none(), "the oldest sequence is evicted");
        assert_eq!(recount(&tree), (8, 4, 2));
        // the snapshots over theirs: the old inner snapshot goes, its segment stays for the path below
        let mut tree = PrefixTree::new(TreeBudget { total: 100, segments: 100, snapshots: 4 });
        for seq in [&[5, 5][..], &[5, 5, 5, 5], &[7, 7, 7]] {
            assert!(insert(&mut tree, seq));
        }
        assert_eq!(tree.lookup(&[5, 5, 1]).map(|h| h.resume_at), None);
        assert_eq!(tree.lookup(&[5, 5, 5, 5, 1]).map(|h| h.resume_at), Some(4));
        assert_eq!(recount(&tree), (7, 4, 2));
    }

    #[test]
    fn an_old_inner_snapshot_goes_before_a_recent_leaf() {
        // a path with snapshots after 2 and 4 tokens, then another sequence: over budget by one snapshot
        let mut tree = PrefixTree::new(TreeBudget::shared(2 + 2 + 2 + 2 + 3 + 2 - 1));
        assert!(insert(&mut tree, &[5, 5]));
        assert!(insert(&mut tree, &[5, 5, 5, 5]));
        assert!(insert(&mut tree, &[7, 7, 7]));
        assert_eq!(tree.lookup(&[5, 5, 5, 5, 1]).map(|h| h.resume_at), Some(4), "the leaf stays");
        assert_eq!(tree.lookup(&[5, 5, 1]).map(|h| h.resume_at), None, "the inner snapshot is dropped");
        assert_eq!(tree.stats().snapshots, 2);
        assert_eq!(tree.stats().evicted_nodes, 0, "its tokens stay for the path below");
    }
}
