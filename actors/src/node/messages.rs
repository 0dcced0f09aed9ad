//! Messages between the actors of a TLA/SQL node.

use std::sync::Arc;

use actix::Message;

use crate::generation::Generation;
use crate::sql::ViewsFile;
use crate::static_tables::StaticCatalog;

/// A freshly sealed generation, to be served from now on.
#[derive(Message)]
#[rtype(result = "()")]
pub struct InstallGeneration(pub Arc<Generation>);

/// The static tables changed (a file was edited, or now fails to load).
#[derive(Message)]
#[rtype(result = "()")]
pub struct InstallStatics(pub Arc<StaticCatalog>);

/// `views.toml` changed: the new definitions, or why the edit was rejected (the last good
/// definitions stay).
#[derive(Message)]
#[rtype(result = "()")]
pub struct InstallViews(pub Result<Arc<ViewsFile>, String>);

/// A new snapshot is served (`NodeHandle::follow_generations`): what works on every
/// generation (alerts, history) looks at it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct GenerationInstalled;
