"""maskctrl.commands."""
