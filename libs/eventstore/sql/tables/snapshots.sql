-- Aggregate snapshots, shaped like the library's snapshots table.
CREATE TABLE IF NOT EXISTS {schema}.snapshots (
    originator_id uuid NOT NULL,
    originator_version bigint NOT NULL,
    topic text,
    state bytea,
    PRIMARY KEY (originator_id, originator_version)
);
