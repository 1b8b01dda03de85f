//! Strategies turn a deployment into a plan: the steps that replace what nginx
//! routes to now with `replicas` replicas of the target digest. Pure functions
//! of the current routing and the rollout settings, so every plan can be
//! checked against the promises it makes (capacity, surge, reloads) without
//! running anything.

use std::collections::BTreeSet;

use crate::domain::deployment::Colour;
use crate::domain::plan::{Slot, Step, Strategy};
use crate::domain::routing::{Backend, Routing};

/// What a plan asks of a rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    pub strategy: Strategy,
    pub replicas: u32,
    /// Rolling: how many replicas above `replicas` may run at once.
    pub max_surge: u32,
    /// Rolling: how many below `replicas` may be out of the routing at once.
    pub max_unavailable: u32,
    /// Blue-green: watch the new colour after the switch while the old runs.
    pub soak: bool,
    /// Canary: the new version's share of users at each step, growing.
    pub canary_steps: Vec<u32>,
    /// Run the service's release command after the pull.
    pub release: bool,
    /// Run the service's `pre_switch` hook before each switch that adds replicas.
    pub pre_switch: bool,
}

/// A plan and the colour its new replicas take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub colour: Colour,
    pub steps: Vec<Step>,
}

/// The plan that takes `current` to `shape.replicas` replicas of `target`
/// (a digest; `None` before it is resolved: then nothing counts as done).
pub fn plan(service: &str, current: &Routing, target: Option<&str>, shape: Shape) -> Plan {
    let (release, pre_switch) = (shape.release, shape.pre_switch);
    let mut plan = match shape.strategy {
        Strategy::BlueGreen => blue_green(service, current, shape),
        Strategy::Rolling => rolling(service, current, target, shape),
        Strategy::Canary => canary(service, current, target, shape),
    };
    if release {
        // After the pull, before any replica of the new image starts.
        plan.steps.insert(2, Step::Releasing);
    }
    if pre_switch {
        let mut steps = Vec::with_capacity(plan.steps.len() + 1);
        // A canary's first share is where users first meet the new replicas
        // (its promotion adds none): those the plan gated.
        let mut gated: Vec<Slot> = Vec::new();
        for step in plan.steps {
            match &step {
                Step::HealthGate { slots, .. } => gated.extend(slots.iter().copied()),
                Step::Switching { batch, add, .. } if !add.is_empty() => {
                    steps.push(Step::PreSwitch {
                        batch: *batch,
                        slots: add.clone(),
                    });
                }
                Step::Canary { stage: 1, .. } if !gated.is_empty() => {
                    steps.push(Step::PreSwitch {
                        batch: 0,
                        slots: gated.clone(),
                    });
                }
                _ => {}
            }
            steps.push(step);
        }
        plan.steps = steps;
    }
    plan
}

/// Start all new replicas beside the old ones, gate them, then give them a
/// growing share of users step by step (one reload each; the analysis
/// decides in each step), and promote: switch everyone to them in one
/// reload, drain, stop the old ones. With nothing else live (a first
/// deployment, or a redeploy of the live digest) there is nothing to compare
/// with: blue-green. A re-run after an interruption keeps the new replicas
/// already routed and resumes at the step its split records.
fn canary(service: &str, current: &Routing, target: Option<&str>, shape: Shape) -> Plan {
    let (done, stable): (Vec<&Backend>, Vec<&Backend>) = current
        .backends
        .iter()
        .partition(|b| target.is_some() && Some(b.digest.as_str()) == target);
    if stable.is_empty() || shape.canary_steps.is_empty() {
        return blue_green(service, current, shape);
    }
    let stable_only = current.next(stable.iter().map(|b| (*b).clone()).collect());
    let colour = done
        .first()
        .map(|b| b.colour)
        .unwrap_or_else(|| new_colour(&stable_only));
    let done = &done[..done.len().min(shape.replicas as usize)];
    let need = shape.replicas - done.len() as u32;
    let mut taken = BTreeSet::new();
    let slots = free_slots(service, current, colour, &mut taken, need);
    let mut all: Vec<Slot> = done
        .iter()
        .filter_map(|b| {
            let index = b.name.rsplit('-').next()?.parse().ok()?;
            Some(Slot {
                colour: b.colour,
                index,
            })
        })
        .collect();
    all.extend(slots.iter().copied());
    let reached = match (&current.split, done.is_empty()) {
        (Some(split), false) => split.percent,
        _ => 0,
    };
    let old = names(&stable);
    let mut steps = vec![Step::Resolving, Step::Pulling];
    if need > 0 {
        steps.extend([
            Step::Starting {
                batch: 0,
                slots: slots.clone(),
            },
            Step::HealthGate { batch: 0, slots },
        ]);
    }
    for (i, percent) in shape.canary_steps.iter().enumerate() {
        if *percent >= reached {
            steps.push(Step::Canary {
                stage: i as u32 + 1,
                percent: *percent,
            });
        }
    }
    // The new replicas are routed already: the promotion takes the old out.
    steps.extend(switch_all(Vec::new(), all, old, false));
    Plan { colour, steps }
}

