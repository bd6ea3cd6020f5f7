"""A small fault campaign on its own topology: five trials, five different fault kinds.

The same code as bench/faults.py (tests/harness/campaign.py and faults.py): each trial
uploads 3 or 4 images of up to 4 MiB while one fault strikes (the kinds are the first
five of an order drawn from the seed), then checks every (image, region) for the
same id, the same bytes, exactly one location and the ``synced`` state.  It runs on
a topology of its own, so its kills and stops never touch the session's services.

``GLANCESYNC_FAULT_SEED`` picks another seed (and so other kinds and moments); the
failure message names the seed, each trial's fault and every problem with its evidence.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.harness.campaign import CATEGORIES, MIB, Campaign, render, summarize
from tests.harness.faults import Site

SEED = int(os.environ.get("GLANCESYNC_FAULT_SEED", "20261130"))
TRIALS = 5


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    site = Site(tmp_path_factory.mktemp("faults"))
    try:
        yield site.start()
    finally:
        site.stop()


def test_nothing_lost_corrupt_or_stuck_under_faults(site: Site) -> None:
    campaign = Campaign(site, seed=SEED, images=(3, 4), sizes=(4096, 4 * MIB), converge_timeout=300,
                        log=lambda line: None)
    try:
        trials = campaign.run(TRIALS)
    finally:
        campaign.close()
    summary = summarize(trials)
    report = [f"seed {SEED}:", render(summary)]
    for trial in trials:
        report.append(f"trial {trial.index + 1}: {trial.fault.kind}: {trial.fault.detail}")
        report += ["  " + p.render(trial.fault.kind) for p in trial.problems]
    message = "\n".join(report)
    assert len({t.fault.kind for t in trials}) == TRIALS, message
    assert all(t.uploads for t in trials), message
    assert {c: summary[c] for c in CATEGORIES} == dict.fromkeys(CATEGORIES, 0), message
