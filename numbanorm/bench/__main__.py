"""``python -m numbanorm.bench``: the same as ``python -m numbanorm bench``."""

import sys

from .cli import main

sys.exit(main())
