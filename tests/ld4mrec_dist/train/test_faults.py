"""The fault-injection hook: untouched batches unless asked; otherwise the process exits
once the given global step is done, the first time only."""

import pytest

from ld4mrec_dist.run_dir import FAULT_MARKER
from ld4mrec_dist.train import faults


def test_without_a_fault_the_batches_pass_through_untouched(tmp_path):
    batches = [1, 2, 3]
    assert faults.with_injected_fault(batches, -1, 0, tmp_path) is batches
    assert faults.with_injected_fault(batches, 2, 5, tmp_path) is batches  # the step is in the past


@pytest.mark.parametrize("fail_at, first_step, seen", [(7, 5, [1, 2]), (6, 5, [1]), (8, 5, [1, 2, 3])])
def test_the_process_exits_after_the_step_even_at_an_epochs_end(tmp_path, monkeypatch, fail_at, first_step, seen):
    exits = []

    def fake_exit(code):
        exits.append(code)
        raise SystemExit(code)

    monkeypatch.setattr(faults.os, "_exit", fake_exit)
    got = []
    with pytest.raises(SystemExit):
        for batch in faults.with_injected_fault([1, 2, 3], fail_at, first_step, tmp_path):
            got.append(batch)  # the loop's step for this batch is global step first_step + len(got)
    assert got == seen and exits == [1]
    assert (tmp_path / FAULT_MARKER).read_text() == f"killed at step {fail_at}\n"
    # After the restart the marker is there: no second fault.
    assert list(faults.with_injected_fault([1, 2, 3], fail_at, first_step, tmp_path)) == [1, 2, 3]


def test_a_step_beyond_the_epoch_does_not_fire(tmp_path):
    assert list(faults.with_injected_fault([1, 2], 10, 5, tmp_path)) == [1, 2]
    assert not (tmp_path / FAULT_MARKER).exists()
