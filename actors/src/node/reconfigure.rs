//! Live reconfiguration (OSR 3.6: "SQL parsers can be rapidly reconfigured"): edits to the
//! aggregator-sets file (the set's prewarm and partitions) and to the node's own config file
//! (`[tla_selection]`: pin, bonus, switch margin, probe interval; a TLA's `[tla_children]`)
//! apply without a restart.
//! Checked by the file watcher, off the actors' event loops. An edit that does not load
//! keeps what runs and is logged; an edit of a section that only applies at start (any
//! other section of the node's file) is logged as needing a restart. A TLA applies its
//! set's span too (`tier/span.rs`).

use std::collections::BTreeSet;
use std::path::PathBuf;

use super::config::{NodeConfig, Role};
use crate::aggregator_sets::{AggregatorSet, AggregatorSetConfig, Routing};
use crate::config::{file_stamp, FileStamp};
use crate::table::SchemaRegistry;
use crate::tier::tla_children::TlaChildrenConfig;
use crate::tier::tla_selection::TlaSelectionConfig;

/// What an edit changed, to be applied by the watcher.
#[derive(Default)]
pub struct Changes {
    /// `[tla_selection]` as now configured (a SQL node's).
    pub selection: Option<TlaSelectionConfig>,
    /// `[tla_children]` as now configured (a TLA's).
    pub tla_children: Option<TlaChildrenConfig>,
    /// The set as now configured, its tables and partition routing.
    pub set: Option<(AggregatorSet, BTreeSet<String>, Option<Routing>)>,
    /// Whether an edit was refused (counted as a config error).
    pub rejected: bool,
}

struct Watched<T> {
    path: PathBuf,
    stamp: Option<FileStamp>,
    last_good: T,
}

impl<T> Watched<T> {
    /// True once per change of the file's stamp (recorded before the file is read, so an
    /// edit during the read is seen at the next check).
    fn take_change(&mut self) -> bool {
        let now = file_stamp(&self.path);
        std::mem::replace(&mut self.stamp, now) != now
    }
}

pub struct Reconfigure {
    role: Role,
    /// The node's configured children (a span edit must keep one of them).
    children: Vec<String>,
    schemas: SchemaRegistry,
    /// The node's config file, and its last good content.
    config: Option<Watched<toml::Table>>,
    /// The aggregator-sets file, and the set's span as last loaded.
    sets: Option<(AggregatorSetConfig, Watched<Vec<String>>)>,
}

impl Reconfigure {
    /// None when the node has neither a config file nor an aggregator set to watch.
    pub fn new(config: &NodeConfig, schemas: SchemaRegistry) -> Option<Reconfigure> {
        let file = config.source.as_ref().map(|p| Watched {
            path: p.clone(),
            stamp: file_stamp(p),
            last_good: crate::config::read_toml::<toml::Table>(p).unwrap_or_default(),
        });
        let sets = config.aggregator_set.as_ref().map(|a| {
            let span = a.load().map(|(s, _)| s.span).unwrap_or_default();
            let watched = Watched {
                path: a.file.clone(),
                stamp: file_stamp(&a.file),
                last_good: span,
            };
            (a.clone(), watched)
        });
        (file.is_some() || sets.is_some()).then_some(Reconfigure {
            role: config.role,
            children: config
                .link
                .child_specs()
                .into_iter()
                .map(|c| c.name)
                .collect(),
            schemas,
            config: file,
            sets,
        })
    }

    /// Reads whatever changed since the last check.
    pub fn check(&mut self) -> Changes {
        let mut out = Changes::default();
        if let Some(w) = self
            .config
            .as_mut()
            .and_then(|w| w.take_change().then_some(w))
        {
            match reload_config(w, self.role) {
                Ok((selection, children)) => {
                    out.selection = selection;
                    out.tla_children = children;
                }
                Err(e) => {
                    tracing::error!(file = %w.path.display(), error = %e, "config file edit rejected; the running configuration stays");
                    out.rejected = true;
                }
            }
        }
        if let Some((a, w)) = self
            .sets
            .as_mut()
            .and_then(|(a, w)| w.take_change().then_some((a, w)))
        {
            let children = &self.children;
            let role = self.role;
            let loaded = a.load().and_then(|(set, partition)| {
                super::config::span_check(role, children, &set).map_err(|message| {
                    crate::error::ConfigError::Invalid {
                        what: "[aggregator_set]".into(),
                        message,
                    }
                })?;
                let tables = super::set_tables(&set, partition.as_ref(), self.role, &self.schemas)?;
                let routing = Routing::new(&set, partition.as_ref());
                Ok((set, tables, routing))
            });
            match loaded {
                Ok((set, tables, routing)) => {
                    if set.span != w.last_good {
                        tracing::info!(file = %w.path.display(), span = ?set.span, was = ?w.last_good, "the set's span changed");
                        w.last_good = set.span.clone();
                    }
                    tracing::info!(file = %w.path.display(), set = %set.name, "aggregator set reloaded: span, prewarm and partitions applied");
                    out.set = Some((set, tables, routing));
                }
                Err(e) => {
                    tracing::error!(file = %w.path.display(), error = %e, "aggregator-sets file edit rejected; the running set stays");
                    out.rejected = true;
                }
            }
        }
        out
    }
}

