//! Trees and atomic steps for tasks, the batch queue, runs, their
//! messages, users and tokens.
//!
//! The scheduler's exactly-once guarantee rests on two transactions here:
//! `fire` advances a task's next fire time and queues the fire together,
//! and `start_run` turns a queue entry into a run together. A crash between
//! any two steps leaves either the earlier state or the later one, never a
//! fire with two runs or a fire with none.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sled::Transactional;
use sled::transaction::TransactionError;

use super::{Error, Result, Store, Typed, decode, encode, io};
use crate::store::{Finish, QueueKey, RunId};

use crate::store::sortable_millis as ts;

fn from_ts(b: &[u8]) -> Option<DateTime<Utc>> {
    let raw = u64::from_be_bytes(b.get(..8)?.try_into().ok()?) ^ (1 << 63);
    DateTime::from_timestamp_millis(raw as i64)
}

fn due_key(t: DateTime<Utc>, name: &str) -> Vec<u8> {
    let mut k = ts(t).to_vec();
    k.extend_from_slice(name.as_bytes());
    k
}

/// The id in a time-ordered key (`ts` then a big-endian id): finished runs,
/// due outbox entries.
fn id_after_ts(k: &[u8]) -> Option<u64> {
    k.get(8..16).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes)
}

/// A time-ordered key (`ts` then a big-endian id; see [`id_after_ts`]).
fn ts_id_key(t: DateTime<Utc>, id: u64) -> Vec<u8> {
    let mut k = ts(t).to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// One fire for [`Store::fire_all`]: the task `name`, saved as `task`,
/// fires for `due`, is next due at `next`, and queues run `id` at
/// `priority` unless `queued` is `None`.
pub(in crate::store) struct Fire<'a, T, R> {
    pub(in crate::store) name: &'a str,
    pub(in crate::store) task: &'a T,
    pub(in crate::store) due: DateTime<Utc>,
    pub(in crate::store) next: Option<DateTime<Utc>>,
    pub(in crate::store) queued: Option<(u8, RunId, &'a R)>,
}

fn tx_error(tree: &'static str) -> impl Fn(TransactionError<Error>) -> Error {
    move |e| match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(source) => Error::Io { tree, source: Box::new(source) },
    }
}

impl Store {
    /// Task definitions, by name.
    pub(in crate::store) fn tasks<T: Serialize + DeserializeOwned>(&self) -> Typed<T> {
        Typed::new("tasks", self.tasks.clone())
    }

    /// Users, by name.
    pub(in crate::store) fn users<U: Serialize + DeserializeOwned>(&self) -> Typed<U> {
        Typed::new("users", self.users.clone())
    }

    /// Saves a task and moves its entry in the due index, atomically.
    pub(in crate::store) fn put_task<T: Serialize>(
        &self,
        name: &str,
        task: &T,
        old_due: Option<DateTime<Utc>>,
        new_due: Option<DateTime<Utc>>,
    ) -> Result<()> {
        self.fire::<T, ()>(name, task, old_due, new_due, None)
    }

    /// Removes a task and its due entry.
    pub(in crate::store) fn remove_task(&self, name: &str, due: Option<DateTime<Utc>>) -> Result<()> {
        (&self.tasks, &self.due)
            .transaction(|(tasks, dues)| {
                tasks.remove(name.as_bytes())?;
                if let Some(d) = due {
                    dues.remove(due_key(d, name))?;
                }
                Ok(())
            })
            .map_err(tx_error("tasks"))
    }

    /// Removes a task's state (watermarks) and its dedupe ledger, so a new
    /// task of the same name starts afresh.
    pub(in crate::store) fn forget_task(&self, name: &str) -> Result<()> {
        let prefix = super::key(&[name.as_bytes(), b""]);
        for (tree, label) in [(&self.state, "task_state"), (&self.notified, "notified")] {
            let mut batch = sled::Batch::default();
            for item in tree.scan_prefix(&prefix) {
                batch.remove(item.map_err(io(label))?.0);
            }
            tree.apply_batch(batch).map_err(io(label))?;
        }
        Ok(())
    }

