//! Watches the static tables, `views.toml`, the prewarm list, the tokens file, the
//! aggregator-sets file and the node's own config file for edits (by polling modification
//! times, which works on every filesystem) and sends what changed to the snapshot keeper
//! (tables, views), the request book (prewarm, the set's tables) or the TLA selector
//! (`[tla_selection]`); tokens and partition routing are swapped in place
//! (`crate::auth`, [`super::reconfigure`]).

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use actix::prelude::*;

use arc_swap::ArcSwapOption;

use super::config::PathsConfig;
use super::messages::{InstallStatics, InstallViews};
use super::reconfigure::{Changes, Reconfigure};
use super::serving::SnapshotKeeper;
use crate::aggregator_sets::Routing;
use crate::config::file_stamp as stamp;
use crate::metrics::Metrics;
use crate::sql::{load_views, SqlPool};
use crate::static_tables::StaticLoader;
use crate::table::SchemaRegistry;
use crate::tier::messages::SetPrewarm;
use crate::tier::messages::SetSetTables;
use crate::tier::tla_children::Deferral;
use crate::tier::tla_selection::{SetSelectionConfig, TlaSelector};
use crate::tier::RequestBook;

struct Files {
    statics: StaticLoader,
    views: PathBuf,
    /// (modified, length) of views.toml when last read; None if it was missing.
    views_stamp: Option<(SystemTime, u64)>,
    views_read: bool,
    /// The prewarm file and its stamp when last read (it is read at start by the node).
    prewarm: Option<(PathBuf, Option<(SystemTime, u64)>)>,
    schemas: SchemaRegistry,
    reconfigure: Option<Reconfigure>,
}

/// Where live reconfiguration is applied.
pub struct Reconfigured {
    pub routing: Arc<ArcSwapOption<Routing>>,
    pub selector: Option<Addr<TlaSelector>>,
    /// A TLA's children in its set's span.
    pub span: Option<Arc<crate::tier::span::Span>>,
    /// A TLA's deferral, and how to start a link to a newly listed TLA child.
    pub tla_children: Option<(Arc<Deferral>, StartTlaChild)>,
}

/// Starts the link to a TLA child newly listed in `[tla_children]`.
pub type StartTlaChild = Box<dyn Fn(String)>;

pub struct FileWatcher {
    files: Arc<Mutex<Files>>,
    every: Duration,
    keeper: Addr<SnapshotKeeper>,
    book: Addr<RequestBook>,
    pool: SqlPool,
    metrics: Arc<Metrics>,
    checking: bool,
    auth: Option<Arc<crate::auth::Auth>>,
    reconfigured: Option<Reconfigured>,
}

impl FileWatcher {
    pub fn new(
        paths: &PathsConfig,
        prewarm: Option<PathBuf>,
        schemas: SchemaRegistry,
        keeper: Addr<SnapshotKeeper>,
        book: Addr<RequestBook>,
        pool: SqlPool,
        metrics: Arc<Metrics>,
    ) -> Self {
        let files = Files {
            statics: StaticLoader::new(paths.static_tables.clone()),
            views: paths.views.clone(),
            views_stamp: None,
            views_read: false,
            prewarm: prewarm.map(|p| {
                let s = stamp(&p);
                (p, s)
            }),
            schemas,
            reconfigure: None,
        };
        FileWatcher {
            files: Arc::new(Mutex::new(files)),
            every: paths.reload_every,
            keeper,
            book,
            pool,
            metrics,
            checking: false,
            auth: None,
            reconfigured: None,
        }
    }

    /// Also applies edits of the node's config file and aggregator-sets file.
    pub fn with_reconfigure(mut self, reconfigure: Reconfigure, at: Reconfigured) -> Self {
        self.files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .reconfigure = Some(reconfigure);
        self.reconfigured = Some(at);
        self
    }

