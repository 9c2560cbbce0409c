"""`python -m wavegan`: see wavegan/command.py."""
import sys

from wavegan.command import main

if __name__ == "__main__":
    sys.exit(main())
