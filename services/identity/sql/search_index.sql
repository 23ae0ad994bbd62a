-- The identity search index: a projection of Person events, kept exactly once through
-- projection_tracking. Blocking columns are precomputed so a search reads a handful of
-- index entries instead of scanning everyone.
CREATE TABLE IF NOT EXISTS {schema}.search_person (
    person_id uuid PRIMARY KEY,
    given_names text NOT NULL,
    family_name text NOT NULL,
    date_of_birth date NOT NULL,
    sex text NOT NULL,
    status text NOT NULL,
    merged_into uuid,
    not_duplicates uuid[] NOT NULL DEFAULT '{{}}',
    version bigint NOT NULL,
    -- While active, the person's names ('given|family' normalised, the current name
    -- first) and identifiers ('type|value', in order), so that a search reads each
    -- candidate whole through one probe; empty once merged. (Last, as the upgrade in
    -- search_person_whole.sql adds them to an older index.)
    names text[] NOT NULL,
    identifiers text[] NOT NULL
);
-- Who was merged into whom: followed to keep people marked as not the same apart.
CREATE INDEX IF NOT EXISTS search_person_merged_into_idx
    ON {schema}.search_person (merged_into) WHERE merged_into IS NOT NULL;

-- One row per name an active person is known by (ordinal 0 is the current name).
CREATE TABLE IF NOT EXISTS {schema}.search_name (
    person_id uuid NOT NULL,
    ordinal int NOT NULL,
    given_norm text NOT NULL,
    family_norm text NOT NULL,
    given_prefix text NOT NULL,
    family_prefix text NOT NULL,
    given_phonetic text NOT NULL,
    family_phonetic text NOT NULL,
    date_of_birth date NOT NULL,
    PRIMARY KEY (person_id, ordinal)
);
CREATE INDEX IF NOT EXISTS search_name_dob_family_idx
    ON {schema}.search_name (date_of_birth, family_prefix);
CREATE INDEX IF NOT EXISTS search_name_dob_given_idx
    ON {schema}.search_name (date_of_birth, given_prefix);
CREATE INDEX IF NOT EXISTS search_name_phonetic_dob_idx
    ON {schema}.search_name (family_phonetic, date_of_birth);
CREATE INDEX IF NOT EXISTS search_name_phonetic_idx
    ON {schema}.search_name (family_phonetic, given_phonetic);
-- For a search by given name and date of birth alone (no family name).
CREATE INDEX IF NOT EXISTS search_name_given_phonetic_dob_idx
    ON {schema}.search_name (given_phonetic, date_of_birth);

-- Identifiers held by active people.
CREATE TABLE IF NOT EXISTS {schema}.search_identifier (
    type text NOT NULL,
    value text NOT NULL,
    person_id uuid NOT NULL,
    PRIMARY KEY (type, value, person_id)
);
CREATE INDEX IF NOT EXISTS search_identifier_person_idx
    ON {schema}.search_identifier (person_id);
