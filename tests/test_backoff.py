"""The one capped backoff every reconnect loop uses (drivers/backoff.py)."""

from __future__ import annotations

import pytest

from drivers.backoff import Backoff


def test_delays_double_up_to_the_cap_and_start_over_after_a_success() -> None:
    retry = Backoff(0.1, 1.0)
    assert [retry.next() for _ in range(6)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    retry.reset()
    assert retry.next() == pytest.approx(0.1)


def test_jitter_only_shortens_a_delay_within_its_fraction() -> None:
    retry = Backoff(1.0, 8.0, jitter=0.5)
    for expected in (1.0, 2.0, 4.0, 8.0, 8.0):
        delay = retry.next()
        assert expected * 0.5 <= delay <= expected


@pytest.mark.parametrize("args", [(0.0, 1.0), (2.0, 1.0), (0.1, 1.0, 0.5)])
def test_nonsense_settings_are_refused(args: tuple[float, ...]) -> None:
    start, cap, *factor = args
    with pytest.raises(ValueError):
        Backoff(start, cap, factor=factor[0] if factor else 2.0)
