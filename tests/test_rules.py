"""Event rules on scripted score sequences: each script gives one exact list of events."""

from __future__ import annotations

import logging
import random

import pytest

from pi_daemon import events
from pi_daemon.config import RulesSection, parse_config
from pi_daemon.events import Event, EventRecord, emit
from pi_daemon.prediction import Prediction
from pi_daemon.rules import EventRules, LabelEvent, RuleSettings

# A frame in a script: (time, [(label, score), ...] best first), or (time, []) for a
# frame whose classification is ignored (empty top). Frame ids are 1, 2, 3, ...
Script = list[tuple[float, list[tuple[str, float]]]]


def play(settings: RuleSettings, script: Script, finish_at: float | None = None) -> list[tuple]:
    """Run a script through fresh rules; events as compact tuples for exact comparison."""
    rules = EventRules(settings)
    events: list[LabelEvent] = []
    for frame_id, (now, top) in enumerate(script, start=1):
        predictions = [Prediction(i, label, score) for i, (label, score) in enumerate(top)]
        events += rules.observe(frame_id, now, predictions)
    if finish_at is not None:
        events += rules.finish(finish_at)
    return [
        (
            e.event,
            e.label,
            e.peak_score,
            e.first_frame,
            e.last_frame,
            e.duration_s,
            e.frames,
            e.reason,
        )
        for e in events
    ]


def every_second(*tops: list[tuple[str, float]]) -> Script:
    return [(float(t), top) for t, top in enumerate(tops)]


CAT, DOG, X = ("tabby", 0.8), ("beagle", 0.7), ("web site", 0.2)
SETTINGS = RuleSettings(start_frames=3, window_frames=5, end_after_s=2.0, cooldown_s=0.0)


def test_a_label_starts_on_n_of_m_and_ends_after_end_after_s() -> None:
    script = every_second([CAT], [CAT], [("tabby", 0.9)], [CAT], [CAT], [X], [X], [X], [X])
    assert play(SETTINGS, script) == [
        # The third counting frame starts it; first = the earliest counting frame.
        ("start", "tabby", 0.9, 1, 3, 2.0, 3, ""),
        # Missing from t=5 (frame 6); at t=7 it has been missing 2 s: frame 8 ends it.
        ("end", "tabby", 0.9, 1, 5, 4.0, 5, "absent"),
    ]


def test_a_flicker_at_the_threshold_counts_only_at_or_above_it() -> None:
    at = [("tabby", s) for s in (0.49, 0.5, 0.4999, 0.51, 0.5)]
    script = every_second(*[[frame] for frame in at])
    # Frames 2, 4 and 5 count (>= 0.5): the third of them, frame 5, starts it.
    assert play(SETTINGS, script) == [("start", "tabby", 0.51, 2, 5, 3.0, 3, "")]


def test_a_flicker_that_never_reaches_n_of_m_never_starts() -> None:
    pattern = [[CAT], [X], [X], [CAT], [X], [X]] * 5  # at most 2 in any 5 frames
    assert play(SETTINGS, every_second(*pattern), finish_at=100.0) == []


def test_a_flicker_inside_an_episode_neither_ends_nor_restarts_it() -> None:
    # Present, then gone for 1 s at a time (< end_after_s 2 s), again and again.
    script = every_second([CAT], [CAT], [CAT], [X], [CAT], [X], [CAT], [X], [X], [X])
    assert play(SETTINGS, script) == [
        ("start", "tabby", 0.8, 1, 3, 2.0, 3, ""),
        ("end", "tabby", 0.8, 1, 7, 6.0, 5, "absent"),
    ]


def test_absence_is_timed_from_the_first_missing_frame_and_reset_by_a_counting_one() -> None:
    script = [
        (0.0, [CAT]),
        (0.5, [CAT]),
        (1.0, [CAT]),
        (3.0, [X]),  # missing since 3.0 ...
        (4.9, [X]),  # ... 1.9 s: not yet
        (5.0, [X]),  # ... 2.0 s: ends here, at exactly end_after_s
    ]
    assert play(SETTINGS, script) == [
        ("start", "tabby", 0.8, 1, 3, 1.0, 3, ""),
        ("end", "tabby", 0.8, 1, 3, 1.0, 3, "absent"),
    ]


