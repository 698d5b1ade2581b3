import sys

from embedseg.cli import main

sys.exit(main())
