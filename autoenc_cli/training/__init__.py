"""Losses, optimizers, schedules, checkpoints and the train/validate loop."""
