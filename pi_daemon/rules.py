"""Event rules: per-frame classifications in, the `start`/`end` events a person wants out.

For each classified frame the rules ask one question: which label, if any, does this
frame *count for*? A frame counts for its top-1 label (the classifier's first entry;
the classifier breaks exact ties by the lower class index) when that label passes
the include/exclude lists and its score is at least the label's `min_score` (the
per-label override, else the default). At most one label counts per frame.

- **start**: a label that is not active starts at a frame that counts for it when it
  counted in at least `start_frames` (N) of the last `window_frames` (M) classified
  frames, this one included — unless its previous episode ended less than `cooldown_s`
  before (then it starts at the first counting frame after the cooldown where N of M
  still holds). Frames that counted before a label's end never count towards its next
  start, so a new episode never begins inside the previous one.
- **end**: an active label ends at the first classified frame where it has not counted
  for `end_after_s`, timed from the first frame it missed; any frame that counts for it
  resets that. `finish(now)` ends every active label when the run stops.
- Labels are independent: two can be active at once (one fading, one arriving).
  Within one frame, ends come first, in the order the labels started, then the one
  possible start; so a sequence of frames always gives the same list of events.

Only classified frames are observed: a frame the motion gate skipped changes nothing
(the last result stands). Pure: standard library only; times are whatever clock the
caller passes (monotonic seconds in the daemon), frames are identified by their ids.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from pi_daemon.config import RulesSection

EventKind = Literal["start", "end"]
EndReason = Literal["absent", "stopped"]
# `type` of a label event in JSON sinks; `event` then says start or end. ("start" alone
# is already the daemon's own start event.)
EVENT_TYPE = "label"


class Scored(Protocol):
    """One entry of a classification (pi_daemon.classifier.Prediction has these)."""

    @property
    def label(self) -> str: ...
    @property
    def score(self) -> float: ...


@dataclass(frozen=True)
class LabelEvent:
    """A label starting or ending. Frames are frame ids; times are the caller's clock.

    `first_frame`/`first_time`: the first frame that counted for the label in this
    episode (for a start, the earliest counting frame in the window that triggered it).
    `last_frame`/`last_time`: the latest frame that counted (for a start, the frame that
    triggered it). `duration_s` = last_time - first_time. `peak_score`: the best score
    of the counting frames so far. `frames`: how many frames counted. `reason`: for an
    end, "absent" (gone for end_after_s) or "stopped" (the run ended while it was
    active); "" for a start. `snapshot`: the JPEG's file name, filled in by whoever
    saves it ("" if none).
    """

    event: EventKind
    label: str
    peak_score: float
    first_frame: int
    last_frame: int
    first_time: float
    last_time: float
    frames: int
    reason: str = ""
    snapshot: str = ""

    @property
    def duration_s(self) -> float:
        return self.last_time - self.first_time

    def with_snapshot(self, name: str) -> LabelEvent:
        return replace(self, snapshot=name)

    def fields(self) -> dict[str, Any]:
        """The event's fields for JSON sinks (the README pins these names); the event
        hub adds `type` ("label") and the identity."""
        return {
            "event": self.event,
            "label": self.label,
            "peak_score": round(self.peak_score, 6),
            "first_frame": self.first_frame,
            "last_frame": self.last_frame,
            "duration_s": round(self.duration_s, 6),
            "frames": self.frames,
            "reason": self.reason,
            "snapshot": self.snapshot,
        }

    def journal_fields(self) -> dict[str, Any]:
        """The same, as journal fields (`journalctl PI_DAEMON_EVENT=label LABEL=tabby`)."""
        return {
            "label_event": self.event,
            "label": self.label,
            "peak_score": round(self.peak_score, 4),
            "first_frame": self.first_frame,
            "last_frame": self.last_frame,
            "duration_s": round(self.duration_s, 3),
            "frames": self.frames,
            "end_reason": self.reason or None,
            "snapshot": self.snapshot or None,
        }


@dataclass
class _Episode:
    """An active label."""

    first_frame: int
    first_time: float
    last_frame: int
    last_time: float
    peak_score: float
    frames: int
    missing_since: float | None = None  # time of the first frame it did not count in
    snapshot: str = ""


@dataclass
class _Seen:
    """One frame that counted for a label, while it is inside the window."""

    index: int  # position in the sequence of observed frames
    frame_id: int
    time: float
    score: float


@dataclass(frozen=True)
class RuleSettings:
    """The rules' parameters; `from_config` reads them from `[rules]`."""

    include: frozenset[str] = frozenset()
    exclude: frozenset[str] = frozenset()
    min_score: float = 0.5
    min_scores: dict[str, float] = field(default_factory=dict)
    start_frames: int = 3
    window_frames: int = 5
    end_after_s: float = 10.0
    cooldown_s: float = 30.0

    def __post_init__(self) -> None:
        if not 1 <= self.start_frames <= self.window_frames:
            raise ValueError("need 1 <= start_frames <= window_frames")
        if self.include and self.exclude:
            raise ValueError("give include or exclude, not both")
        if self.end_after_s < 0 or self.cooldown_s < 0:
            raise ValueError("end_after_s and cooldown_s must be >= 0")

    @classmethod
    def from_config(cls, rules: RulesSection) -> RuleSettings:
        return cls(
            include=frozenset(rules.include),
            exclude=frozenset(rules.exclude),
            min_score=rules.min_score,
            min_scores={label: float(score) for label, score in rules.min_scores.items()},
            start_frames=rules.start_frames,
            window_frames=rules.window_frames,
            end_after_s=rules.end_after_s,
            cooldown_s=rules.cooldown_s,
        )

    def allows(self, label: str) -> bool:
        if self.include:
            return label in self.include
        return label not in self.exclude

    def threshold(self, label: str) -> float:
        return self.min_scores.get(label, self.min_score)

    def unknown_labels(self, labels: Iterable[str]) -> list[str]:
        """Labels the settings name that the model does not have (likely typos)."""
        known = set(labels)
        named = self.include | self.exclude | set(self.min_scores)
        return sorted(named - known)


