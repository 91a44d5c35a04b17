"""`make bench`: the quick benchmarks, one JSON line each on stdout among the training's
`[train]` progress lines (`| grep '^{'` keeps the JSON; the quality ones are separate:
python -m bench.quality --data DATA and python -m bench.ablations --data DATA, several training
runs each)."""

import argparse

from bench import preprocess_throughput, train_throughput

if __name__ == "__main__":
    # No options: --help says what runs instead of starting the benchmarks.
    argparse.ArgumentParser(description=__doc__).parse_args()
    train_throughput.main([])
    preprocess_throughput.main([])
