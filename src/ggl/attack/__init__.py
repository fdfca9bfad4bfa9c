"""The attacker's side: objective, label inference, optimisers, baselines."""
