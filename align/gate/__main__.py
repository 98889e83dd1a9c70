import sys

from align.gate.cli import main

sys.exit(main())
