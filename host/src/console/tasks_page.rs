//! Tasks: the list (next fire local and UTC, last run, enable, disable,
//! run now, test import) and the create/edit form with a parameter form
//! made from the plugin's declared parameters, a schedule builder and a
//! preview of the next ten fires that marks what daylight saving moved.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum_extra::extract::Form;
use maud::{Markup, html};
use serde::Deserialize;

use super::layout::{self, Page};
use super::{ConsoleError, Session, blocking, local};
use crate::app::App;
use crate::plugins::{PluginKind, ValueType};
use crate::runs::{Run, RunQuery};
use crate::tasks::{Task, TaskSpec};
use crate::users::Role;

/// A submitted form, every field as sent (some repeat, such as days).
struct Fields(Vec<(String, String)>);

impl Fields {
    fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.trim()).filter(|v| !v.is_empty())
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.0.iter().filter(|(k, _)| k == name).map(|(_, v)| v.trim()).collect()
    }

    fn text(&self, name: &str) -> String {
        self.get(name).unwrap_or_default().to_string()
    }
}

const DAYS: [(&str, &str); 7] = [
    ("mon", "Monday"),
    ("tue", "Tuesday"),
    ("wed", "Wednesday"),
    ("thu", "Thursday"),
    ("fri", "Friday"),
    ("sat", "Saturday"),
    ("sun", "Sunday"),
];

/// The schedule phrase the builder's fields make.
fn phrase(f: &Fields) -> Result<String, String> {
    let time = || f.get("time").map(str::to_string).ok_or("schedule: pick a time of day".to_string());
    Ok(match f.get("every").unwrap_or("daily") {
        "once" => format!("once {}", f.get("once_at").ok_or("schedule: pick the date and time")?.replace('T', " ")),
        "minutes" => format!("every {} minutes", f.get("minutes").ok_or("schedule: how many minutes apart?")?),
        "hourly" => format!("hourly at :{:0>2}", f.get("minute").unwrap_or("0")),
        "daily" => format!("daily at {}", time()?),
        "weekly" => {
            let days = f.all("days");
            if days.is_empty() {
                return Err("schedule: pick at least one day of the week".into());
            }
            format!("weekly on {} at {}", days.join(","), time()?)
        }
        "monthly" => format!("monthly on {} at {}", f.get("day").ok_or("schedule: which day of the month?")?, time()?),
        "monthly-last" => format!("monthly on last at {}", time()?),
        "cron" => format!("cron {}", f.get("cron").ok_or("schedule: write the cron expression")?),
        other => return Err(format!("schedule: `{other}` is not a kind of schedule")),
    })
}

/// The task spec the form describes.
fn spec(f: &Fields, kind: Option<PluginKind>) -> Result<TaskSpec, String> {
    let mut params = serde_json::Map::new();
    for (k, v) in &f.0 {
        if let Some(name) = k.strip_prefix("param.")
            && !v.trim().is_empty()
        {
            params.insert(name.to_string(), serde_json::Value::String(v.trim().to_string()));
        }
    }
    let mut pauses = Vec::new();
    for line in f.text("pauses").lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (from, to) = line.split_once(" to ").unwrap_or((line, line));
        pauses.push(serde_json::json!({ "from": from.trim(), "to": to.trim() }));
    }
    let group: Vec<String> =
        f.text("group").split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect();
    let import = (kind == Some(PluginKind::ImportMapping)).then(|| {
        let percent = |name: &str, default: f64| f.get(name).and_then(|v| v.parse::<f64>().ok()).unwrap_or(default);
        serde_json::json!({
            "source": f.text("source"),
            "prefix": f.get("prefix"),
            "collection": f.text("collection"),
            "key_field": f.get("key_field"),
            "match_rule": f.get("match_rule"),
            "full_roster": f.get("full_roster").is_some(),
            "missing": f.get("missing").unwrap_or("inactivate"),
            "guard": { "confirm_percent": percent("confirm_percent", 10.0), "authorize_percent": percent("authorize_percent", 20.0) },
        })
    });
    let json = serde_json::json!({
        "name": f.text("name"),
        "plugin": f.text("plugin"),
        "params": params,
        "schedule": phrase(f)?,
        "zone": f.get("zone"),
        "start": f.get("start").map(|s| s.replace('T', " ")),
        "end": f.get("end").map(|s| s.replace('T', " ")),
        "pauses": pauses,
        "enabled": f.get("enabled").is_some(),
        "high_priority": f.get("high_priority").is_some(),
        "misfire": f.get("misfire").unwrap_or("run-once"),
        "overlap": f.get("overlap").unwrap_or("skip"),
        "import": import,
        "notify": { "group": group, "dedupe": f.get("dedupe").unwrap_or("once") },
        "owner": f.get("owner"),
    });
    serde_json::from_value(json).map_err(|e| format!("the form does not make a task: {e}"))
}

