"""``python RELEASE/crewship_runner ...`` (or ``python -m runtime.runner`` in a checkout);
``... crewship_runner preload ...`` starts an environment's preloaded parent instead."""

import importlib
import sys
from pathlib import Path

_module = "preload" if sys.argv[1:2] == ["preload"] else "server"
if _module == "preload":
    del sys.argv[1]
if __package__:
    main = importlib.import_module(f"{__package__}.{_module}").main
else:  # run as a directory: import the package by its own name from its parent
    _here = Path(__file__).resolve().parent
    sys.path[0] = str(_here.parent)
    main = importlib.import_module(f"{_here.name}.{_module}").main

sys.exit(main())
