"""The benchmark's results as ratios, targets, a plain-text table and a PNG plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: Targets of issue #7.
TARGET_PIPELINE_OVER_RAW = 0.9


TARGET_OVER_MONAI_SPEED = 2.0


TARGET_MONAI_MEMORY = 0.25


TARGET_RSS_GROWTH = 1.3


TARGET_AGREEMENT = 0.999


def ratios_and_targets(results: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    tile = results["settings"]["tile_size"]
    raw = next(r for r in results["raw"] if r["tile_size"] == tile)
    pipelines = results["pipeline"]
    monai = results["monai"] if results["monai"] and "skipped" not in results["monai"] else None
    ratios: dict[str, Any] = {}
    targets: dict[str, Any] = {}
    if pipelines:
        best = max(pipelines, key=lambda p: p["side"])
        ratios["pipeline_over_raw_sweep"] = round(best["mpx_per_s"] / raw["mpx_per_s"], 3)
        # Against the raw model measured just before and after this very run (see run_bench).
        ratios["pipeline_over_raw"] = best.get(
            "over_adjacent_raw", ratios["pipeline_over_raw_sweep"]
        )
        if "over_adjacent_raw_best" in best:
            ratios["pipeline_over_raw_best_pass"] = best["over_adjacent_raw_best"]
        if "over_separate_raw" in best:
            ratios["pipeline_over_raw_separate"] = best["over_separate_raw"]
        if best.get("forward_share") is not None:
            ratios["pipeline_forward_share"] = best["forward_share"]
        targets["pipeline >= 0.9 x raw model"] = target_entry(
            ratios["pipeline_over_raw"], TARGET_PIPELINE_OVER_RAW, higher=True, side=best["side"]
        )
    if len(pipelines) >= 2:
        small = min(pipelines, key=lambda p: p["side"])
        large = max(pipelines, key=lambda p: p["side"])
        growth = large["peak_rss_mib"] / small["peak_rss_mib"]
        ratios[f"peak_rss_{large['side']}_over_{small['side']}"] = round(growth, 3)
        targets["peak RSS flat in image size (<= 1.3)"] = target_entry(
            growth, TARGET_RSS_GROWTH, higher=False, sides=[small["side"], large["side"]]
        )
    if monai is not None:
        same = [p for p in pipelines if p["side"] == monai["side"]]
        if same:
            pipe = same[0]
            runs = [pipe, *([monai["pipeline_after"]] if monai.get("pipeline_after") else [])]
            speed = sum(r["mpx_per_s"] for r in runs) / len(runs) / monai["mpx_per_s"]
            memory = max(r["peak_rss_mib"] for r in runs) / monai["peak_rss_mib"]
            ratios["pipeline_over_monai_mpx_per_s"] = round(speed, 3)
            ratios["pipeline_over_monai_peak_rss"] = round(memory, 3)
            targets[">= 2x MONAI Mpx/s"] = target_entry(
                speed, TARGET_OVER_MONAI_SPEED, higher=True, side=monai["side"]
            )
            targets["<= 1/4 of MONAI peak RSS"] = target_entry(
                memory, TARGET_MONAI_MEMORY, higher=False, side=monai["side"]
            )
            if pipe.get("gpu_peak_mib") and monai.get("gpu_peak_mib"):
                ratios["pipeline_over_monai_gpu_peak"] = round(
                    pipe["gpu_peak_mib"] / monai["gpu_peak_mib"], 3
                )
            if monai["side"] < 8192:
                for name in (">= 2x MONAI Mpx/s", "<= 1/4 of MONAI peak RSS"):
                    targets[name]["note"] = "the target is stated for 8192^2; measured smaller"
    background = results.get("background")
    if background:
        full, partial = background["full"], background["partial"]
        fraction = partial["tissue_fraction"]
        proportional = (partial["seconds"] / full["seconds"]) / fraction
        ratios["skip_time_over_tissue_share"] = round(proportional, 3)
        targets["time proportional to tissue area (ratio <= 1.3)"] = target_entry(
            proportional, 1.3, higher=False, tissue_fraction=fraction
        )
    agreement = results.get("agreement")
    if agreement:
        targets[f"{agreement['precision']} masks equal fp32 (>= 99.9%)"] = target_entry(
            agreement["equal_fraction"], TARGET_AGREEMENT, higher=True
        )
    return ratios, targets


def target_entry(value: float, target: float, *, higher: bool, **context: Any) -> dict[str, Any]:
    met = value >= target if higher else value <= target
    return {
        "value": round(value, 4),
        "target": target,
        "higher": higher,
        "met": bool(met),
        **context,
    }


def format_table(results: dict[str, Any]) -> str:
    """The results as a plain-text table (what ``unet bench`` prints)."""
    m, s = results["machine"], results["settings"]
    lines = [
        f"machine: {m['cpu']}, {m['cores']} cores{', ' + m['gpu'] if m.get('gpu') else ''}; "
        f"torch {m['torch']}, zarr {m['zarr']}, dask {m['dask']}; "
        f"load average {m['loadavg_start'][0]:.2f} at start, "
        f"{m.get('loadavg_end', [0])[0]:.2f} at end",
        f"device {s['device']}, precision {s['precision']}, tile {s['tile_size']} "
        f"(halo {s['halo']}), batch {s['batch_size']}, model {s['architecture']}, "
        f"channels_last {s['channels_last']}",
        "",
        f"{'measurement':<34}{'Mpx/s':>9}{'seconds':>10}{'peak RSS MiB':>14}{'GPU MiB':>9}",
    ]

    def row(name, entry, seconds_key="seconds"):
        gpu = entry.get("gpu_peak_mib")
        lines.append(
            f"{name:<34}{entry['mpx_per_s']:>9.3f}{entry.get(seconds_key, 0):>10.2f}"
            f"{entry['peak_rss_mib']:>14.0f}{(f'{gpu:.0f}' if gpu else '-'):>9}"
        )

    for raw in results["raw"]:
        mark = " *" if raw["tile_size"] == s["tile_size"] else ""
        row(f"raw model, tile {raw['tile_size']}{mark}", raw, "seconds_per_forward")
    for pipe in results["pipeline"]:
        row(f"pipeline {pipe['side']}^2", pipe)
        if "raw_adjacent_mpx_per_s" in pipe:
            before, after = pipe.get("raw_adjacent_sustained_mpx_per_s", [0.0, 0.0])
            best_before, best_after = pipe["raw_adjacent_mpx_per_s"]
            lines.append(
                f"  raw model just before / after it, on its worker: {before:.3f} / {after:.3f}"
                f" Mpx/s sustained, {best_before:.3f} / {best_after:.3f} best pass (pipeline "
                f"{pipe['over_adjacent_raw']:.3f} / {pipe.get('over_adjacent_raw_best', 0):.3f}"
                " of their means)"
            )
            if pipe.get("forward_share") is not None:
                lines.append(
                    f"  forward passes: {pipe['forward_share']:.3f} of its wall time (the "
                    "pipeline against its own model, free of the machine's drift)"
                )
            if "raw_separate_sustained_mpx_per_s" in pipe:
                before, after = pipe["raw_separate_sustained_mpx_per_s"]
                lines.append(
                    f"  raw model before / after it in processes of its own: {before:.3f} / "
                    f"{after:.3f} Mpx/s sustained (pipeline {pipe['over_separate_raw']:.3f})"
                )
    monai = results.get("monai")
    if monai and "skipped" not in monai:
        row(f"MONAI sliding window {monai['side']}^2", monai)
        if monai.get("pipeline_after"):
            row(f"pipeline {monai['side']}^2 again, after MONAI", monai["pipeline_after"])
    elif monai:
        lines.append(f"MONAI: skipped ({monai['skipped']})")
    background = results.get("background")
    if background:
        for key in ("full", "partial"):
            entry = background[key]
            row(f"skip-background, tissue {entry['tissue_fraction']:.2f}", entry)
    agreement = results.get("agreement")
    if agreement:
        lines.append(
            f"{agreement['precision']} vs fp32 masks on {agreement['side']}^2: "
            f"{100 * agreement['equal_fraction']:.3f}% of pixels equal"
        )
    return "\n".join(lines + verdict_lines(results))


def verdict_lines(results: dict[str, Any]) -> list[str]:
    """The lines of a results table's ratios and targets, each target met or MISSED."""
    lines = [""]
    for name, value in results["ratios"].items():
        lines.append(f"{name}: {value}")
    lines.append("")
    for name, target in results["targets"].items():
        verdict = "met" if target["met"] else "MISSED"
        note = f" ({target['note']})" if target.get("note") else ""
        lines.append(f"target {name}: {target['value']} -> {verdict}{note}")
    return lines