/// The tasks list.
pub(super) async fn list(State(app): State<Arc<App>>, session: Session) -> Result<Response, ConsoleError> {
    let (a, user) = (app.clone(), session.user.clone());
    let (tasks, last) = blocking(move || {
        let tasks = a.tasks().list(&user)?;
        // The newest run of each task, from one read of the recent history.
        let page = a.runs().page(&user, &RunQuery::default(), Default::default(), crate::app::PageAt::Start, 500)?;
        let mut last: HashMap<String, Run> = HashMap::new();
        for (run, _) in page.runs {
            last.entry(run.task.clone()).or_insert(run);
        }
        Ok((tasks, last))
    })
    .await?;
    let body = html! {
        h1 { "Tasks" }
        p { a role="button" href=(session.link("/tasks/new")) { "New task" } }
        div.table-scroll { table.tasks {
            thead { tr {
                th scope="col" { "Task" } th scope="col" { "Schedule" } th scope="col" { "Next fire (local)" }
                th scope="col" { "Next fire (UTC)" } th scope="col" { "Last run" } th scope="col" { "Owner" } th scope="col" { "Actions" }
            } }
            tbody {
                @for t in &tasks {
                    tr {
                        td { a href=(session.link(&format!("/tasks/{}", t.name))) { (t.name) } br; small { (t.plugin) } }
                        td { (t.schedule.to_string()) br; small { (t.zone) } }
                        td { @if !t.enabled { "disabled" } @else if let Some(n) = t.next_fire { (t.local_time(n)) } }
                        td { @if t.enabled { @if let Some(n) = t.next_fire { (n.format("%Y-%m-%d %H:%M")) } } }
                        td { @if let Some(r) = last.get(&t.name) {
                            a href=(session.link(&format!("/runs/{}", r.id))) { span class={ "status status-" (r.status.as_str()) } { (r.status.as_str()) } }
                            br; small { (local(&app, Some(r.queued_at))) }
                        } }
                        td { (t.owner) }
                        td.actions { (task_actions(&session, t)) }
                    }
                }
            }
        } }
    };
    Ok(layout::page(&session, Page::new("Tasks").section("tasks"), body).into_response())
}

fn task_actions(session: &Session, t: &Task) -> Markup {
    let action = |path: &str, label: &str, aria: String| {
        html! {
            form.inline method="post" action=(session.link(&format!("/tasks/{}/{path}", t.name))) {
                input type="hidden" name="csrf" value=(session.csrf);
                button.secondary.outline type="submit" aria-label=(aria) { (label) }
            }
        }
    };
    let may_prioritize = session.user.has(crate::users::Permission::SetPriority);
    html! {
        @if t.enabled { (action("disable", "Disable", format!("Disable {}", t.name))) }
        @else { (action("enable", "Enable", format!("Enable {}", t.name))) }
        " " (action("run-now", "Run now", format!("Run {} now", t.name)))
        @if t.import.is_some() {
            " " (action("test-import", "Test import", format!("Test import {}", t.name)))
            " " (action("test-connection", "Test connection", format!("Test the connection of {}", t.name)))
        }
        details.submit {
            summary { "Submit to batch…" }
            form method="post" action=(session.link(&format!("/tasks/{}/submit", t.name))) aria-label={ "Submit " (t.name) " to the batch queue" } {
                input type="hidden" name="csrf" value=(session.csrf);
                label for={ "at-" (t.name) } { "Start at (" (t.zone) ")" }
                input id={ "at-" (t.name) } type="datetime-local" name="at" required;
                @if may_prioritize { label { input type="checkbox" name="high_priority"; "High priority" } }
                label { input type="checkbox" name="keep"; "Keep until I delete it" }
                button type="submit" { "Submit" }
            }
        }
    }
}

