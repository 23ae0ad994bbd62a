CREATE UNIQUE INDEX IF NOT EXISTS stored_events_notification_id_idx
    ON {schema}.stored_events (notification_id ASC);
