"""maskctrl.models."""