#[derive(Deserialize)]
pub(super) struct SubmitForm {
    csrf: String,
    at: String,
    high_priority: Option<String>,
    keep: Option<String>,
}

/// Submits a run to the batch queue at a time (the service checks who may
/// ask for high priority).
pub(super) async fn submit(
    State(app): State<Arc<App>>,
    session: Session,
    Path(name): Path<String>,
    Form(form): Form<SubmitForm>,
) -> Result<Response, ConsoleError> {
    session.check_csrf(&app, &form.csrf)?;
    let user = session.user.clone();
    let run = blocking(move || {
        let tasks = app.tasks();
        let zone = tasks.show(&user, &name)?.tz();
        let at = crate::schedule::parse_local(&form.at.replace('T', " "), zone)
            .map_err(|e| ConsoleError::new(StatusCode::BAD_REQUEST, format!("start at: {e}")))?;
        let submit =
            crate::app::Submit { at: Some(at), high_priority: form.high_priority.is_some(), keep: form.keep.is_some() };
        Ok(tasks.submit(&user, &name, &submit)?)
    })
    .await?;
    Ok(Redirect::to(&session.link(&format!("/runs/{}", run.id))).into_response())
}

#[derive(Deserialize)]
pub(super) struct Csrf {
    csrf: String,
}

/// Enable, disable, run now, test import, test connection.
pub(super) async fn act(
    State(app): State<Arc<App>>,
    session: Session,
    Path((name, action)): Path<(String, String)>,
    Form(form): Form<Csrf>,
) -> Result<Response, ConsoleError> {
    session.check_csrf(&app, &form.csrf)?;
    let (a, user) = (app.clone(), session.user.clone());
    let task = name.clone();
    let outcome = blocking(move || {
        let tasks = a.tasks();
        Ok(match action.as_str() {
            "enable" | "disable" => {
                tasks.set_enabled(&user, &name, action == "enable")?;
                Ok("/tasks".to_string())
            }
            "run-now" => Ok(format!("/runs/{}", tasks.run_now(&user, &name)?.id)),
            "test-import" => Ok(format!("/runs/{}", tasks.test_import(&user, &name)?.id)),
            "test-connection" => Err(tasks.test_connection(&user, &name)?),
            _ => return Err(ConsoleError::new(StatusCode::NOT_FOUND, "there is no such task action")),
        })
    })
    .await?;
    match outcome {
        Ok(path) => Ok(Redirect::to(&session.link(&path)).into_response()),
        Err(said) => {
            let body = html! {
                p { a href=(session.link("/tasks")) { "← Tasks" } }
                h1 { "Connection of " (task) }
                p role="status" { (said) }
            };
            Ok(layout::page(&session, Page::new("Connection test").section("tasks"), body).into_response())
        }
    }
}

/// What the form needs to offer: plugins, sources, rules, users.
struct Choices {
    plugins: Vec<crate::plugins::PluginEntry>,
    sources: Vec<String>,
    rules: Vec<String>,
    users: Vec<String>,
}

fn choices(app: &App, user: &crate::users::User) -> Result<Choices, ConsoleError> {
    let owner = user.role == Role::Owner;
    Ok(Choices {
        plugins: app.plugins().list(user)?,
        sources: if owner { app.sources().list(user)?.into_iter().map(|s| s.name).collect() } else { Vec::new() },
        rules: app.rules().list(user).into_iter().map(|r| r.name).collect(),
        users: if owner { app.users().list(user)?.into_iter().map(|u| u.name).collect() } else { Vec::new() },
    })
}

#[derive(Deserialize, Default)]
pub(super) struct NewQuery {
    plugin: Option<String>,
}

/// The form for a new task (`?plugin=` picks the plugin first).
pub(super) async fn new(
    State(app): State<Arc<App>>,
    session: Session,
    Query(q): Query<NewQuery>,
) -> Result<Response, ConsoleError> {
    let mut fields = vec![
        ("enabled".to_string(), "on".to_string()),
        ("every".into(), "daily".into()),
        ("time".into(), "07:00".into()),
    ];
    if let Some(p) = q.plugin {
        fields.push(("plugin".into(), p));
    }
    render_form(app, session, Fields(fields), None, None).await
}