/// The colour new replicas take: the one the routed replicas do not have (or
/// have fewest of, after a paused rolling update), blue for the first.
fn new_colour(current: &Routing) -> Colour {
    let count = |c: Colour| current.backends.iter().filter(|b| b.colour == c).count();
    match current.backends.first() {
        None => Colour::Blue,
        Some(first) if count(first.colour.other()) == 0 => first.colour.other(),
        Some(_) if count(Colour::Green) < count(Colour::Blue) => Colour::Green,
        Some(_) => Colour::Blue,
    }
}

/// `n` slots of `colour` whose names no routed replica has, lowest first.
fn free_slots(
    service: &str,
    current: &Routing,
    colour: Colour,
    taken: &mut BTreeSet<String>,
    n: u32,
) -> Vec<Slot> {
    taken.extend(current.backends.iter().map(|b| b.name.clone()));
    let mut out = Vec::new();
    let mut index = 1;
    while out.len() < n as usize {
        let slot = Slot { colour, index };
        if taken.insert(slot.name(service)) {
            out.push(slot);
        }
        index += 1;
    }
    out
}

fn names(backends: &[&Backend]) -> Vec<String> {
    backends.iter().map(|b| b.name.clone()).collect()
}

/// Start all new replicas of the idle colour, gate each, switch at once,
/// prove each, (soak,) drain, stop all the old ones.
fn blue_green(service: &str, current: &Routing, shape: Shape) -> Plan {
    let colour = new_colour(current);
    let slots = free_slots(
        service,
        current,
        colour,
        &mut BTreeSet::new(),
        shape.replicas,
    );
    let old = names(&current.backends.iter().collect::<Vec<_>>());
    let mut steps = vec![
        Step::Resolving,
        Step::Pulling,
        Step::Starting {
            batch: 0,
            slots: slots.clone(),
        },
        Step::HealthGate {
            batch: 0,
            slots: slots.clone(),
        },
    ];
    let soak = shape.soak && !old.is_empty();
    steps.extend(switch_all(slots.clone(), slots, old, soak));
    Plan { colour, steps }
}

/// One reload from `old` to the new replicas (`add` joins the routing then;
/// `verify` are proved), [a soak,] then the old ones drained and stopped.
fn switch_all(add: Vec<Slot>, verify: Vec<Slot>, old: Vec<String>, soak: bool) -> Vec<Step> {
    let mut steps = vec![
        Step::Switching {
            batch: 0,
            add,
            remove: old.clone(),
        },
        Step::Verifying {
            batch: 0,
            slots: verify,
        },
    ];
    if soak {
        steps.push(Step::Soaking);
    }
    steps.extend([
        Step::Draining { batch: 0 },
        Step::StoppingOld {
            batch: 0,
            replicas: old,
        },
        Step::Pruning,
    ]);
    steps
}

