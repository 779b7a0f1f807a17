"""`python -m node` runs a node (the same as `dsched node`); `python -m node cluster ...` too."""

import sys

from node.cli import main

if __name__ == "__main__":
    argv = sys.argv[1:]
    if not argv or argv[0].startswith("-"):
        argv = ["node", *argv]
    sys.exit(main(argv))
