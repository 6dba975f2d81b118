"""``python -m pplvae``: the ``pplvae`` command, also as ``torchrun ... -m pplvae train ...``."""

import sys

from pplvae.cli import main

if __name__ == "__main__":
    sys.exit(main())
