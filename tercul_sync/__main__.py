import sys

from tercul_sync.cli import main

sys.exit(main())
