//! One deployment, as a short story: claim it with the plan its strategy
//! makes, walk the plan step by step (each step recorded before it runs), and
//! when a step fails, unwind: remove what was started, switch nginx back, or
//! roll the replicas already replaced back to the previous version.

use std::time::Instant;

use tracing::{info, warn, Instrument};

use super::steps::{Run, Stop};
use super::strategy::{self, Shape};
use super::Inner;
use crate::config::{FailureAction, ServiceConfig};
use crate::display;
use crate::domain::deployment::{FailureKind, State};
use crate::domain::plan::{Step, Strategy};
use crate::domain::routing::Routing;
use crate::store::{Deployment, Failure};

pub(crate) async fn run(inner: &Inner, id: i64) {
    let deployment = match inner.store.deployment(id) {
        Ok(Some(d)) => d,
        Ok(None) => return warn!(deployment = id, "queued deployment not found"),
        Err(e) => return warn!(deployment = id, error = %e, "cannot load queued deployment"),
    };
    if deployment.state != State::Received {
        return;
    }
    let span = tracing::info_span!("deploy", service = %deployment.service, deployment = id);
    let service = deployment.service.clone();
    let claimed = if super::watch::is_resync(&deployment) {
        run_resync(inner, deployment).instrument(span).await
    } else {
        run_deployment(inner, deployment).instrument(span).await
    };
    inner.canaries.close(&service, id);
    if claimed {
        // Exactly one outcome message per deployment, whatever ended it.
        inner.notifier.finished(id);
    }
}

/// What the service's config asks of a deployment that starts from `current`
/// (with the strategy asked for it alone, if one was).
pub(crate) fn shape(
    service: &ServiceConfig,
    current: &Routing,
    strategy: Option<Strategy>,
) -> Shape {
    let r = &service.rollout;
    Shape {
        strategy: strategy.unwrap_or(r.strategy),
        replicas: service.replicas,
        max_surge: r.max_surge,
        max_unavailable: r.max_unavailable,
        // A first deployment has nothing to go back to: no soak.
        soak: !r.soak.is_zero() && !current.backends.is_empty(),
        canary_steps: service.canary.steps.clone(),
        release: service.release.is_some(),
        pre_switch: service.hooks.pre_switch.is_some(),
    }
}

/// Returns false when the deployment was not claimed (superseded meanwhile).
async fn run_deployment(inner: &Inner, deployment: Deployment) -> bool {
    let id = deployment.id;
    // The config as it is now, kept to the end: a reload meanwhile does not
    // change a deployment in progress.
    let config = inner.config.get();
    let Some(service) = config.service(&deployment.service) else {
        return false;
    };
    let Some(current) = current_or_refuse(inner, service, &deployment) else {
        return true;
    };
    let shape = shape(service, &current, deployment.strategy);
    let plan = strategy::plan(&service.name, &current, None, shape.clone());
    match inner
        .store
        .claim(id, shape.strategy, shape.replicas, &plan.steps)
    {
        Ok(true) => inner.notifier.started(id),
        Ok(false) => {
            info!("superseded before it started");
            return false;
        }
        Err(e) => {
            warn!(error = %e, "cannot claim the deployment");
            return false;
        }
    }
    let started = Instant::now();
    info!(
        tag = deployment.requested_tag.as_deref().unwrap_or("-"),
        digest = deployment.requested_digest.as_deref().unwrap_or("-"),
        trigger = %deployment.trigger,
        strategy = %shape.strategy,
        replicas = shape.replicas,
        "Deploying"
    );
    let mut run = Run::new(inner, &config, service, deployment, current, shape, plan);
    let deadline = tokio::time::Instant::now() + service.rollout.deadline;
    let mut previous = "received";
    let mut step_started = Instant::now();
    let mut switched = false;
    let mut i = 0;
    while i < run.plan.steps.len() {
        let step = run.plan.steps[i].clone();
        if let Err(e) = inner.store.begin_step(id, &step, &service.name) {
            warn!(error = %e, "cannot record the step; abandoning the deployment");
            run.abandon().await;
            return true;
        }
        info!(
            step_ms = step_started.elapsed().as_millis() as u64,
            "{previous} -> {step}"
        );
        previous = step.name();
        step_started = Instant::now();
        pause_if_asked(&step).await;
        // Before nginx is first touched the deadline cuts a step off and the
        // deployment unwinds. From the first switch on, every step is bounded
        // on its own (nginx calls, verify_timeout, the soak, the monitor,
        // drain_timeout, stop_grace, the Docker timeout, the health gate's
        // deadline): cutting one in the middle could leave nginx half
        // switched, and a long rolling update's later batches are not late.
        if matches!(step, Step::Switching { .. }) {
            switched = true;
        }
        let outcome = if step.cut_by_deadline() && !switched {
            match tokio::time::timeout_at(deadline, run.step(&step)).await {
                Ok(outcome) => outcome,
                Err(_) => Err(Stop::Fail(Failure::new(
                    FailureKind::Deadline,
                    format!(
                        "cut off at {step}: the deployment ran past its deadline of {} (rollout.deadline)",
                        display::span(service.rollout.deadline)
                    ),
                ))),
            }
        } else {
            run.step(&step).await
        };
        match outcome {
            Ok(()) => i += 1,
            Err(Stop::Done(end)) => {
                run.record(inner.store.finish(id, end, None));
                info!("{step} -> {end}");
                return true;
            }
            Err(Stop::Fail(mut failure)) => {
                failure.step = Some(step.name().to_string());
                unwind(&mut run, failure).await;
                return true;
            }
        }
    }
    post_deploy(&run).await;
    run.record(inner.store.finish(id, State::Succeeded, None));
    info!(
        step_ms = step_started.elapsed().as_millis() as u64,
        "{previous} -> succeeded"
    );
    info!(
        digest = %run.digest,
        colour = %run.plan.colour,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "Deployed"
    );
    true
}

