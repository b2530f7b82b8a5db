"""maskctrl.policies."""
