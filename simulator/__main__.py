"""`python -m simulator`: the same as `invledger simulate-engine`."""

from simulator.cli import main

raise SystemExit(main())
