-- How far each projection has applied each upstream feed. A projection's view update and
-- its new position commit in one transaction, so each event is applied exactly once.
CREATE TABLE IF NOT EXISTS {schema}.projection_tracking (
    projection text NOT NULL,
    upstream text NOT NULL,
    position bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (projection, upstream)
);