/// The `post_deploy` hook, recorded as a step: its failure is noted and
/// never undoes the deployment.
async fn post_deploy(run: &Run<'_>) {
    let Some(argv) = &run.service.hooks.post_deploy else {
        return;
    };
    let id = run.deployment.id;
    run.record(
        run.inner
            .store
            .begin_step(id, &Step::PostDeploy, &run.service.name),
    );
    let env = run.hook_env("post_deploy");
    let ok = run.run_hook("post_deploy", argv, env).await.is_ok();
    if !ok {
        run.record(run.inner.store.note(
            id,
            "the deployment stands: a post_deploy hook's failure never undoes it",
        ));
        warn!("the post_deploy hook failed; the deployment stands");
    }
    run.record(run.inner.store.end_step(id, ok));
}

/// The `on_failure` hook, recorded as a step after the failure (and its way
/// back), before the end state.
async fn on_failure(run: &Run<'_>, end: State, failure: &Failure) {
    let Some(argv) = &run.service.hooks.on_failure else {
        return;
    };
    let id = run.deployment.id;
    let store = &run.inner.store;
    run.record(store.begin_step(id, &Step::OnFailure, &run.service.name));
    let mut env = run.hook_env("on_failure");
    env.extend([
        ("GREENLIGHT_OUTCOME".to_string(), end.to_string()),
        (
            "GREENLIGHT_FAILED_STEP".to_string(),
            failure.step.clone().unwrap_or_default(),
        ),
        (
            "GREENLIGHT_FAILURE_KIND".to_string(),
            failure.kind.as_str().to_string(),
        ),
        ("GREENLIGHT_ERROR".to_string(), failure.error.clone()),
    ]);
    let ok = run.run_hook("on_failure", argv, env).await.is_ok();
    run.record(store.end_step(id, ok));
}

/// Follows a change underneath (`watch.rs`): the routing follows the routed
/// colour's running tasks, recorded like a deployment. Returns false when it
/// was not claimed.
async fn run_resync(inner: &Inner, deployment: Deployment) -> bool {
    let id = deployment.id;
    let config = inner.config.get();
    let Some(service) = config.service(&deployment.service) else {
        return false;
    };
    let Some(current) = current_or_refuse(inner, service, &deployment) else {
        return true;
    };
    let shape = shape(service, &current, None);
    let plan = strategy::Plan {
        colour: current
            .colour()
            .unwrap_or(crate::domain::deployment::Colour::Blue),
        steps: Vec::new(),
    };
    match inner.store.claim(id, shape.strategy, shape.replicas, &[]) {
        Ok(true) => inner.notifier.started(id),
        Ok(false) => return false,
        Err(e) => {
            warn!(error = %e, "cannot claim the resync");
            return false;
        }
    }
    let mut run = Run::new(inner, &config, service, deployment, current, shape, plan);
    match run.resync().await {
        Ok(()) => {
            info!("nginx follows the tasks Swarm runs now");
            run.record(inner.store.finish(id, State::Succeeded, None));
        }
        Err(Stop::Done(end)) => run.record(inner.store.finish(id, end, None)),
        Err(Stop::Fail(mut failure)) => {
            failure.step.get_or_insert_with(|| "resync".into());
            if run.routing.backends == run.original.backends {
                warn!(error = %failure.error, "resync failed; routing unchanged");
                run.record(inner.store.finish(id, State::Failed, Some(&failure)));
            } else {
                unwind(&mut run, failure).await;
            }
        }
    }
    true
}

/// What nginx routes `service` to now; `None` when the rendered file cannot
/// be read, and the deployment was refused for it.
fn current_or_refuse(
    inner: &Inner,
    service: &ServiceConfig,
    deployment: &Deployment,
) -> Option<Routing> {
    match inner.nginx.current(&service.name) {
        Ok(current) => Some(current.unwrap_or_else(|| Routing::empty(&service.name))),
        Err(why) => {
            refuse(inner, service, deployment, why);
            None
        }
    }
}

