"""Load benchmarks for any OpenAI-compatible Chat Completions endpoint.

``python -m benchmarks run ...`` measures one endpoint (fixed concurrency or Poisson arrivals,
sweeps, exact-length prompts or a JSONL dataset); ``python -m benchmarks compare ...`` runs the
same load against two endpoints in interleaved rounds and prints ours / theirs ratios.
The modules are small on purpose: ``metrics`` and ``sse`` are pure and unit-tested, ``client``
and ``load`` do the I/O, ``report`` and ``plots`` only render results.
"""

__all__: list[str] = []
