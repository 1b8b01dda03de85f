//! Every parser of untrusted bytes, a few thousand hostile inputs each (the
//! long run is `cargo run --release -p greenlight-fuzz`, see BENCHMARKS.md).

/// Cases per target in CI.
const CASES: u32 = 3_000;

fn run(name: &str) {
    let target = greenlight_fuzz::all()
        .into_iter()
        .find(|t| t.name.starts_with(name))
        .unwrap_or_else(|| panic!("no target {name}"));
    // A new seed per run, printed, so CI explores and a failure can be replayed.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    match target.run(CASES, seed) {
        Ok(stats) => assert!(stats.cases >= u64::from(CASES), "{stats:?}"),
        Err(e) => panic!("{} (seed {seed}): {e}", target.name),
    }
}

#[test]
fn github_events_never_panic_and_never_match_a_bad_tag() {
    run("webhook: GitHub");
}

#[test]
fn docker_hub_pushes_never_panic_and_never_carry_a_trusted_time() {
    run("webhook: Docker Hub");
}

#[test]
fn distribution_envelopes_never_panic_and_are_bounded() {
    run("webhook: CNCF");
}

#[test]
fn signatures_are_never_forged() {
    run("signature");
}

#[test]
fn tokens_compare_exactly() {
    run("tokens");
}

#[test]
fn configs_never_panic_and_secrets_arrive_exactly() {
    run("config loader");
}

#[test]
fn registry_challenges_never_panic() {
    run("registry");
}

#[test]
fn image_references_never_escape_their_path() {
    run("image references");
}
