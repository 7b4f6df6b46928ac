"""The GPU run's report.md and plots, from results.json (also from a run that was cut short)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from bench.gpu.plan import STEPS

PLOTS = ("sweep.png", "server.png")


def write_report(results: dict[str, Any], out: Path, *, plots: bool = True) -> Path:
    """report.md, and the plots unless ``plots`` is false (between steps: the figures matter,
    and matplotlib costs seconds on a busy machine)."""
    lines = header(results)
    lines += env_section(results.get("env"))
    lines += parity_section(results.get("parity"))
    lines += sweep_section(results.get("sweep"), results.get("tensorrt"))
    lines += server_section(results.get("server"))
    lines += ["## Details", ""]
    lines += steps_section(results)
    written = []
    if plots:
        with contextlib.suppress(ImportError):
            written = write_plots(results, out)
    else:
        written = [name for name in PLOTS if (out / name).exists()]
    if written:
        lines += ["", *[f"![{name}]({name})" for name in written]]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def header(results: dict[str, Any]) -> list[str]:
    run = results.get("run", {})
    kind = (
        "DRY RUN on the CPU provider (tiny model, small sizes): checks the plan, measures nothing"
        if run.get("dry_run")
        else "GPU run"
    )
    wall = f", {run['wall_s']:.0f} s in all" if "wall_s" in run else " (running or cut short)"
    return [
        f"# GPU run: {kind}",
        "",
        f"`{run.get('command', '')}`, started {run.get('started_utc', '?')}{wall}.",
        "",
    ]


def env_section(env: dict[str, Any] | None) -> list[str]:
    if not env:
        return []
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    lines = [
        "## Machine and providers",
        "",
        f"- GPU: {'; '.join(env['gpu'])}",
        f"- CPU: {env['cpu']}",
        f"- {versions}",
        f"- ONNX Runtime build: {env['onnxruntime_build']}, "
        f"providers {', '.join(env['available_providers'])}",
        f"- provider under test: **{env['provider_under_test']}**",
    ]
    if "cuda_session_providers" in env:
        lines.append(f"- a CUDA session really runs on: {', '.join(env['cuda_session_providers'])}")
    if "cuda_unavailable" in env:
        lines.append(f"- CUDA unavailable: {env['cuda_unavailable']}")
    return [*lines, ""]


def parity_section(parity: dict[str, Any] | None) -> list[str]:
    rows = {k: v for k, v in (parity or {}).items() if isinstance(v, dict) and "top1_agreement" in v}
    if not rows:
        return []
    lines = [
        "## Parity with the CPU provider (real photos, the server's preprocessing)",
        "",
        "Each model on the provider under test against the fp32 model on ONNX Runtime's CPU provider.",
        "",
        "| model | provider | photos | top-1 agrees | top-5 overlap | max abs diff | mean abs diff |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for variant, r in rows.items():
        lines.append(
            f"| {variant} | {r['provider']} | {r['photos']} | {r['top1_agreement']:.0%} | "
            f"{r['top5_overlap']:.0%} | {r['max_abs_diff']:.2e} | {r['mean_abs_diff']:.2e} |"
        )
    return [*lines, ""]


def sweep_section(sweep: dict[str, Any] | None, tensorrt: dict[str, Any] | None) -> list[str]:
    points = {**(sweep or {}).get("points", {}), **(tensorrt or {}).get("points", {})}
    if not points:
        return []
    batches = sorted({p["batch"] for p in points.values()})
    series: dict[str, dict[int, dict[str, Any]]] = {}
    for key, p in points.items():
        series.setdefault(key.rsplit("/", 1)[0], {})[p["batch"]] = p
    lines = [
        "## The model alone: images/s by batch size",
        "",
        "`host`: numpy in and out, each run copies the batch to the device and the answer back (what "
        "the server does); `iobinding`: input and output stay on the device (the device's own speed).",
        "",
        "| model / feeding | " + " | ".join(f"b{b}" for b in batches) + " | best |",
        "|---|" + "---:|" * (len(batches) + 1),
    ]
    for name, by_batch in series.items():
        cells = [f"{by_batch[b]['images_per_s']:,.0f}" if b in by_batch else "-" for b in batches]
        best = max(by_batch.values(), key=lambda p: p["images_per_s"])
        lines.append(
            f"| {name} | " + " | ".join(cells) + f" | {best['images_per_s']:,.0f} (b{best['batch']}) |"
        )
    for part, label in ((sweep, "sweep"), (tensorrt, "tensorrt")):
        if part and "cut" in part:
            lines.append(f"\n{label} cut short {part['cut']}.")
    return [*lines, ""]


def server_section(server: dict[str, Any] | None) -> list[str]:
    points = (server or {}).get("points", {})
    if not points:
        return []
    pin = server.get("pinning", {}) if server else {}
    lines = [
        "## The server end to end (multipart JPEGs, 500x375, closed loop)",
        "",
        f"Load generators on cpus {pin.get('client_cpus')} ({pin.get('client_processes')} processes), "
        f"servers on cpus {pin.get('server_cpus')}. `_procs`: {pin.get('server_processes_procs')} "
        "server processes sharing the GPU, load generator i sending to server i mod N. "
        "GPU: nvidia-smi's utilisation (percent of time a kernel ran), mean and max over the window.",
        "",
        "| topology | c or offered | images/s | p50 ms | p99 ms | mean batch | server CPU-ms/image "
        "| GPU util mean/max | GPU MiB | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in points.values():
        gpu = r.get("gpu")
        cpu = r.get("server_cpu_s_per_image")
        batch = r.get("mean_batch_size")
        batch_text = f"{batch:.1f}" if batch else "-"
        cpu_text = f"{1000 * cpu:.2f}" if cpu else "-"
        util_text = f"{gpu['util_mean']:.0f}% / {gpu['util_max']:.0f}%" if gpu else "-"
        memory_text = f"{gpu['memory_mib_max']:.0f}" if gpu else "-"
        load = f"open {r['offered_images_per_s']:,.0f}/s" if r["mode"] == "open" else str(r["concurrency"])
        lines.append(
            f"| {r['topology']} | {load} | {r['images_per_s']:,.1f} | "
            f"{r['latency_ms']['p50']:.1f} | {r['latency_ms']['p99']:.1f} | {batch_text} | {cpu_text} | "
            f"{util_text} | {memory_text} | "
            f"{r['error_count']} |"
        )
    starts = server.get("start_s", {}) if server else {}
    if starts:
        lines.append("")
        lines.append(
            "Start-up to ready (all processes of the topology, warm-up included): "
            + ", ".join(f"{k} {v:.1f} s" for k, v in starts.items())
            + "."
        )
    if server and "cut" in server:
        lines.append(f"\nserver cut short {server['cut']}.")
    return [*lines, ""]


def steps_section(results: dict[str, Any]) -> list[str]:
    done = results.get("steps", {})
    lines = ["| step | what | status | took s | limit s | note |", "|---|---|---|---:|---:|---|"]
    for step in STEPS:
        s = done.get(step.name)
        if s is None:
            lines.append(f"| {step.name} | {step.what} | not run | | | |")
            continue
        lines.append(
            f"| {step.name} | {step.what} | {s['status']} | {s.get('wall_s', '')} | {s.get('limit_s', '')} | "
            f"{s.get('why', '')} |"
        )
    models = results.get("models", {}).get("cards", {})
    if models:
        lines.append("")
        lines += [
            f"- {v}: {c['name']} {c['version']}, input {c['input']}, output {c['output']}, {c['mb']} MB"
            for v, c in models.items()
        ]
    return lines


def write_plots(results: dict[str, Any], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    whole = FuncFormatter(lambda value, _: f"{value:g}")

    written = []
    sweep = {**results.get("sweep", {}).get("points", {}), **results.get("tensorrt", {}).get("points", {})}
    if sweep:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        series: dict[str, list[tuple[int, float]]] = {}
        for key, p in sweep.items():
            series.setdefault(key.rsplit("/", 1)[0], []).append((p["batch"], p["images_per_s"]))
        for name, xy in series.items():
            xy.sort()
            ax.plot([x for x, _ in xy], [y for _, y in xy], marker="o", label=name)
        ax.set(xlabel="batch size", ylabel="images/s", title="The model alone")
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({p["batch"] for p in sweep.values()}))
        ax.xaxis.set_major_formatter(whole)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "sweep.png", dpi=110)
        plt.close(fig)
        written.append("sweep.png")
    points = results.get("server", {}).get("points", {})
    if points:
        fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
        by_topology: dict[str, list[dict[str, Any]]] = {}
        for r in points.values():
            by_topology.setdefault(r["topology"], []).append(r)
        for name, all_rows in by_topology.items():
            rows = sorted((r for r in all_rows if r["mode"] == "closed"), key=lambda r: r["concurrency"])
            c = [r["concurrency"] for r in rows]
            axes[0].plot(c, [r["images_per_s"] for r in rows], marker="o", label=name)
            axes[1].plot(c, [r["latency_ms"]["p99"] for r in rows], marker="o", label=name)
            util = [r["gpu"]["util_mean"] if r.get("gpu") else float("nan") for r in rows]
            axes[2].plot(c, util, marker="o", label=name)
        for ax, ylabel in zip(
            axes, ("images/s", "p99 latency, ms", "GPU utilisation, % (mean)"), strict=True
        ):
            ax.set_xscale("log", base=2)
            ax.set(xlabel="concurrent clients", ylabel=ylabel)
            ax.grid(alpha=0.3)
        levels = sorted({r["concurrency"] for r in points.values() if r["mode"] == "closed"})
        for ax in axes:
            ax.set_xticks(levels)
            ax.xaxis.set_major_formatter(whole)
            ax.xaxis.set_minor_formatter(NullFormatter())
        if not any(r.get("gpu") for r in points.values()):
            axes[2].text(0.5, 0.5, "no nvidia-smi samples", ha="center", transform=axes[2].transAxes)
        axes[1].set_yscale("log")
        axes[0].legend(fontsize=8)
        fig.suptitle("The server end to end (multipart JPEGs)")
        fig.tight_layout()
        fig.savefig(out / "server.png", dpi=110)
        plt.close(fig)
        written.append("server.png")
    return written