class EventRules:
    """Stateful rules, driven only by `observe()` and `finish()` arguments."""

    def __init__(self, settings: RuleSettings | None = None) -> None:
        self.settings = settings or RuleSettings()
        self._observed = 0
        # The label each of the last M frames counted for (None: nothing counted).
        self._window: deque[str | None] = deque(maxlen=self.settings.window_frames)
        # Per label, its counting frames still inside the window, oldest first.
        self._seen: dict[str, deque[_Seen]] = {}
        self._active: dict[str, _Episode] = {}  # in order of start
        self._ended_at: dict[str, float] = {}

    @property
    def active(self) -> list[str]:
        """Labels currently active, in order of start."""
        return list(self._active)

    def attach_snapshot(self, label: str, name: str) -> None:
        """Record the start's snapshot file, so the label's end event names it too."""
        episode = self._active.get(label)
        if episode is not None:
            episode.snapshot = name

    def counting_label(self, top: Sequence[Scored]) -> str | None:
        """The label a frame with these predictions (best first) counts for, if any."""
        if not top:
            return None
        best = top[0]
        settings = self.settings
        if settings.allows(best.label) and best.score >= settings.threshold(best.label):
            return best.label
        return None

    def observe(self, frame_id: int, now: float, top: Sequence[Scored]) -> list[LabelEvent]:
        """Feed one classified frame; return the events it causes (often none)."""
        label = self.counting_label(top)
        score = top[0].score if label is not None else 0.0
        self._slide(label, frame_id, now, score)
        self._observed += 1
        events = self._ends(label, frame_id, now, score)
        if label is not None and label not in self._active:
            start = self._maybe_start(label, now)
            if start is not None:
                events.append(start)
        return events

    def finish(self, now: float) -> list[LabelEvent]:
        """End every active label (the run is stopping). The window starts empty after;
        cooldowns still run from `now`."""
        events = [self._end(label, episode, "stopped") for label, episode in self._active.items()]
        for label in self._active:
            self._ended_at[label] = now
        self._active.clear()
        self._window.clear()
        self._seen.clear()
        return events

    # -- internals ----------------------------------------------------------------------

    def _slide(self, label: str | None, frame_id: int, now: float, score: float) -> None:
        """Move the window on by one frame."""
        if len(self._window) == self._window.maxlen:
            leaving = self._window[0]
            seen = self._seen.get(leaving) if leaving is not None else None
            # Gone already if the label ended since that frame (its frames were dropped).
            if leaving is not None and seen and seen[0].index == self._observed - len(self._window):
                seen.popleft()
                if not seen:
                    del self._seen[leaving]
        self._window.append(label)
        if label is not None:
            entry = _Seen(self._observed, frame_id, now, score)
            self._seen.setdefault(label, deque()).append(entry)

    def _ends(self, label: str | None, frame_id: int, now: float, score: float) -> list[LabelEvent]:
        events = []
        for active, episode in list(self._active.items()):
            if active == label:
                episode.last_frame, episode.last_time = frame_id, now
                episode.peak_score = max(episode.peak_score, score)
                episode.frames += 1
                episode.missing_since = None
                continue
            if episode.missing_since is None:
                episode.missing_since = now
            if now - episode.missing_since >= self.settings.end_after_s:
                events.append(self._end(active, episode, "absent"))
                del self._active[active]
                self._ended_at[active] = now
                self._seen.pop(active, None)  # its frames never count for the next start
        return events

    def _maybe_start(self, label: str, now: float) -> LabelEvent | None:
        seen = self._seen[label]
        if len(seen) < self.settings.start_frames:
            return None
        ended = self._ended_at.get(label)
        if ended is not None and now - ended < self.settings.cooldown_s:
            return None
        first, last = seen[0], seen[-1]
        episode = _Episode(
            first_frame=first.frame_id,
            first_time=first.time,
            last_frame=last.frame_id,
            last_time=last.time,
            peak_score=max(item.score for item in seen),
            frames=len(seen),
        )
        self._active[label] = episode
        return LabelEvent(
            "start",
            label,
            episode.peak_score,
            episode.first_frame,
            episode.last_frame,
            episode.first_time,
            episode.last_time,
            episode.frames,
        )

    @staticmethod
    def _end(label: str, episode: _Episode, reason: EndReason) -> LabelEvent:
        return LabelEvent(
            "end",
            label,
            episode.peak_score,
            episode.first_frame,
            episode.last_frame,
            episode.first_time,
            episode.last_time,
            episode.frames,
            reason,
            episode.snapshot,
        )