/// Fails a deployment before it starts: nothing was touched.
fn refuse(inner: &Inner, service: &ServiceConfig, deployment: &Deployment, why: String) {
    let shape = shape(service, &Routing::empty(&service.name), deployment.strategy);
    match inner
        .store
        .claim(deployment.id, shape.strategy, shape.replicas, &[])
    {
        Ok(true) => inner.notifier.started(deployment.id),
        _ => return,
    }
    warn!(error = %why, "refusing to deploy");
    let failure = Failure {
        step: Some("received".into()),
        ..Failure::new(FailureKind::Proxy, why)
    };
    if let Err(e) = inner
        .store
        .finish(deployment.id, State::Failed, Some(&failure))
    {
        warn!(error = %e, "cannot record the refusal");
    }
}

/// Leaves things as they were before the deployment, as far as they can be,
/// and records how it ended.
async fn unwind(run: &mut Run<'_>, mut failure: Failure) -> State {
    let id = run.deployment.id;
    let store = &run.inner.store;
    run.add_log_tail(&mut failure).await;
    let at = failure.step.clone().unwrap_or_default();
    // Nothing routed to what this deployment started: removing it is enough.
    if run.routing.backends == run.original.backends {
        run.remove_started().await;
        let end = if failure.kind == FailureKind::Stale {
            State::Stale
        } else {
            State::Failed
        };
        warn!(step = %at, error = %failure.error, "{at} -> {end}");
        if end == State::Failed && run.service.hooks.on_failure.is_some() {
            // The failed step keeps its error; the hook's step follows it.
            run.record(store.fail_step(id, &failure.error));
            on_failure(run, end, &failure).await;
        }
        run.record(store.finish(id, end, Some(&failure)));
        return end;
    }
    run.record(store.begin_unwinding(id, &failure));
    let stopped_any = run
        .original
        .backends
        .iter()
        .any(|b| run.routing.backend(&b.name).is_none() && run.stopped.contains(&b.name));
    let (end, note) = if !stopped_any {
        // Every old replica still runs: one reload back to them.
        match run.switch_back().await {
            Ok(()) => (
                State::RolledBack,
                "nginx was switched back to the previous replicas".to_string(),
            ),
            Err(e) => (
                State::Failed,
                format!("switching nginx back failed too: {e}"),
            ),
        }
    } else if run.shape.strategy == Strategy::Rolling
        && run.service.rollout.failure_action == FailureAction::Pause
    {
        // The failing batch goes (the previous version put back in its
        // place, so `replicas` serve); what earlier batches replaced stays.
        let new = run.digest.clone();
        match run.roll_back_batch().await {
            Ok(_) => (
                State::Paused,
                format!(
                    "paused as rollout.failure_action says: the failing batch was put back on the \
                     previous version; {} replicas run {} and {} the previous version",
                    run.routing.backends.iter().filter(|b| b.digest == new).count(),
                    display::short_digest(&new),
                    run.routing.backends.iter().filter(|b| b.digest != new).count(),
                ),
            ),
            Err(e) => (
                State::Failed,
                format!("taking the failing batch out failed: {e}; nginx routes to what the routing shows"),
            ),
        }
    } else {
        match run.roll_back().await {
            Ok(replaced) => (
                State::RolledBack,
                format!("{replaced} replicas were put back on the previous version"),
            ),
            Err(e) => (
                State::Failed,
                format!("rolling back failed too: {e}; nginx routes to what the routing shows"),
            ),
        }
    };
    failure.error = format!("{}; {note}", failure.error);
    warn!(step = %at, error = %failure.error, "{at} -> {end}");
    on_failure(run, end, &failure).await;
    run.record(store.finish(id, end, Some(&failure)));
    end
}

/// Test hook for crash tests: `GREENLIGHT_TEST_PAUSE_AT=<step>[:<batch>]`
/// makes every deployment stop at that step (of that batch of a rolling
/// update), after recording it, until the process is killed. Unset in
/// production; read once.
async fn pause_if_asked(step: &Step) {
    static AT: std::sync::OnceLock<Option<(String, Option<u32>)>> = std::sync::OnceLock::new();
    let at = AT.get_or_init(|| {
        let v = std::env::var("GREENLIGHT_TEST_PAUSE_AT").ok()?;
        Some(match v.split_once(':') {
            Some((name, batch)) => (name.to_string(), batch.parse().ok()),
            None => (v, None),
        })
    });
    if let Some((name, batch)) = at {
        if name == step.name() && batch.is_none_or(|b| b == step.batch()) {
            warn!("GREENLIGHT_TEST_PAUSE_AT={name}: pausing this deployment until greenlight is killed");
            std::future::pending::<()>().await;
        }
    }
}
