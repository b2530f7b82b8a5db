"""maskctrl.envs."""
