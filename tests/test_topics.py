"""Topic creation: how many partitions a new topic gets, and that existing ones are kept."""

from __future__ import annotations

import uuid

from infra.settings import Settings
from infra.topics import all_topics, ensure_topics, partitions_of, topics_of


def _namespaced(base: Settings, **changes: object) -> Settings:
    return base.model_copy(update={"namespace": f"t{uuid.uuid4().hex[:8]}.", **changes})


def test_new_topics_get_one_partition_by_default(services: Settings) -> None:
    default = Settings.model_fields["partitions"].default
    assert default == 1
    settings = _namespaced(services, partitions=default)
    ensure_topics(settings)
    for topic in all_topics(settings):
        assert partitions_of(settings.bootstrap, topic) == [0], topic


def test_new_topics_get_the_configured_partitions_and_existing_ones_keep_theirs(
    services: Settings,
) -> None:
    settings = _namespaced(services, partitions=3)
    quotes = topics_of(settings).quotes
    ensure_topics(settings, [quotes])
    assert partitions_of(settings.bootstrap, quotes) == [0, 1, 2]

    # A later start with another setting creates what is missing and leaves the rest.
    later = settings.model_copy(update={"partitions": 2})
    ensure_topics(later)
    assert partitions_of(settings.bootstrap, quotes) == [0, 1, 2]
    assert partitions_of(settings.bootstrap, topics_of(later).trades) == [0, 1]


def test_the_partitions_setting_is_read_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("TAPEFLOW_PARTITIONS", "4")
    assert Settings().partitions == 4
