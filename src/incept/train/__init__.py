"""Training: recipes, optimizer, moving averages, checkpoints, the loop, replicas."""
