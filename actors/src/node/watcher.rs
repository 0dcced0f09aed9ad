//! Watches the static tables and `views.toml` for edits (by polling modification times,
//! which works on every filesystem) and sends what changed to the snapshot keeper.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use actix::prelude::*;

use super::config::PathsConfig;
use super::messages::{InstallStatics, InstallViews};
use super::serving::SnapshotKeeper;
use crate::metrics::Metrics;
use crate::sql::{load_views, SqlPool};
use crate::static_tables::StaticLoader;

struct Files {
    statics: StaticLoader,
    views: PathBuf,
    /// (modified, length) of views.toml when last read; None if it was missing.
    views_stamp: Option<(SystemTime, u64)>,
    views_read: bool,
}

pub struct FileWatcher {
    files: Arc<Mutex<Files>>,
    every: Duration,
    keeper: Addr<SnapshotKeeper>,
    pool: SqlPool,
    metrics: Arc<Metrics>,
    checking: bool,
}

impl FileWatcher {
    pub fn new(
        paths: &PathsConfig,
        keeper: Addr<SnapshotKeeper>,
        pool: SqlPool,
        metrics: Arc<Metrics>,
    ) -> Self {
        let files = Files {
            statics: StaticLoader::new(paths.static_tables.clone()),
            views: paths.views.clone(),
            views_stamp: None,
            views_read: false,
        };
        FileWatcher {
            files: Arc::new(Mutex::new(files)),
            every: paths.reload_every,
            keeper,
            pool,
            metrics,
            checking: false,
        }
    }

    fn check(&mut self, ctx: &mut Context<Self>) {
        if self.checking {
            return;
        }
        self.checking = true;
        let files = self.files.clone();
        let work = self.pool.spawn(async move {
            let mut f = files.lock().unwrap_or_else(|p| p.into_inner());
            let statics = f.statics.reload();
            let stamp = std::fs::metadata(&f.views)
                .ok()
                .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
            // Read at start and on every change (a file that vanishes is a change, reported
            // once rather than on every poll).
            let views = (!f.views_read || stamp != f.views_stamp).then(|| {
                f.views_read = true;
                f.views_stamp = stamp;
                load_views(&f.views)
                    .map(Arc::new)
                    .map_err(|e| e.to_string())
            });
            (statics, views)
        });
        ctx.spawn(actix::fut::wrap_future::<_, Self>(work).map(|res, act, _| {
            act.checking = false;
            let Ok((statics, views)) = res else { return };
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

impl Actor for FileWatcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.check(ctx);
        ctx.run_interval(self.every, |act, ctx| act.check(ctx));
    }
}