    /// Also reloads the tokens file of `auth` when it changes.
    pub fn with_tokens(mut self, auth: Arc<crate::auth::Auth>) -> Self {
        self.auth = Some(auth);
        self
    }

    fn check(&mut self, ctx: &mut Context<Self>) {
        if self.checking {
            return;
        }
        self.checking = true;
        let files = self.files.clone();
        let auth = self.auth.clone();
        let work = self.pool.spawn(async move {
            let tokens_rejected = auth.is_some_and(|a| a.reload_tokens());
            let mut f = files.lock().unwrap_or_else(|p| p.into_inner());
            let statics = f.statics.reload();
            let views_stamp = stamp(&f.views);
            // Read at start and on every change (a file that vanishes is a change, reported
            // once rather than on every poll).
            let views = (!f.views_read || views_stamp != f.views_stamp).then(|| {
                f.views_read = true;
                f.views_stamp = views_stamp;
                load_views(&f.views)
                    .map(Arc::new)
                    .map_err(|e| e.to_string())
            });
            let schemas = f.schemas.clone();
            let prewarm = f.prewarm.as_mut().and_then(|(path, last)| {
                let now = stamp(path);
                (now != *last).then(|| {
                    *last = now;
                    super::load_prewarm(path, &schemas).map_err(|e| e.to_string())
                })
            });
            let changes = f.reconfigure.as_mut().map(Reconfigure::check);
            (statics, views, prewarm, tokens_rejected, changes)
        });
        ctx.spawn(actix::fut::wrap_future::<_, Self>(work).map(|res, act, _| {
            act.checking = false;
            let Ok((statics, views, prewarm, tokens_rejected, changes)) = res else {
                return;
            };
            if tokens_rejected {
                act.metrics.config_errors.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(changes) = changes {
                act.apply(changes);
            }
            match prewarm {
                Some(Ok(tables)) => act.book.do_send(SetPrewarm(tables)),
                Some(Err(e)) => {
                    act.metrics.config_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, "prewarm file rejected; the previous list stays");
                }
                None => {}
            }
            if let Some(statics) = statics {
                act.metrics.static_reloads.fetch_add(1, Ordering::Relaxed);
                act.metrics
                    .config_errors
                    .fetch_add(statics.errors.len() as u64, Ordering::Relaxed);
                act.keeper.do_send(InstallStatics(statics));
            }
            if let Some(views) = views {
                act.metrics.view_reloads.fetch_add(1, Ordering::Relaxed);
                match &views {
                    Ok(v) => tracing::info!(views = v.view.len(), "views loaded"),
                    Err(e) => {
                        act.metrics.config_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(error = %e, "views file rejected; the previous views stay");
                    }
                }
                act.keeper.do_send(InstallViews(views));
            }
        }));
    }
}

impl FileWatcher {
    fn apply(&self, changes: Changes) {
        if changes.rejected {
            self.metrics.config_errors.fetch_add(1, Ordering::Relaxed);
        }
        let Some(at) = &self.reconfigured else {
            return;
        };
        if let Some((set, tables, routing)) = changes.set {
            at.routing.store(routing.map(Arc::new));
            self.book.do_send(SetSetTables(tables));
            if let Some(span) = &at.span {
                span.apply(&set);
            }
            if let Some(auth) = &self.auth {
                auth.set_domains(&set.domain);
            }
        }
        if let (Some(selection), Some(selector)) = (changes.selection, &at.selector) {
            selector.do_send(SetSelectionConfig(selection));
        }
        if let (Some(config), Some((deferral, start))) = (changes.tla_children, &at.tla_children) {
            for address in deferral.reconfigure(config) {
                start(address);
            }
        }
    }
}

/// Restarted in place: what it last read is kept; a check lost with the panic runs again
/// at the next tick.
impl Supervised for FileWatcher {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.checking = false;
    }
}

impl Actor for FileWatcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.check(ctx);
        ctx.run_interval(self.every, |act, ctx| act.check(ctx));
    }
}
