//! The storage traits over the sled store's trees.

use std::path::Path;

use chrono::{DateTime, Utc};

use super::{Store, check_name, decode, io, key};
use crate::audit::AuditEntry;
use crate::imports::ImportPlan;
use crate::notify::{LedgerEntry, OutboxEntry};
use crate::plugins::PluginEntry;
use crate::records::Record;
use crate::rules::RuleVersion;
use crate::runs::{Approval, Run, TaskMessage};
use crate::sources::Source;
use crate::store::StoredRecord;
use crate::store::{
    AccountStore, AuditStore, CollectionSpec, Drift, Finish, Firing, LedgerStore, Lookup, Maintenance, OutboxStore,
    PluginStore, QueueKey, RecordStore, Result, RuleStore, RunId, RunStore, SourceStore, TaskStore,
};
use crate::tasks::Task;
use crate::users::{Token, User};
use crate::views::SavedView;

impl RecordStore for Store {
    fn define_collection(&self, name: &str, spec: &CollectionSpec) -> Result<()> {
        Store::define_collection(self, name, spec)
    }
    fn collection(&self, name: &str) -> Result<Option<CollectionSpec>> {
        Store::collection(self, name)
    }
    fn collection_names(&self) -> Result<Vec<String>> {
        Store::collection_names(self)
    }
    fn put_records(&self, collection: &str, records: &[Record]) -> Result<usize> {
        Store::put_records(self, collection, records)
    }
    fn commit_import(
        &self,
        collection: &str,
        writes: &[Record],
        removes: &[String],
        ledger_key: &str,
        entry: &str,
    ) -> Result<usize> {
        Store::commit_import(self, collection, writes, removes, ledger_key, entry)
    }
    fn import_ledger(&self, ledger_key: &str) -> Result<Option<String>> {
        Store::import_ledger(self, ledger_key)
    }
    fn get_record(&self, collection: &str, key: &str) -> Result<Option<Record>> {
        Store::get_record(self, collection, key)
    }
    fn lookup_records(&self, collection: &str, wanted: &[(String, &Record)]) -> Result<Vec<Lookup>> {
        // Reading in process, the lookups cost their decoding: spread it over the cores.
        use rayon::prelude::*;
        wanted.par_iter().map(|(key, candidate)| Store::lookup_record(self, collection, key, candidate)).collect()
    }
    fn scan_records(
        &self,
        collection: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Record>, Option<String>)> {
        Store::scan_records(self, collection, after, limit)
    }
    fn count_records(&self, collection: &str) -> Result<u64> {
        Store::count_records(self, collection)
    }
    fn find_by_index(&self, collection: &str, fields: &[String], record: &Record) -> Result<Vec<String>> {
        Store::find_by_index(self, collection, fields, record)
    }
    fn scan_stored(
        &self,
        collection: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<StoredRecord>, Option<String>)> {
        Store::scan_stored(self, collection, after, limit)
    }
    fn scan_index(
        &self,
        collection: &str,
        fields: &[String],
        record: &Record,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<StoredRecord>, Option<String>)> {
        Store::scan_index(self, collection, fields, record, after, limit)
    }
}

