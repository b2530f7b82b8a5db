"""Pieces of the pretraining trainer (:mod:`maskctrl.pretrain`): sampling, the sharded loss, processes, logs."""
