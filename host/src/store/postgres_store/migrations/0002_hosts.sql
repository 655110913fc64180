-- Schoolbell on PostgreSQL, migration 2: several hosts on one database.
-- Hosts beat; a running run holds a lease its host renews, and a lapsed
-- lease lets any host take the run over; singleton chores have a leader
-- with a term; an outbox entry is claimed by the host sending it; queue
-- entries name their task, for the overlap policy across hosts. Times
-- here are the database's own clock (now_ms), so hosts' clocks may differ.

CREATE FUNCTION now_ms() RETURNS bigint LANGUAGE sql VOLATILE
    AS $$ SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint $$;

CREATE TABLE hosts (
    id text COLLATE "C" PRIMARY KEY,
    name text NOT NULL,
    pid integer NOT NULL,
    started_ms bigint NOT NULL,
    heartbeat_ms bigint NOT NULL
);
CREATE TABLE run_leases (
    run_id bigint PRIMARY KEY,
    host text COLLATE "C" NOT NULL,
    task text COLLATE "C" NOT NULL,
    until_ms bigint NOT NULL
);
CREATE INDEX run_leases_until ON run_leases (until_ms);
CREATE INDEX run_leases_task ON run_leases (task);
CREATE TABLE leaders (chore text COLLATE "C" PRIMARY KEY, host text COLLATE "C" NOT NULL, until_ms bigint NOT NULL);

ALTER TABLE queue ADD COLUMN task text COLLATE "C";
CREATE INDEX queue_task ON queue (task);
ALTER TABLE outbox ADD COLUMN claimed_by text COLLATE "C", ADD COLUMN claim_until_ms bigint;

-- A file an import picked up, claimed for the run importing it: the claim
-- holds while that run's lease does, so two hosts never import one file.
CREATE TABLE file_claims (key text COLLATE "C" PRIMARY KEY, run_id bigint NOT NULL);
