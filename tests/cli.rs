//! The command line: exit codes and error messages a person acts on.

use std::process::Command;

fn hindsight(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hindsight"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run hindsight");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn temp_file(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("hindsight-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("hindsight.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn the_shipped_example_config_is_valid() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/hindsight.example.toml");
    let (code, out, err) = hindsight(&["config", "check", example], &[]);
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
}

#[test]
fn unknown_key_exits_2_and_names_the_line_and_key() {
    let path = temp_file(
        "unknown",
        "[proxy]\nlisten = \"127.0.0.1:1\"\nlisten_port = 5\n",
    );
    let (code, out, err) = hindsight(&["config", "check", path.to_str().unwrap()], &[]);
    assert_eq!(code, 2, "stdout: {out}\nstderr: {err}");
    assert!(
        err.contains("listen_port"),
        "stderr must name the key: {err}"
    );
    assert!(err.contains("line 3"), "stderr must name the line: {err}");
}

#[test]
fn unknown_environment_override_exits_2_and_names_the_variable() {
    let (code, out, err) = hindsight(&["config", "show"], &[("HINDSIGHT_PROXY__LISTNE", "x")]);
    assert_eq!(code, 2, "stdout: {out}\nstderr: {err}");
    assert!(err.contains("HINDSIGHT_PROXY__LISTNE"), "stderr: {err}");
}

#[test]
fn environment_overrides_the_file_in_config_show() {
    let path = temp_file("env", "[upstream]\naddress = \"db.example:5432\"\n");
    let (code, out, err) = hindsight(
        &["config", "show", path.to_str().unwrap()],
        &[("HINDSIGHT_UPSTREAM__ADDRESS", "other.example:6543")],
    );
    assert_eq!(code, 0, "stderr: {err}");
    assert!(out.contains("other.example:6543"), "stdout: {out}");
}

#[test]
fn proxy_refuses_a_listen_address_in_use_with_exit_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, _out, err) = hindsight(
        &[
            "proxy",
            "--listen",
            &addr,
            "--upstream",
            "127.0.0.1:1",
            "--admin-listen",
            "127.0.0.1:0",
            "--no-capture",
        ],
        &[],
    );
    assert_eq!(code, 1, "stderr: {err}");
    assert!(
        err.contains(&addr),
        "the error must name the address: {err}"
    );
}

#[test]
fn proxy_without_broker_or_no_capture_refuses_to_start() {
    let (code, _out, err) = hindsight(
        &[
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            "127.0.0.1:1",
            "--admin-listen",
            "127.0.0.1:0",
        ],
        &[],
    );
    assert_eq!(code, 2, "stderr: {err}");
    assert!(
        err.contains("--kafka-brokers") && err.contains("--no-capture"),
        "stderr: {err}"
    );
}

#[test]
/// Only with `kafka.require_at_start = true`: otherwise the proxy starts and serves reads
/// (tests/integration/broker_outage.rs).
fn proxy_with_unreachable_broker_fails_naming_it() {
    let (code, _out, err) = hindsight(
        &[
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            "127.0.0.1:1",
            "--admin-listen",
            "127.0.0.1:0",
            "--kafka-brokers",
            "127.0.0.1:9",
        ],
        &[
            ("HINDSIGHT_KAFKA__PUBLISH_TIMEOUT", "2s"),
            ("HINDSIGHT_KAFKA__REQUIRE_AT_START", "true"),
        ],
    );
    assert_eq!(code, 1, "stderr: {err}");
    assert!(err.contains("127.0.0.1:9"), "stderr: {err}");
    // Said once: the message quotes its cause, which used to be printed again after it, twice.
    let last = err.lines().last().unwrap_or_default();
    assert_eq!(last.matches("unreachable").count(), 1, "stderr: {err}");
    assert_eq!(
        last.matches("check kafka.brokers").count(),
        1,
        "stderr: {err}"
    );
}

#[test]
fn restore_without_a_selection_exits_2_and_says_what_to_select() {
    let (code, _, err) = hindsight(
        &[
            "restore",
            "--kafka-brokers",
            "127.0.0.1:1",
            "--target",
            "host=127.0.0.1 port=1",
        ],
        &[],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--application") && err.contains("--as-of"),
        "{err}"
    );
}

#[test]
fn restore_with_a_bad_time_or_key_exits_2_naming_the_value() {
    let (code, _, err) = hindsight(
        &[
            "restore",
            "--kafka-brokers",
            "x:1",
            "--target",
            "t",
            "--since",
            "yesterday",
        ],
        &[],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("yesterday") && err.contains("RFC 3339"),
        "{err}"
    );
    let (code, _, err) = hindsight(
        &[
            "restore",
            "--kafka-brokers",
            "x:1",
            "--target",
            "t",
            "--key",
            "bfkey=7",
        ],
        &[],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("JSON object"), "{err}");
}

const RULES: &str = r#"
[[rule]]
name = "bfso-needs-certification-v2"
tables = ["public.brieff"]
columns = ["bfso"]
operations = ["update"]
require_flag = "certification_v2"

[[rule]]
name = "representative-never-null"
tables = ["public.brieff"]
when = 'after.bfso == null && before.bfso != null'

[flags.certification_v2]
for = { application_name = ["certification-v2"] }
"#;

#[test]
fn rules_check_accepts_a_valid_file_and_names_the_line_of_a_bad_one() {
    let good = temp_file("rules-good", RULES);
    let (code, out, err) = hindsight(&["rules", "check", good.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("2 rules, 1 flags"), "{out}");
    let bad = temp_file(
        "rules-bad",
        &RULES.replace("operations = [\"update\"]", "operations = [\"updat\"]"),
    );
    let (code, _, err) = hindsight(&["rules", "check", bad.to_str().unwrap()], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(":3:") && err.contains("\"updat\"") && err.contains("update"),
        "{err}"
    );
}

#[test]
fn rules_explain_names_the_deciding_rule_and_the_row_rules() {
    let f = temp_file("rules-explain", RULES);
    let sql = "UPDATE brieff SET bfso = NULL WHERE bfkey < 19";
    let (code, out, err) = hindsight(
        &[
            "rules",
            "explain",
            f.to_str().unwrap(),
            "--sql",
            sql,
            "--app",
            "certification-v1",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("DENY by rule \"bfso-needs-certification-v2\""),
        "{out}"
    );
    let (_, out, _) = hindsight(
        &[
            "rules",
            "explain",
            f.to_str().unwrap(),
            "--sql",
            sql,
            "--app",
            "certification-v2",
        ],
        &[],
    );
    assert!(
        out.contains("allowed before it runs") && out.contains("representative-never-null"),
        "{out}"
    );
    let (_, out, _) = hindsight(
        &["rules", "explain", f.to_str().unwrap(), "--sql", "SELECT 1"],
        &[],
    );
    assert!(out.contains("not a write"), "{out}");
}

#[test]
fn gates_on_a_public_admin_address_without_a_token_refuse_to_start() {
    let f = temp_file("rules-admin", RULES);
    let (code, _, err) = hindsight(
        &[
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            "127.0.0.1:1",
            "--admin-listen",
            "0.0.0.0:0",
            "--kafka-brokers",
            "127.0.0.1:1",
            "--rules",
            f.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("admin.token") && err.contains("HINDSIGHT_ADMIN__TOKEN"),
        "{err}"
    );
}
