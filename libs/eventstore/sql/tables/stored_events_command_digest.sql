-- The digest of what each event's command asked (see records.command_digest), so that a
-- command id sent again with a different command is refused rather than answered as a
-- retry. Added to stores created before it existed; looked up first, because ALTER
-- TABLE takes a lock that would queue behind any long read of the store.
DO $$
BEGIN
    IF NOT EXISTS (
        SELECT FROM pg_attribute
        WHERE attrelid = '{schema}.stored_events'::regclass
          AND attname = 'command_digest' AND NOT attisdropped
    ) THEN
        ALTER TABLE {schema}.stored_events ADD COLUMN command_digest bytea;
    END IF;
END
$$;
