"""`python -m pydreamer.dream`: the dream command's name, kept where users and scripts call it (the command
itself is pydreamer/dreams/command.py)."""
import sys

from pydreamer.dreams.command import main

if __name__ == "__main__":
    sys.exit(main())
