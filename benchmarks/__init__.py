"""fastfork's benchmark suite: pytest-benchmark microbenchmarks and ``compare``.

Microbenchmarks: ``python -m pytest benchmarks`` (``--benchmark-disable`` runs
each once, as CI does).  End to end: ``python -m benchmarks.compare``.
"""
