"""Benchmark helpers: after the run, print each group's ratios against its numpy baseline.

A benchmark marks itself ``extra_info["role"] = "baseline"`` or ``"neurcore"``
and states ``extra_info["pairs"]``, the row pairs it counted, so that a
baseline timed on a subset of the pairs is compared per pair.
"""

from collections import defaultdict


def pytest_terminal_summary(terminalreporter, config):
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    groups = defaultdict(list)
    for bench in session.benchmarks:
        groups[bench.group].append(bench)
    lines = []
    for group, items in sorted(groups.items(), key=lambda kv: str(kv[0])):
        per_pair = {b.name: b.stats.median / max(1, b.extra_info.get("pairs", 1)) for b in items}
        baselines = [b for b in items if b.extra_info.get("role") == "baseline"]
        for base in baselines:
            for b in items:
                if b.extra_info.get("role") == "neurcore":
                    lines.append(f"{group}: {b.name} is {per_pair[base.name] / per_pair[b.name]:,.1f}x faster "
                                 f"than {base.name} (median, per row pair, same run)")
        for b in items:
            for key, value in sorted(b.extra_info.items()):
                if key not in ("role", "pairs"):
                    lines.append(f"{group}: {b.name}: {key} = {value}")
    if lines:
        terminalreporter.write_sep("=", "neurcore ratios against the numpy references")
        for line in lines:
            terminalreporter.write_line(line)
