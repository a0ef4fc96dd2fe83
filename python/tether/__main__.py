"""python -m tether: the tether command line (tether._cli), and the package's versions.

    python -m tether --version
    python -m tether ls -H demo
    python -m tether --help
"""

import sys

from tether._cli import main, version_text

__all__ = ["main", "version_text"]

if __name__ == "__main__":
    sys.exit(main())
