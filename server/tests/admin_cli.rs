//! The administration commands of `parkpay-server`: the first admin, API tokens and gateway
//! keys are made from the command line, stored as docs/operations.md says (hashes for secrets
//! a person holds), and mistakes are named.

use std::process::{Command, Output};

use parkpay_server::auth::{token_hash, verify_password};
use parkpay_server::domain::Role;

fn run(db: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_parkpay-server"))
        .args(["--database-url", db])
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("the command runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test]
async fn accounts_tokens_and_gateway_keys_are_made_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("a.db").display());

    let out = run(
        &db,
        &["user", "add", "--username", "root", "--role", "admin"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let password = stdout
        .lines()
        .find_map(|l| l.strip_prefix("password: "))
        .expect("a generated password is printed")
        .to_string();
    let again = run(
        &db,
        &["user", "add", "--username", "root", "--role", "admin"],
    );
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("already exists"),
        "{}",
        text(&again.stderr)
    );
    let bad = run(&db, &["user", "add", "--username", "x", "--role", "boss"]);
    assert!(!bad.status.success());
    assert!(text(&bad.stderr).contains("role"), "{}", text(&bad.stderr));

    let out = run(
        &db,
        &[
            "token", "add", "--name", "ci", "--role", "viewer", "--lots", "lot1",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let token = text(&out.stdout).trim().to_string();
    assert!(token.starts_with("ppt_"), "{token}");

    let out = run(
        &db,
        &["gateway", "add", "--id", "gw-north", "--lot", "lot1"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let config: toml::Table = toml::from_str(&text(&out.stdout)).expect("a TOML gateway config");
    let key = config["signing_key"].as_str().unwrap().to_string();
    assert_eq!(key.len(), 64, "32 bytes of hex");
    assert_eq!(config["gateway_id"].as_str(), Some("gw-north"));
    assert_eq!(config["require_signatures"].as_bool(), Some(true));
    let twice = run(
        &db,
        &["gateway", "add", "--id", "gw-north", "--lot", "lot1"],
    );
    assert!(
        !twice.status.success(),
        "a key is not replaced without --rotate"
    );
    let rotated = run(
        &db,
        &[
            "gateway", "add", "--id", "gw-north", "--lot", "lot1", "--rotate",
        ],
    );
    assert!(rotated.status.success(), "{}", text(&rotated.stderr));

    // What the store keeps: a password hash that verifies, a token digest, the key.
    let store = parkpay_server::store::connect(&db).await.unwrap();
    let (account, hash) = store.account_by_name("root").await.unwrap().unwrap();
    assert_eq!(account.grant.role, Role::Admin);
    assert!(hash.starts_with("$argon2id$") && !hash.contains(&password));
    assert!(verify_password(&password, Some(&hash)));
    let t = store.api_token(&token_hash(&token)).await.unwrap().unwrap();
    assert_eq!(t.grant.role, Role::Viewer);
    assert_eq!(
        t.grant
            .lots
            .as_ref()
            .map(|l| l.iter().map(|x| x.to_string()).collect::<Vec<_>>()),
        Some(vec!["lot1".to_string()])
    );
    assert!(
        store.api_token(&token).await.unwrap().is_none(),
        "only the digest is stored"
    );
    let keys = store.gateway_keys().await.unwrap();
    assert_eq!(keys.len(), 1);
    assert_ne!(keys[0].1, key, "rotated");
    let audit = store.audit(100).await.unwrap();
    for action in [
        "account.created",
        "token.created",
        "gateway.key_created",
        "gateway.key_rotated",
    ] {
        assert!(
            audit.iter().any(|a| a.action == action && a.actor == "cli"),
            "{action} audited"
        );
    }
}
