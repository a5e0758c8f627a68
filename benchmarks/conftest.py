"""Benchmark helpers: after the run, print each group's ratios against its numpy baseline.

A benchmark marks itself ``extra_info["role"] = "baseline"`` or ``"neurcore"``
and states ``extra_info["work"]``, how many items it processed (row pairs,
units), and ``extra_info["per"]``, what an item is, so that a baseline timed
on a subset is compared per item.
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
        per_item = {b.name: b.stats.median / max(1, b.extra_info.get("work", 1)) for b in items}
        baselines = [b for b in items if b.extra_info.get("role") == "baseline"]
        for base in baselines:
            for b in items:
                if b.extra_info.get("role") == "neurcore":
                    per = b.extra_info.get("per", "item")
                    lines.append(f"{group}: {b.name} is {per_item[base.name] / per_item[b.name]:,.1f}x faster "
                                 f"than {base.name} (median, per {per}, same run)")
        for b in items:
            for key, value in sorted(b.extra_info.items()):
                if key not in ("role", "work", "per"):
                    lines.append(f"{group}: {b.name}: {key} = {value}")
    if lines:
        terminalreporter.write_sep("=", "neurcore ratios against the numpy references")
        for line in lines:
            terminalreporter.write_line(line)
