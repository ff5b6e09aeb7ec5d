"""Benchmarks of fiber_d2 models with random weights, one module per benchmark (`tools/benchmark.py` is their command
line): `backbone`, `dcn`, `lvis`, `throughput`, `latency` and `train`. Each module has `HELP`, `add_arguments(parser)`
and `run(args, emit)`, which passes every result row (a JSON-serialisable dict) to `emit`. The rows are described in
docs/BENCHMARKS.md. The package sits above `engine` in the import order (it builds predictors and trainers)."""
