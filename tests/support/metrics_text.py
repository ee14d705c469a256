"""Values of a Prometheus text exposition (a server's /metrics), with the standard library
only: the signal probe's process imports nothing else."""

from __future__ import annotations

import re

__all__ = ["labels_of", "series_values"]

_LABEL = re.compile(r'(\w+)="([^"]*)"')


def series_values(text: str, name: str, **labels: str) -> list[float]:
    """The value of every series ``name`` in ``text`` whose labels include ``labels``."""
    values = []
    for match in re.finditer(rf"^{re.escape(name)}(?:{{(.*)}})? (\S+)$", text, re.M):
        found = labels_of(match.group(1) or "")
        if all(found.get(k) == v for k, v in labels.items()):
            values.append(float(match.group(2)))
    return values


def labels_of(text: str) -> dict[str, str]:
    """``a="x",b="y"`` (a series' labels as /metrics writes them) as a dict."""
    return dict(_LABEL.findall(text))
