"""The parts of the scale benchmark, scripts/bench/bench_scale.py (the launcher: arguments and rounds):
generate (the synthetic data and its exact top 10), peers (the engine, hnswlib and faiss: how each is built
and searched), measure (the child processes and their figures), report (the tables and the plot), common
(the repository root, logging, .npy blocks, the engine's kernels: the other benchmarks read them too)."""
