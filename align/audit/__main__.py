import sys

from align.audit.cli import main

sys.exit(main())