@pytest.mark.parametrize(
    ("first_listed", "expected_label"),
    [("tabby", "tabby"), ("tiger cat", "tiger cat")],
)
def test_a_tie_goes_to_the_label_listed_first(first_listed: str, expected_label: str) -> None:
    # The classifier lists exact ties by the lower class index; the rules keep that order.
    other = "tiger cat" if first_listed == "tabby" else "tabby"
    tie = [(first_listed, 0.5), (other, 0.5)]
    events = play(SETTINGS, every_second(tie, tie, tie))
    assert events == [("start", expected_label, 0.5, 1, 3, 2.0, 3, "")]


def test_ties_that_alternate_split_the_frames_between_labels() -> None:
    a = [("tabby", 0.5), ("tiger cat", 0.5)]
    b = [("tiger cat", 0.5), ("tabby", 0.5)]
    # tabby counts at frames 1, 3, 5 and starts at 5; tiger cat only ever has 2 of 5.
    assert play(SETTINGS, every_second(a, b, a, b, a)) == [
        ("start", "tabby", 0.5, 1, 5, 4.0, 3, "")
    ]


def test_two_labels_overlap_and_an_end_comes_before_a_start_in_one_frame() -> None:
    script = every_second([CAT], [CAT], [CAT], [DOG], [DOG], [DOG], [DOG], [X], [X], [X])
    assert play(SETTINGS, script) == [
        ("start", "tabby", 0.8, 1, 3, 2.0, 3, ""),
        # Frame 6 (t=5): tabby missing since t=3 for 2 s, and beagle's third frame.
        ("end", "tabby", 0.8, 1, 3, 2.0, 3, "absent"),
        ("start", "beagle", 0.7, 4, 6, 2.0, 3, ""),
        ("end", "beagle", 0.7, 4, 7, 3.0, 4, "absent"),
    ]


def test_two_labels_are_active_at_once_and_end_in_the_order_they_started() -> None:
    settings = RuleSettings(start_frames=2, window_frames=3, end_after_s=5.0, cooldown_s=0.0)
    script = every_second([CAT], [CAT], [DOG], [DOG], [X], [X], [X], [X], [X], [X])
    # The run stops at t=4.5 with both active.
    assert play(settings, script[:5], finish_at=4.5) == [
        ("start", "tabby", 0.8, 1, 2, 1.0, 2, ""),
        ("start", "beagle", 0.7, 3, 4, 1.0, 2, ""),
        ("end", "tabby", 0.8, 1, 2, 1.0, 2, "stopped"),
        ("end", "beagle", 0.7, 3, 4, 1.0, 2, "stopped"),
    ]
    # Run on: tabby has been missing since t=2 and ends first (t=7), beagle since t=4 (t=9).
    assert play(settings, script) == [
        ("start", "tabby", 0.8, 1, 2, 1.0, 2, ""),
        ("start", "beagle", 0.7, 3, 4, 1.0, 2, ""),
        ("end", "tabby", 0.8, 1, 2, 1.0, 2, "absent"),
        ("end", "beagle", 0.7, 3, 4, 1.0, 2, "absent"),
    ]


@pytest.mark.parametrize(
    ("return_at", "expected_start"),
    [
        # Ended at t=3; cooldown 10 s: a start at 12.999 is suppressed ...
        (12.999, None),
        # ... one at exactly 13.0 is not.
        (13.0, ("start", "tabby", 0.8, 5, 7, 13.0 - 11.0, 3, "")),
    ],
)
def test_cooldown_suppresses_a_new_start_until_it_has_passed(
    return_at: float, expected_start: tuple | None
) -> None:
    settings = RuleSettings(start_frames=3, window_frames=5, end_after_s=0.0, cooldown_s=10.0)
    script = [
        (0.0, [CAT]),
        (1.0, [CAT]),
        (2.0, [CAT]),  # starts
        (3.0, [X]),  # end_after_s 0: ends at once
        (11.0, [CAT]),
        (12.0, [CAT]),
        (return_at, [CAT]),  # the third counting frame of the window
    ]
    events = play(settings, script)
    assert events[:2] == [
        ("start", "tabby", 0.8, 1, 3, 2.0, 3, ""),
        ("end", "tabby", 0.8, 1, 3, 2.0, 3, "absent"),
    ]
    assert events[2:] == ([] if expected_start is None else [expected_start])


