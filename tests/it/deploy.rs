//! The files under `deploy/` checked against the relay they run: the image's layout runs
//! as an unprivileged user and answers its own health check, the Kubernetes manifests'
//! config passes `hookrelay check` with ports, probes and the watched folder where the
//! manifests say, and the systemd unit verifies. The linters (hadolint,
//! kubernetes-validate, systemd-analyze) run when installed; `HOOKRELAY_REQUIRE_DEPLOY_TOOLS=1`
//! (set by `.ci/run`) makes a missing one a failure.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::Deserialize;
use serde_yaml::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The linter `name` (on PATH, or in `HOOKRELAY_DEPLOY_TOOLS`, a folder), or `None` after
/// saying that its check was skipped.
fn tool(name: &str) -> Option<PathBuf> {
    let folders = std::env::var_os("HOOKRELAY_DEPLOY_TOOLS").into_iter().chain(std::env::var_os("PATH"));
    let found = folders
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|folder| folder.join(name))
        .find(|path| path.is_file());
    if found.is_none() {
        assert!(
            std::env::var("HOOKRELAY_REQUIRE_DEPLOY_TOOLS").as_deref() != Ok("1"),
            "{name} is required (HOOKRELAY_REQUIRE_DEPLOY_TOOLS=1) but not installed"
        );
        eprintln!("SKIPPED: {name} is not installed (.ci/run installs it); its check of deploy/ did not run");
    }
    found
}

fn run(command: &mut Command) -> (bool, String) {
    let output = command.output().unwrap_or_else(|err| panic!("{command:?}: {err}"));
    (output.status.success(), format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr)))
}

fn port_of(listen: &str) -> u16 {
    listen.rsplit(':').next().and_then(|port| port.parse().ok()).unwrap_or_else(|| panic!("no port in {listen}"))
}

/// The `${VAR}` names a text refers to.
fn variables(text: &str) -> Vec<String> {
    text.split("${")
        .skip(1)
        .filter_map(|rest| rest.split('}').next())
        .map(|name| name.split(":-").next().unwrap_or(name).to_string())
        .collect()
}

