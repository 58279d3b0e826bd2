"""``python -m unirank.cli``: the same as the ``unirank`` command."""

from unirank.cli import main

raise SystemExit(main())
