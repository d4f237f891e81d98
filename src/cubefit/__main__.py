"""``python -m cubefit`` is the ``cubefit`` command."""
import sys

from .cli import main

sys.exit(main())
