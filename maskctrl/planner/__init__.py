"""maskctrl.planner."""
