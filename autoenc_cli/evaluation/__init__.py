"""Using trained runs: evaluation with baselines and probes, encoding, reconstruction."""
