//! The deployment state machine as data: one enum of states and the happy-path
//! successor of each. The worker persists a transition before acting on it, so a
//! restart knows exactly which step was interrupted.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Received,
    Resolving,
    Pulling,
    Starting,
    HealthGate,
    Switching,
    Verifying,
    /// Watching the new colour after the switch while the old one still runs.
    Soaking,
    Draining,
    StoppingOld,
    Pruning,
    Succeeded,
    Failed,
    RolledBack,
    Superseded,
    /// The requested digest was already live: nothing to do.
    AlreadyLive,
    /// greenlight stopped while the deployment ran; cleaned up on the next start.
    Interrupted,
    /// Refused: the image is older than the live one (a late or replayed webhook).
    Stale,
}

pub const ALL: [State; 18] = [
    State::Received,
    State::Resolving,
    State::Pulling,
    State::Starting,
    State::HealthGate,
    State::Switching,
    State::Verifying,
    State::Soaking,
    State::Draining,
    State::StoppingOld,
    State::Pruning,
    State::Succeeded,
    State::Failed,
    State::RolledBack,
    State::Superseded,
    State::AlreadyLive,
    State::Interrupted,
    State::Stale,
];

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Received => "received",
            State::Resolving => "resolving",
            State::Pulling => "pulling",
            State::Starting => "starting",
            State::HealthGate => "health_gate",
            State::Switching => "switching",
            State::Verifying => "verifying",
            State::Soaking => "soaking",
            State::Draining => "draining",
            State::StoppingOld => "stopping_old",
            State::Pruning => "pruning",
            State::Succeeded => "succeeded",
            State::Failed => "failed",
            State::RolledBack => "rolled_back",
            State::Superseded => "superseded",
            State::AlreadyLive => "already_live",
            State::Interrupted => "interrupted",
            State::Stale => "stale",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            State::Succeeded
                | State::Failed
                | State::RolledBack
                | State::Superseded
                | State::AlreadyLive
                | State::Interrupted
                | State::Stale
        )
    }

    /// The next step when this one succeeds.
    pub fn next(self) -> State {
        match self {
            State::Received => State::Resolving,
            State::Resolving => State::Pulling,
            State::Pulling => State::Starting,
            State::Starting => State::HealthGate,
            State::HealthGate => State::Switching,
            State::Switching => State::Verifying,
            State::Verifying => State::Soaking,
            State::Soaking => State::Draining,
            State::Draining => State::StoppingOld,
            State::StoppingOld => State::Pruning,
            State::Pruning => State::Succeeded,
            terminal => terminal,
        }
    }

    /// The steps `rollout.deadline` may cut off: those before nginx is touched.
    pub fn cut_by_deadline(self) -> bool {
        matches!(
            self,
            State::Resolving | State::Pulling | State::Starting | State::HealthGate
        )
    }

    /// Whether nginx may already route to the new colour in this state: from here on
    /// a failure must switch back rather than just remove the new container.
    pub fn past_switch(self) -> bool {
        matches!(
            self,
            State::Verifying
                | State::Soaking
                | State::Draining
                | State::StoppingOld
                | State::Pruning
        )
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
        ALL.iter()
            .copied()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown deployment state {s:?}"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
    fn the_happy_path_walks_every_step_to_succeeded() {
        let mut s = State::Received;
        let mut seen = vec![s];
        while !s.is_terminal() {
            s = s.next();
            seen.push(s);
        }
        let names: Vec<_> = seen.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            names.join(" "),
            "received resolving pulling starting health_gate switching verifying soaking draining stopping_old pruning succeeded"
        );
    }

    #[test]
    fn states_round_trip_through_their_names() {
        for s in ALL {
            assert_eq!(s.as_str().parse::<State>().unwrap(), s);
        }
        assert!("bogus".parse::<State>().is_err());
    }

    #[test]
    fn colours_alternate() {
        assert_eq!(Colour::Blue.other(), Colour::Green);
        assert_eq!(Colour::Green.other().other(), Colour::Green);
    }
}
