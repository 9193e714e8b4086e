"""The recommendation tutorial's DP recipes and the validation grid they were chosen from.

Each recipe's comment gives the validation numbers (HR@10 on each user's validation item,
ε = 2, mean ± SE over seeds) that chose it; ``--tune`` reruns :func:`tuning_settings`.
"""

from __future__ import annotations

import dataclasses

from keras_privacy.tutorials._recommender import Setting
from keras_privacy.tutorials._recommender_context import TUTORIAL_CONTEXT

#: The DP-SGD recipe of the tutorial's plain DP rows (MF, sparsity-preserving, DCN,
#: user-level), first chosen from a single-seed grid at ε = 2 (5 epochs, d = 8: 0.049 /
#: 0.048 on the validation items, seeds 0 / 1). Re-run with 3-6 seeds per candidate
#: (:func:`tuning_settings`, ``--tune``; HR@10 on the validation items, mean ± SE over
#: seeds, fresh DP noise each): this recipe 0.040 ± 0.002 (3 seeds); d = 4 0.043 ± 0.002
#: (6); d = 16 0.044 ± 0.001 (3); 10 epochs 0.040 ± 0.005 (3); 20 epochs 0.040 ± 0.001 (6);
#: batch 16384 x 10 epochs 0.044 ± 0.002 (6); batch 32768 x 20 epochs 0.042 ± 0.005 (3);
#: batch 16384 x 10 epochs, d = 4 0.039 ± 0.001 (6). DP popularity (ε = 2) on the same
#: items: 0.043 ± 0.000 (10 noise draws). No plain-MF candidate is distinguishable from
#: the others or from DP popularity (paired SE of a difference ~0.003).
DP_RECIPE = {"epochs": 5, "dimension": 8}
#: The DP recommender of the "MF + DP popularity" rows: the best mean on the validation
#: items at ε = 2 among the same candidates each blended with the DP popularity prior
#: (σ = 10, accounted through ``other_releases``) at λ in {0, 0.5, 1, 2, 4}: batch 16384,
#: 10 epochs, d = 8, λ = 0.5: 0.045 ± 0.001 (6 seeds), paired difference to DP popularity
#: on the same users +0.002 ± 0.003. Its neighbours: λ = 0 (no prior) 0.044, λ = 1 0.044,
#: λ = 2 0.042; d = 4 with λ = 1 0.044 ± 0.001; 20 epochs with λ = 2 0.044 ± 0.001; the
#: prior as a frozen offset inside the trained model (λ = 1 in training) 0.043 ± 0.002.
BLEND_RECIPE = {
    "batch_size": 16384,
    "epochs": 10,
    "dimension": 8,
    "popularity_sigma": 10.0,
    "prior_weight": 0.5,
}
#: The time-context features (:data:`~._recommender_context.TUTORIAL_CONTEXT`).
CONTEXT_FEATURES = {
    "era_years": TUTORIAL_CONTEXT.era_years,
    "release_bucket_years": TUTORIAL_CONTEXT.release_bucket_years,
}
#: The DP recommender of the "MF with time context" rows (example-level), chosen on the
#: validation items at ε = 2 by the mean of 3 seeds (:func:`tuning_settings`; DP
#: popularity 0.043, DP popularity in the user's era 0.065 on the same items): the context
#: MF blended with the DP popularity of the user's era, σ = 3 on the (era, movie) counts,
#: λ = 2: 0.064 ± 0.004. Its neighbours: σ 3, λ 1 0.058 ± 0.002; σ 5, λ 1 0.059 ± 0.004;
#: σ 5, λ 2 0.056 ± 0.003; σ 10, λ 1 0.057 ± 0.003; σ 10, λ 0.5 0.054 ± 0.002; the context
#: MF alone 0.050 ± 0.003 (20 epochs 0.052 ± 0.005, d = 16 0.047 ± 0.005, twice the
#: learning rate 0.041 ± 0.001). At other ε the counts' σ keeps the same share of the
#: budget: :data:`CONTEXT_PRIOR_SCALE` x the σ one Gaussian release of ε would need (3.0
#: at ε = 2).
CONTEXT_RECIPE = {
    "batch_size": 16384,
    "epochs": 10,
    "dimension": 8,
    "prior_weight": 2.0,
    **CONTEXT_FEATURES,
}
CONTEXT_PRIOR_SCALE = 1.5
#: Sparsity-preserving DP-SGD's settings (same validation grid): 10% of 1 / σ_eff² on
#: the row selection, threshold τ in examples (contributions: a rating adds 1 to its
#: user's row count and 1/√17 to each of its 17 candidate movies').
SPARSE_RECIPE = {"selection_share": 0.1, "selection_threshold": 2.0}


#: Seeds per candidate of the validation grid (choose by the mean, not one noisy run).
TUNING_SEEDS = 3


def tuning_settings(batch_size: int = 8192) -> list[Setting]:
    """The grid the DP recipes were chosen from, at ε = 2, to be trained on the validation
    split (:func:`~keras_privacy.tutorials._movielens.validation_view`) with
    :data:`TUNING_SEEDS` seeds each: plain MF candidates (epochs, d, larger expected batches
    with more epochs at the same ε: the noise per update, σC/B, falls as B grows), the DP
    popularity prior as a frozen offset in training, and blends (MF + λ x prior); then the
    time-context candidates (era and release-bucket widths, epochs, d, the noise-scaled
    learning rate, and blends with the DP popularity of the user's era)."""
    base = Setting("MF", 2.0, batch_size, learning_rate=None, **DP_RECIPE)
    large = {"batch_size": 2 * batch_size, "epochs": 10}
    grid = [
        {},
        {"dimension": 4},
        {"dimension": 16},
        {"epochs": 10},
        {"epochs": 20},
        large,
        {"batch_size": 4 * batch_size, "epochs": 20},
        {**large, "dimension": 4},
        {"popularity_sigma": 10.0},
        {"popularity_sigma": 10.0, "prior_weight": 1.0},
        {"dimension": 4, "popularity_sigma": 10.0, "prior_weight": 1.0},
        {"epochs": 20, "popularity_sigma": 10.0, "prior_weight": 2.0},
        *({**large, "popularity_sigma": 10.0, "prior_weight": w} for w in (0.5, 1.0, 2.0)),
    ]
    alone = {k: v for k, v in CONTEXT_RECIPE.items() if k != "prior_weight"}
    timed = Setting("MF, time context", 2.0, learning_rate=None, **alone)
    context_grid = [
        {},
        {"era_years": 1.0},
        {"era_years": 4.0},
        {"release_bucket_years": 2},
        {"release_bucket_years": 5},
        {"epochs": 5},
        {"epochs": 20},
        {"dimension": 16},
        {"noise_step": 0.004},
        *(
            {"popularity_sigma": s, "prior_weight": w}
            for s, w in ((10.0, 0.5), (10.0, 1.0), (5.0, 1.0), (5.0, 2.0), (3.0, 1.0), (3.0, 2.0))
        ),
    ]
    return _candidates(base, grid) + _candidates(timed, context_grid)


def _candidates(base: Setting, changes: list[dict]) -> list[Setting]:
    """``base`` with each change, named after it ("MF (epochs 10)", "... (the recipe)")."""
    settings = []
    for change in changes:
        label = ", ".join(f"{k} {v:g}" for k, v in change.items()) or "the recipe"
        settings.append(dataclasses.replace(base, name=f"{base.name} ({label})", **change))
    return settings
