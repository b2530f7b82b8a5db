"""maskctrl.data."""
