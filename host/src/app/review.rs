//! Import review: a run's plan (the preview), committing a test import,
//! confirming an import the guard held, the authorization request, the
//! one-time approval code and the approval. Every decision is audited on
//! the run.

use super::{App, Error, Result, Runs, lock};
use crate::imports::{self, Hold, ImportPlan, ImportTarget};
use crate::runs::{Approval, Audit, Run, RunStatus};
use crate::store::RunId;
use crate::users::{Permission, Role, User};

/// The import review service.
pub struct ImportReview<'a> {
    pub(super) app: &'a App,
}

/// The task name of a run that imported a file given by hand (`import
/// file`): never a stored task's name (those have no `:`), so such a run
/// commits without a source to rename the file in.
pub(super) const FILE_TASK_PREFIX: &str = "file:";

/// Hours an approval code works.
pub(super) const APPROVAL_CODE_HOURS: i64 = 24;

/// Wrong tries after which an approval code is void.
pub(super) const APPROVAL_CODE_ATTEMPTS: u32 = 5;

impl ImportReview<'_> {
    fn held_plan(&self, user: &User, id: RunId) -> Result<(Run, ImportPlan)> {
        let run = self.app.runs().show(user, id)?;
        let plan = self.app.store.plan(id)?.ok_or_else(|| {
            Error::Conflict(format!(
                "run {id} has no import plan to act on (it is {}, and not a test import)",
                run.status
            ))
        })?;
        Ok((run, plan))
    }

    /// A run's import plan: what each row does (the preview).
    pub fn plan(&self, user: &User, id: RunId) -> Result<ImportPlan> {
        let mut plan = self.held_plan(user, id)?.1;
        self.app.audit(&user.name, "run.plan.read", &id.to_string(), None)?;
        let privacy = &self.app.config.privacy;
        plan.rows = plan.rows.iter().map(|r| r.masked(privacy)).collect();
        Ok(plan)
    }

    fn audit(&self, run: &mut Run, user: &User, action: &str, comment: Option<String>) {
        run.audit.push(Audit { user: user.name.clone(), at: self.app.now(), action: action.into(), comment });
    }

    /// Where the run's file came from: its task's source, or none for a
    /// file given by hand, which stays where and as it is.
    fn target(&self, run: &Run) -> Result<Option<ImportTarget>> {
        if run.task.starts_with(FILE_TASK_PREFIX) {
            return Ok(None);
        }
        let task = self.app.tasks().get(&run.task)?;
        let target =
            task.import.ok_or_else(|| Error::Conflict(format!("task `{}` is no longer an import", run.task)))?;
        Ok(Some(target))
    }

    /// Applies a plan and finishes its run.
    fn apply(&self, mut run: Run, plan: &ImportPlan, user: &User) -> Result<Run> {
        let app = self.app;
        let target = self.target(&run)?;
        let sources = app.access();
        let written = imports::commit(&app.host, plan, &format!("run {}", run.id), target.as_ref(), sources).map_err(
            |e| match e {
                imports::Error::Changed(_) => Error::Conflict(e.to_string()),
                other => Error::Invalid(other.to_string()),
            },
        )?;
        let now = app.now();
        run.summary.insert("written".into(), written);
        run.status = RunStatus::Succeeded;
        run.finished_at = Some(now);
        app.store.remove_approval(run.id)?;
        self.audit(&mut run, user, "committed", None);
        app.store.remove_plan(run.id)?;
        app.store.put_run(&run, Some(now))?;
        app.run_changed();
        app.store.flush()?;
        tracing::info!(run = run.id, by = %user.name, written, "Import committed.");
        Ok(run)
    }

    /// Commits a test import's plan exactly as planned; refused if the file,
    /// the rule or the plugin changed since. A plan the guard would hold is
    /// held now instead, for confirmation or authorization.
    pub fn commit(&self, user: &User, id: RunId) -> Result<Run> {
        let _decide = lock(&self.app.import_lock);
        let (mut run, plan) = self.held_plan(user, id)?;
        Runs::check_control(user, &run, "commit")?;
        if !run.dry_run || run.status != RunStatus::Succeeded {
            return Err(Error::Conflict(format!(
                "run {id} is {}; `import confirm` or `import approve` act on held imports",
                run.status
            )));
        }
        run.dry_run = false;
        match plan.hold {
            Hold::None => self.apply(run, &plan, user),
            hold => {
                run.status = if hold == Hold::Confirm {
                    RunStatus::AwaitingConfirmation
                } else {
                    RunStatus::AwaitingAuthorization
                };
                run.finished_at = None;
                self.audit(&mut run, user, "commit-requested", None);
                self.app.store.put_run(&run, None)?;
                self.app.run_changed();
                self.app.store.flush()?;
                Err(Error::Conflict(format!("{}; run {id} now waits for that", plan.summary())))
            }
        }
    }

    /// Refused when `user` asked for the run: its owner, whoever asked for
    /// its commit, whoever filed its authorization request. A mass change
    /// always takes two people.
    fn second_person(user: &User, run: &Run, what: &str) -> Result<()> {
        let asked = run.owner == user.name
            || run.audit.iter().any(|a| {
                a.user == user.name && matches!(a.action.as_str(), "commit-requested" | "requested-authorization")
            });
        if asked {
            return Err(Error::Forbidden(format!(
                "{} asked for run {}, so someone else must {what} it: another account owner, or a user with the authorize permission",
                user.name, run.id
            )));
        }
        Ok(())
    }

    /// Checks that the person deciding is who they say: their own
    /// password, entered now, and one they set themselves (a password an
    /// owner set for them would let that owner decide in their name).
    /// Refusals are audited.
    fn check_proof(&self, user: &User, id: RunId, proof: Proof<'_>, what: &str) -> Result<()> {
        let Proof::Password(entered) = proof else { return Ok(()) };
        let stored = self.app.store.password(&user.name)?;
        let refused = |why: &str| -> Result<()> {
            self.app.audit(&user.name, &format!("import.{what}.refused"), &format!("run {id}"), Some(why.into()))?;
            Err(Error::Forbidden(format!("to {what} run {id}, {why}")))
        };
        if !crate::users::verify_password(stored.as_deref(), entered) {
            return refused("enter your own password again (it did not match)");
        }
        if stored.as_deref().is_some_and(crate::users::is_provisional) {
            return refused(
                "your password was set by someone else: change it on your profile first, so that the decision is yours alone",
            );
        }
        Ok(())
    }

    /// Confirms an import held for confirmation, and commits it: the
    /// account owner or an authorizer, who is not whoever asked for it,
    /// proving who they are (see [`Proof`]).
    pub fn confirm(&self, user: &User, id: RunId, comment: Option<String>, proof: Proof<'_>) -> Result<Run> {
        let _decide = lock(&self.app.import_lock);
        let (mut run, plan) = self.held_plan(user, id)?;
        if user.role != Role::Owner && !user.has(Permission::Authorize) {
            return Err(Error::Forbidden(format!(
                "confirming run {id} needs the account owner or the authorize permission"
            )));
        }
        if run.status != RunStatus::AwaitingConfirmation {
            return Err(Error::Conflict(format!("run {id} is {}, not awaiting confirmation", run.status)));
        }
        Self::second_person(user, &run, "confirm")?;
        self.check_proof(user, id, proof, "confirm")?;
        self.audit(&mut run, user, "confirmed", comment);
        self.apply(run, &plan, user)
    }

    /// Files an authorization request, with a comment saying why.
    pub fn request(&self, user: &User, id: RunId, comment: &str) -> Result<Run> {
        let _decide = lock(&self.app.import_lock);
        let (mut run, _) = self.held_plan(user, id)?;
        Runs::check_control(user, &run, "request authorization for")?;
        if run.status != RunStatus::AwaitingAuthorization {
            return Err(Error::Conflict(format!("run {id} is {}, not awaiting authorization", run.status)));
        }
        if comment.trim().is_empty() {
            return Err(Error::Invalid(
                "an authorization request needs a comment saying why these changes are wanted".into(),
            ));
        }
        self.audit(&mut run, user, "requested-authorization", Some(comment.trim().into()));
        self.app.store.put_run(&run, None)?;
        self.app.run_changed();
        self.app.store.flush()?;
        Ok(run)
    }

    /// Issues a one-time approval code for a held import (authorize
    /// permission only), for the requester to release it with: 128 random
    /// bits, shown once. Only its MAC under the server's key is kept, apart
    /// from the run; it works once, for `APPROVAL_CODE_HOURS`, and dies
    /// after `APPROVAL_CODE_ATTEMPTS` wrong tries. A new code replaces the old.
    pub fn code(&self, user: &User, id: RunId) -> Result<String> {
        let _decide = lock(&self.app.import_lock);
        if !user.has(Permission::Authorize) {
            return Err(Error::Forbidden("issuing approval codes needs the authorize permission".into()));
        }
        let (mut run, _) = self.held_plan(user, id)?;
        if run.status != RunStatus::AwaitingAuthorization {
            return Err(Error::Conflict(format!("run {id} is {}, not awaiting authorization", run.status)));
        }
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).map_err(|e| Error::Failed(format!("no randomness for a code: {e}")))?;
        let code = hex::encode_upper(bytes);
        let approval = Approval {
            mac: self.code_mac(id, &code),
            issued_by: user.name.clone(),
            expires_at: self.app.now() + chrono::Duration::hours(APPROVAL_CODE_HOURS),
            failed_attempts: 0,
        };
        self.app.store.put_approval(id, &approval)?;
        self.audit(&mut run, user, "issued-approval-code", None);
        self.app.store.put_run(&run, None)?;
        self.app.run_changed();
        self.app.store.flush()?;
        Ok(code)
    }

    fn code_message(run: RunId, code: &str) -> String {
        format!("run {run}: {}", code.trim().to_uppercase())
    }

    fn code_mac(&self, run: RunId, code: &str) -> String {
        hex::encode(crate::secrets::mac(&self.app.approval_key, Self::code_message(run, code).as_bytes()))
    }

    /// Checks a code against the run's outstanding one, counting a wrong try.
    fn check_code(&self, id: RunId, code: &str) -> Result<()> {
        let store = &self.app.store;
        let refused = |why: &str| Err(Error::Forbidden(format!("that approval code is not valid for run {id}: {why}")));
        let Some(mut approval) = store.approval(id)? else {
            return refused("none is outstanding (codes work once; an authorizer issues a new one)");
        };
        if self.app.now() >= approval.expires_at {
            store.remove_approval(id)?;
            return refused("it expired; an authorizer issues a new one");
        }
        let stored = hex::decode(&approval.mac).unwrap_or_default();
        let same = crate::secrets::verify_mac(&self.app.approval_key, Self::code_message(id, code).as_bytes(), &stored);
        if !same {
            approval.failed_attempts += 1;
            if approval.failed_attempts >= APPROVAL_CODE_ATTEMPTS {
                store.remove_approval(id)?;
                store.flush()?;
                return refused("too many wrong tries, so the code is void; an authorizer issues a new one");
            }
            store.put_approval(id, &approval)?;
            store.flush()?;
            return refused("it does not match");
        }
        Ok(())
    }

    /// Approves a held import, after its authorization request: by a user
    /// with the authorize permission, or by the requester (whoever may
    /// control the run) with the one-time code an authorizer gave them.
    ///
    /// An authorizer's approval (without a code) takes a [`Proof`], as a
    /// confirmation does; the code is the requester's proof.
    pub fn approve(&self, user: &User, id: RunId, code: Option<&str>, proof: Proof<'_>) -> Result<Run> {
        let _decide = lock(&self.app.import_lock);
        let (mut run, plan) = self.held_plan(user, id)?;
        if run.status != RunStatus::AwaitingAuthorization {
            return Err(Error::Conflict(format!("run {id} is {}, not awaiting authorization", run.status)));
        }
        if !run.audit.iter().any(|a| a.action == "requested-authorization") {
            return Err(Error::Conflict(format!(
                "run {id} has no authorization request yet; file one with a comment first (`schoolbell import request {id} --comment ...`)"
            )));
        }
        let by_code = match code {
            Some(c) => {
                Runs::check_control(user, &run, "release")?;
                if run.audit.iter().any(|a| a.action == "issued-approval-code" && a.user == user.name) {
                    return Err(Error::Forbidden(format!(
                        "{} issued this run's approval code, so cannot also use it; the requester releases the import with it",
                        user.name
                    )));
                }
                self.check_code(id, c)?;
                true
            }
            None if user.has(Permission::Authorize) => {
                Self::second_person(user, &run, "approve")?;
                self.check_proof(user, id, proof, "approve")?;
                false
            }
            None => {
                return Err(Error::Forbidden(
                    "approving needs the authorize permission, or the one-time approval code an authorizer issued for this run"
                        .into(),
                ));
            }
        };
        self.audit(&mut run, user, if by_code { "approved-with-code" } else { "approved" }, None);
        self.apply(run, &plan, user)
    }
}

/// How the person confirming or approving a held import proves who they
/// are, by the face they use.
#[derive(Debug, Clone, Copy)]
pub enum Proof<'a> {
    /// Their own password, entered with the decision (the console's
    /// dialog, the API's body). A bearer token or a session alone is not
    /// enough: either may have been made by someone else.
    Password(&'a str),
    /// The CLI on the server: whoever runs it is the machine's operator,
    /// already trusted with the data directory itself.
    Local,
}
