"""One module per benchmark question (P1..P7 of the benchmarks issue)."""
