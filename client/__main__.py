"""``python -m client``: the phone CLI (see :mod:`client.cli_phone`)."""

from client.cli_phone import main

if __name__ == "__main__":
    main()
