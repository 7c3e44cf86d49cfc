"""The benchmark's picture: latency percentiles and settled orders/s against offered rate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no screen

import matplotlib.pyplot as plt  # noqa: E402


def plot_bench(results: dict[str, Any], path: Path) -> Path:
    """Draw ``results`` (as run_bench returns them) to a PNG at ``path``; returns the path."""
    # One curve per figure: the steps of the first count of lines (1 by default).
    first = results["steps"][0].get("lines", 1) if results["steps"] else 1
    steps = [s for s in results["steps"] if s.get("lines", 1) == first]
    rates = [s["offered_rate"] for s in steps]
    figure, (latency, throughput) = plt.subplots(1, 2, figsize=(12, 4.8))

    for key, source, style in (
        ("p50", "accept_ms", "o-"),
        ("p95", "accept_ms", "s-"),
        ("p99", "accept_ms", "^-"),
        ("p50", "settle_ms", "o--"),
        ("p99", "settle_ms", "^--"),
    ):
        values = [s[source].get(key) for s in steps]
        label = f"{'accept' if source == 'accept_ms' else 'settle'} {key}"
        latency.plot(rates, values, style, label=label)
    latency.axhline(25, color="grey", linewidth=0.8, linestyle=":", label="accept p99 target")
    latency.axhline(250, color="black", linewidth=0.8, linestyle=":", label="settle p99 target")
    latency.set_yscale("log")
    latency.set_xlabel("offered orders/s")
    latency.set_ylabel("latency (ms, log scale)")
    latency.set_title("Latency against offered rate")
    latency.legend(fontsize=8)
    latency.grid(True, which="both", alpha=0.3)

    settled = [s["settled_per_second"] for s in steps]
    throughput.plot(rates, settled, "o-", label="settled orders/s")
    top = max([*rates, *settled, 1.0])
    throughput.plot([0, top], [0, top], color="grey", linestyle=":", label="settled = offered")
    throughput.axhline(1000, color="black", linewidth=0.8, linestyle=":", label="target 1,000/s")
    throughput.set_xlabel("offered orders/s")
    throughput.set_ylabel("settled orders/s")
    throughput.set_title("Throughput")
    throughput.legend(fontsize=8)
    throughput.grid(True, alpha=0.3)

    get = results.get("product_get", {})
    figure.suptitle(
        "orderstack bench: cached GET at "
        f"{get.get('ratio_to_ceiling', '?')} of the bare endpoint's "
        f"{get.get('bare_endpoint_per_second', '?')} req/s"
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
