"""A DP model's privacy record in its weights files, so that a restart loses none of it.

Keras restarts a worker mid-``fit`` from a weights file: ``keras.callbacks.BackupAndRestore``
(and ``ModelCheckpoint(save_weights_only=True)``) write ``model.save_weights`` and a new
process reads it back with ``load_weights`` into a freshly built model. Keras's weights
hold the variables only, so such a model would start with an empty record and the
accountant would be told only the updates made after the restart: epsilon too small.

The DP model therefore writes its :class:`~keras_privacy.training.record.TrainingRecord`
into its own entry of every weights file (JSON bytes under :data:`RECORD_KEY`) and, when
one is loaded, **adopts** it if it counts more updates than the model's own record (a
restarted model: the updates behind the restored weights, each once). A record that
counts no more (this process's own earlier state, restored in the same run) is already
counted and is left alone. (The rule compares counts, not histories: weights of an
unrelated run loaded into a model that has already trained more are not added to its
record; load them into a fresh model.) Updates made after the file was written and lost with the
crash are counted too when a ``PrivacyBudget(state_path=...)`` file is kept (it is
written after every update; see :func:`adopt_saved_record`).

Noise and sampling after a restart: the restarted process draws its noise key and its
Poisson sampling stream from the operating system's entropy, so nothing drawn before is
drawn again. A model built with a DP ``seed`` (tests only) would instead start its key
``(seed, 0)`` and its sampler again, repeating the noise and the samples of the run it
resumes (noise cancelled by differencing two updates, and samples the accountant assumes
independent): restoring a trained record into a seeded model is refused.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from keras_privacy.training.errors import PrivacyError
from keras_privacy.training.record import TrainingRecord, TrainingSegment

#: The weights-file entry (of the DP model's own variables) holding the record.
RECORD_KEY = "dp_privacy_record"


def adopt_saved_record(
    record: TrainingRecord, saved: TrainingRecord, live: TrainingSegment | None
) -> bool:
    """Make ``record`` count the updates of ``saved`` when it counts fewer.

    ``live`` is the segment being trained now (the last of ``record``), kept after the
    adopted segments, or None outside ``fit``. ``saved`` is adopted when it counts more
    updates than ``record`` does in all (a restarted model: its own record holds only the
    open segment of the ``fit`` resuming the run); its segments then replace the earlier
    ones. Returns whether it was adopted.
    """
    if saved.total_updates <= record.total_updates:
        return False
    keep = [live] if record.segments and record.segments[-1] is live else []
    record.segments[:] = [s for s in saved.segments if s.updates] + keep
    if not record.other_releases:
        record.other_releases = list(saved.other_releases)
    return True


def save_record(model: Any, store: Any) -> None:
    """Write ``model``'s privacy record into its entry of a weights file."""
    text = json.dumps(model.privacy_record.to_dict())
    store[RECORD_KEY] = np.frombuffer(text.encode("utf-8"), dtype="uint8")


def load_record(model: Any, store: Any) -> Any:
    """Adopt the record in a weights-file entry (see the module docstring); returns the
    entry without it, for Keras's own loading of the model's variables."""
    keys = list(store.keys())
    if RECORD_KEY not in keys:
        return store
    data = bytes(np.asarray(store[RECORD_KEY], dtype="uint8"))
    saved = TrainingRecord.from_dict(json.loads(data.decode("utf-8")))
    record = model.privacy_record  # synced with the step's counters
    live = model._dp_live[0] if model._dp_live is not None else None
    if saved.total_updates > record.total_updates and model._dp_settings.get("seed") is not None:
        raise PrivacyError(
            "This DP model was built with seed= (for tests only) and is being restored "
            f"from a state with {saved.total_updates} DP updates: resuming would draw the "
            "resumed run's noise and Poisson samples again (the seed restarts them). Build "
            "the model without seed= to resume training; its noise and sampling then come "
            "from the operating system's entropy."
        )
    adopt_saved_record(record, saved, live)
    return {key: store[key] for key in keys if key != RECORD_KEY}
