"""`cli.py bench`: latency, throughput and FLOP efficiency of every backend, measured in one run."""
