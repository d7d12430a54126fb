"""Training runs: scheduling, executors, the driver."""