/// The form for an existing task.
pub(super) async fn edit(
    State(app): State<Arc<App>>,
    session: Session,
    Path(name): Path<String>,
) -> Result<Response, ConsoleError> {
    let (a, user) = (app.clone(), session.user.clone());
    let task = blocking(move || Ok(a.tasks().show(&user, &name)?)).await?;
    render_form(app, session, fields_of(&task), None, Some(task.name.clone())).await
}

/// A task as the form's fields.
fn fields_of(t: &Task) -> Fields {
    use crate::schedule::{MonthDay, Schedule};
    let mut f: Vec<(String, String)> = vec![
        ("name".into(), t.name.clone()),
        ("plugin".into(), t.plugin.clone()),
        ("zone".into(), t.zone.clone()),
        ("owner".into(), t.owner.clone()),
        (
            "misfire".into(),
            serde_json::to_value(t.misfire).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default(),
        ),
        (
            "overlap".into(),
            serde_json::to_value(t.overlap).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default(),
        ),
        ("group".into(), t.notify.group.join(", ")),
        (
            "dedupe".into(),
            serde_json::to_value(t.notify.dedupe).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default(),
        ),
    ];
    if t.enabled {
        f.push(("enabled".into(), "on".into()));
    }
    if t.high_priority {
        f.push(("high_priority".into(), "on".into()));
    }
    let pauses: Vec<String> = t.pauses.iter().map(|p| format!("{} to {}", p.from, p.to)).collect();
    f.push(("pauses".into(), pauses.join("\n")));
    if let Some(end) = t.end {
        f.push(("end".into(), t.local_time(end).get(..16).unwrap_or_default().replace(' ', "T")));
    }
    for (k, v) in &t.params {
        f.push((format!("param.{k}"), v.to_string().trim_matches('"').to_string()));
    }
    let hm = |t: &chrono::NaiveTime| t.format("%H:%M").to_string();
    match &t.schedule {
        Schedule::Once(at) => {
            f.extend([("every".into(), "once".into()), ("once_at".into(), at.format("%Y-%m-%dT%H:%M").to_string())])
        }
        Schedule::EveryMinutes(n) => f.extend([("every".into(), "minutes".into()), ("minutes".into(), n.to_string())]),
        Schedule::Hourly(m) => f.extend([("every".into(), "hourly".into()), ("minute".into(), m.to_string())]),
        Schedule::Daily(t) => f.extend([("every".into(), "daily".into()), ("time".into(), hm(t))]),
        Schedule::Weekly(days, t) => {
            f.extend([("every".into(), "weekly".into()), ("time".into(), hm(t))]);
            f.extend(days.iter().map(|d| ("days".to_string(), d.to_string().to_lowercase())));
        }
        Schedule::Monthly(MonthDay::Day(d), t) => {
            f.extend([("every".into(), "monthly".into()), ("day".into(), d.to_string()), ("time".into(), hm(t))])
        }
        Schedule::Monthly(MonthDay::Last, t) => {
            f.extend([("every".into(), "monthly-last".into()), ("time".into(), hm(t))])
        }
        Schedule::Cron(_, expr) => f.extend([("every".into(), "cron".into()), ("cron".into(), expr.clone())]),
    }
    if let Some(i) = &t.import {
        f.extend([
            ("source".into(), i.source.clone()),
            ("prefix".into(), i.prefix.clone().unwrap_or_default()),
            ("collection".into(), i.collection.clone()),
            ("key_field".into(), i.key_field.clone().unwrap_or_default()),
            ("match_rule".into(), i.match_rule.clone().unwrap_or_default()),
            (
                "missing".into(),
                serde_json::to_value(i.missing).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default(),
            ),
            ("confirm_percent".into(), i.guard.confirm_percent.to_string()),
            ("authorize_percent".into(), i.guard.authorize_percent.to_string()),
        ]);
        if i.full_roster {
            f.push(("full_roster".into(), "on".into()));
        }
    }
    Fields(f)
}

