-- The store's single head row: the last position given out and the clock reading of the
-- last append. Every append transaction locks it first, so positions are handed out in
-- commit order without gaps, and deleting the newest event is detectable.
CREATE TABLE IF NOT EXISTS {schema}.stored_events_head (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    last_position bigint NOT NULL,
    last_recorded_at timestamptz
);
INSERT INTO {schema}.stored_events_head (last_position, last_recorded_at)
VALUES (0, NULL)
ON CONFLICT DO NOTHING;
