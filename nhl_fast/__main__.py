"""`python -m nhl_fast ...` is the `nhl-fast` command."""
import sys

from nhl_fast.app.cli import main

sys.exit(main())
