"""How hard the fuzz tests try: a few seconds each by default, far more under `make test-all`."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

LONG = os.environ.get("HYPOTHESIS_PROFILE") == "long"


def budget(quick: int, long: int) -> settings:
    """Hypothesis settings with `quick` examples, or `long` when HYPOTHESIS_PROFILE=long.

    No deadline: the machine is shared and a slow example is not a wrong one. The fixtures
    a fuzz test takes (an app, a server) are meant to outlive its examples.
    """
    return settings(
        max_examples=long if LONG else quick,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
