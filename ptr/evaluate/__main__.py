"""`python -m ptr.evaluate` = `ptr eval`."""

from ptr.evaluate.cli import main

raise SystemExit(main())
