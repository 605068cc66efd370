"""`python -m nhl_fast ...` is the `nhl-fast` command."""
import sys

from nhl_fast.cli import main

sys.exit(main())
