"""``python -m imgserve_client``: the command line."""

from imgserve_client.cli import main

main()
