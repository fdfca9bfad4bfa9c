import sys

from ggl.cli import main

sys.exit(main())
