"""Stacked sweeps: train a sweep's jobs that share a network shape as one batched model.

``engine`` trains one epoch of several runs at once; ``fit`` drives the runs epoch by epoch and forms
the stacks; ``launcher`` is the Hydra launcher (``hydra/launcher=stacked``) that sets the jobs up.
"""
