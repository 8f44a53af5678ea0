"""``python -m fleetops``: the command line (how ``fleetops serve --workers N`` starts its API workers)."""

from fleetops.cli import main

main()
