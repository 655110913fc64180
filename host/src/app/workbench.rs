//! The rules workbench: list and read the admin's rules, test a rule (the
//! saved one, or a draft) over sample rows, and save one. Anyone signed in
//! may read and test; only the account owner saves.

use std::sync::Arc;

use serde::Serialize;

use super::{App, Error, Result, owner_only};
use crate::records::Record;
use crate::rules::{self, Rule, RuleInfo, RuleSet, RuleVersion};
use crate::store::prelude::*;
use crate::users::User;

/// The rules workbench.
pub struct Workbench<'a> {
    pub(super) app: &'a App,
}

/// A rule's verdict on one sample row.
#[derive(Debug, Clone, Serialize)]
pub struct RowVerdict {
    /// The row, from 1.
    pub row: usize,
    /// Whether it matched (none: the rule failed on it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matched: Option<bool>,
    /// The values that decided.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Why the rule failed on this row.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A rule tested over sample rows.
#[derive(Debug, Clone, Serialize)]
pub struct RuleTest {
    /// The rule's name.
    pub rule: String,
    /// Its source's hash.
    pub hash: String,
    /// How many rows matched.
    pub matched: usize,
    /// Each row's verdict.
    pub rows: Vec<RowVerdict>,
    /// What the rule printed, capped.
    pub printed: rules::Printed,
    /// Why the test stopped before its last row, when it did.
    pub stopped: Option<String>,
}

/// Which version of a rule to test.
pub enum Draft<'s> {
    /// The saved rule of that name.
    Saved,
    /// A draft's source, shown in errors as `shown`.
    Source {
        /// Where the draft came from (a file, or "NAME.rhai (draft)").
        shown: &'s str,
        /// Its text.
        source: &'s str,
    },
}

fn rule_error(e: rules::Error) -> Error {
    match e {
        rules::Error::Unknown { .. } => Error::NotFound(e.to_string()),
        rules::Error::Save { .. } => Error::Failed(e.to_string()),
        other => Error::Invalid(other.to_string()),
    }
}

