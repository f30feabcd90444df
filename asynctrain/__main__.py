"""``python -m asynctrain``: the command-line interface."""

from asynctrain._cli import main

raise SystemExit(main())
