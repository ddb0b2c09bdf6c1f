"""What a run leaves behind: metrics, history, checkpoints, figures and the console summary."""
