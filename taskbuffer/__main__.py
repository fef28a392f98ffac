"""``python -m taskbuffer``: the command line (see :mod:`taskbuffer._cli`)."""

from __future__ import annotations

from ._cli import main

raise SystemExit(main())
