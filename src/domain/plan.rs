//! A deployment as a plan: the steps a strategy chose for it, stored with the
//! deployment and walked by the driver. The names of the steps, as people,
//! metrics and tests see them, come from here and nowhere else.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::deployment::Colour;

/// How a deployment replaces a service's replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Start N replicas of the idle colour, switch all at once, stop the N old.
    #[default]
    BlueGreen,
    /// Replace replicas in batches within `max_surge` and `max_unavailable`.
    Rolling,
    /// Start the new replicas beside the old, give them a growing, sticky
    /// share of users step by step while comparing them with the old ones,
    /// then switch all traffic (or abort).
    Canary,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::BlueGreen => "blue-green",
            Strategy::Rolling => "rolling",
            Strategy::Canary => "canary",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "blue-green" => Ok(Strategy::BlueGreen),
            "rolling" => Ok(Strategy::Rolling),
            "canary" => Ok(Strategy::Canary),
            _ => Err(format!(
                "unknown strategy {s:?} (blue-green, rolling or canary)"
            )),
        }
    }
}

/// A place for a new replica: `<service>-<colour>-<index>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Slot {
    pub colour: Colour,
    pub index: u32,
}

impl Slot {
    pub fn name(self, service: &str) -> String {
        format!("{service}-{}-{}", self.colour, self.index)
    }
}

/// One step of a plan. Steps that touch replicas name them: new ones by slot,
/// old ones by their names (as the routing and the runtime know them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// Decide the exact digest; skip a digest that is already live.
    Resolving,
    /// Bring the image to this host (a digest already here is not pulled).
    Pulling,
    /// Run the release command once in a one-off container of the new image.
    Releasing,
    /// Start new replicas (without restarts until they pass their gate).
    Starting { batch: u32, slots: Vec<Slot> },
    /// Wait until each new replica is healthy on its own address.
    HealthGate { batch: u32, slots: Vec<Slot> },
    /// Run the `pre_switch` hook, given the new replicas' addresses.
    PreSwitch { batch: u32, slots: Vec<Slot> },
    /// Render the routing with `add` in and `remove` out, test, reload.
    Switching {
        batch: u32,
        add: Vec<Slot>,
        remove: Vec<String>,
    },
    /// Prove through nginx that the reload took and each new backend answers.
    Verifying { batch: u32, slots: Vec<Slot> },
    /// Watch the new colour while the old one still runs (blue-green).
    Soaking,
    /// Wait for the nginx workers that could still route to removed backends.
    Draining { batch: u32 },
    /// Stop replicas nginx no longer routes to.
    StoppingOld { batch: u32, replicas: Vec<String> },
    /// Watch the batch's new replicas before the next batch (rolling).
    Monitoring { batch: u32, slots: Vec<Slot> },
    /// Remove this service's images beyond `keep_images`.
    Pruning,
    /// Canary step `stage` (from 1): route `percent`% of users to the new
    /// replicas (one reload), prove both groups answer, then bake: compare
    /// the new with the old until they pass, fail or prove nothing.
    Canary { stage: u32, percent: u32 },
    /// Run the `post_deploy` hook after success (its failure is noted only).
    PostDeploy,
    /// Run the `on_failure` hook after a failure and its way back.
    OnFailure,
}

/// Every step name, in the order a deployment meets them.
pub const STEP_NAMES: [&str; 16] = [
    "resolving",
    "pulling",
    "releasing",
    "starting",
    "health_gate",
    "pre_switch",
    "canary",
    "switching",
    "verifying",
    "soaking",
    "draining",
    "stopping_old",
    "monitoring",
    "pruning",
    "post_deploy",
    "on_failure",
];

/// Steps a plan has only when the service asks for them (a release command,
/// hooks) or a strategy needs them (a soak, a rolling monitor, a canary).
pub const OPTIONAL_STEPS: [&str; 7] = [
    "releasing",
    "pre_switch",
    "canary",
    "soaking",
    "monitoring",
    "post_deploy",
    "on_failure",
];

/// What a failed deployment's kept output is, by the step that failed: the
/// release command's, a hook's, or else the new container's log.
pub fn output_title(failed_step: Option<&str>) -> &'static str {
    match failed_step {
        Some("releasing") => "Last lines of the release command's output",
        Some("pre_switch") => "Last lines of the pre_switch hook's output",
        _ => "Last lines of the new container's log",
    }
}

