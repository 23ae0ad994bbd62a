-- Finds the events a command already appended, so a retried command appends nothing.
CREATE INDEX IF NOT EXISTS stored_events_command_id_idx
    ON {schema}.stored_events (command_id)
    WHERE command_id IS NOT NULL;
