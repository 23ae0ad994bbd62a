-- One row per event. The first five columns are the eventsourcing library's PostgreSQL
-- stored-events table, so its recorders can read this table; the rest are ours.
CREATE TABLE IF NOT EXISTS {schema}.stored_events (
    originator_id uuid NOT NULL,
    originator_version bigint NOT NULL,
    topic text,
    state bytea,
    notification_id bigint NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    command_id uuid,
    actor text,
    trace_id text,
    hash bytea,
    command_digest bytea,
    PRIMARY KEY (originator_id, originator_version)
) WITH (
    autovacuum_vacuum_threshold = 100000000,
    autovacuum_vacuum_scale_factor = 0.5,
    autovacuum_analyze_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.01
);
