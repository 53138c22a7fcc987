"""`python -m edge_app` is the same as the `camtrap` command."""

from edge_app.cli import main

raise SystemExit(main())
