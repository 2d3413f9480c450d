//! Rebalancing (issue 16): a plan of replica moves from the fullest stores to the emptiest
//! (`placement::rebalance_plan` over the bytes each store holds in replicas), shown by
//! `GET /v1/rebalance`, run by `POST /v1/rebalance` (`haystack rebalance`) and, one move per
//! `rebalance_interval_ms`, by the rebalance worker. Each move is the drain's: the volume
//! read-only, a bulk copy onto the target, needle counts compared, the replica replaced,
//! the replicas compared by digests.

use super::*;

/// Moves one run of `POST /v1/rebalance` makes at most.
pub const MAX_MOVES_PER_RUN: usize = 64;

impl Directory {
    /// The plan: at most `max_moves` moves to bring the spread within `max_spread` (the
    /// configured `rebalance_spread` when None). Only active, up stores outside remote zones
    /// take part; only replicated volumes whose replicas are all up and reported move.
    pub fn rebalance_plan(&self, max_spread: Option<f64>, max_moves: usize) -> RebalancePlan {
        let max_spread = max_spread.unwrap_or(self.config.rebalance_spread);
        let view = self.view();
        let stores: Vec<&StoreMachine> =
            view.stores.values().filter(|s| takes_replicas(s)).collect();
        let loads: Vec<placement::Load> = stores
            .iter()
            .map(|s| placement::Load {
                store_id: s.id,
                capacity_bytes: s.capacity_bytes,
                held_bytes: view
                    .volumes
                    .values()
                    .filter(|v| v.info.replicas.iter().any(|r| r.store_id == s.id))
                    .map(|v| v.info.used_bytes)
                    .sum(),
            })
            .collect();
        let movable: Vec<placement::Movable> = view
            .volumes
            .values()
            .filter(|v| v.info.ec.is_none() && !v.pending)
            .filter(|v| v.info.replicas.iter().all(|r| r.up && r.reported))
            .map(|v| placement::Movable {
                volume: v.info.id,
                bytes: v.info.used_bytes,
                stores: v.info.replicas.iter().map(|r| r.store_id).collect(),
                avoid: v.info.moved_away.clone(),
            })
            .collect();
        let moves = placement::rebalance_plan(&loads, &movable, max_spread, max_moves)
            .into_iter()
            .map(|m| RebalanceMove {
                volume: m.volume,
                from_store_id: m.from,
                to_store_id: m.to,
                bytes: m.bytes,
                done: None,
                error: None,
            })
            .collect();
        RebalancePlan {
            max_spread,
            spread: placement::spread(&loads),
            moves,
        }
    }

    /// Runs a plan now, one move after the other; what each move did.
    pub async fn rebalance(
        &self,
        max_spread: Option<f64>,
    ) -> Result<RebalancePlan, DirectoryError> {
        let mut plan = self.rebalance_plan(max_spread, MAX_MOVES_PER_RUN);
        for m in &mut plan.moves {
            let view = self.view();
            match self
                .move_replica(&view, m.volume, m.from_store_id, Some(m.to_store_id))
                .await
            {
                Ok(done) => m.done = Some(done),
                Err(e) => {
                    m.done = Some(false);
                    m.error = Some(e.to_string());
                }
            }
            if m.done == Some(true) {
                metrics::counter!("haystack_directory_rebalance_moves_total").increment(1);
            }
        }
        Ok(plan)
    }

    /// The rebalance worker's step: at most one move, when the spread is past bounds.
    pub async fn rebalance_once(&self) -> Result<Option<u32>, DirectoryError> {
        let plan = self.rebalance_plan(None, 1);
        metrics::gauge!("haystack_directory_disk_use_spread").set(plan.spread);
        let Some(m) = plan.moves.first() else {
            return Ok(None);
        };
        tracing::info!(
            volume_id = m.volume,
            from = m.from_store_id,
            to = m.to_store_id,
            bytes = m.bytes,
            spread = plan.spread,
            "rebalancing: moving a replica"
        );
        let view = self.view();
        if self
            .move_replica(&view, m.volume, m.from_store_id, Some(m.to_store_id))
            .await?
        {
            metrics::counter!("haystack_directory_rebalance_moves_total").increment(1);
            return Ok(Some(m.volume));
        }
        Ok(None)
    }
}
