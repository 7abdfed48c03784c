"""Load and latency benchmarks of the relay: see docs/benchmarks.md and `python -m bench.run`."""

# Where the benchmark's launcher answers with its database counters (see bench.launcher).
COUNTERS_PATH = "/_bench/counters"
