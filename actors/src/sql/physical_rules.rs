//! The physical optimizer rules of a snapshot's session: DataFusion's, with ours in their
//! places (`all`), and the one way our rules replace operators (`replace_each`).

use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::error::Result;
use datafusion::physical_optimizer::optimizer::PhysicalOptimizer;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;

use super::int_division::FastIntDivision;
use super::machine_keys::LookupJoinsOnMachineIds;
use super::window_topn::{OurWindowTopN, PartialTopKBelowRepartition};

/// DataFusion's physical rules with ours:
/// - `WindowTopN` wrapped so that its per-partition top-k never keeps zero rows
///   (`window_topn`);
/// - a partial top-k below each repartition that feeds one, once `EnsureRequirements` has
///   placed it;
/// - lookup joins on machine ids (`machine_keys`) once the plan's shape is settled, before
///   the hash joins would push their dynamic filters into their probe sides (a lookup join
///   has none to fill) and so before the final check of every operator's requirements;
/// - `Int64` divisions in doubles where that is exact (`int_division`), last, once no rule
///   looks into expressions any more.
pub(crate) fn all() -> Vec<Arc<dyn PhysicalOptimizerRule + Send + Sync>> {
    let mut rules: Vec<Arc<dyn PhysicalOptimizerRule + Send + Sync>> = Vec::new();
    for rule in PhysicalOptimizer::new().rules {
        match rule.name() {
            "WindowTopN" => rules.push(Arc::new(OurWindowTopN::new(rule))),
            "EnsureRequirements" => {
                rules.push(rule);
                rules.push(Arc::new(PartialTopKBelowRepartition));
            }
            "FilterPushdown(Post)" => {
                rules.push(Arc::new(LookupJoinsOnMachineIds));
                rules.push(rule);
            }
            _ => rules.push(rule),
        }
    }
    rules.push(Arc::new(FastIntDivision));
    rules
}

/// `plan` with each operator of type `T` for which `replace` gives another put in its
/// place, from the leaves up.
pub(crate) fn replace_each<T: ExecutionPlan>(
    plan: Arc<dyn ExecutionPlan>,
    replace: impl Fn(&T) -> Result<Option<Arc<dyn ExecutionPlan>>>,
) -> Result<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|node| {
        let replaced = match node.downcast_ref::<T>() {
            Some(operator) => replace(operator)?,
            None => None,
        };
        Ok(match replaced {
            Some(new) => Transformed::yes(new),
            None => Transformed::no(node),
        })
    })
    .map(|t| t.data)
}