#[test]
fn the_kubernetes_manifests_run_the_config_they_carry() {
    let manifests = ["sidecar.yaml", "postgres.yaml"].map(|name| root().join("deploy/kubernetes").join(name));
    for manifest in &manifests {
        let text = std::fs::read_to_string(manifest).unwrap();
        let documents: Vec<Value> =
            serde_yaml::Deserializer::from_str(&text).map(|document| Value::deserialize(document).unwrap()).collect();
        let of_kind = |kind: &str| documents.iter().find(|d| d["kind"] == kind).unwrap_or_else(|| panic!("{manifest:?}: no {kind}"));
        let config_map = of_kind("ConfigMap");
        let workload = documents.iter().find(|d| d["kind"] == "StatefulSet" || d["kind"] == "Deployment").expect("a workload");
        let pod = &workload["spec"]["template"]["spec"];
        let relay = pod["containers"].as_sequence().unwrap().iter().find(|c| c["name"] == "hookrelay").expect("a hookrelay container");

        // The config folder: what `-c` names is in the mounted ConfigMap's folder.
        let args: Vec<&str> = relay["args"].as_sequence().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
        let config_path = Path::new(args[args.iter().position(|a| *a == "-c").expect("-c") + 1]);
        let config_volume = pod["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|v| v["configMap"]["name"] == config_map["metadata"]["name"])
            .expect("the ConfigMap volume");
        let mount =
            relay["volumeMounts"].as_sequence().unwrap().iter().find(|m| m["name"] == config_volume["name"]).expect("the ConfigMap mount");
        assert_eq!(
            Path::new(mount["mountPath"].as_str().unwrap()),
            config_path.parent().unwrap(),
            "{manifest:?}: the watched folder is the mount"
        );
        let file_name = config_path.file_name().unwrap().to_str().unwrap();

        // Every file of the ConfigMap, written out and checked by the relay itself, with
        // each `${VAR}` set the way the container's env sets it (from the Secret).
        let folder = tempfile::tempdir().unwrap();
        let env: Vec<String> =
            relay["env"].as_sequence().map(|env| env.iter().map(|e| e["name"].as_str().unwrap().to_string()).collect()).unwrap_or_default();
        let mut check = Command::new(env!("CARGO_BIN_EXE_hookrelay"));
        check.args(["check", "-c"]).arg(folder.path().join(file_name)).env_clear();
        for (name, content) in config_map["data"].as_mapping().unwrap() {
            let content = content.as_str().unwrap();
            std::fs::write(folder.path().join(name.as_str().unwrap()), content).unwrap();
            for variable in variables(content) {
                assert!(env.contains(&variable), "{manifest:?}: ${{{variable}}} is not set in the container's env");
                let value = if variable.ends_with("STORE_URL") {
                    "postgres://hookrelay:pw@db:5432/hookrelay".to_string()
                } else {
                    format!("{variable}-value")
                };
                check.env(&variable, value);
            }
        }
        let (passed, output) = run(&mut check);
        assert!(passed, "{manifest:?}: hookrelay check failed:\n{output}");
        let config: Value = serde_yaml::from_str(&std::fs::read_to_string(folder.path().join(file_name)).unwrap()).unwrap();
        assert!(
            config["include"].as_sequence().is_some_and(|globs| !globs.is_empty()),
            "{manifest:?}: routes come from the other ConfigMap files"
        );

        // Ports and probes: where the config listens, on an address the kubelet reaches.
        let container_port = |name: &str| {
            relay["ports"]
                .as_sequence()
                .unwrap()
                .iter()
                .find(|p| p["name"] == name)
                .and_then(|p| p["containerPort"].as_u64())
                .unwrap_or_else(|| panic!("{manifest:?}: no port {name}"))
        };
        let listen = config["listen"].as_str().unwrap();
        let admin = config["admin"]["listen"].as_str().unwrap();
        assert_eq!(u64::from(port_of(listen)), container_port("webhooks"), "{manifest:?}");
        assert_eq!(u64::from(port_of(admin)), container_port("admin"), "{manifest:?}");
        assert!(
            admin.starts_with("0.0.0.0:") && config["admin"]["token"].as_str().is_some_and(|t| !t.is_empty()),
            "{manifest:?}: the admin listener is reachable and needs a token"
        );
        assert_eq!(
            (&relay["livenessProbe"]["httpGet"]["path"], &relay["livenessProbe"]["httpGet"]["port"]),
            (&Value::from("/healthz"), &Value::from("admin"))
        );
        assert_eq!(
            (&relay["readinessProbe"]["httpGet"]["path"], &relay["readinessProbe"]["httpGet"]["port"]),
            (&Value::from("/readyz"), &Value::from("admin"))
        );
        let service = of_kind("Service");
        assert_eq!(service["spec"]["ports"][0]["targetPort"], "webhooks", "{manifest:?}: webhooks go to the relay");
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        // One relay per SQLite volume: a single replica with its own claim.
        if config["store"]["path"].is_string() {
            assert_eq!(workload["kind"], "StatefulSet", "{manifest:?}");
            assert_eq!(workload["spec"]["replicas"], 1, "{manifest:?}");
            assert!(workload["spec"]["volumeClaimTemplates"].as_sequence().is_some_and(|claims| claims.iter().any(|c| relay
                ["volumeMounts"]
                .as_sequence()
                .unwrap()
                .iter()
                .any(|m| m["name"] == c["metadata"]["name"]))));
        }
    }
    if let Some(validate) = tool("kubernetes-validate") {
        let (passed, output) = run(Command::new(validate).args(["--strict", "-k", "1.35.0"]).args(&manifests));
        assert!(passed, "kubernetes-validate:\n{output}");
    }
}

/// The runtime stage's instructions (after the last `FROM`), continuation lines joined.
fn runtime_stage() -> Vec<String> {
    let text = std::fs::read_to_string(root().join("deploy/Dockerfile")).unwrap();
    let joined = text.replace("\\\n", " ");
    let lines: Vec<String> = joined.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_string).collect();
    let last_from = lines.iter().rposition(|l| l.starts_with("FROM ")).unwrap();
    assert!(lines[..last_from].iter().any(|l| l.starts_with("RUN cargo build --release --locked")), "a locked release build");
    lines[last_from..].to_vec()
}

