"""py-spy profiles of the services while the benchmark loads them: a flame graph (SVG) and
the collapsed stacks of each process, and a summary of the frames where the time goes."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path


class Profiler:
    """``start`` samples every process for ``seconds``; ``finish`` waits and summarises."""

    def __init__(self, out_dir: Path, rate_hz: int = 97) -> None:
        self._out_dir, self._rate = out_dir, rate_hz
        self._running: list[tuple[str, Path, subprocess.Popen[bytes]]] = []
        found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        self._py_spy = found

    def start(self, processes: dict[str, int], label: str, seconds: float) -> None:
        self._out_dir.mkdir(parents=True, exist_ok=True)
        for name, pid in processes.items():
            stem = self._out_dir / f"profile-{name}-{label}"
            for fmt, suffix in (("flamegraph", ".svg"), ("raw", ".txt")):
                command = [
                    self._py_spy, "record", "--nonblocking", "-p", str(pid),
                    "-d", str(max(1, int(seconds))), "-r", str(self._rate),
                    "-f", fmt, "-o", str(stem.with_suffix(suffix)),
                ]  # fmt: skip
                process = subprocess.Popen(
                    command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
                self._running.append((name, stem.with_suffix(suffix), process))

    def finish(self, top: int = 12) -> dict[str, dict[str, list[tuple[str, float]]]]:
        """Wait for the samplers; per process, the top frames by own and by total time (%)."""
        summary: dict[str, dict[str, list[tuple[str, float]]]] = {}
        for name, path, process in self._running:
            try:
                process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                process.kill()
            if path.suffix == ".txt" and path.exists():
                summary[name] = top_frames(path.read_text(), top)
        self._running.clear()
        return summary


def top_frames(collapsed: str, top: int) -> dict[str, list[tuple[str, float]]]:
    """From collapsed stacks (``a;b;c 12`` per line): the frames with the most samples at
    the top of the stack (own time) and anywhere in it (total time, without the trunk that
    nearly every sample shares), as % of samples."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        samples += count
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
    if not samples:
        return {"own": [], "total": []}

    def share(counter: Counter[str]) -> list[tuple[str, float]]:
        ranked = sorted(counter.items(), key=lambda item: (-item[1], item[0]))[:top]
        return [(f, round(100 * c / samples, 1)) for f, c in ranked]  # ties by name

    # The trunk every busy sample shares (runpy, uvicorn, the event loop) says nothing.
    trunk = max(total.values()) * 0.98
    branches = Counter({frame: count for frame, count in total.items() if count < trunk})
    return {"own": share(own), "total": share(branches)}