def test_a_suppressed_label_starts_at_the_first_frame_after_the_cooldown() -> None:
    settings = RuleSettings(start_frames=2, window_frames=3, end_after_s=0.0, cooldown_s=5.0)
    script = [(0.0, [CAT]), (1.0, [CAT]), (2.0, [X])]  # start at 1, end at 2
    script += [(t, [CAT]) for t in (3.0, 4.0, 5.0, 6.0, 7.0, 8.0)]  # back at once
    events = play(settings, script)
    assert events == [
        ("start", "tabby", 0.8, 1, 2, 1.0, 2, ""),
        ("end", "tabby", 0.8, 1, 2, 1.0, 2, "absent"),
        # 7.0 - 2.0 = 5.0 s: the first frame out of the cooldown. The window then holds
        # frames 6-8 (t 5-7), all counting, so the episode starts from frame 6.
        ("start", "tabby", 0.8, 6, 8, 2.0, 3, ""),
    ]


def test_cooldown_is_per_label() -> None:
    settings = RuleSettings(start_frames=1, window_frames=1, end_after_s=0.0, cooldown_s=60.0)
    script = every_second([CAT], [X], [DOG], [X], [CAT])
    assert play(settings, script) == [
        ("start", "tabby", 0.8, 1, 1, 0.0, 1, ""),
        ("end", "tabby", 0.8, 1, 1, 0.0, 1, "absent"),
        ("start", "beagle", 0.7, 3, 3, 0.0, 1, ""),
        ("end", "beagle", 0.7, 3, 3, 0.0, 1, "absent"),
        # tabby again at t=4, 3 s after its end: suppressed.
    ]


def test_the_run_ending_while_a_label_is_active_ends_it_as_stopped() -> None:
    script = every_second([CAT], [("tabby", 0.95)], [CAT], [CAT], [X])
    assert play(SETTINGS, script, finish_at=4.5) == [
        ("start", "tabby", 0.95, 1, 3, 2.0, 3, ""),
        ("end", "tabby", 0.95, 1, 4, 3.0, 4, "stopped"),
    ]


def test_finish_with_nothing_active_gives_nothing_and_starts_afresh() -> None:
    rules = EventRules(SETTINGS)
    rules.observe(1, 0.0, [Prediction(0, "tabby", 0.9)])
    rules.observe(2, 1.0, [Prediction(0, "tabby", 0.9)])
    assert rules.finish(1.5) == []
    # The window is empty again: two more frames are not yet three of five.
    assert rules.observe(3, 2.0, [Prediction(0, "tabby", 0.9)]) == []
    assert rules.observe(4, 3.0, [Prediction(0, "tabby", 0.9)]) == []
    assert [e.event for e in rules.observe(5, 4.0, [Prediction(0, "tabby", 0.9)])] == ["start"]


def test_peak_score_covers_the_whole_episode() -> None:
    script = every_second([CAT], [CAT], [CAT], [("tabby", 0.99)], [X], [X], [X])
    assert play(SETTINGS, script)[-1] == ("end", "tabby", 0.99, 1, 4, 3.0, 4, "absent")


def test_exclude_drops_a_label_without_promoting_the_runner_up() -> None:
    settings = RuleSettings(exclude=frozenset({"window screen"}), start_frames=1, window_frames=1)
    frame = [("window screen", 0.9), ("tabby", 0.6)]
    assert play(settings, every_second(frame, frame, frame)) == []
    assert play(settings, every_second([CAT])) == [("start", "tabby", 0.8, 1, 1, 0.0, 1, "")]


def test_include_only_makes_events_for_the_listed_labels() -> None:
    settings = RuleSettings(include=frozenset({"beagle"}), start_frames=1, window_frames=1)
    assert play(settings, every_second([CAT], [DOG], [CAT])) == [
        ("start", "beagle", 0.7, 2, 2, 0.0, 1, "")
    ]


def test_per_label_min_score_overrides_the_default() -> None:
    settings = RuleSettings(
        min_score=0.5, min_scores={"tabby": 0.3, "beagle": 0.9}, start_frames=1, window_frames=1
    )
    script = every_second([("tabby", 0.35)], [("beagle", 0.85)], [("tiger cat", 0.45)])
    assert play(settings, script) == [("start", "tabby", 0.35, 1, 1, 0.0, 1, "")]


def test_a_frame_with_no_predictions_counts_for_nothing() -> None:
    settings = RuleSettings(start_frames=1, window_frames=1, end_after_s=0.0, cooldown_s=0.0)
    assert play(settings, every_second([CAT], [], [CAT])) == [
        ("start", "tabby", 0.8, 1, 1, 0.0, 1, ""),
        ("end", "tabby", 0.8, 1, 1, 0.0, 1, "absent"),
        ("start", "tabby", 0.8, 3, 3, 0.0, 1, ""),
    ]


