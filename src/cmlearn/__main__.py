import sys

from cmlearn.cli import main

sys.exit(main())
