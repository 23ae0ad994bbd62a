-- Upgrades a search index made before search_person kept each person's names and
-- identifiers (before 2026-12-01): adds the columns and fills them from the index's own
-- name and identifier rows, which hold what the projection writes there. Identifiers are
-- ordered by code point, as the projection orders them.
ALTER TABLE {schema}.search_person ADD COLUMN names text[], ADD COLUMN identifiers text[];
UPDATE {schema}.search_person p SET
    names = ARRAY(SELECT n.given_norm || '|' || n.family_norm FROM {schema}.search_name n
                  WHERE n.person_id = p.person_id ORDER BY n.ordinal),
    identifiers = ARRAY(SELECT i.type || '|' || i.value FROM {schema}.search_identifier i
                        WHERE i.person_id = p.person_id
                        ORDER BY i.type COLLATE "C", i.value COLLATE "C");
ALTER TABLE {schema}.search_person ALTER COLUMN names SET NOT NULL,
    ALTER COLUMN identifiers SET NOT NULL;
