"""The bench report as a human-readable table."""

from __future__ import annotations

from typing import Any

from pi_daemon.bench.pipeline import STAGES


def _fmt_stage(stats: dict[str, float]) -> str:
    return f"{stats['p50']:8.3f} {stats['p95']:8.3f} {stats['max']:8.3f}"


def format_report(report: dict[str, Any]) -> str:
    """The human-readable table."""
    env, model = report["environment"], report["model"]
    blas = env["blas"]
    lines = [
        f"pi-daemon {report['pi_daemon']} bench: {model['name']} "
        f"(sha256 {model['sha256'][:12]}…, input {model['input']}) "
        f"on {model['backend']} {model['backend_version']}",
        f"machine  {env['machine']}, {env['cpu']}, {env['cores']} cores "
        f"({env['usable_cores']} usable), governor {env['governor']}, "
        f"freq {env['cur_freq']} (max {env['max_freq']}), "
        f"SoC temp {env['cpu_temp_c'] if env['cpu_temp_c'] is not None else 'n/a'} °C",
        f"software python {env['python']}, numpy {env['numpy']} with BLAS "
        f"{blas.get('name')} {blas.get('version') or ''} "
        f"({blas.get('threads') or '?'} threads, via {blas['source']}), "
        f"opencv {env['opencv']} ({env['opencv_threads']} threads)",
        f"replay   {report['replay']['what']} at {report['replay']['size'][0]}x"
        f"{report['replay']['size'][1]}, through the files source and the capture thread",
        "",
        f"{'threads':>7} {'bare fps':>9} {'pipeline fps':>13} {'ratio':>6} {'(q1-q3)':>13} "
        f"{'cpu ratio':>9} {'(q1-q3)':>13}  target >= {report['target_ratio']} (on cpu ratio)",
    ]
    for run in report["runs"]:
        bare, pipe = run["bare"], run["pipeline"]
        verdict = "ok" if run["meets_target"] else f"LOW: {run['overhead']['largest']}"
        low, high = run["ratio_spread"]
        cpu_low, cpu_high = run["cpu_ratio_spread"]
        lines.append(
            f"{run['threads']:>7} {bare['fps']:>9.1f} {pipe['fps']:>13.1f} "
            f"{run['ratio']:>6.3f} {f'({low:.3f}-{high:.3f})':>13} "
            f"{run['cpu_ratio']:>9.3f} {f'({cpu_low:.3f}-{cpu_high:.3f})':>13}  {verdict}"
        )
        lines.append(
            f"{'':>7} rounds: ratio {run['ratio_rounds']}; bare fps {bare['fps_rounds']}; "
            f"cpu ms/frame bare {bare['cpu_ms_per_frame']:.3f}, "
            f"pipeline {pipe['cpu_ms_per_frame']:.3f}"
        )
    for run in report["runs"]:
        pipe = run["pipeline"]
        lines += [
            "",
            f"stages at {run['threads']} thread(s), ms   p50      p95      max",
        ]
        for stage in STAGES:
            note = "  (dispatcher thread)" if stage == "sinks" else ""
            lines.append(f"  {stage:<26}{_fmt_stage(pipe['stages_ms'][stage])}{note}")
        lines.append(
            f"  {'bare invoke':<26}{_fmt_stage(run['bare']['invoke_ms'])}"
            f"  | loop other {pipe['loop_other_mean_ms']:.3f} ms/frame, "
            f"{pipe['dropped_frames']} dropped frames, {pipe['dropped_events']} dropped events"
        )
        over = run["overhead"]
        parts = ", ".join(f"{k} {v:.3f}" for k, v in over["by_stage_ms"].items())
        lines.append(f"  overhead vs bare {over['per_frame_ms']:.3f} ms/frame: {parts}")
    proc = report["process"]
    steady = proc["steady_rss_mib"]
    rss_verdict = "ok" if steady is not None and steady <= report["rss_target_mib"] else "HIGH"
    lines += [
        "",
        f"process  `pi-daemon run --max-frames {proc['frames']}` on {proc['what']}: "
        f"first result after {proc['time_to_first_result_s']:.2f} s, peak RSS "
        f"{proc['peak_rss_mib']} MiB, steady RSS {steady} MiB "
        f"({proc.get('steady_rss_anon_mib')} anonymous, {proc.get('steady_rss_file_mib')} "
        "file-backed) "
        f"(target <= {report['rss_target_mib']}: {rss_verdict}; bench process peak "
        f"{proc['bench_peak_rss_mib']} MiB)",
    ]
    mq = report["mqtt"]
    if mq["status"] == "ok":
        live, dead = mq["live"], mq["dead"]
        lines.append(
            f"mqtt at {mq['threads']} thread(s): pipeline ratio with a live broker "
            f"{live['ratio']:.3f} ({live['ratio_spread'][0]:.3f}-{live['ratio_spread'][1]:.3f}), "
            f"with a dead one {dead['ratio']:.3f} "
            f"({dead['ratio_spread'][0]:.3f}-{dead['ratio_spread'][1]:.3f}): "
            f"{'ok' if mq['meets_target'] else 'LOW'}; event to subscriber "
            f"p50 {live['latency_ms']['p50']:.2f} ms p95 {live['latency_ms']['p95']:.2f} ms; "
            f"disk {live['disk_bytes_per_event']:.0f} B/event live, "
            f"{dead['disk_bytes_per_event']:.0f} B/event with the broker down"
        )
    else:
        lines.append(f"mqtt: skipped: {mq['reason']}")
    mo = report["motion"]
    lines.append(
        f"motion   static scene {mo['seconds']:g} s at {mo['fps']:g} fps, max_skip_s "
        f"{mo['max_skip_s']:g}: classified share {mo['static_classified_share_YUV420']:.4f} "
        f"(YUV420), {mo['static_classified_share_BGR']:.4f} (BGR), bound "
        f"{mo['static_classified_share_bound']:.4f}; motion classified "
        f"{mo['motion_latency_frames_YUV420']} frame(s) after it starts; CPU per minute "
        f"gated/every frame {mo['cpu_YUV420']['ratio']:.3f} (YUV420), "
        f"{mo['cpu_BGR']['ratio']:.3f} (BGR)"
    )
    fl = report["compare"]["int8_vs_float32"]
    if fl["status"] == "ok":
        lines.append(
            f"int8 vs float32 at {fl['threads']} thread(s): {fl['int8_ms']:.2f} ms vs "
            f"{fl['float32_ms']:.2f} ms: float32 takes {fl['float32_over_int8_time']:.2f}x "
            f"as long; file {fl['file_size_ratio']}x as large; top-1 agrees on "
            f"{fl['top1_agreement_demo_photos']} demo photos"
        )
    else:
        lines.append(f"int8 vs float32: skipped: {fl['reason']}")
    be = report["compare"]["litert_vs_tflite_runtime"]
    if be["status"] == "ok":
        lines.append(
            f"litert vs tflite-runtime at {be['threads']} thread(s): "
            f"{be['litert']['ms']:.2f} ms vs {be['tflite_runtime']['ms']:.2f} ms: "
            f"tflite-runtime takes {be['tflite_runtime_over_litert_time']:.2f}x as long "
            f"(tflite-runtime {be['tflite_runtime'].get('version')} in "
            f"{be['tflite_runtime'].get('where')})"
        )
    else:
        lines.append(f"litert vs tflite-runtime: skipped: {be['reason']}")
    return "\n".join(lines)
