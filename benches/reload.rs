//! Reload latency: how long one reload (read + compile + validate every route) takes for
//! configs of 10, 100 and 1,000 routes, and the per-route cost relative to the small one.
//! Run with `cargo bench --bench reload`. Bounded: a fixed number of rounds per size.
//! Every route has its own patterns, so nothing is shared between routes by accident.

use std::path::Path;
use std::time::{Duration, Instant};

use hookrelay::config::env::ProcessEnv;

fn route(index: usize) -> String {
    format!(
        r#"  - name: route-{index}
    source: codeup
    match:
      path: /hooks/codeup/{index}/{{project}}
      headers: {{ Codeup-Event: Push Hook, X-Env: {{ regex: "^(prod|staging-{index})$" }} }}
      body:
        - {{ path: $.ref, regex: "^refs/heads/(main|release-{index}/.+)$" }}
        - {{ path: $.total_commits_count, gt: 0 }}
    verify:
      secret: token-{index}
    vars: {{ pipeline: p{index} }}
    forward:
      - name: codearts
        url: http://127.0.0.1:9/v2/manage/webhooks/{{{{vars.pipeline}}}}
        query: {{ branch: "{{{{regex_capture body.ref '^refs/heads/(.+)$' 1}}}}", commit: "{{{{body.after}}}}" }}
        basic_auth: {{ username: ci, password: pw }}
        success: [201]
        body: |
          {{"ref": "{{{{body.ref}}}}", "commits": {{{{json body.commits}}}}, "n": {index}}}
"#
    )
}

fn write_config(dir: &Path, routes: usize) -> std::path::PathBuf {
    let mut text = String::from("listen: 127.0.0.1:0\nroutes:\n");
    for index in 0..routes {
        text.push_str(&route(index));
    }
    let path = dir.join(format!("routes-{routes}.yaml"));
    std::fs::write(&path, text).expect("write config");
    path
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut per_route_baseline = None;
    println!("| routes | reload (median) | p90 | per route | per-route cost vs 10 routes |");
    println!("|---:|---:|---:|---:|---:|");
    for (routes, rounds) in [(10, 200), (100, 50), (1000, 15)] {
        let path = write_config(dir.path(), routes);
        let mut samples = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let started = Instant::now();
            let snapshot = hookrelay::snapshot::load(&path, &ProcessEnv).expect("config compiles");
            samples.push(started.elapsed());
            assert_eq!(snapshot.routes.len(), routes);
        }
        let mut sorted = samples.clone();
        sorted.sort();
        let p90 = sorted[(sorted.len() * 9) / 10 - 1];
        let mid = median(samples);
        let per_route = mid / routes as u32;
        let baseline = *per_route_baseline.get_or_insert(per_route);
        println!(
            "| {routes} | {:.2} ms | {:.2} ms | {:.1} µs | {:.2}× |",
            mid.as_secs_f64() * 1e3,
            p90.as_secs_f64() * 1e3,
            per_route.as_secs_f64() * 1e6,
            per_route.as_secs_f64() / baseline.as_secs_f64()
        );
    }
}