/// Replace replicas in batches of `max_surge + max_unavailable`: each batch
/// starts its new replicas, gates them, routes them in and its old ones out in
/// one reload, proves the new ones, drains, stops the old ones and watches the
/// new ones. Running replicas never exceed `replicas + max_surge`, routed ones
/// never fall below `replicas - max_unavailable`. Old replicas that must stop
/// before a batch can start (when a batch is larger than the surge) leave the
/// routing in the previous batch's reload, so N replicas take about N/batch
/// reloads, not twice that.
fn rolling(service: &str, current: &Routing, target: Option<&str>, shape: Shape) -> Plan {
    let n = shape.replicas;
    let per_batch = (shape.max_surge + shape.max_unavailable).max(1);
    let done: Vec<&Backend> = current
        .backends
        .iter()
        .filter(|b| Some(b.digest.as_str()) == target)
        .take(n as usize)
        .collect();
    let done_names = names(&done);
    let mut olds: Vec<String> = current
        .backends
        .iter()
        .map(|b| b.name.clone())
        .filter(|name| !done_names.contains(name))
        .collect();
    let colour = done
        .first()
        .map(|b| b.colour)
        .unwrap_or_else(|| new_colour(current));
    let mut need = n - done.len() as u32;
    let mut running = current.backends.len() as u32;
    let mut taken = BTreeSet::new();
    let mut steps = vec![Step::Resolving, Step::Pulling];
    let mut batch = 0;
    while need > 0 || !olds.is_empty() {
        batch += 1;
        let k = per_batch.min(need);
        let j = if need == 0 {
            olds.len() as u32
        } else {
            per_batch.min(olds.len() as u32)
        };
        // Old replicas that must stop before this batch starts, to stay within
        // the surge.
        let u = (running + k).saturating_sub(n + shape.max_surge).min(j);
        if u > 0 {
            let early: Vec<String> = olds.drain(..u as usize).collect();
            if !fold_into_previous_batch(&mut steps, batch - 1, &early) {
                steps.extend([
                    Step::Switching {
                        batch,
                        add: Vec::new(),
                        remove: early.clone(),
                    },
                    Step::Verifying {
                        batch,
                        slots: Vec::new(),
                    },
                    Step::Draining { batch },
                    Step::StoppingOld {
                        batch,
                        replicas: early,
                    },
                ]);
            }
            running -= u;
        }
        let slots = free_slots(service, current, colour, &mut taken, k);
        if k > 0 {
            steps.extend([
                Step::Starting {
                    batch,
                    slots: slots.clone(),
                },
                Step::HealthGate {
                    batch,
                    slots: slots.clone(),
                },
            ]);
            running += k;
        }
        let rest: Vec<String> = olds.drain(..(j - u) as usize).collect();
        steps.extend([
            Step::Switching {
                batch,
                add: slots.clone(),
                remove: rest.clone(),
            },
            Step::Verifying {
                batch,
                slots: slots.clone(),
            },
            Step::Draining { batch },
        ]);
        if !rest.is_empty() {
            running -= rest.len() as u32;
            steps.push(Step::StoppingOld {
                batch,
                replicas: rest,
            });
        }
        if k > 0 {
            steps.push(Step::Monitoring { batch, slots });
        }
        need -= k;
    }
    steps.push(Step::Pruning);
    Plan { colour, steps }
}

