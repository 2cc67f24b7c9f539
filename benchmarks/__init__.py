"""Speed benchmarks, run by hand (benchmarks/README.md). A package so that the scripts share
``benchmarks.common`` and ``benchmarks.reference_sam`` by public names."""
