"""Privacy auditing: empirical lower bounds on the ε of DP training.

The core takes scores in and gives bounds out, and imports no deep-learning framework.
"""

from __future__ import annotations

from keras_privacy.auditing.results import AuditResult

__all__ = ["AuditResult"]
