"""``python -m unirank.training train|evaluate|compare ...``: the training command line as a module.

This is what torchrun starts for data-parallel training (it runs ``python -m MODULE``)::

    torchrun --standalone --nproc_per_node 2 -m unirank.training train --data synthetic --out DIR
"""

import sys

from unirank.training.cli import main

raise SystemExit(main(sys.argv[1:]))
