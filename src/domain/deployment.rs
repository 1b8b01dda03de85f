//! A deployment's life as data: where it is (its state: queued, running,
//! unwinding, or how it ended), who asked for it, and how a failure is
//! classified. The step it is at is a [`super::plan::Step`]; it is not a state.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where a deployment is: waiting, at work, undoing its work, or how it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Recorded and queued; a worker has not claimed it.
    Received,
    /// A worker walks its plan.
    Running,
    /// It failed after changing something and puts things back as they were.
    Unwinding,
    Succeeded,
    Failed,
    /// It failed after nginx routed to the new version, and the old version
    /// serves again.
    RolledBack,
    /// A newer push replaced it while it was queued.
    Superseded,
    /// The requested digest was already live: nothing to do.
    AlreadyLive,
    /// greenlight stopped while it ran; cleaned up and re-run on the next start.
    Interrupted,
    /// Refused: the image is older than the live one (a late or replayed webhook).
    Stale,
    /// A rolling update held where it failed (`failure_action = "pause"`): the
    /// replicas already replaced keep serving next to the old ones.
    Paused,
}

impl State {
    pub const ALL: [State; 11] = [
        State::Received,
        State::Running,
        State::Unwinding,
        State::Succeeded,
        State::Failed,
        State::RolledBack,
        State::Superseded,
        State::AlreadyLive,
        State::Interrupted,
        State::Stale,
        State::Paused,
    ];

    /// The states a deployment ends in: its outcome.
    pub const OUTCOMES: [State; 8] = [
        State::Succeeded,
        State::Failed,
        State::RolledBack,
        State::Superseded,
        State::AlreadyLive,
        State::Interrupted,
        State::Stale,
        State::Paused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Received => "received",
            State::Running => "running",
            State::Unwinding => "unwinding",
            State::Succeeded => "succeeded",
            State::Failed => "failed",
            State::RolledBack => "rolled_back",
            State::Superseded => "superseded",
            State::AlreadyLive => "already_live",
            State::Interrupted => "interrupted",
            State::Stale => "stale",
            State::Paused => "paused",
        }
    }

    pub fn is_terminal(self) -> bool {
        !matches!(self, State::Received | State::Running | State::Unwinding)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for State {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        State::ALL
            .iter()
            .copied()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown deployment state {s:?}"))
    }
}

/// Who asked for a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// `greenlight deploy`, `rollback` or `scale`, or the status page.
    Operator,
    Github,
    Dockerhub,
    Registry,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Operator => "operator",
            Trigger::Github => "github",
            Trigger::Dockerhub => "dockerhub",
            Trigger::Registry => "registry",
        }
    }

    /// An operator's request is obeyed as given: no tag policy, no
    /// out-of-order guard (a rollback deploys an older image on purpose).
    pub fn is_operator(self) -> bool {
        self == Trigger::Operator
    }
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Trigger {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            Trigger::Operator,
            Trigger::Github,
            Trigger::Dockerhub,
            Trigger::Registry,
        ]
        .into_iter()
        .find(|t| t.as_str() == s)
        .ok_or_else(|| format!("unknown trigger {s:?}"))
    }
}

/// Why a step failed, as a strategy must tell it apart: a replica that is not
/// healthy is the new version's fault; a registry that refuses is the
/// request's; a registry that is down may pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// A new replica failed its health gate, exited, or turned unhealthy.
    Unhealthy,
    /// A new replica answered errors through nginx while it was watched.
    Errors,
    /// The registry refused: unknown tag or digest, refused credentials.
    RegistryRefused,
    /// The registry could not be reached or kept failing.
    RegistryUnavailable,
    /// The container engine refused or did not answer.
    Runtime,
    /// nginx could not be changed, or the change could not be proven.
    Proxy,
    /// A step ran past `rollout.deadline`.
    Deadline,
    /// The image is older than the live one.
    Stale,
    /// An operator asked for it (a rollback during the soak).
    Operator,
    /// The state database failed.
    Store,
    /// greenlight stopped while the deployment ran.
    Interrupted,
    /// A request greenlight cannot carry out (no image, a bad tag).
    Invalid,
    /// The release command exited non-zero or ran past its timeout.
    Release,
    /// The `pre_switch` hook exited non-zero or ran past its timeout.
    Hook,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Unhealthy => "unhealthy",
            FailureKind::Errors => "errors",
            FailureKind::RegistryRefused => "registry_refused",
            FailureKind::RegistryUnavailable => "registry_unavailable",
            FailureKind::Runtime => "runtime",
            FailureKind::Proxy => "proxy",
            FailureKind::Deadline => "deadline",
            FailureKind::Stale => "stale",
            FailureKind::Operator => "operator",
            FailureKind::Store => "store",
            FailureKind::Interrupted => "interrupted",
            FailureKind::Invalid => "invalid",
            FailureKind::Release => "release",
            FailureKind::Hook => "hook",
        }
    }
}

impl FromStr for FailureKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        serde_json::from_value(serde_json::Value::String(s.into()))
            .map_err(|_| format!("unknown failure kind {s:?}"))
    }
}

/// The two slots of blue-green; a rolling update also names its new replicas
/// by the colour the old ones do not have, so both can run side by side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Colour {
    Blue,
    Green,
}

impl Colour {
    pub fn other(self) -> Colour {
        match self {
            Colour::Blue => Colour::Green,
            Colour::Green => Colour::Blue,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Colour::Blue => "blue",
            Colour::Green => "green",
        }
    }
}

impl fmt::Display for Colour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Colour {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "blue" => Ok(Colour::Blue),
            "green" => Ok(Colour::Green),
            _ => Err(format!("unknown colour {s:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_through_their_names() {
        for s in State::ALL {
            assert_eq!(s.as_str().parse::<State>().unwrap(), s);
        }
        assert!("bogus".parse::<State>().is_err());
    }

    #[test]
    fn the_outcomes_are_exactly_the_terminal_states() {
        let terminal: Vec<_> = State::ALL.into_iter().filter(|s| s.is_terminal()).collect();
        assert_eq!(terminal, State::OUTCOMES);
    }

    #[test]
    fn triggers_and_failure_kinds_round_trip() {
        for t in ["operator", "github", "dockerhub", "registry"] {
            assert_eq!(t.parse::<Trigger>().unwrap().as_str(), t);
        }
        for k in [FailureKind::Unhealthy, FailureKind::RegistryRefused] {
            assert_eq!(k.as_str().parse::<FailureKind>().unwrap(), k);
        }
        assert!("operator; drop".parse::<Trigger>().is_err());
    }

    #[test]
    fn colours_alternate() {
        assert_eq!(Colour::Blue.other(), Colour::Green);
        assert_eq!(Colour::Green.other().other(), Colour::Green);
    }
}
