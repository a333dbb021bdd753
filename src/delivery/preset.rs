//! Target presets (DESIGN §3): what each chat or CI receiver documents — its success test
//! on the answer body, its published rate limit keyed by the robot's token, its signing
//! scheme when a `secret` is given — filled into a target so a user writes only the URL and
//! the message. Anything the target sets itself wins.

use serde_json::{json, Map, Value};

use crate::config::model::{RawRateLimit, RawSecret, RawSign, RawTarget};
use crate::config::Problems;

pub const NAMES: &str = "dingtalk, feishu, wecom, slack, discord, codearts";

/// The target with its preset's defaults filled in (unchanged without a preset).
pub fn apply(raw: &RawTarget, at: &str, problems: &mut Problems) -> RawTarget {
    let mut target = raw.clone();
    let Some(preset) = raw.preset.as_deref() else {
        if raw.secret.is_some() {
            problems.push(format!("{at}.secret"), "`secret` goes with a signing preset (dingtalk, feishu); otherwise use `sign:`");
        }
        return target;
    };
    let robot = robot_id(raw);
    match preset {
        "dingtalk" => {
            // Answers 200 {"errcode": 0, …}; 20 messages a minute per robot.
            success_when(&mut target, "$.errcode", json!(0));
            rate_limit(&mut target, 20, robot.map(|id| format!("dingtalk:{id}")));
            sign(&mut target, |secret| RawSign { dingtalk: Some(secret), ..empty_sign() });
            if raw.secret.is_none() && raw.sign.is_none() {
                problems.warn(
                    format!("{at}.secret"),
                    "a DingTalk robot without `secret` (signing) relies on its keyword or IP security setting: \
                     every message must contain the robot's keyword, or DingTalk answers errcode 310000",
                );
            }
        }
        "wecom" => {
            success_when(&mut target, "$.errcode", json!(0));
            rate_limit(&mut target, 20, robot.map(|id| format!("wecom:{id}")));
        }
        "feishu" => {
            // Answers {"code": 0, …}; 100 messages a minute per bot.
            success_when(&mut target, "$.code", json!(0));
            rate_limit(&mut target, 100, robot.map(|id| format!("feishu:{id}")));
            sign(&mut target, |secret| RawSign { feishu: Some(secret), ..empty_sign() });
        }
        "slack" => {
            // Incoming webhooks: about one message a second per webhook.
            target.rate_limit.get_or_insert(RawRateLimit {
                per_second: Some(1),
                key: robot.map(|id| format!("slack:{id}")),
                ..RawRateLimit::default()
            });
        }
        "discord" => {
            target.rate_limit.get_or_insert(RawRateLimit {
                per_minute: Some(30),
                burst: Some(5),
                key: robot.map(|id| format!("discord:{id}")),
                ..RawRateLimit::default()
            });
        }
        "codearts" => {
            // The pipeline trigger answers 201; 400/401/404 fail at once, 500 is retried.
            target.success.get_or_insert_with(|| vec![201]);
        }
        other => problems.push(format!("{at}.preset"), format!("unknown preset {other:?} (one of {NAMES})")),
    }
    if raw.secret.is_some() && !matches!(preset, "dingtalk" | "feishu") {
        problems.push(format!("{at}.secret"), format!("preset {preset} has no signing scheme; use `sign:`"));
    }
    target
}

fn empty_sign() -> RawSign {
    RawSign { standard_webhooks: None, github: None, hmac: None, dingtalk: None, feishu: None }
}

fn success_when(target: &mut RawTarget, path: &str, equals: Value) {
    if target.success_when.is_empty() {
        let mut condition = Map::new();
        condition.insert("path".into(), json!(path));
        condition.insert("equals".into(), equals);
        target.success_when.push(condition);
    }
}

/// The robot's published per-minute limit as a window: an idle robot gets its first
/// messages at once, and no 60 s ever carries more than the limit.
fn rate_limit(target: &mut RawTarget, per_minute: u32, key: Option<String>) {
    target.rate_limit.get_or_insert(RawRateLimit {
        per_minute: Some(per_minute),
        burst: Some(per_minute),
        window: true,
        key,
        ..RawRateLimit::default()
    });
}

fn sign(target: &mut RawTarget, scheme: impl FnOnce(RawSecret) -> RawSign) {
    if let (None, Some(secret)) = (&target.sign, &target.secret) {
        target.sign = Some(scheme(RawSecret { secret: secret.clone() }));
    }
}

/// The robot's identity for its rate-limit bucket: the `access_token` / `key` query value
/// (DingTalk, WeCom), else the URL's last path segment (Feishu hook id, Slack and Discord
/// webhook paths). None when it is templated: then the target's own bucket is used.
/// The robot a target posts to, for its rate-limit key: a digest of its token (the key
/// shows in metrics and logs; the token must not).
fn robot_id(target: &RawTarget) -> Option<String> {
    use sha2::Digest;
    let token = robot_token(target)?;
    Some(hex::encode(&sha2::Sha256::digest(token.as_bytes())[..8]))
}

fn robot_token(target: &RawTarget) -> Option<String> {
    for name in ["access_token", "key"] {
        if let Some(value) = target.query.get(name).filter(|v| !v.contains("{{")) {
            return Some(value.clone());
        }
    }
    let url = url::Url::parse(&target.url).ok().filter(|_| !target.url.contains("{{"))?;
    if let Some((_, value)) = url.query_pairs().find(|(k, _)| k == "access_token" || k == "key") {
        return Some(value.into_owned());
    }
    url.path_segments().and_then(|mut segments| segments.next_back().map(str::to_string)).filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(yaml: &str) -> RawTarget {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn dingtalk_fills_success_rate_and_signing_keyed_by_robot() {
        let mut problems = Problems::default();
        let filled = apply(
            &target("{ url: 'https://oapi.dingtalk.com/robot/send?access_token=tok1', preset: dingtalk, secret: SEC1 }"),
            "t",
            &mut problems,
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(filled.success_when[0]["path"], "$.errcode");
        let limit = filled.rate_limit.unwrap();
        // The key names the robot by a digest of its token: keys show in metrics.
        assert_eq!((limit.per_minute, limit.key.as_deref()), (Some(20), Some("dingtalk:80b3ad2d438bfafa")));
        let same_robot = apply(
            &target("{ url: 'https://oapi.dingtalk.com/robot/send', query: { access_token: tok1 }, preset: dingtalk }"),
            "t",
            &mut problems,
        );
        assert_eq!(same_robot.rate_limit.unwrap().key, limit.key);
        assert_eq!(filled.sign.unwrap().dingtalk.unwrap().secret, "SEC1");
    }

    #[test]
    fn explicit_settings_win_and_mistakes_are_reported() {
        let mut problems = Problems::default();
        let filled = apply(&target("{ url: 'https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=k', preset: wecom, rate_limit: { per_second: 1 }, success: [200] }"), "t", &mut problems);
        assert_eq!(filled.rate_limit.unwrap().per_second, Some(1));
        assert_eq!(filled.success, Some(vec![200]));
        apply(&target("{ url: 'https://x/y', preset: teams }"), "t", &mut problems);
        apply(&target("{ url: 'https://x/y', preset: slack, secret: s }"), "u", &mut problems);
        let paths: Vec<&str> = problems.iter().map(|(p, _)| p).collect();
        assert_eq!(paths, ["t.preset", "u.secret"]);
    }
}
