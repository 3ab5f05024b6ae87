"""convscope's benchmarks against the peer libraries (Captum, Lucent), run in one process on one machine.

Each module `bench/<name>.py` is one benchmark with a `main(argv) -> int`; `python -m bench` runs them all,
`python -m bench NAME [options]` one (`python -m bench.NAME --help` for its options). Results are ratios measured in
one run, printed as a table (`--json` for machine-readable output); nothing is written unless `--save` is given.
"""
