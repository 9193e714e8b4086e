"""The privacy-testing core must not import a deep-learning framework."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

CHECK = """
import sys
import numpy as np
import keras_privacy
import keras_privacy.privacy_tests as pt
data = pt.AttackInputData(loss_train=np.random.rand(50), loss_test=np.random.rand(50))
results = pt.run_attacks(data, attack_types=list(pt.AttackType)[:5])
pt.run_lira(pt.ShadowModelScores(np.random.rand(4, 10), pt.make_shadow_in_mask(4, 10)))
pt.compute_exposure_interpolation([1.0], [0.5, 2.0])
scanned = pt.ratio_bounds.EpsilonLowerBound(np.random.rand(20), np.random.rand(20), 0.05)
scanned.compute_epsilon_lower_bounds()
pt.plot_roc_curve(results.get_result_with_max_auc())
results.calculate_pd_dataframe()
loaded = [m for m in ("tensorflow", "keras", "jax", "torch") if m in sys.modules]
assert not loaded, loaded
"""


def test_core_imports_no_framework():
    # the core, used end to end (attacks, LiRA, exposure, plots, DataFrames), in a fresh
    # interpreter: no framework may appear in sys.modules
    root = pathlib.Path(__file__).resolve().parents[2]
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])
    )
    completed = subprocess.run(
        [sys.executable, "-c", CHECK],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=root,
        env=env,
    )
    assert completed.returncode == 0, completed.stderr


def test_keras_adapters_are_lazy():
    import keras_privacy.privacy_tests as pt

    assert "MembershipInferenceCallback" in dir(pt)
    with pytest.raises(AttributeError):
        pt.no_such_name  # noqa: B018
