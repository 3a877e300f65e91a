import sys

from ptr.train.cli import main

raise SystemExit(main(sys.argv[1:]))
