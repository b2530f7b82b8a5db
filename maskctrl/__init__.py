"""maskctrl: one pretrained masked control transformer for MPC, behaviour cloning and SB3."""

__version__ = "0.1.0"
