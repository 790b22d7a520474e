"""``python -m fusynth.cli``: the ``fusynth`` command."""

import sys

from fusynth.cli.main import main

sys.exit(main())
