//! Counters of a fixed set of outcomes, one label value each, made once so that
//! counting one costs an atomic add and no label lookup.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::Labels;

/// A counter family labelled `label` with one counter per outcome in `values`, each
/// held, so [`Outcomes::inc`] never looks a label set up.
#[derive(Debug, Clone)]
pub struct Outcomes {
    family: Family<Labels, Counter>,
    counters: Vec<(&'static str, Counter)>,
}

impl Outcomes {
    /// Counters for `values` of `label`, every one listed (at 0) from the start.
    pub fn new(label: &str, values: &[&'static str]) -> Outcomes {
        let family = Family::<Labels, Counter>::default();
        let counters = values
            .iter()
            .map(|value| {
                let labels = vec![(label.to_owned(), (*value).to_owned())];
                (*value, family.get_or_create(&labels).clone())
            })
            .collect();
        Outcomes { family, counters }
    }

    /// Counts one `value` (one of those given at creation; another is a bug).
    pub fn inc(&self, value: &str) {
        match self.counters.iter().find(|(known, _)| *known == value) {
            Some((_, counter)) => {
                counter.inc();
            }
            None => debug_assert!(false, "outcome {value} was not declared"),
        }
    }

    /// The family, for registering.
    pub fn family(&self) -> Family<Labels, Counter> {
        self.family.clone()
    }
}