impl TaskStore for Store {
    fn task(&self, name: &str) -> Result<Option<Task>> {
        self.tasks::<Task>().get(name.as_bytes())
    }
    fn all_tasks(&self) -> Result<Vec<Task>> {
        self.tasks::<Task>().all()
    }
    fn put_task(&self, task: &Task, old_due: Option<DateTime<Utc>>, new_due: Option<DateTime<Utc>>) -> Result<()> {
        Store::put_task(self, &task.name, task, old_due, new_due)
    }
    fn remove_task(&self, name: &str, due: Option<DateTime<Utc>>) -> Result<()> {
        Store::remove_task(self, name, due)
    }
    fn due_tasks(&self, up_to: DateTime<Utc>, limit: usize) -> Result<Vec<(DateTime<Utc>, String)>> {
        Store::due_tasks(self, up_to, limit)
    }
    fn next_due(&self) -> Result<Option<DateTime<Utc>>> {
        Store::next_due(self)
    }
    fn fire(
        &self,
        task: &Task,
        due: DateTime<Utc>,
        next: Option<DateTime<Utc>>,
        queued: Option<(u8, &Run)>,
    ) -> Result<bool> {
        Ok(TaskStore::fire_all(self, &[Firing { task, due, next, queued }])?.first().copied().unwrap_or(false))
    }
    fn fire_all(&self, fires: &[Firing<'_>]) -> Result<Vec<bool>> {
        let fires: Vec<super::scheduling::Fire<'_, Task, Run>> = fires
            .iter()
            .map(|f| super::scheduling::Fire {
                name: &f.task.name,
                task: f.task,
                due: f.due,
                next: f.next,
                queued: f.queued.map(|(priority, run)| (priority, run.id, run)),
            })
            .collect();
        Store::fire_all(self, &fires)
    }
}

impl RunStore for Store {
    fn next_sequence(&self, name: &str) -> Result<u64> {
        Store::next_sequence(self, name)
    }
    fn new_run_id(&self) -> Result<RunId> {
        Store::new_run_id(self)
    }
    fn enqueue(&self, priority: u8, due: DateTime<Utc>, run: &Run) -> Result<QueueKey> {
        Store::enqueue(self, priority, due, run.id, run)
    }
    fn queued(&self) -> Result<Vec<(QueueKey, RunId)>> {
        Store::queued(self)
    }
    fn queued_after(&self, after: Option<&QueueKey>) -> Result<Option<(QueueKey, RunId)>> {
        Store::queued_after(self, after)
    }
    fn queue_len(&self) -> usize {
        Store::queue_len(self)
    }
    fn dequeue(&self, key: &QueueKey) -> Result<bool> {
        Store::dequeue(self, key)
    }
    fn start_run(&self, key: &QueueKey, run: &Run) -> Result<bool> {
        Store::start_run(self, key, run.id, run)
    }
    fn put_run(&self, run: &Run, finished: Option<DateTime<Utc>>) -> Result<()> {
        Store::put_run(self, run.id, run, finished)
    }
    fn finish_run(
        &self,
        run: &Run,
        finished: DateTime<Utc>,
        writes: &Finish<'_, LedgerEntry, OutboxEntry>,
    ) -> Result<()> {
        // Beside the run's transaction, as add_messages writes them: sled's
        // batches take its store-wide write lock.
        Store::add_messages(self, run.id, 0, writes.messages)?;
        Store::finish_run(self, run.id, run, finished, &run.task, writes)
    }
    fn finish_runs(&self, runs: &[(&Run, DateTime<Utc>)]) -> Result<()> {
        let runs: Vec<(RunId, &Run, DateTime<Utc>)> = runs.iter().map(|(run, at)| (run.id, *run, *at)).collect();
        Store::finish_runs(self, &runs)
    }
    fn run(&self, id: RunId) -> Result<Option<Run>> {
        Store::run(self, id)
    }
    fn runs(&self, before: Option<RunId>, limit: usize) -> Result<Vec<Run>> {
        Store::runs(self, before, limit)
    }
    fn all_runs(&self) -> Result<Vec<Run>> {
        Store::all_runs(self)
    }
    fn finished_before(&self, cutoff: DateTime<Utc>) -> Result<Vec<RunId>> {
        Store::finished_before(self, cutoff)
    }
    fn delete_run(&self, id: RunId, finished: Option<DateTime<Utc>>) -> Result<()> {
        Store::delete_run(self, id, finished)
    }
    fn add_messages(&self, run: RunId, first_seq: u64, messages: &[(&str, &TaskMessage)]) -> Result<()> {
        Store::add_messages(self, run, first_seq, messages)
    }
    fn add_message_rows(&self, run: RunId, rows: &crate::imports::ShownRows<'_>) -> Result<()> {
        Store::add_message_rows(self, run, rows)
    }
    fn message_rows(&self, run: RunId, lines: &[u64]) -> Result<Vec<Option<Record>>> {
        Store::message_rows(self, run, lines)
    }
    fn message_statuses(&self, run: RunId) -> Result<Vec<String>> {
        Store::message_statuses(self, run)
    }
    fn messages(
        &self,
        run: RunId,
        status: Option<&str>,
        after: Option<u64>,
        limit: usize,
    ) -> Result<(Vec<TaskMessage>, Option<u64>)> {
        Store::messages(self, run, status, after, limit)
    }
    fn put_plan(&self, run: RunId, plan: &ImportPlan) -> Result<()> {
        Store::put_plan(self, run, plan)
    }
    fn plan(&self, run: RunId) -> Result<Option<ImportPlan>> {
        Store::plan(self, run)
    }
    fn remove_plan(&self, run: RunId) -> Result<()> {
        Store::remove_plan(self, run)
    }
    fn put_approval(&self, run: RunId, approval: &Approval) -> Result<()> {
        self.approvals.put(&run.to_be_bytes(), approval)
    }
    fn approval(&self, run: RunId) -> Result<Option<Approval>> {
        self.approvals.get(&run.to_be_bytes())
    }
    fn remove_approval(&self, run: RunId) -> Result<()> {
        self.approvals.remove(&run.to_be_bytes()).map(|_| ())
    }
}

impl LedgerStore for Store {
    fn task_state(&self, task: &str, key: &str) -> Result<Option<String>> {
        Store::task_state(self, task, key)
    }
    fn apply_task_state(&self, task: &str, writes: &[(String, Option<String>)]) -> Result<()> {
        Store::apply_task_state(self, task, writes)
    }
    fn task_state_bytes(&self, task: &str) -> Result<u64> {
        let prefix = super::key(&[task.as_bytes(), b""]);
        let mut total = 0u64;
        for item in self.state.scan_prefix(&prefix) {
            let (k, v) = item.map_err(io("task_state"))?;
            total += (k.len() - prefix.len() + v.len()) as u64;
        }
        Ok(total)
    }
    fn notified(&self, task: &str) -> Result<Vec<(String, LedgerEntry)>> {
        Store::notified(self, task)
    }
    fn forget_task(&self, task: &str) -> Result<()> {
        Store::forget_task(self, task)
    }
}

impl OutboxStore for Store {
    fn outbox_due(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<(u64, OutboxEntry)>> {
        Store::outbox_due(self, now, limit)
    }
    fn outbox(&self, after: Option<u64>, limit: usize) -> Result<Vec<(u64, OutboxEntry)>> {
        Store::outbox(self, after, limit)
    }
    fn update_outbox_batch(&self, updates: &[crate::store::OutboxUpdate]) -> Result<()> {
        Store::update_outbox_batch(self, updates)
    }
    fn remove_outbox(&self, id: u64) -> Result<()> {
        self.outbox.remove(id.to_be_bytes()).map_err(io("outbox"))?;
        Ok(())
    }
}

impl AccountStore for Store {
    fn user(&self, name: &str) -> Result<Option<User>> {
        self.users::<User>().get(name.as_bytes())
    }
    fn put_user(&self, user: &User) -> Result<()> {
        self.users::<User>().put(user.name.as_bytes(), user)
    }
    fn all_users(&self) -> Result<Vec<User>> {
        self.users::<User>().all()
    }
    fn remove_user(&self, name: &str) -> Result<bool> {
        Ok(self.users.remove(name.as_bytes()).map_err(io("users"))?.is_some())
    }
    fn put_token(&self, hash: &str, token: &Token) -> Result<()> {
        self.tokens.put(hash.as_bytes(), token)
    }
    fn token(&self, hash: &str) -> Result<Option<Token>> {
        self.tokens.get(hash.as_bytes())
    }
    fn all_tokens(&self) -> Result<Vec<(String, Token)>> {
        let hashes = self.tokens.keys()?;
        Ok(hashes.into_iter().zip(self.tokens.all()?).collect())
    }
    fn remove_token(&self, hash: &str) -> Result<bool> {
        self.tokens.remove(hash.as_bytes())
    }
    fn remove_tokens_of(&self, user: &str) -> Result<()> {
        for (hash, token) in self.all_tokens()? {
            if token.user == user {
                self.tokens.remove(hash.as_bytes())?;
            }
        }
        Ok(())
    }
    fn put_password(&self, user: &str, hash: &str) -> Result<()> {
        self.passwords.put(user.as_bytes(), &hash.to_string())
    }
    fn password(&self, user: &str) -> Result<Option<String>> {
        self.passwords.get(user.as_bytes())
    }
    fn remove_password(&self, user: &str) -> Result<bool> {
        self.passwords.remove(user.as_bytes())
    }
    fn put_view(&self, user: &str, view: &SavedView) -> Result<()> {
        check_name("user", user)?;
        check_name("view", &view.name)?;
        self.views.put(&key(&[user.as_bytes(), view.name.as_bytes()]), view)
    }
    fn views(&self, user: &str) -> Result<Vec<SavedView>> {
        check_name("user", user)?;
        self.views
            .tree
            .scan_prefix(key(&[user.as_bytes(), b""]))
            .map(|item| {
                let (k, v) = item.map_err(io("views"))?;
                decode("views", &k, &v)
            })
            .collect()
    }
    fn remove_view(&self, user: &str, name: &str) -> Result<bool> {
        check_name("user", user)?;
        check_name("view", name)?;
        self.views.remove(&key(&[user.as_bytes(), name.as_bytes()]))
    }
    fn put_secret(&self, name: &str, sealed: &[u8]) -> Result<()> {
        Store::put_secret(self, name, sealed)
    }
    fn secret(&self, name: &str) -> Result<Option<Vec<u8>>> {
        Store::secret(self, name)
    }
    fn secret_names(&self) -> Result<Vec<String>> {
        Store::secret_names(self)
    }
}

impl AuditStore for Store {
    fn append_audit(&self, entry: &AuditEntry) -> Result<u64> {
        let n = Store::next_sequence(self, "audit")?;
        self.audit.put(&n.to_be_bytes(), entry)?;
        Ok(n)
    }
    fn audit_log(&self, after: Option<u64>, limit: usize) -> Result<Vec<(u64, AuditEntry)>> {
        let from = after.map_or(0, |a| a + 1).to_be_bytes();
        self.audit
            .tree
            .range(from..)
            .take(limit)
            .map(|item| {
                let (k, v) = item.map_err(io("audit"))?;
                let n = k.as_ref().try_into().map(u64::from_be_bytes).unwrap_or(0);
                Ok((n, decode("audit", &k, &v)?))
            })
            .collect()
    }
    fn remove_audit_through(&self, last: u64) -> Result<u64> {
        let mut batch = sled::Batch::default();
        let mut removed = 0;
        for item in self.audit.tree.range(..=last.to_be_bytes()) {
            let (k, _) = item.map_err(io("audit"))?;
            batch.remove(k);
            removed += 1;
        }
        self.audit.tree.apply_batch(batch).map_err(io("audit"))?;
        Ok(removed)
    }
}

impl SourceStore for Store {
    fn source(&self, name: &str) -> Result<Option<Source>> {
        self.sources.get(name.as_bytes())
    }
    fn put_source(&self, source: &Source) -> Result<()> {
        self.sources.put(source.name.as_bytes(), source)
    }
    fn remove_source(&self, name: &str) -> Result<bool> {
        self.sources.remove(name.as_bytes())
    }
    fn all_sources(&self) -> Result<Vec<Source>> {
        self.sources.all()
    }
}

impl RuleStore for Store {
    fn add_rule_version(
        &self,
        name: &str,
        source: &str,
        hash: &str,
        saved_by: &str,
        saved_at: DateTime<Utc>,
    ) -> Result<RuleVersion> {
        // One writer at a time, so two saves never take one number.
        let _guard = self.write_lock.lock().unwrap_or_else(|e| e.into_inner());
        let last = self.rule_history(name)?.last().map_or(0, |v| v.version);
        let version = RuleVersion {
            name: name.into(),
            version: last + 1,
            hash: hash.into(),
            saved_by: saved_by.into(),
            saved_at,
            source: source.into(),
        };
        self.rules.put(&key(&[name.as_bytes(), &version.version.to_be_bytes()]), &version)?;
        Ok(version)
    }
    fn rule_heads(&self) -> Result<Vec<RuleVersion>> {
        // Keys sort by name, then number: the last of each name is its newest.
        let mut heads: Vec<RuleVersion> = Vec::new();
        for version in self.rules.all()? {
            match heads.last_mut() {
                Some(head) if head.name == version.name => *head = version,
                _ => heads.push(version),
            }
        }
        Ok(heads)
    }
    fn rule_history(&self, name: &str) -> Result<Vec<RuleVersion>> {
        self.rules
            .tree
            .scan_prefix(key(&[name.as_bytes(), b""]))
            .map(|item| {
                let (k, v) = item.map_err(io("rule_versions"))?;
                decode("rule_versions", &k, &v)
            })
            .collect()
    }
    fn rule_versions(&self) -> Result<u64> {
        Ok(self.rules.tree.len() as u64)
    }
}

impl PluginStore for Store {
    fn plugin(&self, name: &str) -> Result<Option<PluginEntry>> {
        self.plugins::<PluginEntry>().get(name.as_bytes())
    }
    fn put_plugin(&self, entry: &PluginEntry) -> Result<()> {
        self.plugins::<PluginEntry>().put(entry.name.as_bytes(), entry)
    }
    fn remove_plugin(&self, name: &str) -> Result<bool> {
        self.plugins::<PluginEntry>().remove(name.as_bytes())
    }
    fn all_plugins(&self) -> Result<Vec<PluginEntry>> {
        self.plugins::<PluginEntry>().all()
    }
    fn put_blob(&self, hash: &str, bytes: &[u8]) -> Result<bool> {
        Store::put_blob(self, hash, bytes)
    }
    fn blob(&self, hash: &str) -> Result<Option<Vec<u8>>> {
        Store::blob(self, hash)
    }
    fn remove_blob(&self, hash: &str) -> Result<()> {
        Store::remove_blob(self, hash)
    }
}

impl Maintenance for Store {
    fn flush(&self) -> Result<()> {
        Store::flush(self)
    }
    fn schema_version(&self) -> Result<u32> {
        Store::schema_version(self)
    }
    fn check(&self) -> Result<Vec<Drift>> {
        Store::check(self)
    }
    fn backup(&self, dir: &Path) -> Result<()> {
        Store::backup(self, dir)
    }
    fn size_on_disk(&self) -> Result<u64> {
        self.db.size_on_disk().map_err(io("size"))
    }
}
