"""Sample a batch for people to label: k images per prompt sharing their initial noise, saved to a folder.

The groups are drawn as a D3PO epoch draws them (every latent kept, eta > 0), from the base model or from a
trained adapter (`--adapter runs/<run>/adapter`). The folder gets the trajectories (safetensors), one PNG
per image and a manifest; `python jobs/label.py <folder>` then serves the labelling page.
"""

import sys

from rlft.cli import sample_groups

if __name__ == "__main__":
    sample_groups(sys.argv[1:], prog="jobs/sample_groups.py")
