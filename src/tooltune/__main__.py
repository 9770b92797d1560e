"""`python -m tooltune`: the command line, where the `tooltune` script is not installed."""

from tooltune.cli import main

raise SystemExit(main())