/// Loads and validates the edited node config; returns its `[tla_selection]` (a SQL
/// node's) and `[tla_children]` (a TLA's) when they changed, and logs the other sections
/// that changed (they apply at the next restart).
#[allow(clippy::type_complexity)]
fn reload_config(
    w: &mut Watched<toml::Table>,
    role: Role,
) -> Result<(Option<TlaSelectionConfig>, Option<TlaChildrenConfig>), String> {
    let raw: toml::Table = crate::config::read_toml(&w.path).map_err(|e| e.to_string())?;
    let mut config = NodeConfig::load(&w.path).map_err(|e| e.to_string())?;
    config.role = role;
    config.validate_role().map_err(|e| e.to_string())?;
    let restart: Vec<&String> = raw
        .keys()
        .chain(w.last_good.keys())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .filter(|k| {
            !matches!(k.as_str(), "tla_selection" | "tla_children")
                && raw.get(*k) != w.last_good.get(*k)
        })
        .collect();
    if !restart.is_empty() {
        tracing::warn!(file = %w.path.display(), sections = ?restart, "config sections changed that apply at the next restart");
    }
    let selection_changed = raw.get("tla_selection") != w.last_good.get("tla_selection");
    let children_changed = raw.get("tla_children") != w.last_good.get("tla_children");
    w.last_good = raw;
    let tla = matches!(role, Role::Tla | Role::TlaSql);
    Ok((
        (role == Role::Sql && selection_changed).then_some(config.tla_selection),
        (tla && children_changed).then_some(config.tla_children),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_edit_yields_the_new_selection_and_a_bad_edit_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sql.toml");
        let base = "[link]\nchildren = [\"127.0.0.1:7500\"]\n";
        std::fs::write(&path, base).expect("write");
        let mut config = NodeConfig::load(&path).expect("loads");
        config.role = Role::Sql;
        let schemas = SchemaRegistry::default();
        let mut r = Reconfigure::new(&config, schemas).expect("watches the file");
        assert!(r.check().selection.is_none(), "nothing changed");

        let edited =
            format!("{base}\n[tla_selection]\npin = [\"127.0.0.1:7500\"]\nswitch_margin = 0.2\n");
        // Another length: the stamp differs even within the same second.
        std::fs::write(&path, &edited).expect("write");
        let c = r.check();
        let s = c.selection.expect("the new selection");
        assert_eq!(s.pin, ["127.0.0.1:7500"]);
        assert_eq!(s.switch_margin, 0.2);

        std::fs::write(
            &path,
            format!("{edited}\n[tla_selection.bonus]\nx = \"not a number\"\n"),
        )
        .expect("write");
        let c = r.check();
        assert!(c.rejected && c.selection.is_none());
    }

    #[test]
    fn a_tla_config_edit_yields_its_tla_children() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tla.toml");
        let base = "[link]\nlisten = \"127.0.0.1:7500\"\nchildren = [\"127.0.0.1:7400\"]\n";
        std::fs::write(&path, base).expect("write");
        let mut config = NodeConfig::load(&path).expect("loads");
        config.role = Role::Tla;
        let mut r = Reconfigure::new(&config, SchemaRegistry::default()).expect("watches");
        let edited = format!(
            "{base}\n[tla_children]\nchildren = [\"127.0.0.1:7510\"]\ntables = [\"sys\"]\n"
        );
        std::fs::write(&path, &edited).expect("write");
        let c = r.check();
        let children = c.tla_children.expect("the new [tla_children]");
        assert_eq!(children.children, ["127.0.0.1:7510"]);
        assert!(c.selection.is_none(), "a TLA has no selection");
        // Children without tables: refused, the running deferral stays.
        std::fs::write(
            &path,
            format!(
                "{base}\n[tla_children]\nchildren = [\"127.0.0.1:7510\", \"127.0.0.1:7511\"]\n"
            ),
        )
        .expect("write");
        let c = r.check();
        assert!(c.rejected && c.tla_children.is_none());
    }
}
