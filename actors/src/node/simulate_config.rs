//! `[simulate]` of a demo node's configuration: the simulated fleet `queryd demo` serves
//! (the simulator itself is `crate::simulate`; production code reads only this config).

use serde::Deserialize;

use crate::error::{ConfigError, ConfigResult};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimulateConfig {
    pub machines: usize,
    pub clusters: usize,
    /// Share of machines whose values change each generation, 0.0 to 1.0.
    pub churn: f64,
    /// Processes per machine (before the occasional extra ones).
    pub processes_per_machine: usize,
    pub seed: u64,
}

impl Default for SimulateConfig {
    fn default() -> Self {
        SimulateConfig {
            machines: 1000,
            clusters: 20,
            churn: 0.2,
            processes_per_machine: 12,
            seed: 1,
        }
    }
}

impl SimulateConfig {
    pub fn validate(&self) -> ConfigResult<()> {
        let bad = |m: &str| {
            Err(ConfigError::Invalid {
                what: "[simulate]".into(),
                message: m.into(),
            })
        };
        if self.clusters == 0 || self.machines < self.clusters {
            return bad("needs at least one cluster and at least as many machines as clusters");
        }
        if self.machines / self.clusters > 250 * 250 {
            return bad("at most 62,500 machines per cluster");
        }
        if !(0.0..=1.0).contains(&self.churn) {
            return bad("churn is a share between 0.0 and 1.0");
        }
        Ok(())
    }
}
