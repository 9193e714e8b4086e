"""What a membership inference attack found: ROC curves, per-slice results and their
collections, with the metrics, the DataFrame and the JSON forms.

Everything is NumPy; no deep-learning framework is imported. The names follow TensorFlow
Privacy's API; :mod:`keras_privacy.privacy_tests.data_structures` gathers them under its
module name.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import os
import re
from typing import Any

import numpy as np

from keras_privacy.privacy_tests import metrics
from keras_privacy.privacy_tests.attack_inputs import AttackType, SingleSliceSpec, SlicingFeature
from keras_privacy.privacy_tests.tf_privacy_forms import DataSize, EpsilonLowerBoundValue

__all__ = [
    "AttackResults",
    "AttackResultsCollection",
    "PrivacyMetric",
    "PrivacyReportMetadata",
    "RocCurve",
    "SingleAttackResult",
]


@dataclasses.dataclass
class RocCurve:
    """ROC curve of an attack, and the metrics read off it.

    ``test_train_ratio`` = n_nonmembers / n_members (for the PPV).
    """

    tpr: np.ndarray
    fpr: np.ndarray
    thresholds: np.ndarray
    test_train_ratio: float = 1.0

    def get_auc(self) -> float:
        return metrics.auc(self.fpr, self.tpr)

    def get_attacker_advantage(self) -> float:
        return metrics.attacker_advantage(self.fpr, self.tpr)

    def get_ppv(self) -> float:
        return metrics.positive_predictive_value(self.fpr, self.tpr, self.test_train_ratio)

    def get_tpr_at_fpr(self, max_fpr: float) -> float:
        return metrics.tpr_at_fpr(self.fpr, self.tpr, max_fpr)

    def to_dict(self) -> dict[str, Any]:
        return {
            "tpr": self.tpr.tolist(),
            "fpr": self.fpr.tolist(),
            "thresholds": [t if math.isfinite(t) else None for t in self.thresholds.tolist()],
            "test_train_ratio": self.test_train_ratio,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RocCurve:
        thresholds = [np.inf if t is None else t for t in data["thresholds"]]
        return cls(
            np.asarray(data["tpr"], float),
            np.asarray(data["fpr"], float),
            np.asarray(thresholds, float),
            float(data["test_train_ratio"]),
        )


class PrivacyMetric(enum.Enum):
    """Metrics that a privacy report can plot."""

    AUC = "AUC"
    ATTACKER_ADVANTAGE = "Attacker advantage"
    PPV = "Positive predictive value"
    TPR_AT_1_PERCENT_FPR = "TPR at 1% FPR"
    TPR_AT_0_1_PERCENT_FPR = "TPR at 0.1% FPR"
    EPSILON_LOWER_BOUND = "Epsilon lower bound"

    def __str__(self) -> str:
        return self.value


@dataclasses.dataclass
class SingleAttackResult:
    """Result of one attack on one slice.

    Attributes:
      slice_spec: the slice attacked.
      attack_type: the attack.
      roc_curve: its ROC curve (members are positives).
      data_size: ``{"train": n_members, "test": n_nonmembers}`` in the slice (a
        :class:`DataSize` ``(ntrain, ntest)`` is accepted and stored in that form).
      membership_scores_train, membership_scores_test: per-example scores (higher = more
        likely a member) used to build the ROC; for trained attacks these are out-of-fold
        predictions on the (balanced) evaluation set.
      epsilon_lower_bound: an empirical lower bound on ε, see
        :func:`keras_privacy.privacy_tests.metrics.compute_epsilon_lower_bound`.
      train_indices, test_indices: with ``run_attacks(..., return_slice_indices=True)``,
        the indices of the slice's members and non-members (None for the entire dataset).
      epsilon_lower_bound_value: TF Privacy's form of the bound (arrays of bounds per
        method), for results built by hand as TF Privacy's users do; used by
        :meth:`get_epsilon_lower_bound` when ``epsilon_lower_bound`` is not given.
    """

    slice_spec: SingleSliceSpec
    attack_type: AttackType
    roc_curve: RocCurve
    data_size: dict[str, int]
    membership_scores_train: np.ndarray | None = None
    membership_scores_test: np.ndarray | None = None
    epsilon_lower_bound: metrics.EpsilonLowerBound | None = None
    train_indices: np.ndarray | None = None
    test_indices: np.ndarray | None = None
    epsilon_lower_bound_value: EpsilonLowerBoundValue | None = None

    def __post_init__(self) -> None:
        if isinstance(self.data_size, DataSize):
            self.data_size = {"train": self.data_size.ntrain, "test": self.data_size.ntest}

    def get_auc(self) -> float:
        return self.roc_curve.get_auc()

    def get_attacker_advantage(self) -> float:
        return self.roc_curve.get_attacker_advantage()

    def get_ppv(self) -> float:
        return self.roc_curve.get_ppv()

    def get_tpr_at_fpr(self, max_fpr: float) -> float:
        return self.roc_curve.get_tpr_at_fpr(max_fpr)

    def get_epsilon_lower_bound(self) -> float:
        """The ε lower bound (NaN if none was computed); from TF Privacy's form, the largest
        of the bounds with the largest mean."""
        if self.epsilon_lower_bound is not None:
            return self.epsilon_lower_bound.epsilon
        if self.epsilon_lower_bound_value is not None:
            return self.epsilon_lower_bound_value.get_max_epsilon()
        return float("nan")

    def metric(self, privacy_metric: PrivacyMetric) -> float:
        getters = {
            PrivacyMetric.AUC: self.get_auc,
            PrivacyMetric.ATTACKER_ADVANTAGE: self.get_attacker_advantage,
            PrivacyMetric.PPV: self.get_ppv,
            PrivacyMetric.TPR_AT_1_PERCENT_FPR: lambda: self.get_tpr_at_fpr(0.01),
            PrivacyMetric.TPR_AT_0_1_PERCENT_FPR: lambda: self.get_tpr_at_fpr(0.001),
            PrivacyMetric.EPSILON_LOWER_BOUND: self.get_epsilon_lower_bound,
        }
        return float(getters[privacy_metric]())

    def __str__(self) -> str:
        return (
            f"SingleAttackResult(slice={self.slice_spec}, attack_type={self.attack_type}, "
            f"AUC={self.get_auc():.2f}, attacker advantage={self.get_attacker_advantage():.2f}, "
            f"PPV={self.get_ppv():.2f}, ε lower bound={self.get_epsilon_lower_bound():.2f})"
        )

    def to_dict(self, include_scores: bool = False) -> dict[str, Any]:
        spec = self.slice_spec
        value = spec.value
        if isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, np.generic):
            value = value.item()
        data: dict[str, Any] = {
            "slice": {"feature": spec.feature.name, "value": value, "name": spec.name},
            "attack_type": self.attack_type.name,
            "data_size": dict(self.data_size),
            "roc_curve": self.roc_curve.to_dict(),
            "metrics": {m.value: _json_float(self.metric(m)) for m in PrivacyMetric},
            "epsilon_lower_bound": (
                None
                if self.epsilon_lower_bound is None
                else dataclasses.asdict(self.epsilon_lower_bound)
            ),
        }
        if self.epsilon_lower_bound_value is not None:
            data["epsilon_lower_bound_value"] = {
                getattr(method, "name", str(method)): np.asarray(bounds, float).tolist()
                for method, bounds in self.epsilon_lower_bound_value.bounds.items()
            }
        if include_scores and self.membership_scores_train is not None:
            data["membership_scores_train"] = self.membership_scores_train.tolist()
            data["membership_scores_test"] = self.membership_scores_test.tolist()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SingleAttackResult:
        feature = SlicingFeature[data["slice"]["feature"]]
        value = data["slice"]["value"]
        if isinstance(value, list):
            value = tuple(value)
        bound = data.get("epsilon_lower_bound")
        scores_train = data.get("membership_scores_train")
        scores_test = data.get("membership_scores_test")
        return cls(
            slice_spec=SingleSliceSpec(feature, value, data["slice"].get("name")),
            attack_type=AttackType[data["attack_type"]],
            roc_curve=RocCurve.from_dict(data["roc_curve"]),
            data_size={k: int(v) for k, v in data["data_size"].items()},
            membership_scores_train=None if scores_train is None else np.asarray(scores_train),
            membership_scores_test=None if scores_test is None else np.asarray(scores_test),
            epsilon_lower_bound=None if bound is None else metrics.EpsilonLowerBound(**bound),
            epsilon_lower_bound_value=_bound_value(data.get("epsilon_lower_bound_value")),
        )


def _bound_value(data: dict[str, list[float]] | None) -> EpsilonLowerBoundValue | None:
    if data is None:
        return None
    return EpsilonLowerBoundValue({name: np.asarray(b, float) for name, b in data.items()})


def _json_float(value: float) -> float | None:
    return value if math.isfinite(value) else None


@dataclasses.dataclass
class PrivacyReportMetadata:
    """Facts about the attacked model, for privacy-vs-utility reports."""

    accuracy_train: float | None = None
    accuracy_test: float | None = None
    epoch_num: int | None = None
    model_variant_label: str = "Default model variant"
    loss_train: float | None = None
    loss_test: float | None = None


_DATAFRAME_COLUMNS = [
    "slice feature",
    "slice value",
    "train size",
    "test size",
    "attack type",
    "AUC",
    "Attacker advantage",
    "Positive predictive value",
    "TPR at 1% FPR",
    "TPR at 0.1% FPR",
    "Epsilon lower bound",
]


@dataclasses.dataclass
class AttackResults:
    """All results of :func:`run_attacks`: one :class:`SingleAttackResult` per attack × slice."""

    single_attack_results: list[SingleAttackResult]
    privacy_report_metadata: PrivacyReportMetadata | None = None
    skipped_slices: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.single_attack_results:
            raise ValueError("AttackResults needs at least one result")

    def calculate_pd_dataframe(self, columns: str = "keras_privacy") -> Any:
        """The results as a ``pandas.DataFrame``, one row per attack and slice.

        ``columns="tf_privacy"`` gives TF Privacy's column set and order instead (see
        :func:`keras_privacy.privacy_tests.tf_privacy_forms.tf_privacy_dataframe`).
        """
        import pandas as pd

        if columns == "tf_privacy":
            from keras_privacy.privacy_tests import tf_privacy_forms

            return tf_privacy_forms.tf_privacy_dataframe(self)
        if columns != "keras_privacy":
            raise ValueError(
                f"columns must be 'keras_privacy' or 'tf_privacy', received {columns!r}"
            )

        rows = []
        for result in self.single_attack_results:
            rows.append(
                [
                    result.slice_spec.feature.value,
                    result.slice_spec.value_label(),
                    result.data_size["train"],
                    result.data_size["test"],
                    str(result.attack_type),
                    result.get_auc(),
                    result.get_attacker_advantage(),
                    result.get_ppv(),
                    result.get_tpr_at_fpr(0.01),
                    result.get_tpr_at_fpr(0.001),
                    result.get_epsilon_lower_bound(),
                ]
            )
        return pd.DataFrame(rows, columns=_DATAFRAME_COLUMNS)

    def _best(self, privacy_metric: PrivacyMetric) -> SingleAttackResult:
        return max(self.single_attack_results, key=lambda r: r.metric(privacy_metric))

    def get_result_with_max_auc(self) -> SingleAttackResult:
        return self._best(PrivacyMetric.AUC)

    def get_result_with_max_attacker_advantage(self) -> SingleAttackResult:
        return self._best(PrivacyMetric.ATTACKER_ADVANTAGE)

    def get_result_with_max_ppv(self) -> SingleAttackResult:
        return self._best(PrivacyMetric.PPV)

    def get_result_with_max_epsilon_lower_bound(self) -> SingleAttackResult:
        return self._best(PrivacyMetric.EPSILON_LOWER_BOUND)

    def get_result_with_max_epsilon(self) -> SingleAttackResult:
        """TF Privacy's name for :meth:`get_result_with_max_epsilon_lower_bound`."""
        return self.get_result_with_max_epsilon_lower_bound()

    def get_result_with_max_tpr_at_fpr(self, max_fpr: float = 0.01) -> SingleAttackResult:
        return max(self.single_attack_results, key=lambda r: r.get_tpr_at_fpr(max_fpr))

    def summary(self, by_slices: bool = False, min_slice_size: int | None = None) -> str:
        """A readable account of the strongest attacks, overall and (optionally) per slice.

        The overall headlines come only from slices with at least ``min_slice_size``
        members and non-members (default
        :data:`~keras_privacy.privacy_tests.headlines.DEFAULT_MIN_SLICE_SIZE`; the largest
        slice when none is that big), and every figure has a 95% confidence interval; see
        :mod:`keras_privacy.privacy_tests.headlines`.
        """
        from keras_privacy.privacy_tests import headlines

        if min_slice_size is None:
            min_slice_size = headlines.DEFAULT_MIN_SLICE_SIZE
        chosen, big_enough = headlines.headline_results(self.single_attack_results, min_slice_size)
        left_out = len({str(r.slice_spec) for r in self.single_attack_results}) - len(
            {str(r.slice_spec) for r in chosen}
        )
        if big_enough:
            header = (
                f"Best-performing attacks over slices with at least {min_slice_size} members "
                "and non-members"
            )
            if left_out:
                header += f" ({left_out} smaller slices left out)"
        else:
            header = (
                f"Best-performing attacks over the largest slice (no slice has {min_slice_size} "
                "members and non-members: treat these figures with care)"
            )
        lines = [header]
        lines += headlines.best_lines(chosen, indent="  ")
        if by_slices:
            slices: dict[str, list[SingleAttackResult]] = {}
            for result in self.single_attack_results:
                slices.setdefault(str(result.slice_spec), []).append(result)
            for name, results in slices.items():
                lines.append("")
                lines.append(f"Best-performing attacks over slice: {name}")
                lines += headlines.best_lines(results, indent="  ", with_slice=False)
        if self.skipped_slices:
            lines.append("")
            lines.append("Slices skipped (too few examples): " + ", ".join(self.skipped_slices))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def to_dict(self, include_scores: bool = False) -> dict[str, Any]:
        metadata = self.privacy_report_metadata
        return {
            "single_attack_results": [
                r.to_dict(include_scores=include_scores) for r in self.single_attack_results
            ],
            "privacy_report_metadata": None if metadata is None else dataclasses.asdict(metadata),
            "skipped_slices": list(self.skipped_slices),
        }

    def to_json(self, include_scores: bool = False, **json_kwargs: Any) -> str:
        """The results as JSON (ROC curves and metrics; per-example scores on request)."""
        return json.dumps(self.to_dict(include_scores=include_scores), **json_kwargs)

    @classmethod
    def from_json(cls, text: str) -> AttackResults:
        data = json.loads(text)
        metadata = data.get("privacy_report_metadata")
        return cls(
            [SingleAttackResult.from_dict(r) for r in data["single_attack_results"]],
            None if metadata is None else PrivacyReportMetadata(**metadata),
            list(data.get("skipped_slices", [])),
        )

    def save(self, path: str, include_scores: bool = False) -> None:
        """Write the results to ``path`` as JSON."""
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(self.to_json(include_scores=include_scores, indent=1))

    @classmethod
    def load(cls, path: str) -> AttackResults:
        with open(path, encoding="utf-8") as handle:
            return cls.from_json(handle.read())


