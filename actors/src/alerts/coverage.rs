//! Which machines and clusters a generation holds: an alert instance whose machine or
//! cluster is missing cannot be judged absent (missing data is not a resolution).

use std::collections::HashSet;
use std::sync::OnceLock;

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::DataType;

use super::instance::Coverage;
use crate::generation::Generation;

/// Computed on first use, once per evaluation pass.
pub struct GenerationCoverage<'a> {
    generation: &'a Generation,
    machines: OnceLock<HashSet<String>>,
    clusters: OnceLock<Option<HashSet<String>>>,
}

impl<'a> GenerationCoverage<'a> {
    pub fn new(generation: &'a Generation) -> Self {
        GenerationCoverage {
            generation,
            machines: OnceLock::new(),
            clusters: OnceLock::new(),
        }
    }

    /// Every source of every table: the machines that published into this generation (a
    /// source is a machine's address, or `address/publisher`).
    fn machines(&self) -> &HashSet<String> {
        self.machines.get_or_init(|| {
            self.generation
                .tables
                .values()
                .flat_map(|t| t.sources())
                .map(|s| machine_of(&s.source).to_string())
                .collect()
        })
    }

    /// The values of the string column `cluster` of every table that has one (`sys`
    /// names every machine's cluster); None if no table has one: then the generation
    /// cannot tell, and clusters are taken as present (their machines are checked).
    fn clusters(&self) -> Option<&HashSet<String>> {
        self.clusters
            .get_or_init(|| {
                let mut found = None;
                for t in self.generation.tables.values() {
                    let Ok(i) = t.schema.index_of("cluster") else {
                        continue;
                    };
                    if t.schema.field(i).data_type() != &DataType::Utf8 {
                        continue;
                    }
                    let set = found.get_or_insert_with(HashSet::new);
                    for batch in t.batches() {
                        let col = batch.column(i).as_string::<i32>();
                        for j in 0..col.len() {
                            if col.is_valid(j) {
                                set.insert(col.value(j).to_string());
                            }
                        }
                    }
                }
                found
            })
            .as_ref()
    }
}

fn machine_of(source: &str) -> &str {
    source.split_once('/').map_or(source, |(m, _)| m)
}

impl Coverage for GenerationCoverage<'_> {
    fn has_machine(&self, machine_ip: &str) -> bool {
        self.machines().contains(machine_ip)
    }

    fn has_cluster(&self, cluster: &str) -> bool {
        self.clusters().is_none_or(|c| c.contains(cluster))
    }
}
