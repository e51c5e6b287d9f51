"""``python -m bench.store``: see run.py."""

from bench.store.run import main

raise SystemExit(main())
