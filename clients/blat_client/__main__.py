"""python -m blat_client: the remote commands of `blat`, for installs with only the client."""

import sys

from blat_client.cli import main

if __name__ == "__main__":
    sys.exit(main())
