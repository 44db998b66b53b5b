"""The policy pack is a folder of its own, not a package: make its modules importable."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "policy"))
