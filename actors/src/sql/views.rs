//! Views: named queries from `ops/views.toml`, computed at most once per generation on
//! first use and cached until the node switches to the next generation.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{MemTable, Session, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::datasource::TableType;
use datafusion::error::Result as DfResult;
use datafusion::execution::session_state::SessionState;
use datafusion::logical_expr::{Expr, LogicalPlan, TableSource};
use datafusion::physical_plan::{collect, ExecutionPlan};
use serde::Deserialize;
use tokio::sync::OnceCell;

use super::kept_physical::physical_plan;
use super::plans::KeptPlan;
use crate::error::{ConfigError, ConfigResult};

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ViewDef {
    pub name: String,
    pub sql: String,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ViewsFile {
    #[serde(default)]
    pub view: Vec<ViewDef>,
}

impl ViewsFile {
    pub fn validate(&self) -> ConfigResult<()> {
        let mut seen = HashSet::new();
        for v in &self.view {
            let ok = v
                .name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_lowercase())
                && v.name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if !ok {
                return Err(ConfigError::Invalid {
                    what: format!("view '{}'", v.name),
                    message: "name must be a lowercase identifier".into(),
                });
            }
            if !seen.insert(v.name.as_str()) {
                return Err(ConfigError::Invalid {
                    what: format!("view '{}'", v.name),
                    message: "defined twice".into(),
                });
            }
            if v.sql.trim().is_empty() {
                return Err(ConfigError::Invalid {
                    what: format!("view '{}'", v.name),
                    message: "has no sql".into(),
                });
            }
        }
        Ok(())
    }
}

pub fn load_views(path: &Path) -> ConfigResult<ViewsFile> {
    let file: ViewsFile = crate::config::read_toml(path)?;
    file.validate()?;
    Ok(file)
}

/// How often a view was computed: in the generation now served, and since start.
#[derive(Debug, Default)]
pub struct ViewStats {
    pub computations: AtomicU64,
    pub rows: AtomicU64,
}

/// A view's logical plan, and the tables it reads (directly or through views).
pub(crate) struct ViewPlan {
    pub plan: LogicalPlan,
    /// Optimized already: computing the view only plans it physically.
    pub optimized: bool,
    pub depends_on: Vec<String>,
    /// The kept plan it was bound from, if it was.
    pub kept: Option<KeptView>,
}

/// A view's kept plan, whose physical plan may be kept too (`kept_physical`), and the
/// snapshot's sources its scans bind to.
pub(crate) struct KeptView {
    pub plan: Arc<KeptPlan>,
    pub sources: HashMap<String, Arc<dyn TableSource>>,
}

impl fmt::Debug for KeptView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeptView({} sources)", self.sources.len())
    }
}

/// A view inside one snapshot. Its cache lives exactly as long as the snapshot, which is
/// how "dropped at the switch to the next generation" is implemented.
#[derive(Debug)]
pub(crate) struct ViewProvider {
    pub name: String,
    pub plan: LogicalPlan,
    /// Whether `plan` is optimized already (`plans::view_plan`): only physical planning
    /// remains when the view is computed.
    optimized: bool,
    kept: Option<KeptView>,
    pub schema: SchemaRef,
    /// Published, static and view tables this view reads (directly or through views).
    pub depends_on: Vec<String>,
    pub stats: Arc<ViewStats>,
    pub total_computations: Arc<AtomicU64>,
    cache: OnceCell<Arc<MemTable>>,
}

impl ViewProvider {
    pub fn new(name: String, planned: ViewPlan, total_computations: Arc<AtomicU64>) -> Self {
        let ViewPlan {
            plan,
            optimized,
            depends_on,
            kept,
        } = planned;
        let schema = Arc::new(plan.schema().as_arrow().clone());
        ViewProvider {
            name,
            plan,
            optimized,
            kept,
            schema,
            depends_on,
            stats: Arc::new(ViewStats::default()),
            total_computations,
            cache: OnceCell::new(),
        }
    }

    pub fn cached_rows(&self) -> Option<usize> {
        self.cache
            .get()
            .map(|_| self.stats.rows.load(Ordering::Relaxed) as usize)
    }

    /// Computes the view once; concurrent callers wait for that one computation. A failed
    /// computation is not cached, so the next use tries again.
    async fn materialized(&self, state: &dyn Session) -> DfResult<Arc<MemTable>> {
        self.cache
            .get_or_try_init(|| async {
                let physical = match state.as_any().downcast_ref::<SessionState>() {
                    // Its physical plan kept for the computing statement's partitions and
                    // dynamic filters (`Snapshot::statement_state`).
                    Some(s) if self.optimized => {
                        let no_sources = HashMap::new();
                        let optimizer = &s.config_options().optimizer;
                        let values = [
                            ScalarValue::UInt64(Some(s.config().target_partitions() as u64)),
                            ScalarValue::Boolean(Some(
                                optimizer.enable_join_dynamic_filter_pushdown,
                            )),
                        ];
                        let (slot, sources) = match &self.kept {
                            Some(k) => (Some((&k.plan.physical, &values[..])), &k.sources),
                            None => (None, &no_sources),
                        };
                        physical_plan(&self.plan, s, sources, slot, Ok).await?.0
                    }
                    _ => state.create_physical_plan(&self.plan).await?,
                };
                let batches = collect(physical, state.task_ctx()).await?;
                // The executed schema may differ from the planned one in field metadata
                // only; re-label the columns so the cache matches the declared schema.
                let batches = batches
                    .into_iter()
                    .map(|b| RecordBatch::try_new(self.schema.clone(), b.columns().to_vec()))
                    .collect::<Result<Vec<_>, _>>()?;
                let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
                self.stats.computations.fetch_add(1, Ordering::Relaxed);
                self.stats.rows.store(rows as u64, Ordering::Relaxed);
                self.total_computations.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(view = %self.name, rows, "view computed");
                Ok(Arc::new(MemTable::try_new(
                    self.schema.clone(),
                    vec![batches],
                )?))
            })
            .await
            .cloned()
    }
}

#[async_trait]
impl TableProvider for ViewProvider {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let table = self.materialized(state).await?;
        table.scan(state, projection, filters, limit).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_views_parse_and_validate() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/views.toml");
        let views = load_views(&path).expect("shipped views are valid");
        assert!(!views.view.is_empty());
    }

    #[test]
    fn duplicate_and_unknown_fields_are_refused() {
        let dup = "[[view]]\nname = \"a\"\nsql = \"SELECT 1\"\n[[view]]\nname = \"a\"\nsql = \"SELECT 2\"\n";
        let f: ViewsFile = toml::from_str(dup).expect("parses");
        assert!(f.validate().is_err());
        assert!(toml::from_str::<ViewsFile>("[[view]]\nname = \"a\"\nquery = \"x\"\n").is_err());
    }
}
