"""``python -m assetferry``: the same command line as the ``assetferry`` script."""
from assetferry.flows.cli import main

if __name__ == "__main__":
    main()
