from spikedict.cli import main
import sys

sys.exit(main())
