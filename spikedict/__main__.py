import sys

from spikedict.cli import main

sys.exit(main())