async fn render_form(
    app: Arc<App>,
    session: Session,
    f: Fields,
    error: Option<String>,
    editing: Option<String>,
) -> Result<Response, ConsoleError> {
    let (a, user) = (app.clone(), session.user.clone());
    let c = blocking(move || choices(&a, &user)).await?;
    let plugin = f.get("plugin").and_then(|p| c.plugins.iter().find(|e| e.name == p));
    let preview = preview_of(&app, &f);
    let title = match &editing {
        Some(name) => format!("Edit task {name}"),
        None => "New task".to_string(),
    };
    let every = f.get("every").unwrap_or("daily").to_string();
    let body = html! {
        p { a href=(session.link("/tasks")) { "← Tasks" } }
        h1 { (title) }
        @if let Some(e) = &error { p.error role="alert" { (e) } }
        form method="post" action=(session.link(&match &editing { Some(n) => format!("/tasks/{n}"), None => "/tasks".into() })) data-schedule-form {
            input type="hidden" name="csrf" value=(session.csrf);
            fieldset {
                legend { "Task" }
                label for="t-name" { "Name" }
                input id="t-name" name="name" value=(f.text("name")) required readonly[editing.is_some()] pattern="[A-Za-z0-9_-]+";
                label for="t-plugin" { "Plugin" }
                select id="t-plugin" name="plugin" required {
                    option value="" { "pick a plugin" }
                    @for p in &c.plugins {
                        option value=(p.name) selected[f.get("plugin") == Some(p.name.as_str())] { (p.name) " " (p.version) " (" (p.kind.to_string()) ")" }
                    }
                }
                button.secondary type="submit" name="action" value="plugin" formnovalidate { "Show the plugin's parameters" }
                @if !c.users.is_empty() {
                    label for="t-owner" { "Owner" }
                    select id="t-owner" name="owner" {
                        option value="" { "me" }
                        @for u in &c.users { option value=(u) selected[f.get("owner") == Some(u.as_str())] { (u) } }
                    }
                }
            }
            @if let Some(p) = plugin {
                fieldset {
                    legend { "Parameters of " (p.name) }
                    @if p.params.is_empty() { p { "This plugin has no parameters." } }
                    @for spec in &p.params {
                        @let id = format!("p-{}", spec.name);
                        @let key = format!("param.{}", spec.name);
                        label for=(id) { (spec.name) " " small { "(" (format!("{:?}", spec.value_type).to_lowercase()) @if spec.default.is_none() { ", required" } ")" } }
                        input id=(id) name=(key) value=(f.text(&key))
                            type=(match spec.value_type { ValueType::Integer | ValueType::Float => "number", ValueType::Date => "date", _ => "text" })
                            step=[matches!(spec.value_type, ValueType::Float).then_some("any")]
                            placeholder=[spec.default.as_ref().map(|d| format!("default: {}", d.to_string().trim_matches('"')))]
                            aria-describedby={ (id) "-help" };
                        small id={ (id) "-help" } { (spec.description) }
                    }
                }
            }
            fieldset {
                legend { "Schedule" }
                label for="s-every" { "Runs" }
                select id="s-every" name="every" {
                    @for (v, label) in [("once", "once"), ("minutes", "every N minutes"), ("hourly", "hourly"), ("daily", "daily"), ("weekly", "weekly, on days"), ("monthly", "monthly, on a day"), ("monthly-last", "monthly, on the last day"), ("cron", "cron expression")] {
                        option value=(v) selected[every == v] { (label) }
                    }
                }
                div.schedule-fields {
                    div { label for="s-time" { "At (time of day)" } input id="s-time" type="time" name="time" value=(f.text("time")); }
                    div { label for="s-minutes" { "Every how many minutes" } input id="s-minutes" type="number" min="1" name="minutes" value=(f.text("minutes")); }
                    div { label for="s-minute" { "Minute past the hour" } input id="s-minute" type="number" min="0" max="59" name="minute" value=(f.text("minute")); }
                    div { label for="s-day" { "Day of the month" } input id="s-day" type="number" min="1" max="31" name="day" value=(f.text("day")); }
                    div { label for="s-once" { "Once, at" } input id="s-once" type="datetime-local" name="once_at" value=(f.text("once_at")); }
                    div { label for="s-cron" { "Cron expression" } input id="s-cron" name="cron" value=(f.text("cron")) placeholder="0 7 * * mon-fri"; }
                }
                fieldset.days {
                    legend { "Days of the week (weekly)" }
                    @for (v, label) in DAYS {
                        label { input type="checkbox" name="days" value=(v) checked[f.all("days").contains(&v)]; (label) }
                    }
                }
                label for="s-zone" { "Time zone" }
                input id="s-zone" name="zone" value=(f.get("zone").unwrap_or(app.zone())) placeholder=(app.zone());
                label for="s-start" { "Starts" }
                input id="s-start" type="datetime-local" name="start" value=(f.text("start"));
                label for="s-end" { "Ends" }
                input id="s-end" type="datetime-local" name="end" value=(f.text("end"));
                label for="s-pauses" { "Pause windows, one per line: 2026-12-21 to 2027-01-01" }
                textarea id="s-pauses" name="pauses" rows="2" { (f.text("pauses")) }
                button.secondary type="submit" name="action" value="preview" formnovalidate { "Preview the next ten fires" }
                div id="preview" data-preview=(session.link("/tasks/preview")) aria-live="polite" { (preview) }
            }
            fieldset {
                legend { "Running" }
                label { input type="checkbox" name="enabled" checked[f.get("enabled").is_some()]; "Enabled" }
                label { input type="checkbox" name="high_priority" checked[f.get("high_priority").is_some()]; "High priority" }
                label for="r-overlap" { "If the last run is still going" }
                select id="r-overlap" name="overlap" {
                    @for (v, label) in [("skip", "skip this fire"), ("queue-one", "queue one run"), ("cancel-running", "cancel the running one")] {
                        option value=(v) selected[f.get("overlap") == Some(v)] { (label) }
                    }
                }
                label for="r-misfire" { "After downtime" }
                select id="r-misfire" name="misfire" {
                    @for (v, label) in [("run-once", "run once for the missed fires"), ("skip", "skip the missed fires")] {
                        option value=(v) selected[f.get("misfire") == Some(v)] { (label) }
                    }
                }
                label for="r-group" { "Notification group (users or addresses, comma-separated)" }
                input id="r-group" name="group" value=(f.text("group"));
                label for="r-dedupe" { "Notify" }
                select id="r-dedupe" name="dedupe" {
                    @for (v, label) in [("once", "once per subject"), ("until-cleared", "again once cleared"), ("every-run", "on every run")] {
                        option value=(v) selected[f.get("dedupe") == Some(v)] { (label) }
                    }
                }
            }
            @if plugin.is_some_and(|p| p.kind == PluginKind::ImportMapping) {
                fieldset {
                    legend { "Import" }
                    label for="i-source" { "Source" }
                    select id="i-source" name="source" required {
                        @for s in &c.sources { option value=(s) selected[f.get("source") == Some(s.as_str())] { (s) } }
                    }
                    label for="i-prefix" { "File name prefix" } input id="i-prefix" name="prefix" value=(f.text("prefix"));
                    label for="i-collection" { "Collection" } input id="i-collection" name="collection" value=(f.text("collection")) required;
                    label for="i-key" { "Key field" } input id="i-key" name="key_field" value=(f.text("key_field"));
                    label for="i-rule" { "Match rule" }
                    select id="i-rule" name="match_rule" {
                        option value="" { "the key field alone" }
                        @for r in &c.rules { option value=(r) selected[f.get("match_rule") == Some(r.as_str())] { (r) } }
                    }
                    label { input type="checkbox" name="full_roster" checked[f.get("full_roster").is_some()]; "The file is the full roster" }
                    label for="i-missing" { "Records the full roster lacks are" }
                    select id="i-missing" name="missing" {
                        option value="inactivate" selected[f.get("missing") != Some("remove")] { "inactivated" }
                        option value="remove" selected[f.get("missing") == Some("remove")] { "removed" }
                    }
                    label for="i-confirm" { "Ask to confirm at (% of existing records changed)" }
                    input id="i-confirm" type="number" step="any" min="0" name="confirm_percent" value=(f.get("confirm_percent").unwrap_or("10"));
                    label for="i-authorize" { "Hold for authorization at (%)" }
                    input id="i-authorize" type="number" step="any" min="0" name="authorize_percent" value=(f.get("authorize_percent").unwrap_or("20"));
                }
            }
            button type="submit" name="action" value="save" { "Save task" }
        }
    };
    Ok(layout::page(&session, Page::new(&title).section("tasks").scripted(), body).into_response())
}

