"""`python -m bridge.cli`: the `bridge` command."""

from bridge.cli.main import main

raise SystemExit(main())