impl Step {
    pub fn name(&self) -> &'static str {
        match self {
            Step::Resolving => STEP_NAMES[0],
            Step::Pulling => STEP_NAMES[1],
            Step::Releasing => STEP_NAMES[2],
            Step::Starting { .. } => STEP_NAMES[3],
            Step::HealthGate { .. } => STEP_NAMES[4],
            Step::PreSwitch { .. } => STEP_NAMES[5],
            Step::Canary { .. } => STEP_NAMES[6],
            Step::Switching { .. } => STEP_NAMES[7],
            Step::Verifying { .. } => STEP_NAMES[8],
            Step::Soaking => STEP_NAMES[9],
            Step::Draining { .. } => STEP_NAMES[10],
            Step::StoppingOld { .. } => STEP_NAMES[11],
            Step::Monitoring { .. } => STEP_NAMES[12],
            Step::Pruning => STEP_NAMES[13],
            Step::PostDeploy => STEP_NAMES[14],
            Step::OnFailure => STEP_NAMES[15],
        }
    }

    /// The batch of a rolling update this step belongs to (0: none).
    pub fn batch(&self) -> u32 {
        match self {
            Step::Starting { batch, .. }
            | Step::HealthGate { batch, .. }
            | Step::PreSwitch { batch, .. }
            | Step::Switching { batch, .. }
            | Step::Verifying { batch, .. }
            | Step::Draining { batch }
            | Step::StoppingOld { batch, .. }
            | Step::Monitoring { batch, .. } => *batch,
            Step::Canary { stage, .. } => *stage,
            _ => 0,
        }
    }

    /// The replicas this step acts on, by name, for history and the page.
    pub fn replicas(&self, service: &str) -> Vec<String> {
        let names = |slots: &[Slot]| slots.iter().map(|s| s.name(service)).collect();
        match self {
            Step::Starting { slots, .. }
            | Step::HealthGate { slots, .. }
            | Step::PreSwitch { slots, .. }
            | Step::Verifying { slots, .. }
            | Step::Monitoring { slots, .. } => names(slots),
            Step::Switching { add, remove, .. } => {
                let mut out: Vec<String> = names(add);
                out.extend(remove.iter().map(|r| format!("-{r}")));
                out
            }
            Step::StoppingOld { replicas, .. } => replicas.clone(),
            _ => Vec::new(),
        }
    }

    /// Whether `rollout.deadline` may cut this step off (until the
    /// deployment's first switch): the steps that can be undone by removing
    /// what they made. A release and a hook are bounded by their own
    /// timeouts: cut off midway, neither could be cleaned up.
    pub fn cut_by_deadline(&self) -> bool {
        matches!(
            self,
            Step::Resolving | Step::Pulling | Step::Starting { .. } | Step::HealthGate { .. }
        )
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_stored_as_tagged_json_and_named_from_one_list() {
        let step = Step::Switching {
            batch: 2,
            add: vec![Slot {
                colour: Colour::Green,
                index: 3,
            }],
            remove: vec!["web-blue-3".into()],
        };
        let json = serde_json::to_string(&step).unwrap();
        assert_eq!(
            json,
            r#"{"step":"switching","batch":2,"add":[{"colour":"green","index":3}],"remove":["web-blue-3"]}"#
        );
        assert_eq!(serde_json::from_str::<Step>(&json).unwrap(), step);
        assert_eq!(step.name(), "switching");
        assert_eq!(step.replicas("web"), ["web-green-3", "-web-blue-3"]);
        assert_eq!(step.batch(), 2);
        assert!(STEP_NAMES.contains(&Step::Pruning.name()));
    }

    #[test]
    fn strategies_read_as_the_config_writes_them() {
        assert_eq!("rolling".parse::<Strategy>().unwrap(), Strategy::Rolling);
        assert_eq!(Strategy::BlueGreen.to_string(), "blue-green");
        assert_eq!("canary".parse::<Strategy>().unwrap(), Strategy::Canary);
        assert!("canary-ish".parse::<Strategy>().is_err());
        let step = Step::Canary {
            stage: 2,
            percent: 25,
        };
        let json = serde_json::to_string(&step).unwrap();
        assert_eq!(json, r#"{"step":"canary","stage":2,"percent":25}"#);
        assert_eq!(step.batch(), 2);
    }
}