/// The next ten fires the form's schedule makes, or why it makes none.
fn preview_of(app: &App, f: &Fields) -> Markup {
    let phrase = match phrase(f) {
        Ok(p) => p,
        Err(e) => return html! { p.hint { (e) } },
    };
    let zone = f.get("zone").unwrap_or(app.zone()).to_string();
    let from = f.get("start").map(|s| s.replace('T', " "));
    let parsed = phrase.parse::<crate::schedule::Schedule>();
    let tz = crate::schedule::parse_zone(&zone);
    match (parsed, tz) {
        (Err(e), _) => html! { p.error role="alert" { (e.to_string()) } },
        (_, Err(e)) => html! { p.error role="alert" { "time zone: " (e) } },
        (Ok(schedule), Ok(tz)) => {
            let start = from
                .as_deref()
                .and_then(|s| chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M").ok())
                .and_then(|l| chrono::TimeZone::from_local_datetime(&tz, &l).earliest())
                .map(|t| t.with_timezone(&chrono::Utc))
                .unwrap_or_else(|| app.now());
            let timing = crate::schedule::Timing { schedule: &schedule, tz, start, end: None, pauses: &[] };
            let fires =
                crate::schedule::explain(&schedule, tz, &timing.upcoming(start - chrono::Duration::seconds(1), 10));
            html! {
                table.preview {
                    caption { "Next fires of “" (schedule.to_string()) "” in " (zone) }
                    thead { tr { th scope="col" { "Local" } th scope="col" { "UTC" } th scope="col" { "Daylight saving" } } }
                    tbody {
                        @if fires.is_empty() { tr { td colspan="3" { "It never fires." } } }
                        @for fire in &fires {
                            tr class=[fire.moved.as_ref().map(|_| "moved")] {
                                td { (fire.local) }
                                td { (fire.at.format("%Y-%m-%d %H:%M")) }
                                td { @if let Some(m) = &fire.moved { strong { "moved: " } (m) } }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The preview alone, for the form's live refresh.
pub(super) async fn preview(
    State(app): State<Arc<App>>,
    _session: Session,
    Form(fields): Form<Vec<(String, String)>>,
) -> Response {
    preview_of(&app, &Fields(fields)).into_response()
}

/// Saves the form (new or edited), or shows it again with the preview,
/// the plugin's parameters, or what is wrong.
pub(super) async fn save(
    State(app): State<Arc<App>>,
    session: Session,
    editing: Option<Path<String>>,
    Form(fields): Form<Vec<(String, String)>>,
) -> Result<Response, ConsoleError> {
    let f = Fields(fields);
    session.check_csrf(&app, f.get("csrf").unwrap_or_default())?;
    let editing = editing.map(|Path(n)| n);
    if f.get("action") != Some("save") {
        return render_form(app, session, f, None, editing).await;
    }
    let (a, user) = (app.clone(), session.user.clone());
    let plugin = f.text("plugin");
    let kind = blocking(move || Ok(a.plugins().inspect(&user, &plugin).ok().map(|p| p.kind))).await?;
    let spec = match spec(&f, kind) {
        Ok(s) => s,
        Err(e) => return render_form(app, session, f, Some(e), editing).await,
    };
    let (a, user, replace) = (app.clone(), session.user.clone(), editing.is_some());
    let saved = blocking(move || {
        let tasks = a.tasks();
        Ok(if replace { tasks.replace(&user, spec) } else { tasks.add(&user, spec) })
    })
    .await?;
    match saved {
        Ok(_) => Ok(Redirect::to(&session.link("/tasks")).into_response()),
        Err(e) => {
            let message = ConsoleError::from(e).message;
            render_form(app, session, f, Some(message), editing).await
        }
    }
}
