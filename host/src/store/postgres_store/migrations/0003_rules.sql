-- Schoolbell on PostgreSQL, migration 3: the rules live in the database,
-- so a rule saved on one host takes effect on all. Each save adds a
-- version; the newest of each name is the rule every host runs.

CREATE TABLE rule_versions (
    name text COLLATE "C" NOT NULL,
    version bigint NOT NULL,
    value bytea NOT NULL,
    PRIMARY KEY (name, version)
);
