//! The long run: every target for `--cases N` cases (default one million),
//! then a Markdown table of cases, time, slowest case and findings. Exit code
//! 1 when any target found something (a panic, a hang, an accepted forgery),
//! with the smallest input it shrank to.
//!
//!   cargo run --release -p greenlight-fuzz -- --cases 1000000 [--seed N] [NAME...]

use std::time::Instant;

fn main() {
    let mut cases: u32 = 1_000_000;
    let mut seed: u64 = 0x6c_6967_6874;
    let mut only = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--cases" => cases = args.next().and_then(|v| v.parse().ok()).expect("--cases N"),
            "--seed" => seed = args.next().and_then(|v| v.parse().ok()).expect("--seed N"),
            "--help" | "-h" => {
                println!("greenlight-fuzz [--cases N] [--seed N] [target name substring...]");
                return;
            }
            other => only.push(other.to_string()),
        }
    }
    let started = Instant::now();
    println!("| target | cases | time s | slowest case ms | findings |");
    println!("|---|---:|---:|---:|---|");
    let mut found = false;
    for target in greenlight_fuzz::all() {
        if !only.is_empty() && !only.iter().any(|o| target.name.contains(o.as_str())) {
            continue;
        }
        let t = Instant::now();
        let result = target.run(cases, seed);
        let secs = t.elapsed().as_secs_f64();
        match result {
            Ok(stats) => println!(
                "| {} | {} | {secs:.1} | {:.2} | none |",
                target.name,
                stats.cases,
                stats.slowest.as_secs_f64() * 1000.0
            ),
            Err(e) => {
                found = true;
                // The shrunk input can be long: the table keeps its start.
                let e: String = e.replace('\n', " ").chars().take(400).collect();
                println!("| {} | - | {secs:.1} | - | **{e}** |", target.name);
            }
        }
    }
    eprintln!(
        "seed {seed}, {:.1} s in all",
        started.elapsed().as_secs_f64()
    );
    std::process::exit(i32::from(found));
}
