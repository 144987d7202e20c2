"""Progress inside a round: a batched group reports each epoch (models x epochs), the ETA
counts model-epochs, and finished models are not counted twice."""

from __future__ import annotations

import logging

import pytest

from privacy_gate.training.progress import Progress


def test_epochs_of_a_group_show_and_the_models_count_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with (
        caplog.at_level(logging.INFO, logger="privacy_gate.training"),
        Progress(8, initial=2, epochs=3, enabled=False) as progress,
    ):
        for _ in range(3):  # a group of 4 models, 3 epochs
            progress.epoch_done(4)
        assert progress._partial == 12
        progress.update(4)
        assert (progress.done, progress._partial) == (6, 0)
        progress.update(2)  # models trained one at a time: no epochs reported
        assert (progress.done, progress._partial) == (8, 0)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("2 of 8 reference models already finished")
    assert lines[1].startswith("10/24 model-epochs of the reference models (2/8 models done")
    assert lines[3].startswith("18/24 model-epochs") and "ETA" in lines[3]
    assert lines[4].startswith("6/8 reference models trained")
    assert lines[5].startswith("8/8 reference models trained") and "ETA 0 s" in lines[5]
