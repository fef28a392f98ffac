"""``python -m benchmarks``: run the benchmarks and print the table (see ``--help``)."""

from benchmarks.run import main

raise SystemExit(main())
