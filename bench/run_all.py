"""`make bench`: the quick benchmarks, one JSON line each (the quality ones are separate:
python -m bench.quality and python -m bench.ablations, several training runs each)."""

from bench import preprocess_throughput, train_throughput

if __name__ == "__main__":
    train_throughput.main([])
    preprocess_throughput.main([])
