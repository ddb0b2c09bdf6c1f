"""Classical baselines the autoencoders are compared against."""
