//! Messages between the actors of the hierarchy: requests flowing up, prewarm changes.

use std::collections::BTreeSet;

use actix::Message;

/// Queries on this node used these published tables (keeps them requested for the ttl).
#[derive(Message)]
#[rtype(result = "()")]
pub struct UseTables(pub BTreeSet<String>);

/// A parent connected over a link wants these tables (replaces its previous request).
#[derive(Message)]
#[rtype(result = "()")]
pub struct ParentRequest {
    pub session: u64,
    pub tables: BTreeSet<String>,
}

/// A parent's link closed; its request lapses after the ttl.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ParentGone(pub u64);

/// The prewarm list (re)loaded from configuration.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetPrewarm(pub BTreeSet<String>);

/// The aggregator set's prewarm and partition tables (re)loaded from the sets file.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetSetTables(pub BTreeSet<String>);
