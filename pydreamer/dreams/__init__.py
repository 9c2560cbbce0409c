"""Dreams: imagined tokens (imagination) made audible (audio), measured against real speech (acoustics),
drawn and tabled (report), by the command `python -m pydreamer.dream` (command)."""
