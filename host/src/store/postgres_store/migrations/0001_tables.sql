-- Schoolbell on PostgreSQL, migration 1: every table the store traits use.
-- Released migrations never change; a change is a new file after them.
--
-- Values are the same bytes the embedded store keeps (a schema version,
-- then postcard), so a copy between the two moves them unchanged. Text keys
-- sort bytewise (COLLATE "C"), as the embedded store's keys do, and
-- instants used for ordering are milliseconds since 1970.

CREATE TABLE meta (key text COLLATE "C" PRIMARY KEY, value bytea NOT NULL);
CREATE TABLE sequences (name text COLLATE "C" PRIMARY KEY, value bigint NOT NULL);

CREATE TABLE collections (
    name text COLLATE "C" PRIMARY KEY,
    spec bytea NOT NULL,
    count bigint NOT NULL DEFAULT 0
);
CREATE TABLE records (
    collection text COLLATE "C" NOT NULL,
    key text COLLATE "C" NOT NULL,
    value bytea NOT NULL,
    PRIMARY KEY (collection, key)
);
-- An index entry: the indexed fields joined by `+`, their folded text.
CREATE TABLE record_index (
    collection text COLLATE "C" NOT NULL,
    fields text COLLATE "C" NOT NULL,
    value text COLLATE "C" NOT NULL,
    key text COLLATE "C" NOT NULL,
    PRIMARY KEY (collection, fields, value, key)
);
CREATE TABLE import_ledger (key text COLLATE "C" PRIMARY KEY, entry text NOT NULL);

CREATE TABLE tasks (name text COLLATE "C" PRIMARY KEY, value bytea NOT NULL, due_ms bigint);
CREATE INDEX tasks_due ON tasks (due_ms, name) WHERE due_ms IS NOT NULL;

-- The queue's key sorts as it is served: priority, due time, run id.
CREATE TABLE queue (key bytea PRIMARY KEY, run_id bigint NOT NULL);
CREATE TABLE runs (id bigint PRIMARY KEY, value bytea NOT NULL, finished_ms bigint);
CREATE INDEX runs_finished ON runs (finished_ms, id) WHERE finished_ms IS NOT NULL;
CREATE TABLE run_messages (
    run bigint NOT NULL,
    seq bigint NOT NULL,
    status text COLLATE "C" NOT NULL,
    value bytea NOT NULL,
    PRIMARY KEY (run, seq)
);
CREATE INDEX run_messages_status ON run_messages (run, status, seq);
CREATE TABLE run_message_rows (
    run bigint NOT NULL,
    first_line bigint NOT NULL,
    value bytea NOT NULL,
    PRIMARY KEY (run, first_line)
);
CREATE TABLE import_plans (run bigint PRIMARY KEY, value bytea NOT NULL);
CREATE TABLE approvals (run bigint PRIMARY KEY, value bytea NOT NULL);

CREATE TABLE task_state (
    task text COLLATE "C" NOT NULL,
    key text COLLATE "C" NOT NULL,
    value text NOT NULL,
    PRIMARY KEY (task, key)
);
CREATE TABLE notified (
    task text COLLATE "C" NOT NULL,
    key text COLLATE "C" NOT NULL,
    value bytea NOT NULL,
    PRIMARY KEY (task, key)
);
CREATE TABLE outbox (id bigint PRIMARY KEY, value bytea NOT NULL, due_ms bigint);
CREATE INDEX outbox_due ON outbox (due_ms, id) WHERE due_ms IS NOT NULL;

CREATE TABLE users (name text COLLATE "C" PRIMARY KEY, value bytea NOT NULL);
CREATE TABLE tokens (hash text COLLATE "C" PRIMARY KEY, user_name text COLLATE "C" NOT NULL, value bytea NOT NULL);
CREATE INDEX tokens_user ON tokens (user_name);
CREATE TABLE passwords (user_name text COLLATE "C" PRIMARY KEY, hash text NOT NULL);
CREATE TABLE views (
    user_name text COLLATE "C" NOT NULL,
    name text COLLATE "C" NOT NULL,
    value bytea NOT NULL,
    PRIMARY KEY (user_name, name)
);
CREATE TABLE audit (id bigint PRIMARY KEY, value bytea NOT NULL);
CREATE TABLE secrets (name text COLLATE "C" PRIMARY KEY, sealed bytea NOT NULL);
CREATE TABLE sources (name text COLLATE "C" PRIMARY KEY, value bytea NOT NULL);
CREATE TABLE plugins (name text COLLATE "C" PRIMARY KEY, value bytea NOT NULL);
CREATE TABLE blobs (hash text COLLATE "C" PRIMARY KEY, bytes bytea NOT NULL);
