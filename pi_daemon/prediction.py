"""What a classification says: ranked predictions and the time each stage took.

Shared by the classifier (which makes them), results, rules and every sink (which read
them), so that none of those has to import the interpreter layer to know what a result is.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Prediction:
    index: int
    label: str
    score: float


@dataclass(frozen=True)
class Classification:
    top: list[Prediction]
    preprocess_s: float
    invoke_s: float
    postprocess_s: float
