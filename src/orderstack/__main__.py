import sys

from orderstack.cli import main

sys.exit(main())
