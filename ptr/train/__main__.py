import sys

from ptr.train.cli import process_main

process_main(sys.argv[1:])