#[test]
fn the_image_layout_runs_as_an_unprivileged_user_and_passes_its_health_check() {
    let stage = runtime_stage();
    let instruction = |name: &str| stage.iter().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("no {name}")).clone();
    let user = instruction("USER");
    assert!(!user.contains(" root") && !user.contains(" 0"), "{user}");
    assert!(instruction("HEALTHCHECK").contains(r#"CMD ["/usr/local/bin/hookrelay", "probe"]"#), "the health check needs no shell");
    let exposed = instruction("EXPOSE");

    let ignore = std::fs::read_to_string(root().join(".dockerignore")).unwrap();
    // The build stage's own COPY lines, too, must find their files in the context.
    let text = std::fs::read_to_string(root().join("deploy/Dockerfile")).unwrap();
    for copy in text.lines().filter(|l| l.starts_with("COPY ") && !l.contains("--from=")) {
        let parts: Vec<&str> = copy.split_whitespace().collect();
        for from in &parts[1..parts.len() - 1] {
            let admitted = ignore
                .lines()
                .filter_map(|line| line.strip_prefix('!'))
                .any(|kept| from.trim_end_matches('/').starts_with(kept.trim_end_matches('/')));
            assert!(admitted, "{copy}: .dockerignore leaves {from} out of the build context");
        }
    }
    // The image's files, laid out in a folder as the COPY lines put them.
    let image = tempfile::tempdir().unwrap();
    let place = |inside: &str| image.path().join(inside.trim_start_matches('/'));
    for copy in stage.iter().filter(|l| l.starts_with("COPY ")) {
        let parts: Vec<&str> = copy.split_whitespace().collect();
        let (from, to) = (parts[parts.len() - 2], parts[parts.len() - 1]);
        let source = if copy.contains("--from=build") {
            assert!(from.ends_with("/target/release/hookrelay"), "{copy}");
            PathBuf::from(env!("CARGO_BIN_EXE_hookrelay"))
        } else {
            root().join(from)
        };
        std::fs::create_dir_all(place(to).parent().unwrap()).unwrap();
        std::fs::copy(&source, place(to)).unwrap_or_else(|err| panic!("{copy}: {err}"));
    }
    let store = place("/var/lib/hookrelay");
    std::fs::create_dir_all(&store).unwrap();
    std::fs::write(
        place("/etc/hookrelay/routes-ping.yaml"),
        "routes:\n  - name: ping\n    match: { path: /hooks/ping }\n    forward:\n      - url: upstream:/ping\n",
    )
    .unwrap();

    let config: Value = serde_yaml::from_str(&std::fs::read_to_string(place("/etc/hookrelay/hookrelay.yaml")).unwrap()).unwrap();
    for variable in ["HOOKRELAY_LISTEN:-0.0.0.0:8080", "HOOKRELAY_ADMIN_LISTEN:-127.0.0.1:9090"] {
        let port = variable.rsplit(':').next().unwrap();
        assert!(exposed.contains(port), "{exposed} exposes {port}");
    }
    assert!(config["listen"].as_str().unwrap().contains("HOOKRELAY_LISTEN:-0.0.0.0:8080"));
    assert!(
        config["admin"]["listen"].as_str().unwrap().contains("HOOKRELAY_ADMIN_LISTEN:-127.0.0.1:9090"),
        "the probe's default admin address"
    );

    // As the image's user would: not root, owning only the store's folder.
    let binary = place("/usr/local/bin/hookrelay");
    let as_root = run(Command::new("id").arg("-u")).1.trim() == "0";
    let mut relay = Command::new(if as_root { "setpriv" } else { binary.to_str().unwrap() });
    if as_root {
        for folder in [image.path(), &store] {
            std::os::unix::fs::chown(folder, Some(65534), Some(65534)).unwrap();
        }
        let mut permissions = std::fs::metadata(image.path()).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
        std::fs::set_permissions(image.path(), permissions).unwrap();
        relay.args(["--reuid=65534", "--regid=65534", "--clear-groups"]).arg(&binary);
    }
    let (port, admin_port) = (crate::support::binary::free_port(), crate::support::binary::free_port());
    let store_file = store.join("hookrelay.db");
    relay
        .args(["run", "-c"])
        .arg(place("/etc/hookrelay/hookrelay.yaml"))
        .env_clear()
        .env("HOOKRELAY_LISTEN", format!("127.0.0.1:{port}"))
        .env("HOOKRELAY_ADMIN_LISTEN", format!("127.0.0.1:{admin_port}"))
        .env("HOOKRELAY_STORE", &store_file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = relay.spawn().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    // The HEALTHCHECK's own command: `probe` finds the admin listener the container's
    // environment moved.
    let probe = || run(Command::new(&binary).arg("probe").env_clear().env("HOOKRELAY_ADMIN_LISTEN", format!("127.0.0.1:{admin_port}")));
    let healthy = loop {
        if probe().0 {
            break true;
        }
        if std::time::Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            break false;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    assert!(healthy, "the health check never passed:\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(store_file.exists(), "the store is in the volume");
    if as_root {
        assert_eq!(
            std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&store_file).unwrap()),
            65534,
            "written by the unprivileged user"
        );
    }
    if let Some(hadolint) = tool("hadolint") {
        let (passed, output) = run(Command::new(hadolint).arg(root().join("deploy/Dockerfile")));
        assert!(passed, "hadolint:\n{output}");
    }
}

#[test]
fn the_systemd_unit_is_hardened_and_verifies() {
    let unit = std::fs::read_to_string(root().join("deploy/systemd/hookrelay.service")).unwrap();
    for setting in
        ["DynamicUser=yes", "StateDirectory=hookrelay", "ProtectSystem=strict", "NoNewPrivileges=yes", "ExecReload=/bin/kill -HUP $MAINPID"]
    {
        assert!(unit.lines().any(|line| line == setting), "missing {setting}");
    }
    let exec = unit.lines().find_map(|l| l.strip_prefix("ExecStart=")).unwrap();
    assert!(exec.starts_with("/usr/local/bin/hookrelay run -c /etc/hookrelay/hookrelay.yaml"), "{exec}");
    let Some(analyze) = tool("systemd-analyze") else { return };
    // `verify` wants the program to exist: point it at the one just built.
    let folder = tempfile::tempdir().unwrap();
    let copy = folder.path().join("hookrelay.service");
    std::fs::write(&copy, unit.replace("/usr/local/bin/hookrelay", env!("CARGO_BIN_EXE_hookrelay"))).unwrap();
    let (passed, output) = run(Command::new(analyze).arg("verify").arg(&copy));
    assert!(passed && output.trim().is_empty(), "systemd-analyze verify:\n{output}");
}
