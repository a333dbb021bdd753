//! What chat robots' answer codes mean, one table per receiver preset. Robots answer HTTP
//! 200 with an error code in the body; a code is final (retrying cannot help: bad token,
//! keyword or signature settings, IP allow-list, bad message), throttled (the robot is
//! rate limited: pause its bucket, then retry without using up an attempt) or retryable
//! (busy). A code not in the table is retried like any failed `success_when`. Each row
//! names the vendor document it comes from.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeClass {
    Final,
    /// Pause the robot's bucket this long, then retry.
    Throttled(Duration),
    Retryable,
}

/// One receiver's answer codes.
#[derive(Debug)]
pub struct AnswerCodes {
    pub receiver: &'static str,
    /// Where the code and its message are in the answer's JSON body.
    code_field: &'static str,
    message_field: &'static str,
    codes: &'static [(i64, CodeClass)],
}

/// An answer code found in a body, with what it means.
#[derive(Debug, Clone, PartialEq)]
pub struct Classified {
    pub class: CodeClass,
    /// e.g. `dingtalk errcode 310000: keywords not in content`.
    pub reason: String,
}

const MINUTE: Duration = Duration::from_secs(60);

// DingTalk custom robot, "自定义机器人发送群消息" (open.dingtalk.com/document/orgapp/
// custom-robots-send-group-messages), error code table; a robot over 20 messages a minute
// is blocked for 10 minutes (same page, 调用频率限制). 130101 is the older "send too fast"
// code still seen in answers.
pub const DINGTALK: AnswerCodes = AnswerCodes {
    receiver: "dingtalk",
    code_field: "errcode",
    message_field: "errmsg",
    codes: &[
        (310000, CodeClass::Final), // keywords not in content / invalid timestamp / sign not match / ip not in whitelist
        (400101, CodeClass::Final), // access_token 不存在
        (400102, CodeClass::Final), // 机器人已停用
        (400106, CodeClass::Final), // 机器人不存在
        (400013, CodeClass::Final), // 群已被解散
        (400105, CodeClass::Final), // 不支持的消息类型
        (40035, CodeClass::Final),  // 缺少参数 json
        (43004, CodeClass::Final),  // 无效的 HTTP HEADER Content-Type
        (430101, CodeClass::Final), // 含有不安全的外链
        (430102, CodeClass::Final), // 含有不合适的文本
        (430103, CodeClass::Final), // 含有不合适的图片
        (430104, CodeClass::Final), // 含有不合适的内容
        (300001, CodeClass::Final), // token is not exist (observed answers)
        (410100, CodeClass::Throttled(Duration::from_secs(600))), // 发送速度太快而限流
        (130101, CodeClass::Throttled(Duration::from_secs(600))), // send too fast, exceed 20 times per minute
        (-1, CodeClass::Retryable), // 系统繁忙
    ],
};

// WeCom group robot: the global error code page (developer.work.weixin.qq.com/document/
// path/90313), robot limit 20 messages a minute ("群机器人配置说明", path/91770); a
// minute-level limit clears about a minute after it was hit.
pub const WECOM: AnswerCodes = AnswerCodes {
    receiver: "wecom",
    code_field: "errcode",
    message_field: "errmsg",
    codes: &[
        (93000, CodeClass::Final),             // webhook URL invalid, or the robot was removed from the group
        (93004, CodeClass::Final),             // 机器人被停用
        (93008, CodeClass::Final),             // 不在群里
        (40008, CodeClass::Final),             // 不合法的 msgtype
        (40058, CodeClass::Final),             // 不合法的参数
        (40035, CodeClass::Final),             // 不合法的参数
        (44004, CodeClass::Final),             // 文本消息 content 参数为空
        (45002, CodeClass::Final),             // 消息内容大小超过限制
        (45009, CodeClass::Throttled(MINUTE)), // api freq out of limit
        (45033, CodeClass::Throttled(MINUTE)), // 接口并发调用超过限制
        (-1, CodeClass::Retryable),            // 系统繁忙
    ],
};

// Feishu custom bot, "Custom bot usage guide" (open.feishu.cn/document/client-docs/bot-v3/
// add-custom-bot): 100 messages a minute and 5 a second per bot, bodies up to 20 KB; 11232
// also appears at busy times on the hour and half hour.
pub const FEISHU: AnswerCodes = AnswerCodes {
    receiver: "feishu",
    code_field: "code",
    message_field: "msg",
    codes: &[
        (19001, CodeClass::Final),             // incoming webhook access token invalid
        (19002, CodeClass::Final),             // params error, msg_type need
        (19021, CodeClass::Final),             // sign match fail or timestamp is not within one hour
        (19022, CodeClass::Final),             // Ip Not Allowed
        (19024, CodeClass::Final),             // Key Words Not Found
        (9499, CodeClass::Final),              // Bad Request (body format, or over 20 KB)
        (11232, CodeClass::Throttled(MINUTE)), // frequency limited
    ],
};

/// The table a preset brings, if any.
pub fn for_preset(preset: Option<&str>) -> Option<&'static AnswerCodes> {
    match preset? {
        "dingtalk" => Some(&DINGTALK),
        "wecom" => Some(&WECOM),
        "feishu" => Some(&FEISHU),
        _ => None,
    }
}

impl AnswerCodes {
    /// The code in an answer body and what it means; `None` for a body without a code, or
    /// a code of 0 (success).
    pub fn classify(&self, body: &[u8]) -> Option<Classified> {
        let answer: serde_json::Value = serde_json::from_slice(body).ok()?;
        let code = answer.get(self.code_field)?.as_i64().filter(|code| *code != 0)?;
        let message = answer.get(self.message_field).and_then(|m| m.as_str()).unwrap_or_default();
        let class = self.codes.iter().find(|(known, _)| *known == code).map_or(CodeClass::Retryable, |(_, class)| *class);
        Some(Classified { class, reason: format!("{} {} {code}: {message}", self.receiver, self.code_field) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_classified_per_receiver() {
        let keyword = DINGTALK.classify(br#"{"errcode":310000,"errmsg":"keywords not in content"}"#).unwrap();
        assert_eq!(keyword, Classified { class: CodeClass::Final, reason: "dingtalk errcode 310000: keywords not in content".into() });
        assert_eq!(DINGTALK.classify(br#"{"errcode":410100,"errmsg":"x"}"#).unwrap().class, CodeClass::Throttled(Duration::from_secs(600)));
        assert_eq!(DINGTALK.classify(br#"{"errcode":-1,"errmsg":"busy"}"#).unwrap().class, CodeClass::Retryable);
        assert_eq!(DINGTALK.classify(br#"{"errcode":0,"errmsg":"ok"}"#), None);
        assert_eq!(WECOM.classify(br#"{"errcode":45009,"errmsg":"api freq out of limit"}"#).unwrap().class, CodeClass::Throttled(MINUTE));
        assert_eq!(FEISHU.classify(br#"{"code":19021,"msg":"sign match fail"}"#).unwrap().class, CodeClass::Final);
        assert_eq!(FEISHU.classify(br#"{"code":12345,"msg":"new"}"#).unwrap().class, CodeClass::Retryable, "unknown codes are retried");
        assert_eq!(FEISHU.classify(b"not json"), None);
        for table in [&DINGTALK, &WECOM, &FEISHU] {
            let mut seen = std::collections::HashSet::new();
            assert!(table.codes.iter().all(|(code, _)| seen.insert(*code)), "{} lists a code twice", table.receiver);
        }
    }
}
