"""Matching quality on a labelled synthetic set: duplicates with one error each (typos,
swapped names, alias use, mistyped dates) must be found, and twins must not be."""

from __future__ import annotations

from uuid import uuid4

from services.identity.matching import DEFAULT_THRESHOLD
from services.identity.synthetic import labelled_set, measure_quality


async def test_precision_and_recall_at_the_default_threshold_are_at_least_095(identity):
    app = identity.application
    labelled = labelled_set(300, seed=11)
    person_ids = {}
    for record in labelled.records:
        written = await app.register_person(
            uuid4(), record.name, record.date_of_birth, record.sex, [], record.aliases
        )
        person_ids[record.key] = written.person_id
    await app.wait_for_index(await identity.store.head_position(), timeout=30)

    quality = await measure_quality(app, labelled, person_ids, threshold=DEFAULT_THRESHOLD)

    assert len(labelled.duplicate_pairs) > 80 and len(labelled.twin_pairs) > 15
    assert quality.precision >= 0.95, quality.false_positives
    assert quality.recall >= 0.95, quality.missed
    twins_flagged = [pair for pair, kind in quality.false_positives if kind == "twin"]
    assert len(twins_flagged) <= len(labelled.twin_pairs) * 0.05, twins_flagged