def test_the_same_script_always_gives_the_same_events_and_they_pair_up() -> None:
    rng = random.Random(13)
    labels = ["tabby", "tiger cat", "beagle", "web site"]
    script = [
        (t * 0.3, [(rng.choice(labels), round(rng.uniform(0.3, 1.0), 2))]) for t in range(2000)
    ]
    settings = RuleSettings(start_frames=2, window_frames=4, end_after_s=1.0, cooldown_s=2.0)
    first = play(settings, script, finish_at=600.0)
    assert first == play(settings, script, finish_at=600.0)
    assert len(first) > 20
    open_labels: set[str] = set()
    for event, label, *_ in first:
        if event == "start":
            assert label not in open_labels
            open_labels.add(label)
        else:
            assert label in open_labels
            open_labels.remove(label)
    assert not open_labels  # finish() closed everything


def test_event_fields_are_the_pinned_names(caplog: pytest.LogCaptureFixture) -> None:
    """Recorded as the daemon records a label event: the hub adds the type and identity."""
    event = LabelEvent("end", "tabby", 0.912345678, 10, 42, 100.0, 103.25, 7, "absent")
    received: list[EventRecord] = []
    hub = events.local_hub(received.append)
    events.install(hub)
    logger = logging.getLogger("pi_daemon.test_rules")
    try:
        with caplog.at_level(logging.INFO, logger=logger.name):
            ended = event.with_snapshot("x.jpg")
            emit(logger, logging.INFO, Event.LABEL, "ended", body=ended, **ended.journal_fields())
    finally:
        events.install(None)
    (record,) = received
    line = record.to_dict(hub.identity)
    for identity_field in ("device_id", "boot_id", "seq", "time", "monotonic", "clock_synced"):
        del line[identity_field]
    assert line == {
        "type": "label",
        "event": "end",
        "label": "tabby",
        "peak_score": 0.912346,
        "first_frame": 10,
        "last_frame": 42,
        "duration_s": 3.25,
        "frames": 7,
        "reason": "absent",
        "snapshot": "x.jpg",
    }
    (logged,) = caplog.records
    assert (logged.PI_DAEMON_EVENT, logged.LABEL_EVENT, logged.LABEL) == ("label", "end", "tabby")
    assert (logged.PEAK_SCORE, logged.FIRST_FRAME, logged.LAST_FRAME) == (0.9123, 10, 42)
    assert (logged.DURATION_S, logged.FRAMES, logged.END_REASON) == (3.25, 7, "absent")
    assert logged.SNAPSHOT == "x.jpg"


def test_settings_from_config_and_unknown_labels() -> None:
    section = parse_config(
        {
            "rules": {
                "exclude": ["web site"],
                "min_scores": {"tabby": 0.3, "tabbby": 0.4},
                "start_frames": 2,
                "window_frames": 4,
            }
        }
    ).rules
    settings = RuleSettings.from_config(section)
    assert settings.exclude == frozenset({"web site"})
    assert settings.threshold("tabby") == 0.3 and settings.threshold("beagle") == 0.5
    assert settings.unknown_labels(["tabby", "web site", "beagle"]) == ["tabbby"]
    assert RuleSettings.from_config(RulesSection()) == RuleSettings()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"start_frames": 4, "window_frames": 3},
        {"start_frames": 0},
        {"include": frozenset({"a"}), "exclude": frozenset({"b"})},
        {"end_after_s": -1.0},
    ],
)
def test_inconsistent_settings_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        RuleSettings(**kwargs)


def test_the_end_event_names_the_snapshot_of_its_start() -> None:
    rules = EventRules(RuleSettings(start_frames=1, window_frames=1, end_after_s=0.0))
    (start,) = rules.observe(1, 0.0, [Prediction(0, "tabby", 0.9)])
    assert start.snapshot == ""
    rules.attach_snapshot("tabby", "20260101T000000.000Z-frame1-tabby.jpg")
    rules.attach_snapshot("beagle", "ignored.jpg")  # not active: nothing to attach to
    (end,) = rules.observe(2, 1.0, [Prediction(0, "web site", 0.1)])
    assert end.event == "end" and end.snapshot == "20260101T000000.000Z-frame1-tabby.jpg"