def plot_results(results: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    raw = results["raw"]
    left.plot([r["tile_size"] for r in raw], [r["mpx_per_s"] for r in raw], "o-", label="raw model")
    left.set_xlabel("tile side (input pixels)")
    left.set_ylabel("useful output Mpx/s")
    left.set_title("raw model against tile size")
    left.grid(True, alpha=0.3)
    left.legend()
    pipes = results["pipeline"]
    right.plot([p["side"] for p in pipes], [p["mpx_per_s"] for p in pipes], "o-", label="pipeline")
    tile = results["settings"]["tile_size"]
    reference = next(r for r in raw if r["tile_size"] == tile)["mpx_per_s"]
    right.axhline(reference, color="grey", linestyle="--", label=f"raw model, tile {tile}")
    monai = results.get("monai")
    if monai and "skipped" not in monai:
        right.plot([monai["side"]], [monai["mpx_per_s"]], "s", label="MONAI sliding window")
    right.set_xlabel("image side (pixels)")
    right.set_ylabel("Mpx/s")
    right.set_title("pipeline against image size")
    right.set_ylim(bottom=0)
    right.grid(True, alpha=0.3)
    right.legend()
    s = results["settings"]
    figure.suptitle(f"{s['device']}, {s['precision']}, batch {s['batch_size']}")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def format_rounds(summary: dict[str, Any]) -> str:
    """The medians of several rounds and how many rounds met each target."""
    rounds = summary["settings"]["rounds"]
    lines = [f"medians of {rounds} rounds (lowest - highest):"]
    for name, value in summary["ratios"].items():
        low, high = summary["ratio_ranges"][name]
        lines.append(f"{name}: {value} ({low} - {high})")
    lines.append("")
    for name, target in summary["targets"].items():
        verdict = "met" if target["met"] else "MISSED"
        lines.append(
            f"target {name}: median {target['value']} -> {verdict} "
            f"(met in {target['rounds_met']} of {target['rounds']} rounds)"
        )
    return "\n".join(lines)
