"""Compare mode's /proc accounting: every API process of a server counts as its front end."""

from __future__ import annotations

import os
import subprocess
import sys

from benchmarks import procstats
from benchmarks.compare import process_figures

SLEEPER = "import sys, time; {title}print('ready', flush=True); time.sleep(60)"


def _child(title: str | None) -> subprocess.Popen[str]:
    set_title = f"import setproctitle; setproctitle.setproctitle({title!r}); " if title else ""
    proc = subprocess.Popen(
        [sys.executable, "-c", SLEEPER.format(title=set_title)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def test_titled_api_processes_count_with_the_server_others_as_children() -> None:
    api = _child(f"{procstats.API_TITLE}_0")  # as vLLM titles its API processes, and ours
    engine = _child("VLLM::EngineCore")
    try:
        assert procstats.is_api_process(api.pid) and not procstats.is_api_process(engine.pid)
        sample = procstats.sample(os.getpid())
        assert sample is not None
        assert sample.api_processes == 2  # this process and the titled child
        assert sample.children >= 1
        assert sample.api_peak_rss_mib is not None and sample.api_peak_rss_mib > 0
    finally:
        for proc in (api, engine):
            proc.kill()
            proc.communicate()


def test_output_tokens_per_api_cpu_second() -> None:
    last = procstats.ProcSample(2.0, 30.0, 700.0, 3000.0, 3, api_processes=3)
    figures = process_figures([2.0, 30.0], 4000, last)
    assert figures["api_processes"] == 3
    assert figures["api_cpu_s_per_1k_tokens"] == 0.5
    assert figures["output_tokens_per_api_cpu_s"] == 2000.0
    assert process_figures([0.0, 1.0], 10, last)["output_tokens_per_api_cpu_s"] is None


def test_the_layer_clock_finds_every_layer_in_the_pinned_vllm() -> None:
    """``benchmarks.layer_clock`` wraps these by name: a vLLM that renamed one would leave
    the benchmark clocking nothing for it."""
    import importlib

    from benchmarks.layer_clock import LAYERS

    for module, cls, method in LAYERS:
        assert callable(getattr(getattr(importlib.import_module(module), cls), method))
    threads = procstats.thread_cpu_seconds(os.getpid())
    main = f"{os.getpid()}:"  # the main thread's id is the process's
    assert any(name.startswith(main) for name in threads)
    assert all(seconds >= 0 for seconds in threads.values())
