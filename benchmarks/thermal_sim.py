"""Simulate a bare Pi 4B on a hot day to show the throttle policy holds it below 80 °C.

    python -m benchmarks.thermal_sim [--hours H] [--ambient C] [--duty SHARE] [--json]

A first-order thermal model of the SoC,

    dT/dt = (P(duty, f) * R_th - (T - T_amb(t))) / tau

driven by the daemon's inference duty cycle, with the ambient drifting over the day
and the firmware's own DVFS throttling from 80 °C. It runs the real policy
(`pi_daemon.throttle.ThrottlePolicy` with its default config) once a second, as the
governor does, and compares it with no throttling and a naive on/off rule.

Throughput is frames relative to an unthrottled 1500 MHz Pi, as a ratio of the best
*constant* duty cycle that stays under 80 °C over the same ambient profile (found by
bisection). The quasi-static ceiling (hold exactly 80 °C at every instant) is printed
too: a policy can beat it only briefly, by borrowing the SoC's thermal mass, so it shows
what the policy's safety margin costs.

With `--duty SHARE` it also runs a duty profile: the scene has motion SHARE of the time
(episodes of 20 s to 3 min, placed at random but the same every run), and the daemon
runs with and without the motion gate. Without it every frame is classified all day;
with it frames are classified flat out only during motion, otherwise one keyframe per
max_skip_s, plus the gate's own cost on every camera frame. Both runs use the real
throttle policy (and, for comparison, no throttling) on the same day, and report the
board's peak and mean temperature and the throughput during motion, the frames a
person cares about.

Limits of the model: one thermal node (the real die also has a fast component of a
few degrees within seconds of a load step), power linear in clock frequency (real
DVFS also drops voltage, so throttled power is lower than modelled: conservative).
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import random
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass

from pi_daemon.config import ThrottleSection
from pi_daemon.readings import Readings
from pi_daemon.throttle import ThrottlePolicy

# -- the Pi 4B ------------------------------------------------------------------------------
# Board power: ~2.7 W idle and ~6.4 W with all four cores loaded are the commonly
# published Pi 4B figures. Using the 4-core figure for "inference running" is the
# pessimistic case (2 interpreter threads, plus capture, preprocessing and the OS).
P_IDLE_W = 2.7
P_FULL_W = 6.4
# Effective SoC-to-ambient resistance of a bare board, no heatsink, in free air: a bare
# Pi 4B under sustained full load at 25 °C ambient runs into the firmware's limit,
# ~85 °C: (85 - 25) / 6.4 W = 9.4 K/W. Check: idle gives 25 + 2.7 * 9.4 = 50 °C, which
# is what bare boards idle at.
R_TH_K_PER_W = 9.4
# Time constant: a bare Pi 4B goes from idle to throttling within a few minutes of a
# stress test. With tau = 120 s the model goes 50 -> 80 °C at 25 °C ambient in
# tau * ln((85 - 50) / (85 - 80)) = 3.9 min. A shorter tau is the harder case to control.
TAU_S = 120.0
# The firmware's limits (CONTEXT.md): ARM cores throttled step by step from 80 °C,
# hard limit 85 °C; DVFS steps 1500, 1000, 750, 600 MHz.
FIRMWARE_LIMIT_C = 80.0
HARD_LIMIT_C = 85.0
DVFS_MHZ = (1500, 1000, 750, 600)
# How fast the modelled firmware moves one DVFS step, and how far below 80 °C it
# steps back up (an approximation of its closed loop, not its exact algorithm).
FIRMWARE_STEP_S = 2.0
FIRMWARE_RECOVER_C = 78.0
# EfficientNet-Lite0 on a Pi 4B: about 49 ms per invoke (a published figure, CONTEXT.md).
INVOKE_S = 0.049
# The SoC sensor reading jitters by a few tenths of a degree.
SENSOR_NOISE_C = 0.25
DT_S = 1.0  # the governor's default poll interval
NAIVE_PAUSE_C, NAIVE_RESUME_C = 80.0, 75.0
# The motion gate looks at every camera frame: about 0.1 ms (YUV420) to 0.25 ms (BGR) per
# frame on one x86 core for the default 80-cell grid; 1 ms is a pessimistic Pi 4B figure
# (an A72 core at 1.5 GHz is a few times slower).
GATE_S_PER_FRAME = 0.001
CAMERA_FPS = 30.0
MOTION_EPISODE_S = (20.0, 180.0)


def ambient_c(t_s: float, peak_c: float) -> float:
    """A hot day: 15 °C swing peaking mid-afternoon, sun on the case, draughts."""
    hours = t_s / 3600.0
    daily = (peak_c - 10.5) + 7.5 * math.cos(2 * math.pi * (hours - 15.0) / 24.0)
    # Sun on the enclosure 13:45-15:15 adds up to 3 °C (raised cosine).
    sun = 3.0 * math.cos(math.pi * (hours - 14.5) / 1.5) ** 2 if abs(hours - 14.5) < 0.75 else 0.0
    draught = 0.5 * math.sin(2 * math.pi * t_s / 600.0)  # a door, a fan: 10-minute wiggle
    return daily + sun + draught


def power_w(duty: float, mhz: float) -> float:
    """Board power for a busy fraction `duty` at clock `mhz` (dynamic power ~ f)."""
    return P_IDLE_W + duty * (mhz / DVFS_MHZ[0]) * (P_FULL_W - P_IDLE_W)


@dataclass
class Outcome:
    name: str
    peak_c: float
    seconds_at_or_above_80: float
    throughput: float  # mean frames relative to an unthrottled Pi running flat out
    throughput_ratio: float = 0.0  # / best constant duty under 80 °C
    ceiling_ratio: float = 0.0  # / quasi-static ceiling
    pauses: int = 0
    state_changes: int = 0
    mean_c: float = 0.0
    # Mean frames relative to flat out, over the seconds with motion (duty profile only).
    motion_throughput: float = 0.0


@dataclass(frozen=True)
class DutyProfile:
    """When the scene has motion, and whether the motion gate decides what is classified."""

    motion: tuple[tuple[float, float], ...]  # [start, end) in seconds of the day, sorted
    gating: bool
    max_skip_s: float = 10.0
    camera_fps: float = CAMERA_FPS
    gate_s_per_frame: float = GATE_S_PER_FRAME

    def has_motion(self, t: float) -> bool:
        index = bisect.bisect_right(self.motion, (t, math.inf)) - 1
        return index >= 0 and self.motion[index][0] <= t < self.motion[index][1]

    def demand(self, t: float) -> tuple[float, float]:
        """(least interval between classified frames, the gate's own duty) at `t`."""
        if not self.gating:
            return 0.0, 0.0
        gate_duty = self.gate_s_per_frame * self.camera_fps
        return (0.0 if self.has_motion(t) else self.max_skip_s), gate_duty


def motion_schedule(
    hours: float, share: float, seed: int = 7, start_hour: float = 0.0
) -> tuple[tuple[float, float], ...]:
    """Motion episodes covering about `share` of the time, the same for every seed."""
    if not 0 <= share <= 1:
        raise ValueError("share must be between 0 and 1")
    start, end = start_hour * 3600.0, (start_hour + hours) * 3600.0
    if share == 0:
        return ()
    if share == 1:
        return ((start, end),)
    rng = random.Random(seed)
    low, high = MOTION_EPISODE_S
    mean_gap = (low + high) / 2 * (1 - share) / share
    episodes, t = [], start + rng.expovariate(1 / mean_gap)
    while t < end:
        length = rng.uniform(low, high)
        episodes.append((t, min(end, t + length)))
        t += length + rng.expovariate(1 / mean_gap)
    return tuple(episodes)


# A controller gets (time, sensor reading) and returns (min interval, pause).
Controller = Callable[[float, float], tuple[float, bool]]


def simulate(
    name: str,
    controller: Controller,
    hours: float,
    peak_c: float,
    seed: int = 1,
    start_hour: float = 0.0,
    profile: DutyProfile | None = None,
) -> Outcome:
    """Run one controller from `start_hour` of the day for `hours`, one step per second.

    Without a `profile` the daemon classifies flat out whenever the controller lets it.
    """
    rng = random.Random(seed)
    steps = int(hours * 3600 / DT_S)
    start = start_hour * 3600.0
    temp = ambient_c(start, peak_c) + P_IDLE_W * R_TH_K_PER_W  # start idle, settled
    step_index = 0  # index into DVFS_MHZ
    next_firmware = 0.0
    peak = temp
    hot_seconds = work = temp_sum = motion_work = motion_seconds = 0.0
    pauses = 0
    paused_before = False
    for k in range(steps):
        t = start + k * DT_S
        reading = temp + rng.gauss(0.0, SENSOR_NOISE_C)
        interval, pause = controller(t, reading)
        pauses += pause and not paused_before
        paused_before = pause
        mhz = DVFS_MHZ[step_index]
        slowdown = DVFS_MHZ[0] / mhz
        invoke = INVOKE_S * slowdown
        wanted, gate_duty = profile.demand(t) if profile is not None else (0.0, 0.0)
        interval = max(interval, wanted)
        # Paused, the loop takes no frames at all, so the gate does not run either.
        duty = 0.0 if pause else min(1.0, invoke / max(invoke, interval) + gate_duty * slowdown)
        frames = (0.0 if pause else invoke / max(invoke, interval)) / slowdown * DT_S
        work += frames
        if profile is not None and profile.has_motion(t):
            motion_work += frames
            motion_seconds += DT_S
        temp += DT_S / TAU_S * (power_w(duty, mhz) * R_TH_K_PER_W - (temp - ambient_c(t, peak_c)))
        temp_sum += temp
        peak = max(peak, temp)
        hot_seconds += DT_S if temp >= FIRMWARE_LIMIT_C else 0.0
        # The firmware: straight to the floor at the hard limit, else one step at a time.
        if temp >= HARD_LIMIT_C:
            step_index = len(DVFS_MHZ) - 1
        elif t >= next_firmware:
            if temp >= FIRMWARE_LIMIT_C and step_index < len(DVFS_MHZ) - 1:
                step_index += 1
                next_firmware = t + FIRMWARE_STEP_S
            elif temp < FIRMWARE_RECOVER_C and step_index > 0:
                step_index -= 1
                next_firmware = t + FIRMWARE_STEP_S
    return Outcome(
        name,
        peak,
        hot_seconds,
        work / (steps * DT_S),
        pauses=pauses,
        mean_c=temp_sum / steps,
        motion_throughput=motion_work / motion_seconds if motion_seconds else 0.0,
    )


def best_constant_duty(
    hours: float, peak_c: float, start_hour: float = 0.0, limit_c: float = FIRMWARE_LIMIT_C
) -> float:
    """The largest constant duty whose temperature stays below `limit_c` all day.

    Below 80 °C the firmware does nothing, so the model is linear in duty:
    T(t) = A(t) + duty * B(t), with A the idle response to the ambient and B the
    response to the extra (full - idle) power. Bisection on max(A + duty * B).
    """
    steps = int(hours * 3600 / DT_S)
    start = start_hour * 3600.0
    a = ambient_c(start, peak_c) + P_IDLE_W * R_TH_K_PER_W
    b = 0.0
    series = []
    for k in range(steps):
        t = start + k * DT_S
        a += DT_S / TAU_S * (P_IDLE_W * R_TH_K_PER_W - (a - ambient_c(t, peak_c)))
        b += DT_S / TAU_S * ((P_FULL_W - P_IDLE_W) * R_TH_K_PER_W - b)
        series.append((a, b))

    def peak(duty: float) -> float:
        return max(x + duty * y for x, y in series)

    low, high = 0.0, 1.0
    if peak(high) < limit_c:
        return 1.0
    for _ in range(40):
        mid = (low + high) / 2
        low, high = (mid, high) if peak(mid) < limit_c else (low, mid)
    return low


def quasi_static_ceiling(hours: float, peak_c: float, start_hour: float = 0.0) -> float:
    """Mean duty if the SoC were held at exactly 80 °C at every instant: an upper bound."""
    steps = int(hours * 3600 / DT_S)
    total = 0.0
    for k in range(steps):
        headroom_w = FIRMWARE_LIMIT_C - ambient_c(start_hour * 3600 + k * DT_S, peak_c)
        headroom_w /= R_TH_K_PER_W
        total += min(1.0, max(0.0, (headroom_w - P_IDLE_W) / (P_FULL_W - P_IDLE_W)))
    return total / steps


def policy_controller(config: ThrottleSection | None = None) -> tuple[Controller, list[int]]:
    policy = ThrottlePolicy(config)
    changes = [0]

    def control(t: float, reading: float) -> tuple[float, bool]:
        decision = policy.update(Readings(cpu_temp_c=reading), t)
        changes[0] += decision.changed
        return decision.min_interval_s, decision.pause

    return control, changes


def no_throttle(t: float, reading: float) -> tuple[float, bool]:
    return 0.0, False


def naive_on_off() -> Controller:
    paused = [False]

    def control(t: float, reading: float) -> tuple[float, bool]:
        if reading >= NAIVE_PAUSE_C:
            paused[0] = True
        elif reading < NAIVE_RESUME_C:
            paused[0] = False
        return 0.0, paused[0]

    return control


def run(
    hours: float = 24.0, peak_c: float = 40.0, seed: int = 1, start_hour: float = 0.0
) -> dict[str, object]:
    """All three scenarios plus the references, as a dict (what --json prints)."""
    optimum = best_constant_duty(hours, peak_c, start_hour)
    ceiling = quasi_static_ceiling(hours, peak_c, start_hour)
    control, changes = policy_controller()
    outcomes = [
        simulate("policy", control, hours, peak_c, seed, start_hour),
        simulate("none", no_throttle, hours, peak_c, seed, start_hour),
        simulate("on/off 80/75", naive_on_off(), hours, peak_c, seed, start_hour),
    ]
    outcomes[0].state_changes = changes[0]
    for outcome in outcomes:
        outcome.throughput_ratio = outcome.throughput / optimum if optimum else 0.0
        outcome.ceiling_ratio = outcome.throughput / ceiling if ceiling else 0.0
    return {
        "hours": hours,
        "start_hour": start_hour,
        "ambient_peak_c": peak_c,
        "best_constant_duty": optimum,
        "quasi_static_ceiling": ceiling,
        "outcomes": [asdict(outcome) for outcome in outcomes],
    }


def run_duty_profile(
    hours: float = 24.0,
    peak_c: float = 40.0,
    share: float = 0.1,
    seed: int = 1,
    start_hour: float = 0.0,
    max_skip_s: float = 10.0,
) -> dict[str, object]:
    """Gating against no gating, with the policy and without throttling, on one day."""
    episodes = motion_schedule(hours, share, seed=seed + 6, start_hour=start_hour)
    outcomes = []
    for gating in (False, True):
        profile = DutyProfile(episodes, gating=gating, max_skip_s=max_skip_s)
        suffix = " + gate" if gating else ""
        control, changes = policy_controller()
        policy = simulate(f"policy{suffix}", control, hours, peak_c, seed, start_hour, profile)
        policy.state_changes = changes[0]
        bare = simulate(f"none{suffix}", no_throttle, hours, peak_c, seed, start_hour, profile)
        outcomes += [policy, bare]
    motion_s = sum(end - begin for begin, end in episodes)
    return {
        "hours": hours,
        "start_hour": start_hour,
        "ambient_peak_c": peak_c,
        "motion_share": motion_s / (hours * 3600.0),
        "motion_episodes": len(episodes),
        "max_skip_s": max_skip_s,
        "outcomes": [asdict(outcome) for outcome in outcomes],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.thermal_sim", description=__doc__)
    parser.add_argument("--hours", type=float, default=24.0, help="simulated hours (default 24)")
    parser.add_argument(
        "--ambient", type=float, default=40.0, help="peak ambient °C of the day (default 40)"
    )
    parser.add_argument("--start-hour", type=float, default=0.0, help="hour of day to start")
    parser.add_argument("--seed", type=int, default=1, help="sensor-noise seed")
    parser.add_argument(
        "--duty",
        type=float,
        default=None,
        metavar="SHARE",
        help="also run the duty profile: motion this share of the time (e.g. 0.1), "
        "with and without the motion gate",
    )
    parser.add_argument("--max-skip", type=float, default=10.0, help="motion.max_skip_s")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    result = run(args.hours, args.ambient, args.seed, args.start_hour)
    duty = None
    if args.duty is not None:
        duty = run_duty_profile(
            args.hours, args.ambient, args.duty, args.seed, args.start_hour, args.max_skip
        )
    if args.json:
        json.dump(
            result if duty is None else {**result, "duty_profile": duty}, sys.stdout, indent=2
        )
        print()
        return 0
    print(
        f"bare Pi 4B, {args.hours:g} h, ambient peak {args.ambient:g} °C; best constant duty "
        f"under 80 °C = {result['best_constant_duty']:.3f}, quasi-static ceiling = "
        f"{result['quasi_static_ceiling']:.3f}"
    )
    print(
        f"{'controller':<14}{'peak °C':>9}{'s >= 80 °C':>12}{'throughput':>12}"
        f"{'vs const':>10}{'vs ceiling':>12}"
    )
    for o in result["outcomes"]:  # type: ignore[attr-defined]
        print(
            f"{o['name']:<14}{o['peak_c']:>9.2f}{o['seconds_at_or_above_80']:>12.0f}"
            f"{o['throughput']:>12.3f}{o['throughput_ratio']:>10.3f}{o['ceiling_ratio']:>12.3f}"
        )
    if duty is not None:
        print(
            f"\nduty profile: motion {duty['motion_share']:.1%} of the time in "
            f"{duty['motion_episodes']} episodes, max_skip_s {args.max_skip:g}"
        )
        print(
            f"{'controller':<16}{'peak °C':>9}{'mean °C':>9}{'s >= 80 °C':>12}"
            f"{'frames':>9}{'in motion':>11}"
        )
        for o in duty["outcomes"]:  # type: ignore[attr-defined]
            print(
                f"{o['name']:<16}{o['peak_c']:>9.2f}{o['mean_c']:>9.2f}"
                f"{o['seconds_at_or_above_80']:>12.0f}{o['throughput']:>9.3f}"
                f"{o['motion_throughput']:>11.3f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
