"""Online experiments: A/B tests decided on outcomes by a sequential test, and bandit routing."""
