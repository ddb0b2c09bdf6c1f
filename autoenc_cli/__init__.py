"""autoenc: a config-driven experiment runner for autoencoders in PyTorch."""

__version__ = "0.1.0"
