"""`python -m ptr.encode …` is `ptr encode …`."""

from ptr.encode.cli import main

raise SystemExit(main())
