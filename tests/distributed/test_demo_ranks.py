"""``python -m numbanorm demo --ranks 2``: data-parallel training with SyncBatchNorm follows
the single-process loss curve."""

import os
import sys

import pytest

pytest.importorskip("mpi4py")
pytest.importorskip("sklearn")


def test_two_ranks_follow_the_single_process_loss(tmp_path):
    if not os.path.exists(os.path.join(os.path.dirname(sys.executable), "mpiexec")):
        pytest.skip("mpiexec not found next to the interpreter (pip install mpich)")
    from numbanorm.demo.parallel import run_ranks

    lines = []
    result = run_ranks(2, epochs=1, out=str(tmp_path), plot=False, echo=lines.append)
    assert len(result["single"]) == len(result["ranks"]) == 22  # 1347 training digits in batches of 64
    assert result["max_difference"] < 1e-4
    assert result["single"][-1] < result["single"][0] / 2  # it learns
    assert any("max |difference|" in line for line in lines)
