import sys

from tercul_sync.devtools.cli import main

sys.exit(main())