    /// Tasks due at or before `up_to`, earliest first.
    pub(in crate::store) fn due_tasks(
        &self,
        up_to: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<(DateTime<Utc>, String)>> {
        let mut end = ts(up_to).to_vec();
        end.push(0xff);
        let mut out = Vec::new();
        for item in self.due.range(..end).take(limit) {
            let (k, _) = item.map_err(io("tasks_by_due"))?;
            if let Some(t) = from_ts(&k) {
                out.push((t, String::from_utf8_lossy(&k[8..]).into_owned()));
            }
        }
        Ok(out)
    }

    /// The earliest due time of any task.
    pub(in crate::store) fn next_due(&self) -> Result<Option<DateTime<Utc>>> {
        Ok(self.due.first().map_err(io("tasks_by_due"))?.and_then(|(k, _)| from_ts(&k)))
    }

    /// Records a fire atomically: the task (with its next fire time), its
    /// due-index entry, and (unless the fire is skipped) a queue entry.
    pub(in crate::store) fn fire<T: Serialize, R: Serialize>(
        &self,
        name: &str,
        task: &T,
        old_due: Option<DateTime<Utc>>,
        new_due: Option<DateTime<Utc>>,
        queued: Option<(u8, DateTime<Utc>, RunId, &R)>,
    ) -> Result<()> {
        let task = encode(task);
        let queued = queued.map(|(priority, due, id, run)| (self.queue_key(priority, due, id), id, encode(run)));
        (&self.tasks, &self.due, &self.queue, &self.runs)
            .transaction(|(tasks, dues, queue, runs)| {
                tasks.insert(name.as_bytes(), task.as_slice())?;
                if let Some(d) = old_due {
                    dues.remove(due_key(d, name))?;
                }
                if let Some(d) = new_due {
                    dues.insert(due_key(d, name), &[])?;
                }
                if let Some((k, id, run)) = &queued {
                    queue.insert(k.0.as_slice(), &id.to_be_bytes())?;
                    runs.insert(&id.to_be_bytes(), run.as_slice())?;
                }
                Ok(())
            })
            .map_err(tx_error("tasks"))
    }

    /// Fires tasks, each once: only while its due entry for its due time is
    /// there, the entry goes, the task is saved with its next due entry,
    /// and its run (if any) is queued. All in one transaction: each costs
    /// two log writes and holds every other write off, and a fire a
    /// transaction put the fires of a busy second tens of milliseconds
    /// late. Whether each fired (false: someone else fired it), in order.
    pub(in crate::store) fn fire_all<T: Serialize, R: Serialize>(&self, fires: &[Fire<'_, T, R>]) -> Result<Vec<bool>> {
        struct Encoded<'a> {
            name: &'a str,
            task: Vec<u8>,
            due: Vec<u8>,
            next: Option<Vec<u8>>,
            queued: Option<(QueueKey, [u8; 8], Vec<u8>)>,
        }
        let fires: Vec<Encoded<'_>> = fires
            .iter()
            .map(|f| Encoded {
                name: f.name,
                task: encode(f.task),
                due: due_key(f.due, f.name),
                next: f.next.map(|d| due_key(d, f.name)),
                queued: f
                    .queued
                    .map(|(priority, id, run)| (self.queue_key(priority, f.due, id), id.to_be_bytes(), encode(run))),
            })
            .collect();
        (&self.tasks, &self.due, &self.queue, &self.runs)
            .transaction(|(tasks, dues, queue, runs)| {
                let mut fired = Vec::with_capacity(fires.len());
                for f in &fires {
                    if dues.remove(f.due.as_slice())?.is_none() {
                        fired.push(false);
                        continue;
                    }
                    tasks.insert(f.name.as_bytes(), f.task.as_slice())?;
                    if let Some(d) = &f.next {
                        dues.insert(d.as_slice(), &[])?;
                    }
                    if let Some((k, id, run)) = &f.queued {
                        queue.insert(k.0.as_slice(), id)?;
                        runs.insert(id, run.as_slice())?;
                    }
                    fired.push(true);
                }
                Ok(fired)
            })
            .map_err(tx_error("tasks"))
    }

    fn queue_key(&self, priority: u8, due: DateTime<Utc>, id: u64) -> QueueKey {
        QueueKey::new(priority, due, id)
    }

    /// Queues a run (a run-now, say), with its record, atomically.
    pub(in crate::store) fn enqueue<R: Serialize>(
        &self,
        priority: u8,
        due: DateTime<Utc>,
        id: RunId,
        run: &R,
    ) -> Result<QueueKey> {
        let key = self.queue_key(priority, due, id);
        let run = encode(run);
        (&self.queue, &self.runs)
            .transaction(|(queue, runs)| {
                queue.insert(key.0.as_slice(), &id.to_be_bytes())?;
                runs.insert(&id.to_be_bytes(), run.as_slice())?;
                Ok(())
            })
            .map_err(tx_error("queue"))?;
        Ok(key)
    }

    /// The queue, in the order it is served (priority, then due time):
    /// each entry's key and run id.
    pub(in crate::store) fn queued(&self) -> Result<Vec<(QueueKey, RunId)>> {
        self.queue
            .iter()
            .map(|item| {
                let (k, v) = item.map_err(io("queue"))?;
                let id = v.as_ref().try_into().map(u64::from_be_bytes).map_err(|_| Error::Corrupt {
                    tree: "queue",
                    key: hex::encode(&k),
                    reason: "a queue entry is not a run id".into(),
                })?;
                Ok((QueueKey(k.to_vec()), id))
            })
            .collect()
    }

    /// The entry served after `after` (the first when none): the
    /// dispatcher walks on past runs that must wait.
    pub(in crate::store) fn queued_after(&self, after: Option<&QueueKey>) -> Result<Option<(QueueKey, RunId)>> {
        use std::ops::Bound;
        let from = match after {
            Some(k) => Bound::Excluded(k.0.clone()),
            None => Bound::Unbounded,
        };
        let Some(item) = self.queue.range::<Vec<u8>, _>((from, Bound::Unbounded)).next() else { return Ok(None) };
        let (k, v) = item.map_err(io("queue"))?;
        let id = v.as_ref().try_into().map(u64::from_be_bytes).map_err(|_| Error::Corrupt {
            tree: "queue",
            key: hex::encode(&k),
            reason: "a queue entry is not a run id".into(),
        })?;
        Ok(Some((QueueKey(k.to_vec()), id)))
    }

    /// How many runs wait in the queue.
    pub(in crate::store) fn queue_len(&self) -> usize {
        self.queue.len()
    }

    /// Removes a queue entry without running it.
    pub(in crate::store) fn dequeue(&self, key: &QueueKey) -> Result<bool> {
        Ok(self.queue.remove(&key.0).map_err(io("queue"))?.is_some())
    }

    /// A fresh run id.
    pub(in crate::store) fn new_run_id(&self) -> Result<RunId> {
        self.next_sequence("runs")
    }

    /// Takes a queue entry and marks its run started. False if the entry
    /// is gone (another worker took it, or it was removed).
    ///
    /// Two writes, not a transaction: each sled transaction writes out and
    /// syncs the log twice, which was half of what a queued run cost. The
    /// removal comes first and decides (of two callers, one removes the
    /// entry); a crash between the two leaves a run queued in its record
    /// but not in the queue, which the next start marks interrupted (see
    /// `Engine::recover`), as it would a run the crash caught running.
    pub(in crate::store) fn start_run<R: Serialize>(&self, key: &QueueKey, id: RunId, run: &R) -> Result<bool> {
        let run = encode(run);
        if self.queue.remove(key.0.as_slice()).map_err(io("queue"))?.is_none() {
            return Ok(false);
        }
        self.runs.insert(id.to_be_bytes(), run).map_err(io("runs"))?;
        Ok(true)
    }

    /// Creates or updates a run record (progress, status). A finished run
    /// goes into the retention index by its finish time.
    pub(in crate::store) fn put_run<R: Serialize>(
        &self,
        id: RunId,
        run: &R,
        finished: Option<DateTime<Utc>>,
    ) -> Result<()> {
        let run = encode(run);
        (&self.runs, &self.finished)
            .transaction(|(runs, fin)| {
                runs.insert(&id.to_be_bytes(), run.as_slice())?;
                if let Some(t) = finished {
                    fin.insert(ts_id_key(t, id), &[])?;
                }
                Ok(())
            })
            .map_err(tx_error("runs"))
    }

    /// Finishes a run atomically with what it leaves behind: its task's
    /// state writes (watermarks), its dedupe-ledger changes and its
    /// outbox entries. A crash keeps all of them or none.
    pub(in crate::store) fn finish_run<R: Serialize, L: Serialize, O: Serialize>(
        &self,
        id: RunId,
        run: &R,
        finished: DateTime<Utc>,
        task: &str,
        writes: &Finish<'_, L, O>,
    ) -> Result<()> {
        if writes.state.is_empty() && writes.ledger.is_empty() && writes.outbox.is_empty() {
            // A run that leaves nothing else behind needs no transaction
            // (see `finish_runs`), and most runs are such.
            return self.finish_runs(&[(id, run, finished)]);
        }
        let run = encode(run);
        let ledger: Vec<(Vec<u8>, Option<Vec<u8>>)> = writes
            .ledger
            .iter()
            .map(|(key, entry)| (super::key(&[task.as_bytes(), key.as_bytes()]), entry.as_ref().map(encode)))
            .collect();
        let outbox: Vec<(u64, Vec<u8>, Vec<u8>)> =
            writes.outbox.iter().map(|(oid, due, entry)| (*oid, ts_id_key(*due, *oid), encode(entry))).collect();
        (&self.runs, &self.finished, &self.state, &self.notified, &self.outbox, &self.outbox_due)
            .transaction(|(runs, fin, state, notified, out, due)| {
                runs.insert(&id.to_be_bytes(), run.as_slice())?;
                fin.insert(ts_id_key(finished, id), &[])?;
                for (key, value) in writes.state {
                    let k = super::key(&[task.as_bytes(), key.as_bytes()]);
                    match value {
                        Some(v) => state.insert(k, v.as_bytes())?,
                        None => state.remove(k)?,
                    };
                }
                for (k, v) in &ledger {
                    match v {
                        Some(v) => notified.insert(k.as_slice(), v.as_slice())?,
                        None => notified.remove(k.as_slice())?,
                    };
                }
                for (oid, due_key, entry) in &outbox {
                    out.insert(&oid.to_be_bytes(), entry.as_slice())?;
                    due.insert(due_key.as_slice(), &[])?;
                }
                Ok(())
            })
            .map_err(tx_error("runs"))
    }

    /// Finishes runs that leave nothing else behind: for each, its
    /// retention entry, then its record, as plain writes.
    ///
    /// Not a transaction: a sled transaction writes the log out twice and
    /// holds every other write off meanwhile, which cost the batch queue a
    /// fifth of its runs. sled recovers a prefix of its log, so a crash
    /// keeps both writes, the entry alone, or neither. An entry alone points
    /// at a run still recorded running, which the next start marks
    /// interrupted and enters again under its new finish time; retention
    /// goes by the run's own finish time (see `Engine::sweep`), so the
    /// early entry removes nothing early. It stays in the index (a key of
    /// 16 bytes for each such crash), which the sweep reads past.
    pub(in crate::store) fn finish_runs<R: Serialize>(&self, runs: &[(RunId, &R, DateTime<Utc>)]) -> Result<()> {
        for (id, run, finished) in runs {
            self.finished.insert(ts_id_key(*finished, *id), &[]).map_err(io("runs_by_finish"))?;
            self.runs.insert(id.to_be_bytes(), encode(run)).map_err(io("runs"))?;
        }
        Ok(())
    }

    /// A task's dedupe-ledger entries, by dedupe key.
    pub(in crate::store) fn notified<L: DeserializeOwned>(&self, task: &str) -> Result<Vec<(String, L)>> {
        let prefix = super::key(&[task.as_bytes(), b""]);
        self.notified
            .scan_prefix(&prefix)
            .map(|item| {
                let (k, v) = item.map_err(io("notified"))?;
                let key = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
                Ok((key, decode("notified", &k, &v)?))
            })
            .collect()
    }

    /// Outbox entries due at or before `now`, oldest first, up to `limit`.
    pub(in crate::store) fn outbox_due<O: DeserializeOwned>(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<(u64, O)>> {
        let mut end = ts(now).to_vec();
        end.push(0xff);
        let mut due = Vec::new();
        for item in self.outbox_due.range(..end).take(limit) {
            let (k, _) = item.map_err(io("outbox_by_due"))?;
            let Some(oid) = id_after_ts(&k) else { continue };
            if let Some(v) = self.outbox.get(oid.to_be_bytes()).map_err(io("outbox"))? {
                due.push((oid, decode("outbox", &oid.to_be_bytes(), &v)?));
            }
        }
        Ok(due)
    }

    /// Outbox entries after the id `after`, in id order, up to `limit`.
    pub(in crate::store) fn outbox<O: DeserializeOwned>(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, O)>> {
        let start = after.map_or(0, |a| a.saturating_add(1)).to_be_bytes();
        self.outbox
            .range(start..)
            .take(limit)
            .map(|item| {
                let (k, v) = item.map_err(io("outbox"))?;
                let oid = k.as_ref().try_into().map(u64::from_be_bytes).unwrap_or_default();
                Ok((oid, decode("outbox", &k, &v)?))
            })
            .collect()
    }

    /// Saves outbox entries after delivery attempts, each moved in the due
    /// index (`None`: no longer due, as when it is sent or has failed for
    /// good) atomically with its entry, then flushes once: a sent entry must
    /// stay sent across a crash so it is never sent twice, and the mailer
    /// reports none before this returns.
    pub(in crate::store) fn update_outbox_batch(&self, updates: &[crate::store::OutboxUpdate]) -> Result<()> {
        let encoded: Vec<Vec<u8>> = updates.iter().map(|(_, entry, _, _)| encode(entry)).collect();
        // One transaction for the batch: a transaction per entry cost more
        // than sending the email.
        (&self.outbox, &self.outbox_due)
            .transaction(|(out, index)| {
                for ((oid, _, was_due, due), entry) in updates.iter().zip(&encoded) {
                    out.insert(&oid.to_be_bytes(), entry.as_slice())?;
                    index.remove(ts_id_key(*was_due, *oid))?;
                    if let Some(d) = due {
                        index.insert(ts_id_key(*d, *oid), &[])?;
                    }
                }
                Ok(())
            })
            .map_err(tx_error("outbox"))?;
        self.flush()
    }

    /// One run.
    pub(in crate::store) fn run<R: DeserializeOwned>(&self, id: RunId) -> Result<Option<R>> {
        let k = id.to_be_bytes();
        self.runs.get(k).map_err(io("runs"))?.map(|v| decode("runs", &k, &v)).transpose()
    }

    /// Runs, newest first, up to `limit`, before the id `before`.
    pub(in crate::store) fn runs<R: DeserializeOwned>(&self, before: Option<RunId>, limit: usize) -> Result<Vec<R>> {
        let end = before.unwrap_or(u64::MAX).to_be_bytes();
        self.runs
            .range(..end)
            .rev()
            .take(limit)
            .map(|item| {
                let (k, v) = item.map_err(io("runs"))?;
                decode("runs", &k, &v)
            })
            .collect()
    }

    /// Every run (for recovery after a restart).
    pub(in crate::store) fn all_runs<R: DeserializeOwned>(&self) -> Result<Vec<R>> {
        self.runs(None, usize::MAX)
    }

    /// Ids of runs finished at or before `cutoff`, oldest first.
    pub(in crate::store) fn finished_before(&self, cutoff: DateTime<Utc>) -> Result<Vec<RunId>> {
        let mut end = ts(cutoff).to_vec();
        end.push(0xff);
        let mut ids = Vec::new();
        for item in self.finished.range(..end) {
            let (k, _) = item.map_err(io("runs_by_finish"))?;
            if let Some(id) = id_after_ts(&k) {
                ids.push(id);
            }
        }
        Ok(ids)
    }

    /// Deletes a run, its messages and its index entries.
    pub(in crate::store) fn delete_run(&self, id: RunId, finished: Option<DateTime<Utc>>) -> Result<()> {
        let prefix = id.to_be_bytes();
        let mut batch = sled::Batch::default();
        for item in self.messages.scan_prefix(prefix).keys() {
            batch.remove(item.map_err(io("run_messages"))?);
        }
        self.messages.apply_batch(batch).map_err(io("run_messages"))?;
        let mut batch = sled::Batch::default();
        for item in self.message_status.scan_prefix(prefix).keys() {
            batch.remove(item.map_err(io("run_messages_by_status"))?);
        }
        self.message_status.apply_batch(batch).map_err(io("run_messages_by_status"))?;
        let mut batch = sled::Batch::default();
        for item in self.message_rows.tree.scan_prefix(prefix).keys() {
            batch.remove(item.map_err(io("run_message_chunks"))?);
        }
        self.message_rows.tree.apply_batch(batch).map_err(io("run_message_chunks"))?;
        if let Some(t) = finished {
            self.finished.remove(ts_id_key(t, id)).map_err(io("runs_by_finish"))?;
        }
        self.plans.remove(prefix).map_err(io("import_plans"))?;
        self.approvals.remove(&prefix)?;
        self.runs.remove(prefix).map_err(io("runs"))?;
        Ok(())
    }

    /// How many messages are written one by one rather than as a batch.
    const FEW: usize = 16;

    /// Appends messages to a run. `first_seq` numbers the first; each
    /// message is indexed by its status so filtering stays cheap.
    pub(in crate::store) fn add_messages<M: Serialize>(
        &self,
        run: RunId,
        first_seq: u64,
        messages: &[(&str, M)],
    ) -> Result<()> {
        // A message's key, and its entry in the status index.
        let keys = |i: usize, status: &str| {
            let seq = (first_seq + i as u64).to_be_bytes();
            let mut k = run.to_be_bytes().to_vec();
            k.extend_from_slice(&seq);
            let mut ik = run.to_be_bytes().to_vec();
            ik.extend_from_slice(status.as_bytes());
            ik.push(0);
            ik.extend_from_slice(&seq);
            (k, ik)
        };
        // Index first: a crash between the two leaves index entries that
        // point at nothing, which reads skip; never a message the filter
        // misses. A batch takes sled's store-wide write lock, waiting out
        // every transaction under way (runs starting and finishing beside
        // this one), so a few messages go in one by one instead.
        if messages.len() <= Self::FEW {
            for (i, (status, _)) in messages.iter().enumerate() {
                self.message_status.insert(keys(i, status).1, &[]).map_err(io("run_messages_by_status"))?;
            }
            for (i, (status, m)) in messages.iter().enumerate() {
                self.messages.insert(keys(i, status).0, encode(m)).map_err(io("run_messages"))?;
            }
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        let mut index = sled::Batch::default();
        for (i, (status, m)) in messages.iter().enumerate() {
            let (k, ik) = keys(i, status);
            batch.insert(k, encode(m));
            index.insert(ik, &[]);
        }
        self.message_status.apply_batch(index).map_err(io("run_messages_by_status"))?;
        self.messages.apply_batch(batch).map_err(io("run_messages"))?;
        Ok(())
    }

    /// A page of a run's messages after sequence `after`, optionally only
    /// those with `status`, and the cursor for the next page.
    pub(in crate::store) fn messages<M: DeserializeOwned>(
        &self,
        run: RunId,
        status: Option<&str>,
        after: Option<u64>,
        limit: usize,
    ) -> Result<(Vec<M>, Option<u64>)> {
        let seq_start = after.map(|a| a + 1).unwrap_or(0).to_be_bytes();
        let mut out = Vec::new();
        let mut last = None;
        let mut push = |seq: u64, out: &mut Vec<M>| -> Result<bool> {
            if out.len() == limit {
                return Ok(false);
            }
            let mut k = run.to_be_bytes().to_vec();
            k.extend_from_slice(&seq.to_be_bytes());
            if let Some(v) = self.messages.get(&k).map_err(io("run_messages"))? {
                out.push(decode("run_messages", &k, &v)?);
                last = Some(seq);
            }
            Ok(true)
        };
        match status {
            None => {
                let mut start = run.to_be_bytes().to_vec();
                start.extend_from_slice(&seq_start);
                let prefix = run.to_be_bytes();
                for item in self.messages.range(start..).keys() {
                    let k = item.map_err(io("run_messages"))?;
                    if !k.starts_with(&prefix) {
                        break;
                    }
                    let seq = u64::from_be_bytes(k[8..16].try_into().unwrap_or_default());
                    if !push(seq, &mut out)? {
                        return Ok((out, last));
                    }
                }
            }
            Some(status) => {
                let mut prefix = run.to_be_bytes().to_vec();
                prefix.extend_from_slice(status.as_bytes());
                prefix.push(0);
                let mut start = prefix.clone();
                start.extend_from_slice(&seq_start);
                for item in self.message_status.range(start..).keys() {
                    let k = item.map_err(io("run_messages_by_status"))?;
                    if !k.starts_with(&prefix) {
                        break;
                    }
                    let seq = u64::from_be_bytes(k[prefix.len()..].try_into().unwrap_or_default());
                    if !push(seq, &mut out)? {
                        return Ok((out, last));
                    }
                }
            }
        }
        Ok((out, None))
    }

    /// Keeps rows' fields by line: one value per call, keyed by its first
    /// line, so a million-row file costs a thousand writes, not a million.
    /// Calls come in line order, as the file streams.
    pub(in crate::store) fn add_message_rows(&self, run: RunId, rows: &crate::imports::ShownRows<'_>) -> Result<()> {
        let Some(first) = rows.first_line() else { return Ok(()) };
        let value = crate::store::sled_store::encode(rows);
        self.message_rows.tree.insert(chunk_key(run, first), value).map_err(io("run_message_chunks"))?;
        Ok(())
    }

    /// Rows' fields by line: each line is in the chunk that starts at or
    /// before it, and lines close together share one read.
    pub(in crate::store) fn message_rows(
        &self,
        run: RunId,
        lines: &[u64],
    ) -> Result<Vec<Option<crate::records::Record>>> {
        let mut chunk: Option<Chunk> = None;
        let mut out = Vec::with_capacity(lines.len());
        for line in lines {
            let found = self
                .message_rows
                .tree
                .range(chunk_key(run, 0)..=chunk_key(run, *line))
                .next_back()
                .transpose()
                .map_err(io("run_message_chunks"))?;
            let Some((k, v)) = found else {
                out.push(None);
                continue;
            };
            if chunk.as_ref().is_none_or(|(held, _)| held[..] != k[..]) {
                let rows = crate::store::sled_store::decode("run_message_chunks", &k, &v)?;
                chunk = Some((k.to_vec(), rows));
            }
            let rows = chunk.as_ref().map(|(_, rows)| rows.as_slice()).unwrap_or_default();
            out.push(rows.binary_search_by_key(line, |(l, _)| *l).ok().map(|i| rows[i].1.clone()));
        }
        Ok(out)
    }

    /// The statuses a run's messages have, each read once: the index is
    /// skipped past each status, so a million messages cost a few seeks.
    pub(in crate::store) fn message_statuses(&self, run: RunId) -> Result<Vec<String>> {
        let prefix = run.to_be_bytes();
        let mut out = Vec::new();
        let mut start = prefix.to_vec();
        while let Some(item) = self.message_status.range(start.clone()..).keys().next() {
            let k = item.map_err(io("run_messages_by_status"))?;
            if !k.starts_with(&prefix) {
                break;
            }
            let rest = &k[prefix.len()..];
            let Some(end) = rest.iter().position(|b| *b == 0) else { break };
            out.push(String::from_utf8_lossy(&rest[..end]).into_owned());
            // Past every key of this status: its name, then a byte above the separator.
            start = k[..prefix.len() + end].to_vec();
            start.push(1);
        }
        Ok(out)
    }

    /// Stores a run's import plan (for a test import, or one held by the
    /// mass-change guard).
    pub(in crate::store) fn put_plan<P: Serialize>(&self, run: RunId, plan: &P) -> Result<()> {
        self.plans.insert(run.to_be_bytes(), encode(plan)).map_err(io("import_plans"))?;
        Ok(())
    }

    /// A run's import plan.
    pub(in crate::store) fn plan<P: DeserializeOwned>(&self, run: RunId) -> Result<Option<P>> {
        let k = run.to_be_bytes();
        self.plans.get(k).map_err(io("import_plans"))?.map(|v| decode("import_plans", &k, &v)).transpose()
    }

    /// Drops a run's plan once it is committed or discarded.
    pub(in crate::store) fn remove_plan(&self, run: RunId) -> Result<()> {
        self.plans.remove(run.to_be_bytes()).map_err(io("import_plans"))?;
        Ok(())
    }

    /// Stores an encrypted secret (the `secrets` module encrypts it).
    pub(in crate::store) fn put_secret(&self, name: &str, sealed: &[u8]) -> Result<()> {
        self.secrets.insert(name.as_bytes(), sealed).map_err(io("secrets"))?;
        Ok(())
    }

    /// An encrypted secret.
    pub(in crate::store) fn secret(&self, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.secrets.get(name.as_bytes()).map_err(io("secrets"))?.map(|v| v.to_vec()))
    }

    /// The names of the stored secrets (never their values).
    pub(in crate::store) fn secret_names(&self) -> Result<Vec<String>> {
        self.secrets
            .iter()
            .keys()
            .map(|k| Ok(String::from_utf8_lossy(&k.map_err(io("secrets"))?).into_owned()))
            .collect()
    }
}

/// Rows kept for a run's messages are keyed by run and first line.
type Chunk = (Vec<u8>, Vec<(u64, crate::records::Record)>);

fn chunk_key(run: RunId, line: u64) -> Vec<u8> {
    let mut k = run.to_be_bytes().to_vec();
    k.extend_from_slice(&line.to_be_bytes());
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fire_moves_the_due_entry_and_queues_in_one_step() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let t0 = DateTime::from_timestamp(1_000, 0).unwrap();
        let t1 = DateTime::from_timestamp(2_000, 0).unwrap();
        store.put_task("a", &"task a".to_string(), None, Some(t0)).unwrap();
        assert_eq!(store.due_tasks(t0, 10).unwrap(), vec![(t0, "a".to_string())]);
        store.fire("a", &"task a".to_string(), Some(t0), Some(t1), Some((1, t0, 7, &"queued".to_string()))).unwrap();
        assert!(store.due_tasks(t0, 10).unwrap().is_empty());
        assert_eq!(store.next_due().unwrap(), Some(t1));
        let queued = store.queued().unwrap();
        assert_eq!(queued.len(), 1);
        assert_eq!(queued[0].1, 7);
        assert_eq!(store.run::<String>(7).unwrap().as_deref(), Some("queued"));
        assert!(store.start_run(&queued[0].0, 7, &"run".to_string()).unwrap());
        assert!(!store.start_run(&queued[0].0, 8, &"run".to_string()).unwrap(), "a queue entry starts one run");
        assert_eq!(store.run::<String>(7).unwrap().as_deref(), Some("run"));
        assert_eq!(store.run::<String>(8).unwrap(), None);
    }

    #[test]
    fn messages_page_and_filter_by_status() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let msgs: Vec<(&str, String)> =
            (0..25).map(|i| (if i % 5 == 0 { "error" } else { "new" }, format!("m{i}"))).collect();
        store.add_messages(3, 0, &msgs).unwrap();
        store.add_messages(4, 0, &[("error", "other run".to_string())]).unwrap();
        let (page, next) = store.messages::<String>(3, None, None, 10).unwrap();
        assert_eq!(page.len(), 10);
        assert_eq!(next, Some(9));
        let (page, next) = store.messages::<String>(3, None, next, 100).unwrap();
        assert_eq!((page.len(), next), (15, None));
        let (errors, _) = store.messages::<String>(3, Some("error"), None, 100).unwrap();
        assert_eq!(errors, ["m0", "m5", "m10", "m15", "m20"]);
        assert_eq!(store.message_statuses(3).unwrap(), ["error", "new"]);
        assert_eq!(store.message_statuses(4).unwrap(), ["error"]);
        assert!(store.message_statuses(5).unwrap().is_empty());
        store.delete_run(3, None).unwrap();
        assert!(store.messages::<String>(3, None, None, 10).unwrap().0.is_empty());
        assert_eq!(store.messages::<String>(4, Some("error"), None, 10).unwrap().0, ["other run"]);
    }
}
