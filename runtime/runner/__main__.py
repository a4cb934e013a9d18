"""``python RELEASE/crewship_runner ...`` (or ``python -m runtime.runner`` in a checkout)."""

import importlib
import sys
from pathlib import Path

if __package__:
    from .server import main
else:  # run as a directory: import the package by its own name from its parent
    _here = Path(__file__).resolve().parent
    sys.path[0] = str(_here.parent)
    main = importlib.import_module(f"{_here.name}.server").main

sys.exit(main())
