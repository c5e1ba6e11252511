"""Pretrain the tiny model on rlft/world/scenes.py's captioned shapes and write it to a new folder, which
`--model <folder>` loads (the shipped weights, rlft/world/tiny_weights, are never overwritten).

The VAE first, then the UNet with the text encoder; one progress line every --settings.log-every steps. The
shipped weights (model.json records the settings, losses and times) are this command's defaults with
`--threads 2` on a 2-core machine: 64 minutes (VAE 12, UNet 51; another job shared the cores for the first
13). Deterministic on a CPU for a given seed and thread count. `--device cuda` trains on a GPU (not timed).
"""

import sys

from rlft.cli import pretrain_tiny

if __name__ == "__main__":
    pretrain_tiny(sys.argv[1:], prog="jobs/pretrain_tiny.py")