impl Workbench<'_> {
    /// The loaded rules.
    pub fn list(&self, _user: &User) -> Vec<RuleInfo> {
        self.app.host.rules().list()
    }

    /// A rule and its source.
    pub fn show(&self, _user: &User, name: &str) -> Result<(RuleInfo, String)> {
        self.app.host.rules().source(name).map_err(rule_error)
    }

    /// A rule (saved or draft) over sample rows with `params`. Saves nothing.
    pub fn test(
        &self,
        user: &User,
        name: &str,
        draft: Draft<'_>,
        rows: &[Record],
        params: &Record,
    ) -> Result<RuleTest> {
        // A test runs the author's code over data: it needs what saving needs.
        owner_only(user, "test rules")?;
        let rules = self.app.host.rules();
        let rule: Arc<Rule> = match draft {
            Draft::Saved => rules.get(name).map_err(rule_error)?,
            Draft::Source { shown, source } => Arc::new(rules.compile(name, shown, source).map_err(rule_error)?),
        };
        test_rule(rules, &rule, rows, params)
    }

    /// Where a draft fails to compile: line, column (1-based) and why;
    /// none when it compiles.
    pub fn compile_error(&self, name: &str, source: &str) -> Option<(usize, usize, String)> {
        let shown = format!("{name}.rhai (draft)");
        match self.app.host.rules().compile(name, &shown, source) {
            Ok(_) => None,
            Err(rules::Error::Compile { line, column, message, .. }) => Some((line, column, message)),
            Err(e) => Some((0, 0, e.to_string())),
        }
    }

    /// Saves a rule (the account owner only). Runs started from now on use
    /// it; a broken rule is refused with its line and nothing is written.
    /// `shown` names where the source came from in errors. Each save adds
    /// a version to the rule's history. Where hosts share the store, the
    /// rule lives there, and the other hosts take it up within a second;
    /// else it is written into the rules folder.
    pub fn save(&self, user: &User, name: &str, shown: &str, source: &str) -> Result<RuleInfo> {
        owner_only(user, "save rules")?;
        let (rules, store, now) = (self.app.host.rules(), &self.app.store, self.app.now());
        let rule = if store.shared() {
            let mut rule = rules.prepare(name, shown, source).map_err(rule_error)?;
            let version = store.add_rule_version(name, source, &rule.hash, &user.name, now)?;
            rule.file = version.shown();
            rules.insert(rule)
        } else {
            let rule = rules.save(name, shown, source).map_err(rule_error)?;
            store.add_rule_version(name, source, &rule.hash, &user.name, now)?;
            rule
        };
        self.app.audit(&user.name, "rule.save", &rule.name, Some(rule.hash.clone()))?;
        tracing::info!(rule = %rule.name, by = %user.name, hash = %rule.hash, "Rule saved.");
        Ok(rule.info())
    }

    /// A rule's saved versions, oldest first: who saved each, when, and
    /// its text. A rule only ever edited in the rules folder has none.
    pub fn history(&self, _user: &User, name: &str) -> Result<Vec<RuleVersion>> {
        let versions = self.app.store.rule_history(name)?;
        if versions.is_empty() {
            // A rule that was never saved here still exists when it is loaded.
            self.app.host.rules().get(name).map_err(rule_error)?;
        }
        Ok(versions)
    }

    /// Where hosts share the store: takes up the rules another host saved
    /// since this one last looked. Returns whether any changed.
    pub fn follow(&self) -> Result<bool> {
        let store = &self.app.store;
        let seen = self.app.rules_seen.load(std::sync::atomic::Ordering::Acquire);
        if !store.shared() || store.rule_versions()? == seen {
            return Ok(false);
        }
        let now = store.rule_versions()?;
        let heads = store.rule_heads()?;
        self.app
            .host
            .rules()
            .load_versions(&heads)
            .map_err(|errors| Error::Invalid(errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; ")))?;
        self.app.rules_seen.store(now, std::sync::atomic::Ordering::Release);
        tracing::info!(rules = heads.len(), "Rules saved on another host taken up.");
        Ok(true)
    }
}

/// Where hosts share the store, the rules live in it: saves each rule of
/// `folder` the store does not have yet as its first version (so the
/// shipped rules reach the database), then makes the newest version of
/// every rule the ones `into` runs. Returns how many versions the store
/// holds, which [`Workbench::follow`] watches.
pub(super) fn share(
    store: &dyn Backend,
    folder: &RuleSet,
    into: &RuleSet,
    now: chrono::DateTime<chrono::Utc>,
) -> std::result::Result<u64, super::OpenError> {
    let held: std::collections::HashSet<String> = store.rule_heads()?.into_iter().map(|v| v.name).collect();
    for (name, source) in folder.sources().into_iter().filter(|(name, _)| !held.contains(name)) {
        let hash = folder.get(&name).map(|r| r.hash.clone()).unwrap_or_default();
        store.add_rule_version(&name, &source, &hash, "rules folder", now)?;
    }
    let versions = store.rule_versions()?;
    into.load_versions(&store.rule_heads()?)
        .map_err(|errors| super::OpenError::Rules(errors.iter().map(|e| e.to_string()).collect()))?;
    Ok(versions)
}

/// A compiled rule over sample rows: the one loop the workbench and
/// `rule test FILE` (which needs no data directory) share.
///
/// It is bounded as a whole, not only per row: at most `[rules]
/// test_max_rows` rows (more is refused before any runs), and `[rules]
/// test_max_ms` in all (the rows after that are not tested, and the answer
/// says so). What the rule prints goes into the answer, not the log; the
/// metrics do not count it.
pub fn test_rule(rules: &rules::RuleSet, rule: &Arc<Rule>, rows: &[Record], params: &Record) -> Result<RuleTest> {
    let limits = rules.limits();
    if rows.len() > limits.test_max_rows {
        return Err(Error::Invalid(format!(
            "a rule test takes at most {} sample rows ([rules] test_max_rows), and this one has {}; test with fewer",
            limits.test_max_rows,
            rows.len()
        )));
    }
    let until = std::time::Instant::now() + std::time::Duration::from_millis(limits.test_max_ms);
    let selector = rules.selector(rule.clone(), params).uncounted();
    let mut pass = selector.pass();
    let mut stopped = None;
    let (verdicts, printed) = rules::collecting_prints(|| {
        let mut verdicts = Vec::with_capacity(rows.len());
        for (i, row) in rows.iter().enumerate() {
            if std::time::Instant::now() > until {
                stopped = Some(format!(
                    "stopped after {i} of {} rows: the test ran past its {} ms ([rules] test_max_ms)",
                    rows.len(),
                    limits.test_max_ms
                ));
                break;
            }
            verdicts.push(match selector.decide(&mut pass, &crate::records::fields(row), true) {
                Ok(d) => RowVerdict { row: i + 1, matched: Some(d.matched), reason: Some(d.reason), error: None },
                Err(e) => RowVerdict { row: i + 1, matched: None, reason: None, error: Some(e.to_string()) },
            });
        }
        verdicts
    });
    let matched = verdicts.iter().filter(|r| r.matched == Some(true)).count();
    Ok(RuleTest { rule: rule.name.clone(), hash: rule.hash.clone(), matched, rows: verdicts, printed, stopped })
}
