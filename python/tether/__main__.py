"""python -m tether: package information (the command line grows here)."""

import argparse
import platform
import sys

import tether


def version_text():
    return (
        f"tether {tether.__version__}\n"
        f"core {tether.core_version} (libtether)\n"
        f"protocol {tether.protocol_version}\n"
        f"python {platform.python_version()} ({sys.executable})"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m tether", description="tether: script a host application from another process."
    )
    parser.add_argument(
        "--version", action="store_true", help="print the versions of the package, the core and the protocol"
    )
    args = parser.parse_args(argv)
    if args.version:
        print(version_text())
        return 0
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
