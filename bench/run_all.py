"""`make bench`: the quick benchmarks, one JSON line each (the ablations are separate:
python -m bench.ablations, about 5 minutes per variant on 2 cores)."""

from bench import model_throughput, preprocess_throughput

if __name__ == "__main__":
    model_throughput.main([])
    preprocess_throughput.main([])
