"""results.json -> report.md (ratios against the issue's targets first, then every figure) and plots."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

MAIN = "jpeg_500x375"


def ceiling_set(workload: str) -> str:
    """The ceiling's image set for a workload (multi-image and raw-body requests carry the same JPEGs)."""
    return workload.replace("raw_", "jpeg_").replace("multi8_", "jpeg_")


def ceiling_cpu(
    report: dict[str, Any], workload: str, mean_batch: float | None
) -> tuple[float | None, int | None]:
    """(CPU-s/image, batch) of the ceiling at the batch size nearest (log scale) the server's mean batch."""
    figures = report["ceiling"]["pipeline"].get(ceiling_set(workload))
    if not figures:
        return None, None
    by_batch = {int(k): v for k, v in figures.get("by_batch", {}).items()} or {
        report["ceiling"]["max_batch_size"]: figures
    }
    target = max(1.0, mean_batch or float(report["ceiling"]["max_batch_size"]))
    size = min(by_batch, key=lambda b: abs(math.log(b) - math.log(target)))
    return by_batch[size]["cpu_s_per_image"], size


def _get(points: dict[str, Any], key: str) -> dict[str, Any] | None:
    return points.get(key)


def _fmt(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def capacity(point: dict[str, Any] | None) -> float | None:
    """Images/s one fully available server core would give: 1 / server CPU-s per image.

    On a shared machine, other processes take a varying share of the server's core, so
    measured images/s of two topologies run minutes apart are not comparable; CPU-seconds per
    image hardly move. On CPU-bound servers this is the contention-free throughput.
    """
    cpu = point and point["server_cpu_s_per_image"]
    return 1.0 / cpu if cpu else None


def serial_parts_cpu(report: dict[str, Any], workload: str, batch: int | None) -> float | None:
    """Preprocessing alone + the model alone at that batch: the strictest ceiling (no interference)."""
    figures = report["ceiling"]["pipeline"].get(ceiling_set(workload))
    model = {int(k): v for k, v in report["ceiling"]["model"].items()}
    if not figures or not model or batch is None:
        return None
    size = min(model, key=lambda b: abs(math.log(b) - math.log(max(1, batch))))
    return float(figures["preprocess_cpu_s_per_image"] + model[size]["cpu_s_per_image"])


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b:
        return None
    return a / b


def target_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of the issue: measured ratio, threshold, met or not (None: not measured here)."""
    points = report["points"]
    on32 = _get(points, f"batching_on/{MAIN}/c32")
    off32 = _get(points, f"batching_off/{MAIN}/c32")
    naive32 = _get(points, f"naive/{MAIN}/c32")
    on12 = _get(points, "batching_on/jpeg_12mp/c32")
    naive12 = _get(points, "naive/jpeg_12mp/c32")
    rows = []
    ceil_cpu, ceil_batch = ceiling_cpu(report, MAIN, on32 and on32["mean_batch_size"])
    overhead = _ratio(on32 and on32["server_cpu_s_per_image"], ceil_cpu)
    parts = serial_parts_cpu(report, MAIN, ceil_batch)
    gpu = bool(report["machine"].get("cuda_provider_available"))
    rows.append(
        {
            "target": "Overhead: server CPU-s/image at c=32, 500x375 JPEG ÷ in-process ceiling's",
            "measured": overhead,
            "want": "≤ 1.25",
            "met": None if overhead is None else overhead <= 1.25,
            "detail": (
                f"{_fmt(on32 and 1000 * on32['server_cpu_s_per_image'], 2)} vs "
                f"{_fmt(ceil_cpu and 1000 * ceil_cpu, 2)} CPU-ms/image (server's mean batch "
                f"{_fmt(on32 and on32['mean_batch_size'])}, ceiling at batch {ceil_batch}); against "
                f"preprocess alone + model alone ({_fmt(parts and 1000 * parts, 2)} CPU-ms): "
                f"{_fmt(_ratio(on32 and on32['server_cpu_s_per_image'], parts), 2)}x"
            ),
        }
    )
    want_batching = 4.0 if gpu else 1.5
    batching = _ratio(on32 and on32["images_per_s"], off32 and off32["images_per_s"])
    batching_capacity = _ratio(capacity(on32), capacity(off32))
    rows.append(
        {
            "target": f"Batching: images/s on ÷ off (max_batch_size=1) at c=32 ({'GPU' if gpu else 'CPU'})",
            "measured": batching,
            "want": f"≥ {want_batching:g}",
            "met": _verdict_ratio(batching, batching_capacity, want_batching, gpu),
            "detail": (
                f"{_fmt(on32 and on32['images_per_s'])} vs {_fmt(off32 and off32['images_per_s'])} images/s; "
                f"per-core capacity ratio {_fmt(batching_capacity, 2)}x"
            ),
        }
    )
    for label, ours, naive, want in (
        ("500x375 JPEG", on32, naive32, 1.5),
        ("12-MP JPEG", on12, naive12, 5.0),
    ):
        ratio = _ratio(ours and ours["images_per_s"], naive and naive["images_per_s"])
        capacity_ratio = _ratio(capacity(ours), capacity(naive))
        p99_ok = None if not (ours and naive) else ours["latency_ms"]["p99"] <= naive["latency_ms"]["p99"]
        rows.append(
            {
                "target": f"vs naive baseline, {label}, c=32: images/s ratio, and p99 no worse",
                "measured": ratio,
                "want": f"≥ {want:g}, p99 ≤ naive's",
                "met": None
                if ratio is None
                else bool(_verdict_ratio(ratio, capacity_ratio, want, gpu) and p99_ok),
                "detail": (
                    f"{_fmt(ours and ours['images_per_s'])} vs "
                    f"{_fmt(naive and naive['images_per_s'])} images/s; "
                    f"p99 {_fmt(ours and ours['latency_ms']['p99'])} vs "
                    f"{_fmt(naive and naive['latency_ms']['p99'])} ms; "
                    f"per-core capacity ratio {_fmt(capacity_ratio, 2)}x"
                ),
            }
        )
    n1, n2 = _get(points, f"nginx_1/{MAIN}/c32"), _get(points, f"nginx_2/{MAIN}/c32")
    if n1 and n2:
        rows.append(
            {
                "target": "Replicas: images/s, 2 ÷ 1 replicas behind nginx, c=32 (no target; needs cores)",
                "measured": _ratio(n2["images_per_s"], n1["images_per_s"]),
                "want": "-",
                "met": None,
                "detail": (
                    f"{_fmt(n2['images_per_s'])} vs {_fmt(n1['images_per_s'])} images/s "
                    f"on cpus {report['machine']['server_cpus']}"
                ),
            }
        )
    if gpu:
        rows.append(
            {
                "target": "GPU: end-to-end images/s, 500x375 JPEG (best concurrency)",
                "measured": max(
                    (p["images_per_s"] for k, p in points.items() if k.startswith(f"batching_on/{MAIN}/c")),
                    default=None,
                ),
                "want": "≥ 3,000",
                "unit": " images/s",
                "met": None,
                "detail": "",
            }
        )
        rows[-1]["met"] = rows[-1]["measured"] is not None and rows[-1]["measured"] >= 3000
        open_point = _get(points, f"batching_on/{MAIN}/open2000ips")
        p99 = open_point["latency_ms"]["p99"] if open_point else None
        rows.append(
            {
                "target": "GPU: p99 latency at 2,000 images/s offered (open loop), 500x375 JPEG",
                "measured": p99,
                "want": "≤ 50 ms",
                "unit": " ms",
                "met": None
                if p99 is None
                else bool(p99 <= 50 and open_point and open_point["error_count"] == 0),
                "detail": f"{_fmt(open_point and open_point['images_per_s'])} images/s achieved",
            }
        )
    return rows


def _verdict_ratio(measured: float | None, per_core: float | None, want: float, gpu: bool) -> bool | None:
    """Met only if the measured ratio and (on CPU) the contention-free per-core ratio both reach it."""
    if measured is None:
        return None
    if gpu or per_core is None:
        return measured >= want
    return min(measured, per_core) >= want


def _verdict(met: bool | None) -> str:
    return {True: "met", False: "**missed**", None: "not measured"}[met]


def targets_table(report: dict[str, Any]) -> str:
    lines = ["| target | measured | wanted | verdict | figures |", "|---|---|---|---|---|"]
    for row in target_rows(report):
        unit = row.get("unit", "x")
        measured = (
            _fmt(row["measured"], 2 if unit == "x" else 0) + unit if row["measured"] is not None else "-"
        )
        lines.append(
            f"| {row['target']} | {measured} | {row['want']} | {_verdict(row['met'])} | {row['detail']} |"
        )
    return "\n".join(lines)


def points_table(report: dict[str, Any]) -> str:
    header = (
        "| topology | workload | load | images/s | p50 ms | p95 ms | p99 ms | mean batch "
        "| server CPU-ms/image "
        "| ÷ ceiling (batch) | images/s per server core | server cores busy "
        "| client CPU-µs/request | errors |"
    )
    lines = [header, "|" + "---|" * 14]
    for r in report["points"].values():
        load = (
            f"c={r['concurrency']}"
            if r["mode"] == "closed"
            else f"open {r['offered_images_per_s']:.0f} img/s"
        )
        cpu = r["server_cpu_s_per_image"]
        base, base_batch = ceiling_cpu(report, r["workload"], r["mean_batch_size"])
        lat = r["latency_ms"]
        client = r["client_cpu_s_per_request"]
        errors = f"{r['error_count']}{' ' + str(r['errors']) if r['error_count'] else ''}"
        cells = [
            r["topology"], r["workload"], load, _fmt(r["images_per_s"]), _fmt(lat["p50"]), _fmt(lat["p95"]),
            _fmt(lat["p99"]), _fmt(r["mean_batch_size"]), _fmt(cpu and 1000 * cpu, 2),
            f"{_fmt(_ratio(cpu, base), 2)} ({base_batch})", _fmt(capacity(r)),
            _fmt(r["server_cores_busy"], 2), _fmt(client and 1e6 * client, 0), errors,
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ceiling_table(report: dict[str, Any]) -> str:
    c = report["ceiling"]
    lines = [
        f"Provider {c['provider']}; decode_threads {c['decode_threads']}, intra_op_threads "
        f"{c['intra_op_threads']} (0 = ONNX Runtime's default), max batch {c['max_batch_size']}.",
        "",
        "| image set | batch | images/s | CPU-ms/image (pipeline) "
        "| CPU-ms/image (preprocess alone, 1 thread) |",
        "|---|---|---|---|---|",
    ]
    for name, f in c["pipeline"].items():
        for batch, b in f.get("by_batch", {str(c["max_batch_size"]): f}).items():
            lines.append(
                f"| {name} | {batch} | {_fmt(b['images_per_s'])} | {_fmt(1000 * b['cpu_s_per_image'], 2)} | "
                f"{_fmt(1000 * f['preprocess_cpu_s_per_image'], 2)} |"
            )
    lines += ["", "| model alone, batch | images/s | CPU-ms/image |", "|---|---|---|"]
    for batch, f in c["model"].items():
        lines.append(f"| {batch} | {_fmt(f['images_per_s'])} | {_fmt(1000 * f['cpu_s_per_image'], 2)} |")
    return "\n".join(lines)


def _save(fig: Any, path: Path) -> Path:
    """Write one plot and free it (matplotlib keeps every open figure alive)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_plots(report: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = report["points"]
    made = []
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for topo, style in (("batching_on", "o-"), ("batching_off", "s--"), ("naive", "^:")):
        rows = sorted(
            (
                p
                for p in points.values()
                if p["topology"] == topo and p["workload"] == MAIN and p["mode"] == "closed"
            ),
            key=lambda p: p["concurrency"],
        )
        if rows:
            ax.plot([p["concurrency"] for p in rows], [p["images_per_s"] for p in rows], style, label=topo)
    for topo, marker in (("batch4", "D"), ("batch8", "v"), ("nginx_2", "*")):
        p = points.get(f"{topo}/{MAIN}/c32")
        if p:
            ax.plot([32], [p["images_per_s"]], marker, ms=8, ls="none", label=f"{topo} (c=32 only)")
    ceiling = report["ceiling"]["pipeline"].get(MAIN)
    if ceiling:
        ax.axhline(ceiling["images_per_s"], color="grey", lw=1, label="in-process ceiling")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent requests (closed loop)")
    ax.set_ylabel("images/s")
    ax.set_title(f"Throughput vs concurrency, {MAIN} (server on cpus {report['machine']['server_cpus']})")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    made.append(_save(fig, out / "throughput_vs_concurrency.png"))

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for key, label in (
        (f"batching_on/{MAIN}/c32", "batching on"),
        (f"batching_off/{MAIN}/c32", "batching off"),
        (f"naive/{MAIN}/c32", "naive"),
        (f"nginx_2/{MAIN}/c32", "nginx + 2 replicas"),
    ):
        p = points.get(key)
        if p and p["latency_sample_ms"]:
            sample = sorted(p["latency_sample_ms"])
            n = len(sample)
            ax.plot(
                sample,
                [(i + 1) / n for i in range(n)],
                label=f"{label} (p99 {p['latency_ms']['p99']:.0f} ms)",
            )
    ax.set_xscale("log")
    ax.set_xlabel("request latency, ms (log)")
    ax.set_ylabel("fraction of requests")
    ax.set_title(f"Latency distribution at c=32, {MAIN}")
    ax.grid(alpha=0.3, which="both")
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    made.append(_save(fig, out / "latency_cdf_c32.png"))

    rows = [
        p
        for p in points.values()
        if p["mode"] == "closed"
        and p["server_cpu_s_per_image"]
        and (p["concurrency"] == 32 or p["workload"].startswith("multi"))
        and not p["topology"].startswith("nginx")
    ]
    if rows:
        fig, ax = plt.subplots(figsize=(7.5, 0.32 * len(rows) + 1.2))
        labels = [f"{p['topology']} / {p['workload']}" for p in rows]
        ax.barh(
            range(len(rows)),
            [1000 * p["server_cpu_s_per_image"] for p in rows],
            color="tab:blue",
            label="server CPU-ms/image (c=32; multi8: c=8)",
        )
        for i, p in enumerate(rows):
            base, _ = ceiling_cpu(report, p["workload"], p["mean_batch_size"])
            if base:
                ax.vlines(
                    1000 * base,
                    i - 0.4,
                    i + 0.4,
                    color="black",
                    label="ceiling at the server's mean batch" if i == 0 else None,
                )
        ax.set_yticks(range(len(rows)), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("CPU-ms per image")
        ax.set_title("Server CPU per image vs the in-process ceiling")
        ax.grid(alpha=0.3, axis="x", which="both")
        ax.legend(fontsize=8, loc="lower right")
        made.append(_save(fig, out / "cpu_per_image.png"))
    return made


def write_report(report: dict[str, Any], out: Path) -> Path:
    m = report["machine"]
    plots = write_plots(report, out)
    text = [
        f"# Benchmark report ({'SMOKE, not a measurement' if report['settings']['smoke'] else 'full run'})",
        "",
        f"- date: {m['date_utc']}; command: `{report['command']}`; wall time {report['wall_s']:.0f} s",
        f"- code: commit {m.get('git_commit', '?')}"
        f"{' with uncommitted changes in app/' if m.get('app_uncommitted_changes') else ''}",
        f"- machine: {m['cpu_model']}, {m['cpu_count']} cpus, {m['memory_gib']} GiB, GPU: {m['gpu']}; "
        f"load average at start {tuple(round(x, 2) for x in m['load_average_at_start'])}",
        f"- ONNX Runtime {m['onnxruntime']}, providers {m['onnxruntime_providers']}; ceiling ran on "
        f"{report['ceiling']['provider']}; Python {m['python']}, Pillow {m['pillow']}, NumPy {m['numpy']}",
        f"- pinning: load generator on cpus {m['client_cpus']} ({m['client_processes']} process(es)); "
        "servers, nginx "
        f"and the ceiling on cpus {m['server_cpus']}",
        f"- model: `{report['model']}`; naive baseline's model: `{report['naive_model']}`",
        f"- {report['settings']['duration_s']:g} s measured per point after "
        f"{report['settings']['warmup_s']:g} s warm-up",
        "",
        "## Targets",
        "",
        targets_table(report),
        "",
        "## Details",
        "",
        "### Every point",
        "",
        points_table(report),
        "",
        "### The ceiling (in process, the server's preprocess + engine, same cpus and thread counts)",
        "",
        ceiling_table(report),
        "",
        "### Workloads",
        "",
        "| workload | images/request | mean body bytes | what |",
        "|---|---|---|---|",
        *(
            f"| {n} | {w['images_per_request']} | {w['mean_body_bytes']:,.0f} | {w['description']} |"
            for n, w in report["workloads"].items()
        ),
        "",
        "### Plots",
        "",
        *(f"![{p.stem}]({p.name})" for p in plots),
        "",
    ]
    path = out / "report.md"
    path.write_text("\n".join(text))
    return path
