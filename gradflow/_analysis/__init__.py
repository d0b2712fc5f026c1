"""What is computed from runs: curves (time to reward, stalls), categorisation of
proxy errors, seed summaries, sensitivity and proxy design, statistics."""