@dataclasses.dataclass
class AttackResultsCollection:
    """Attack results of several models or epochs, for privacy-vs-utility reports."""

    attack_results_list: list[AttackResults]

    def append(self, attack_results: AttackResults) -> None:
        self.attack_results_list.append(attack_results)

    def save(self, dirname: str, include_scores: bool = False) -> None:
        """Write each results to ``dirname/results_<i>.json`` (i = 0000, 0001, ... in list
        order; the directory is created if needed), as :meth:`AttackResults.save`."""
        os.makedirs(dirname, exist_ok=True)
        for index, results in enumerate(self.attack_results_list):
            results.save(os.path.join(dirname, f"results_{index:04d}.json"), include_scores)

    @classmethod
    def load(cls, dirname: str) -> AttackResultsCollection:
        """Read back what :meth:`save` wrote to ``dirname``, in the order it was saved."""
        found = []
        for name in os.listdir(dirname):
            match = _SAVED_NAME.fullmatch(name)
            if match:
                found.append((int(match.group(1)), name))
        if not found:
            raise FileNotFoundError(f"no results_<i>.json files in {dirname!r}")
        return cls([AttackResults.load(os.path.join(dirname, name)) for _, name in sorted(found)])

    def calculate_pd_dataframe(self) -> Any:
        """One row per model variant × epoch × attack × slice, with accuracies."""
        import pandas as pd

        frames = []
        for results in self.attack_results_list:
            frame = results.calculate_pd_dataframe()
            metadata = results.privacy_report_metadata or PrivacyReportMetadata()
            frame["model variant"] = metadata.model_variant_label
            frame["epoch"] = metadata.epoch_num
            frame["train accuracy"] = metadata.accuracy_train
            frame["test accuracy"] = metadata.accuracy_test
            frames.append(frame)
        if not frames:
            raise ValueError("the collection is empty")
        return pd.concat(frames, ignore_index=True)


_SAVED_NAME = re.compile(r"results_(\d+)\.json")
