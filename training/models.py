"""Training records (jobs, model versions, rounds) arrive with the reward-model issue."""
