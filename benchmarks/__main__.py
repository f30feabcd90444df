"""``python -m benchmarks [--quick] [--only SUITES] ...``: the same as ``asynctrain bench``."""

from benchmarks._command import main

raise SystemExit(main())