/// Adds `early` to the routing change and the stop of batch `batch`, if that
/// batch exists. Returns whether it did.
fn fold_into_previous_batch(steps: &mut Vec<Step>, batch: u32, early: &[String]) -> bool {
    if batch == 0 {
        return false;
    }
    // The batch's last routing change: the one that brings its new replicas in.
    let Some(switch) = steps
        .iter()
        .rposition(|s| matches!(s, Step::Switching { batch: b, .. } if *b == batch))
    else {
        return false;
    };
    if let Step::Switching { remove, .. } = &mut steps[switch] {
        remove.extend(early.iter().cloned());
    }
    // Its stop after that change, or a new one right after its drain.
    let after = &mut steps[switch..];
    if let Some(Step::StoppingOld { replicas, .. }) = after
        .iter_mut()
        .find(|s| matches!(s, Step::StoppingOld { batch: b, .. } if *b == batch))
    {
        replicas.extend(early.iter().cloned());
        return true;
    }
    let drain = switch
        + steps[switch..]
            .iter()
            .position(|s| matches!(s, Step::Draining { batch: b } if *b == batch))
            .expect("every switching step is followed by its drain");
    steps.insert(
        drain + 1,
        Step::StoppingOld {
            batch,
            replicas: early.to_vec(),
        },
    );
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routing(n: u32, colour: Colour, digest: &str) -> Routing {
        Routing {
            service: "web".into(),
            generation: 3,
            split: None,
            backends: (1..=n)
                .map(|i| Backend::example(&format!("web-{colour}-{i}"), i, colour, digest))
                .collect(),
        }
    }

    fn shape(strategy: Strategy, replicas: u32, max_surge: u32, max_unavailable: u32) -> Shape {
        Shape {
            strategy,
            replicas,
            max_surge,
            max_unavailable,
            soak: false,
            canary_steps: vec![5, 25, 50],
            release: false,
            pre_switch: false,
        }
    }

    #[test]
    fn a_canary_starts_beside_the_old_steps_up_and_promotes_in_one_reload() {
        let current = routing(2, Colour::Blue, "sha256:old");
        let plan_ = plan(
            "web",
            &current,
            Some("sha256:new"),
            shape(Strategy::Canary, 2, 0, 0),
        );
        let plan = &plan_;
        assert_eq!(plan.colour, Colour::Green);
        assert_eq!(
            names(plan),
            [
                "resolving",
                "pulling",
                "starting",
                "health_gate",
                "canary",
                "canary",
                "canary",
                "switching",
                "verifying",
                "draining",
                "stopping_old",
                "pruning"
            ]
        );
        let stages: Vec<(u32, u32)> = plan
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::Canary { stage, percent } => Some((*stage, *percent)),
                _ => None,
            })
            .collect();
        assert_eq!(stages, [(1, 5), (2, 25), (3, 50)]);
        assert!(plan.steps.contains(&Step::Switching {
            batch: 0,
            add: Vec::new(),
            remove: vec!["web-blue-1".into(), "web-blue-2".into()],
        }));
        // Nothing live to compare with: blue-green.
        let first = super::plan(
            "web",
            &Routing::empty("web"),
            Some("sha256:new"),
            shape(Strategy::Canary, 2, 0, 0),
        );
        assert!(!names(&first).contains(&"canary"));
    }

    #[test]
    fn a_canary_cut_short_resumes_at_its_recorded_step_with_its_replicas() {
        let mut current = routing(2, Colour::Blue, "sha256:old");
        let mut new = routing(2, Colour::Green, "sha256:new").backends;
        for b in &mut new {
            b.role = crate::domain::routing::Role::New;
        }
        current.backends.extend(new);
        current.split = Some(crate::domain::routing::Split {
            percent: 25,
            salt: "s".into(),
            override_cookie: "c".into(),
            allow_cookie: None,
            allow_header: None,
            log: None,
        });
        let plan = plan(
            "web",
            &current,
            Some("sha256:new"),
            shape(Strategy::Canary, 2, 0, 0),
        );
        assert_eq!(
            names(&plan),
            [
                "resolving",
                "pulling",
                "canary",
                "canary",
                "switching",
                "verifying",
                "draining",
                "stopping_old",
                "pruning"
            ]
        );
        assert_eq!(
            plan.steps[2],
            Step::Canary {
                stage: 2,
                percent: 25
            }
        );
        assert_eq!(
            plan.steps[5],
            Step::Verifying {
                batch: 0,
                slots: vec![
                    Slot {
                        colour: Colour::Green,
                        index: 1
                    },
                    Slot {
                        colour: Colour::Green,
                        index: 2
                    }
                ]
            }
        );
    }

    #[test]
    fn a_canary_releases_after_the_pull_and_smoke_tests_before_its_first_share_only() {
        let current = routing(2, Colour::Blue, "sha256:old");
        let mut s = shape(Strategy::Canary, 2, 0, 0);
        s.release = true;
        s.pre_switch = true;
        let plan = plan("web", &current, Some("sha256:new"), s);
        assert_eq!(
            names(&plan),
            [
                "resolving",
                "pulling",
                "releasing",
                "starting",
                "health_gate",
                "pre_switch",
                "canary",
                "canary",
                "canary",
                "switching",
                "verifying",
                "draining",
                "stopping_old",
                "pruning"
            ]
        );
        let green = |index| Slot {
            colour: Colour::Green,
            index,
        };
        assert!(plan.steps.contains(&Step::PreSwitch {
            batch: 0,
            slots: vec![green(1), green(2)],
        }));
    }

    fn names(plan: &Plan) -> Vec<&'static str> {
        plan.steps.iter().map(|s| s.name()).collect()
    }

    /// Walks a plan counting replicas: running never above the surge, routed
    /// never below what unavailability allows, and at the end exactly the
    /// wanted replicas, all new, routed and running. Returns the reloads.
    fn check(current: &Routing, plan: &Plan, n: u32, surge: u32, unavailable: u32) -> u32 {
        let start = current.backends.len() as u32;
        let mut running: BTreeSet<String> =
            current.backends.iter().map(|b| b.name.clone()).collect();
        let mut routed = running.clone();
        let mut reloads = 0;
        let floor = n.saturating_sub(unavailable).min(start);
        for step in &plan.steps {
            match step {
                Step::Starting { slots, .. } => {
                    running.extend(slots.iter().map(|s| s.name("web")));
                    let ceiling = (n + surge).max(start);
                    assert!(
                        running.len() as u32 <= ceiling,
                        "{} running > {ceiling}: {plan:#?}",
                        running.len()
                    );
                }
                Step::Switching { add, remove, .. } => {
                    reloads += 1;
                    for r in remove {
                        assert!(routed.remove(r), "{r} was not routed: {plan:#?}");
                    }
                    for s in add {
                        assert!(running.contains(&s.name("web")));
                        routed.insert(s.name("web"));
                    }
                    assert!(
                        routed.len() as u32 >= floor,
                        "{} routed < {floor}: {plan:#?}",
                        routed.len()
                    );
                }
                Step::StoppingOld { replicas, .. } => {
                    for r in replicas {
                        assert!(!routed.contains(r), "{r} stopped while routed: {plan:#?}");
                        assert!(running.remove(r), "{r} stopped twice: {plan:#?}");
                    }
                }
                _ => {}
            }
        }
        assert_eq!(routed.len() as u32, n, "{plan:#?}");
        assert_eq!(routed, running, "{plan:#?}");
        assert!(routed
            .iter()
            .all(|r| r.starts_with(&format!("web-{}-", plan.colour))));
        reloads
    }

    #[test]
    fn blue_green_starts_all_switches_once_and_stops_all_old() {
        let current = routing(3, Colour::Blue, "sha256:a");
        let plan = plan("web", &current, None, shape(Strategy::BlueGreen, 3, 0, 0));
        assert_eq!(plan.colour, Colour::Green);
        assert_eq!(
            names(&plan),
            [
                "resolving",
                "pulling",
                "starting",
                "health_gate",
                "switching",
                "verifying",
                "draining",
                "stopping_old",
                "pruning"
            ]
        );
        assert_eq!(check(&current, &plan, 3, 3, 0), 1);
        // The first deployment: blue, nothing to soak against.
        let first = super::plan(
            "web",
            &Routing::empty("web"),
            None,
            Shape {
                soak: true,
                ..shape(Strategy::BlueGreen, 1, 0, 0)
            },
        );
        assert_eq!(first.colour, Colour::Blue);
        assert!(!names(&first).contains(&"soaking"));
        let soaked = super::plan(
            "web",
            &current,
            None,
            Shape {
                soak: true,
                ..shape(Strategy::BlueGreen, 3, 0, 0)
            },
        );
        assert!(names(&soaked).contains(&"soaking"));
    }

    #[test]
    fn rolling_one_at_a_time_takes_one_reload_per_replica() {
        let current = routing(3, Colour::Blue, "sha256:a");
        let plan = plan(
            "web",
            &current,
            Some("sha256:b"),
            shape(Strategy::Rolling, 3, 1, 0),
        );
        assert_eq!(check(&current, &plan, 3, 1, 0), 3);
        let batch1: Vec<_> = plan
            .steps
            .iter()
            .filter(|s| s.batch() == 1)
            .map(|s| s.name())
            .collect();
        assert_eq!(
            batch1,
            [
                "starting",
                "health_gate",
                "switching",
                "verifying",
                "draining",
                "stopping_old",
                "monitoring"
            ]
        );
    }

    #[test]
    fn rolling_within_surge_and_unavailability_folds_early_removals() {
        for (n, surge, unavailable, reloads) in
            [(5, 2, 1, 3), (3, 0, 1, 4), (5, 1, 1, 4), (4, 2, 0, 2)]
        {
            let current = routing(n, Colour::Green, "sha256:a");
            let plan = plan(
                "web",
                &current,
                Some("sha256:b"),
                shape(Strategy::Rolling, n, surge, unavailable),
            );
            assert_eq!(
                check(&current, &plan, n, surge, unavailable),
                reloads,
                "{n} {surge} {unavailable}: {plan:#?}"
            );
            assert_eq!(plan.colour, Colour::Blue);
        }
    }

    #[test]
    fn every_rolling_plan_keeps_its_promises() {
        for start in 0..=6 {
            for n in 1..=6 {
                for surge in 0..=3 {
                    for unavailable in 0..=2 {
                        if surge + unavailable == 0 {
                            continue;
                        }
                        let current = routing(start, Colour::Blue, "sha256:a");
                        let plan = plan(
                            "web",
                            &current,
                            Some("sha256:b"),
                            shape(Strategy::Rolling, n, surge, unavailable),
                        );
                        check(&current, &plan, n, surge, unavailable);
                    }
                }
            }
        }
    }

    #[test]
    fn a_resumed_rolling_update_keeps_what_it_already_replaced() {
        // Interrupted after its first batch: one green at the target, two blue.
        let mut current = routing(3, Colour::Blue, "sha256:a");
        current.backends[0].name = "web-green-1".into();
        current.backends[0].colour = Colour::Green;
        current.backends[0].digest = "sha256:b".into();
        let plan = plan(
            "web",
            &current,
            Some("sha256:b"),
            shape(Strategy::Rolling, 3, 1, 0),
        );
        assert_eq!(plan.colour, Colour::Green);
        assert_eq!(check(&current, &plan, 3, 1, 0), 2);
        let started: Vec<_> = plan
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::Starting { slots, .. } => Some(slots[0].name("web")),
                _ => None,
            })
            .collect();
        assert_eq!(started, ["web-green-2", "web-green-3"]);
    }

    #[test]
    fn scaling_down_starts_only_what_is_wanted_and_removes_the_rest() {
        let current = routing(5, Colour::Blue, "sha256:a");
        let plan = plan(
            "web",
            &current,
            Some("sha256:b"),
            shape(Strategy::Rolling, 2, 1, 0),
        );
        check(&current, &plan, 2, 1, 0);
        let started: usize = plan
            .steps
            .iter()
            .map(|s| match s {
                Step::Starting { slots, .. } => slots.len(),
                _ => 0,
            })
            .sum();
        assert_eq!(started, 2);
        let last_switch = plan
            .steps
            .iter()
            .rev()
            .find(|s| s.name() == "switching")
            .unwrap();
        assert!(
            matches!(last_switch, Step::Switching { add, .. } if add.is_empty()),
            "the last batch only removes: {plan:#?}"
        );
    }
}
