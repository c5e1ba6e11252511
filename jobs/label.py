"""Serve a labelling page for a batch folder written by jobs/sample_groups.py.

People pick each group's best and worst image and flag deformed or unsafe ones (keys: 1-8 choose an
image, b/w best/worst, d/u flags, Enter submit, arrows move between groups). Labels go to
<folder>/labels.sqlite as they are submitted; stop and start the server at will.
"""

import sys

from rlft.cli import label

if __name__ == "__main__":
    label(sys.argv[1:], prog="jobs/label.py")
