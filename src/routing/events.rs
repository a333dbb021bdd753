//! The event names each platform sends, as its source reads them, so that `hookrelay
//! check` can warn about a route whose `match.event` no event of its source can match
//! (a Codeup route on `Push Hook` never fires: Codeup names it `push` in the body).

use super::source::SourceKind;

const GITHUB: &[&str] = &[
    "branch_protection_rule",
    "check_run",
    "check_suite",
    "code_scanning_alert",
    "commit_comment",
    "create",
    "custom_property_values",
    "delete",
    "dependabot_alert",
    "deploy_key",
    "deployment",
    "deployment_protection_rule",
    "deployment_review",
    "deployment_status",
    "discussion",
    "discussion_comment",
    "fork",
    "github_app_authorization",
    "gollum",
    "installation",
    "installation_repositories",
    "installation_target",
    "issue_comment",
    "issues",
    "label",
    "marketplace_purchase",
    "member",
    "membership",
    "merge_group",
    "meta",
    "milestone",
    "org_block",
    "organization",
    "package",
    "page_build",
    "personal_access_token_request",
    "ping",
    "project",
    "project_card",
    "project_column",
    "projects_v2",
    "projects_v2_item",
    "public",
    "pull_request",
    "pull_request_review",
    "pull_request_review_comment",
    "pull_request_review_thread",
    "push",
    "registry_package",
    "release",
    "repository",
    "repository_advisory",
    "repository_dispatch",
    "repository_import",
    "repository_ruleset",
    "repository_vulnerability_alert",
    "secret_scanning_alert",
    "secret_scanning_alert_location",
    "security_advisory",
    "security_and_analysis",
    "sponsorship",
    "star",
    "status",
    "sub_issues",
    "team",
    "team_add",
    "watch",
    "workflow_dispatch",
    "workflow_job",
    "workflow_run",
];

/// GitLab names most events by the body's `object_kind`; others (system hooks) by the
/// `X-Gitlab-Event` header.
const GITLAB: &[&str] = &[
    "access_token",
    "build",
    "deployment",
    "emoji",
    "feature_flag",
    "issue",
    "member",
    "merge_request",
    "milestone",
    "note",
    "pipeline",
    "project",
    "push",
    "release",
    "subgroup",
    "tag_push",
    "vulnerability",
    "wiki_page",
    "work_item",
    "Push Hook",
    "Tag Push Hook",
    "Issue Hook",
    "Note Hook",
    "Merge Request Hook",
    "Wiki Page Hook",
    "Pipeline Hook",
    "Job Hook",
    "Deployment Hook",
    "Release Hook",
    "Feature Flag Hook",
    "Emoji Hook",
    "Member Hook",
    "Subgroup Hook",
    "Project Hook",
    "Resource Access Token Hook",
    "Vulnerability Hook",
    "Milestone Hook",
    "System Hook",
];

/// Codeup always sends `object_kind` in the body, so the `Codeup-Event` header's names
/// (`Push Hook`) never reach `match.event`.
const CODEUP: &[&str] = &["push", "tag_push", "merge_request", "note"];

const GITEE: &[&str] = &["Push Hook", "Tag Push Hook", "Issue Hook", "Merge Request Hook", "Note Hook"];

const TAPD: &[&str] = &[
    "story::create",
    "story::update",
    "story::delete",
    "story::bug_link",
    "story::bug_unlink",
    "story_comment::add",
    "story_comment::update",
    "story_comment::delete",
    "bug::create",
    "bug::update",
    "bug::delete",
    "bug_comment::add",
    "bug_comment::update",
    "bug_comment::delete",
    "task::create",
    "task::update",
    "task::delete",
    "task_comment::add",
    "task_comment::update",
    "task_comment::delete",
    "iteration::create",
    "iteration::update",
    "iteration::delete",
    "release::create",
    "release::update",
    "release::delete",
    "launchform::create",
    "launchform::update",
    "branch::relate",
    "branch::unrelate",
    "workitem_time_relation::bind",
    "workitem_time_relation::unbind",
];

/// The names a source can produce, where they are a closed list.
fn known(kind: SourceKind) -> Option<&'static [&'static str]> {
    match kind {
        SourceKind::Github => Some(GITHUB),
        SourceKind::Gitlab => Some(GITLAB),
        SourceKind::Codeup => Some(CODEUP),
        SourceKind::Gitee => Some(GITEE),
        SourceKind::Tapd => Some(TAPD),
        SourceKind::Codearts | SourceKind::Bkrepo | SourceKind::Standard | SourceKind::Cloudevents | SourceKind::Generic => None,
    }
}

/// Why `pattern` (an exact name or a glob from `match.event`) can never match an event of
/// `kind`, if it cannot.
pub fn never_matches(kind: SourceKind, pattern: &str) -> Option<String> {
    let names = known(kind)?;
    let matches = |name: &&str| match glob::Pattern::new(pattern) {
        Ok(glob) if pattern.contains(['*', '?', '[']) => glob.matches(name),
        _ => *name == pattern,
    };
    if names.iter().any(matches) {
        return None;
    }
    let close: Vec<&str> = names
        .iter()
        .copied()
        .filter(|name| {
            name.eq_ignore_ascii_case(pattern) || pattern.to_ascii_lowercase().replace(' ', "_").starts_with(&name.to_ascii_lowercase())
        })
        .collect();
    let hint = match close.as_slice() {
        [] => String::new(),
        close => format!(" (did you mean {}?)", close.iter().map(|name| format!("{name:?}")).collect::<Vec<_>>().join(" or ")),
    };
    Some(format!("no {} event is named {pattern:?}{hint}: this route never fires", kind.name()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_no_event_of_the_source_can_have_are_reported() {
        let codeup = never_matches(SourceKind::Codeup, "Push Hook").unwrap();
        assert_eq!(codeup, r#"no codeup event is named "Push Hook" (did you mean "push"?): this route never fires"#);
        assert_eq!(never_matches(SourceKind::Codeup, "push"), None);
        assert_eq!(never_matches(SourceKind::Tapd, "bug::*"), None);
        assert!(never_matches(SourceKind::Tapd, "bugs::*").is_some());
        assert_eq!(never_matches(SourceKind::Gitlab, "Merge Request Hook"), None);
        assert_eq!(never_matches(SourceKind::Github, "pull_request*"), None);
        assert!(never_matches(SourceKind::Github, "pull-request").is_some());
        assert_eq!(never_matches(SourceKind::Generic, "anything"), None, "a generic source names its own events");
        assert_eq!(never_matches(SourceKind::Bkrepo, "NODE_WHATEVER"), None, "not a closed list");
    }
}
